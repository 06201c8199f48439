// Fuzzes the reading of sparse embedding table snapshots
// (server/embedding/embedding_snapshot.h): EmbeddingSnapshotStore::Read over
// a RocksDB database holding a manifest, a dedup log and row batches made
// from the input, then (as psd_server does after a restart)
// EmbeddingStore::Restore of what it read. The decoding is inside Read, so
// each input is written to a fresh database first (slow: tens of inputs a
// second).
//
// Input: one mode byte, then chunks (fuzz_util.h): the manifest (a
// serialized EmbeddingSnapshotManifest), the dedup log, then up to 4 row
// batch records. Mode bit 0: the manifest's job id, table name and
// generation are set to those read ("job-1", "emb", 1). Bit 1: its batch
// and dedup checksums are set to the records' own. Bit 2: the manifest's
// CRC-32 is taken from the first 4 bytes of its chunk, else computed (so
// that inputs reach past the checksums, as a forged snapshot would).
//
// Invariants: Read's errors are DATA_LOSS (or NOT_FOUND) with a message;
// a snapshot read has the rows its manifest says, each of record_floats
// floats; Restore refuses an inconsistent one with a status.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <rocksdb/db.h>

#include "absl/strings/str_cat.h"
#include "proto/embedding.pb.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"
#include "server/snapshot/rocksdb_util.h"
#include "tests/fuzz/fuzz_util.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-1";
constexpr char kTable[] = "emb";
constexpr int64_t kGeneration = 1;

const std::string& Dir() {
  static const std::string* dir = [] {
    const char* base = std::getenv("TEST_TMPDIR");
    if (base == nullptr) base = std::getenv("TMPDIR");
    if (base == nullptr) base = "/tmp";
    return new std::string(
        absl::StrCat(base, "/embedding_snapshot_fuzzer.", getpid()));
  }();
  return *dir;
}

// Writes the keys of one generation into a fresh database at Dir().
void WriteDb(const std::string& manifest, const std::string& dedup,
             const std::vector<std::string>& batches) {
  std::filesystem::remove_all(Dir());
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, Dir(), &raw);
  FUZZ_REQUIRE(s.ok(), s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  db->Put(wo, EmbeddingSnapshotManifestKey(kJob, kTable, kGeneration),
          manifest);
  db->Put(wo, EmbeddingSnapshotDedupKey(kJob, kTable, kGeneration), dedup);
  for (size_t b = 0; b < batches.size(); ++b) {
    db->Put(wo,
            EmbeddingSnapshotBatchKey(kJob, kTable, kGeneration,
                                      static_cast<int32_t>(b)),
            batches[b]);
  }
  s = db->Close();
  FUZZ_REQUIRE(s.ok(), s.ToString());
}

void Run(fuzz::Input& in) {
  const uint8_t mode = in.Byte();
  std::string manifest_bytes = in.Chunk();
  const std::string dedup = in.Chunk();
  std::vector<std::string> batches;
  while (batches.size() < 4 && in.remaining() > 0) batches.push_back(in.Chunk());

  std::string stored_crc;
  if (mode & 4) {
    stored_crc = manifest_bytes.substr(0, 4);
    manifest_bytes.erase(0, 4);
  }
  if (mode & 3) {
    EmbeddingSnapshotManifest m;
    if (m.ParseFromString(manifest_bytes)) {
      if (mode & 1) {
        m.set_job_id(kJob);
        m.mutable_spec()->set_name(kTable);
        m.set_generation(kGeneration);
      }
      if (mode & 2) {
        m.clear_batch_crc32();
        for (const std::string& b : batches) {
          m.add_batch_crc32(Crc32(0, b.data(), b.size()));
        }
        m.set_dedup_crc32(Crc32(0, dedup.data(), dedup.size()));
      }
      manifest_bytes = m.SerializeAsString();
    }
  }
  if (!(mode & 4)) {
    const uint32_t crc = Crc32(0, manifest_bytes.data(), manifest_bytes.size());
    stored_crc.assign(reinterpret_cast<const char*>(&crc), 4);
  }
  WriteDb(stored_crc + manifest_bytes, dedup, batches);

  absl::StatusOr<std::unique_ptr<EmbeddingSnapshotStore>> store =
      EmbeddingSnapshotStore::Open(Dir());
  FUZZ_REQUIRE(store.ok(), store.status().ToString());
  absl::StatusOr<EmbeddingSnapshot> read =
      (*store)->Read(kJob, kTable, kGeneration);
  if (!read.ok()) {
    fuzz::RequireClearError(read.status());
    FUZZ_REQUIRE(read.status().code() == absl::StatusCode::kDataLoss ||
                     read.status().code() == absl::StatusCode::kNotFound,
                 read.status().ToString());
    return;
  }
  const EmbeddingTableCapture& c = read->capture;
  FUZZ_REQUIRE(static_cast<int64_t>(c.ids.size()) == read->manifest.rows(),
               absl::StrCat(c.ids.size()));
  FUZZ_REQUIRE(static_cast<int64_t>(c.records.size()) ==
                   read->manifest.rows() * c.record_floats,
               absl::StrCat(c.records.size()));
  // As psd_server after a restart.
  EmbeddingStoreOptions options;
  options.max_bytes = 64 << 20;
  EmbeddingStore embeddings(options);
  absl::StatusOr<int64_t> restored = embeddings.Restore(c, c.shards);
  if (!restored.ok()) {
    fuzz::RequireClearError(restored.status());
  } else {
    FUZZ_REQUIRE(*restored >= 0 && *restored <= read->manifest.rows(),
                 absl::StrCat(*restored));
  }
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::Input in(data, size);
  psd::Run(in);
  return 0;
}
