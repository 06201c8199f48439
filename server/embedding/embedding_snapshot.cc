#include "server/embedding/embedding_snapshot.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <system_error>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "server/snapshot/rocksdb_util.h"
#include "server/ps/optimizer.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "embedding snapshot records are little-endian; this code copies "
              "them as they are in memory");

namespace psd {
namespace {

constexpr uint32_t kBatchMagic = 0x45445350;  // "PSDE" read little-endian
constexpr size_t kBatchHeaderBytes = 16;
constexpr int64_t kMaxMetadataBytes = 64 << 10;

struct BatchHeader {
  uint32_t magic;
  uint32_t record_floats;
  uint64_t rows;
};
static_assert(sizeof(BatchHeader) == kBatchHeaderBytes, "packed header");

std::string GenPart(int64_t g) { return absl::StrFormat("%020d", g); }

std::string TablePrefix(char kind, const std::string& job,
                        const std::string& table) {
  return absl::StrCat(std::string(1, kind), "/", job, "/", table, "/");
}

absl::Status CheckNames(const std::string& job_id, const std::string& table) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  if (job_id.find_first_of(std::string("/\0", 2)) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id: \"", job_id, "\" contains '/' or NUL"));
  }
  if (table.empty() ||
      table.find_first_of(std::string("/\0", 2)) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("table: \"", table, "\" is empty or contains '/' or NUL"));
  }
  return absl::OkStatus();
}


int64_t ParseGen(rocksdb::Slice s) {
  if (s.size() != 20) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c < '0' || c > '9') return -1;
    if (v > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

std::string EmbeddingSnapshotManifestKey(const std::string& job_id,
                                         const std::string& table,
                                         int64_t generation) {
  return absl::StrCat(TablePrefix('m', job_id, table), GenPart(generation));
}
std::string EmbeddingSnapshotBatchKey(const std::string& job_id,
                                      const std::string& table,
                                      int64_t generation, int32_t batch) {
  return absl::StrCat(TablePrefix('r', job_id, table), GenPart(generation),
                      "/", absl::StrFormat("%010d", batch));
}
std::string EmbeddingSnapshotDedupKey(const std::string& job_id,
                                      const std::string& table,
                                      int64_t generation) {
  return absl::StrCat(TablePrefix('d', job_id, table), GenPart(generation));
}

class EmbeddingSnapshotStore::Impl {
 public:
  Impl(std::string dir, EmbeddingSnapshotOptions options,
       std::unique_ptr<rocksdb::DB> db)
      : dir_(std::move(dir)), options_(options), db_(std::move(db)) {}
  ~Impl() {
    rocksdb::Status s = db_->Close();
    (void)s;  // every commit was synced
  }

  absl::StatusOr<EmbeddingSnapshotManifest> Write(
      const EmbeddingTableCapture& capture,
      const std::map<std::string, std::string>& metadata, int keep_last);
  absl::StatusOr<std::vector<int64_t>> Generations(const std::string& job_id,
                                                   const std::string& table);
  absl::StatusOr<EmbeddingSnapshot> Read(const std::string& job_id,
                                         const std::string& table,
                                         int64_t generation);

  const std::string dir_;

 private:
  absl::Status Apply(rocksdb::WriteBatch* batch, bool sync,
                     const std::string& context)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    if (write_failed_) {
      rocksdb::Status r = db_->Resume();  // clear a background error
      (void)r;
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s = db_->Write(wo, batch);
    write_failed_ = !s.ok();
    return FromRocks(s, context);
  }

  const EmbeddingSnapshotOptions options_;
  const std::unique_ptr<rocksdb::DB> db_;
  absl::Mutex write_mu_;  // serializes writers; readers never take it
  bool write_failed_ ABSL_GUARDED_BY(write_mu_) = false;
};

absl::StatusOr<std::vector<int64_t>> EmbeddingSnapshotStore::Impl::Generations(
    const std::string& job_id, const std::string& table) {
  PSD_RETURN_IF_ERROR(CheckNames(job_id, table));
  const std::string lower = TablePrefix('m', job_id, table);
  const std::string upper = PrefixEnd(lower);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::vector<int64_t> gens;
  for (it->Seek(lower); it->Valid(); it->Next()) {
    rocksdb::Slice key = it->key();
    key.remove_prefix(lower.size());
    const int64_t g = ParseGen(key);
    if (g > 0) gens.push_back(g);
  }
  PSD_RETURN_IF_ERROR(FromRocks(
      it->status(), absl::StrCat("listing embedding snapshots of table \"",
                                 table, "\" of job ", job_id, " in ", dir_)));
  std::sort(gens.rbegin(), gens.rend());
  return gens;
}

absl::StatusOr<EmbeddingSnapshotManifest> EmbeddingSnapshotStore::Impl::Write(
    const EmbeddingTableCapture& capture,
    const std::map<std::string, std::string>& metadata, int keep_last) {
  const std::string& job = capture.job_id;
  const std::string& table = capture.spec.name();
  PSD_RETURN_IF_ERROR(CheckNames(job, table));
  const int64_t rf = capture.record_floats;
  const int64_t n = static_cast<int64_t>(capture.ids.size());
  if (rf < 3 || static_cast<int64_t>(capture.records.size()) != n * rf) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding snapshot of table \"", table, "\": ", n, " ids but ",
        capture.records.size(), " record floats of ", rf, " per row"));
  }
  int64_t metadata_bytes = 0;
  for (const auto& [k, v] : metadata) metadata_bytes += k.size() + v.size();
  if (metadata_bytes > kMaxMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata: ", metadata_bytes, " bytes, at most ", kMaxMetadataBytes));
  }
  absl::MutexLock lock(&write_mu_);
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> gens, Generations(job, table));
  const int64_t gen = gens.empty() ? 1 : gens.front() + 1;
  const std::string what =
      absl::StrCat("embedding snapshot of table \"", table, "\" of job ", job,
                   ", generation ", gen, " in ", dir_);
  // What an incomplete generation (a crash before its manifest) left.
  {
    rocksdb::WriteBatch clean;
    for (char kind : {'r', 'd'}) {
      const std::string prefix = TablePrefix(kind, job, table);
      PSD_RETURN_IF_ERROR(FromRocks(
          clean.DeleteRange(absl::StrCat(prefix, GenPart(gen)),
                            PrefixEnd(prefix)),
          what));
    }
    PSD_RETURN_IF_ERROR(Apply(&clean, /*sync=*/false, what));
  }
  EmbeddingSnapshotManifest m;
  m.set_job_id(job);
  *m.mutable_spec() = capture.spec;
  for (int32_t s : capture.shards) m.add_shards(s);
  m.set_generation(gen);
  m.set_rows(n);
  m.set_record_floats(rf);
  m.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  m.set_step(capture.step);
  for (const auto& [k, v] : metadata) (*m.mutable_metadata())[k] = v;
  int64_t total = 0;
  // Row batches, one WriteBatch each (unsynced: the manifest's synced
  // write syncs the WAL before it).
  const int64_t row_bytes = 8 + rf * 4;
  const int64_t per_batch =
      std::max<int64_t>(1, options_.batch_bytes / row_bytes);
  std::string value;
  for (int64_t first = 0, b = 0; first < n || (n == 0 && b == 0);
       first += per_batch, ++b) {
    const int64_t rows = std::min(per_batch, n - first);
    BatchHeader h{kBatchMagic, static_cast<uint32_t>(rf),
                  static_cast<uint64_t>(rows)};
    value.resize(kBatchHeaderBytes + rows * row_bytes);
    char* p = value.data();
    std::memcpy(p, &h, sizeof(h));
    p += sizeof(h);
    for (int64_t i = first; i < first + rows; ++i) {
      std::memcpy(p, &capture.ids[i], 8);
      std::memcpy(p + 8, capture.records.data() + i * rf, rf * 4);
      p += row_bytes;
    }
    m.add_batch_crc32(Crc32(0, value.data(), value.size()));
    m.add_batch_rows(rows);
    rocksdb::WriteBatch batch;
    PSD_RETURN_IF_ERROR(FromRocks(
        batch.Put(EmbeddingSnapshotBatchKey(job, table, gen,
                                            static_cast<int32_t>(b)),
                  value),
        what));
    PSD_RETURN_IF_ERROR(Apply(&batch, /*sync=*/false, what));
    total += value.size();
    if (n == 0) break;
  }
  // Dedup logs.
  EmbeddingDedupLogs logs;
  int64_t entries = 0;
  for (const auto& [client, sequences] : capture.dedup) {
    EmbeddingDedupLogs::Client* c = logs.add_clients();
    c->set_client_id(client);
    c->mutable_sequences()->Assign(sequences.begin(), sequences.end());
    entries += sequences.size();
  }
  // The table's BSP clocks, ASP step and admission counts, as entries
  // under reserved client ids (not counted in dedup_entries).
  auto reserved = [&logs](const std::string& name) {
    EmbeddingDedupLogs::Client* c = logs.add_clients();
    c->set_client_id(absl::StrCat(std::string(1, kReservedClientPrefix), name));
    return c->mutable_sequences();
  };
  if (capture.bsp_num_ranks > 0) {
    reserved("bsp-ranks")->Add(static_cast<uint64_t>(capture.bsp_num_ranks));
  }
  for (const auto& [shard, clock] : capture.bsp_clocks) {
    reserved(absl::StrCat("bsp-clock/", shard))
        ->Add(static_cast<uint64_t>(clock));
  }
  if (capture.asp_step > 0) {
    reserved("asp-step")->Add(static_cast<uint64_t>(capture.asp_step));
  }
  {
    std::map<uint32_t, std::vector<uint64_t>> by_count;
    for (const auto& [row, count] : capture.admission) {
      by_count[count].push_back(row);
    }
    for (auto& [count, rows] : by_count) {
      std::sort(rows.begin(), rows.end());
      reserved(absl::StrCat("admit/", count))->Assign(rows.begin(), rows.end());
    }
  }
  value = logs.SerializeAsString();
  m.set_dedup_crc32(Crc32(0, value.data(), value.size()));
  m.set_dedup_entries(entries);
  total += value.size();
  // The manifest last, synced, deleting generations beyond keep_last.
  rocksdb::WriteBatch commit;
  PSD_RETURN_IF_ERROR(FromRocks(
      commit.Put(EmbeddingSnapshotDedupKey(job, table, gen), value), what));
  const size_t keep_old =
      static_cast<size_t>(
          std::max(keep_last > 0 ? keep_last : options_.keep_last, 1) - 1);
  for (size_t i = keep_old; i < gens.size(); ++i) {
    const int64_t old = gens[i];
    PSD_RETURN_IF_ERROR(FromRocks(
        commit.Delete(EmbeddingSnapshotManifestKey(job, table, old)), what));
    PSD_RETURN_IF_ERROR(FromRocks(
        commit.Delete(EmbeddingSnapshotDedupKey(job, table, old)), what));
    const std::string rows_prefix =
        absl::StrCat(TablePrefix('r', job, table), GenPart(old), "/");
    PSD_RETURN_IF_ERROR(FromRocks(
        commit.DeleteRange(rows_prefix, PrefixEnd(rows_prefix)), what));
  }
  std::string body = m.SerializeAsString();
  total += 4 + body.size();
  m.set_total_bytes(total);  // the stored copy lacks it (it is in body's size)
  body = m.SerializeAsString();
  const uint32_t crc = Crc32(0, body.data(), body.size());
  std::string manifest(4, '\0');
  std::memcpy(manifest.data(), &crc, 4);
  manifest += body;
  PSD_RETURN_IF_ERROR(FromRocks(
      commit.Put(EmbeddingSnapshotManifestKey(job, table, gen), manifest),
      what));
  PSD_RETURN_IF_ERROR(Apply(&commit, /*sync=*/true, what));
  return m;
}

absl::StatusOr<EmbeddingSnapshot> EmbeddingSnapshotStore::Impl::Read(
    const std::string& job_id, const std::string& table, int64_t generation) {
  PSD_RETURN_IF_ERROR(CheckNames(job_id, table));
  const std::string what =
      absl::StrCat("embedding snapshot of table \"", table, "\" of job ",
                   job_id, ", generation ", generation);
  auto loss = [&what](const std::string& detail) {
    return absl::DataLossError(absl::StrCat(what, ": ", detail));
  };
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  std::unique_ptr<const rocksdb::Snapshot, std::function<void(const rocksdb::Snapshot*)>>
      snap(db_->GetSnapshot(),
           [this](const rocksdb::Snapshot* s) { db_->ReleaseSnapshot(s); });
  ro.snapshot = snap.get();
  std::string value;
  rocksdb::Status s = db_->Get(
      ro, EmbeddingSnapshotManifestKey(job_id, table, generation), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat(what, ": no such snapshot in ", dir_));
  }
  PSD_RETURN_IF_ERROR(FromRocks(s, what));
  if (value.size() < 4) return loss("manifest: shorter than its checksum");
  uint32_t stored;
  std::memcpy(&stored, value.data(), 4);
  const uint32_t computed = Crc32(0, value.data() + 4, value.size() - 4);
  if (stored != computed) {
    return loss(absl::StrCat("manifest: checksum mismatch (stored ",
                             Hex32(stored), ", computed ", Hex32(computed),
                             ")"));
  }
  EmbeddingSnapshot out;
  EmbeddingSnapshotManifest& m = out.manifest;
  if (!m.ParseFromArray(value.data() + 4, static_cast<int>(value.size() - 4))) {
    return loss("manifest: does not parse");
  }
  if (m.job_id() != job_id || m.spec().name() != table ||
      m.generation() != generation) {
    return loss(absl::StrCat("manifest names job ", m.job_id(), ", table \"",
                             m.spec().name(), "\", generation ",
                             m.generation()));
  }
  const int64_t rf = m.record_floats();
  const int64_t want_rf =
      2 + int64_t{m.spec().dim()} * (1 + OptimizerSlots(m.spec().optimizer()));
  if (rf != want_rf || m.batch_crc32_size() != m.batch_rows_size() ||
      m.rows() < 0) {
    return loss(absl::StrCat("manifest: record_floats ", rf, " (the spec needs ",
                             want_rf, "), ", m.batch_crc32_size(),
                             " batch checksums for ", m.batch_rows_size(),
                             " batches, ", m.rows(), " rows"));
  }
  EmbeddingTableCapture& c = out.capture;
  c.job_id = job_id;
  c.spec = m.spec();
  c.shards.assign(m.shards().begin(), m.shards().end());
  c.record_floats = rf;
  const int64_t row_bytes = 8 + rf * 4;
  int64_t rows_seen = 0;
  for (int b = 0; b < m.batch_crc32_size(); ++b) {
    const std::string bwhat = absl::StrCat("row batch ", b);
    s = db_->Get(ro, EmbeddingSnapshotBatchKey(job_id, table, generation, b),
                 &value);
    if (s.IsNotFound()) return loss(absl::StrCat(bwhat, ": missing"));
    if (s.IsCorruption()) return loss(absl::StrCat(bwhat, ": ", s.ToString()));
    PSD_RETURN_IF_ERROR(FromRocks(s, absl::StrCat(what, ": ", bwhat)));
    const uint32_t crc = Crc32(0, value.data(), value.size());
    if (crc != m.batch_crc32(b)) {
      return loss(absl::StrCat(bwhat, ": checksum mismatch (stored ",
                               Hex32(m.batch_crc32(b)), ", computed ",
                               Hex32(crc), ")"));
    }
    BatchHeader h;
    if (value.size() < kBatchHeaderBytes) {
      return loss(absl::StrCat(bwhat, ": shorter than its header"));
    }
    std::memcpy(&h, value.data(), sizeof(h));
    const int64_t rows = m.batch_rows(b);
    // The size as a division (row_bytes >= 8 once record_floats matched):
    // rows * row_bytes could overflow.
    const uint64_t body = value.size() - kBatchHeaderBytes;
    if (h.magic != kBatchMagic || h.record_floats != rf ||
        h.rows != static_cast<uint64_t>(rows) || rows < 0 ||
        rows > m.rows() - rows_seen ||
        body % static_cast<uint64_t>(row_bytes) != 0 ||
        body / static_cast<uint64_t>(row_bytes) != static_cast<uint64_t>(rows)) {
      return loss(absl::StrCat(bwhat, ": header (magic ", Hex32(h.magic),
                               ", record_floats ", h.record_floats, ", rows ",
                               h.rows, ") or size ", value.size(),
                               " does not match the manifest"));
    }
    // Grown by the rows each batch holds, not reserved for the manifest's
    // count, which is only checked once every batch is read.
    c.records.resize((rows_seen + rows) * rf);
    const char* p = value.data() + kBatchHeaderBytes;
    for (int64_t i = 0; i < rows; ++i, p += row_bytes) {
      uint64_t id;
      std::memcpy(&id, p, 8);
      c.ids.push_back(id);
      std::memcpy(c.records.data() + (rows_seen + i) * rf, p + 8, rf * 4);
    }
    rows_seen += rows;
  }
  if (rows_seen != m.rows()) {
    return loss(absl::StrCat("row batches hold ", rows_seen,
                             " rows, the manifest says ", m.rows()));
  }
  s = db_->Get(ro, EmbeddingSnapshotDedupKey(job_id, table, generation),
               &value);
  if (s.IsNotFound()) return loss("dedup log: missing");
  if (s.IsCorruption()) return loss(absl::StrCat("dedup log: ", s.ToString()));
  PSD_RETURN_IF_ERROR(FromRocks(s, absl::StrCat(what, ": dedup log")));
  const uint32_t dcrc = Crc32(0, value.data(), value.size());
  if (dcrc != m.dedup_crc32()) {
    return loss(absl::StrCat("dedup log: checksum mismatch (stored ",
                             Hex32(m.dedup_crc32()), ", computed ",
                             Hex32(dcrc), ")"));
  }
  EmbeddingDedupLogs logs;
  if (!logs.ParseFromString(value)) return loss("dedup log: does not parse");
  int64_t entries = 0;
  for (const EmbeddingDedupLogs::Client& client : logs.clients()) {
    const std::string& id = client.client_id();
    if (!id.empty() && id[0] == kReservedClientPrefix) {
      // BSP clocks, ASP step, admission counts (see Write).
      const absl::string_view name = absl::string_view(id).substr(1);
      int64_t number = 0;
      if (name == "bsp-ranks" && client.sequences_size() == 1) {
        c.bsp_num_ranks = static_cast<int32_t>(client.sequences(0));
        continue;
      }
      if (name == "asp-step" && client.sequences_size() == 1) {
        c.asp_step = static_cast<int64_t>(client.sequences(0));
        continue;
      }
      absl::string_view rest = name;
      if (absl::ConsumePrefix(&rest, "bsp-clock/") &&
          absl::SimpleAtoi(rest, &number) && client.sequences_size() == 1) {
        c.bsp_clocks.emplace_back(static_cast<int32_t>(number),
                                  static_cast<int64_t>(client.sequences(0)));
      } else if (absl::ConsumePrefix(&rest, "admit/") &&
                 absl::SimpleAtoi(rest, &number)) {
        for (uint64_t row : client.sequences()) {
          c.admission.emplace_back(row, static_cast<uint32_t>(number));
        }
      } else {
        return loss(absl::StrCat("dedup log: unknown reserved entry \"",
                                 name, "\""));
      }
      continue;
    }
    c.dedup.emplace_back(client.client_id(),
                         std::vector<uint64_t>(client.sequences().begin(),
                                               client.sequences().end()));
    entries += client.sequences_size();
  }
  if (entries != m.dedup_entries()) {
    return loss(absl::StrCat("dedup log: ", entries,
                             " entries, the manifest says ",
                             m.dedup_entries()));
  }
  return out;
}

// ---------------------------------------------------------------------------

EmbeddingSnapshotStore::EmbeddingSnapshotStore(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
EmbeddingSnapshotStore::~EmbeddingSnapshotStore() = default;

absl::StatusOr<std::unique_ptr<EmbeddingSnapshotStore>>
EmbeddingSnapshotStore::Open(const std::string& dir,
                             EmbeddingSnapshotOptions options) {
  if (options.keep_last < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding snapshot store ", dir, ": keep_last is ",
                     options.keep_last, ", must be >= 1"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("embedding snapshot store ", dir,
                     ": cannot create the directory: ", ec.message()));
  }
  rocksdb::Options ro;
  ro.create_if_missing = true;
  ro.paranoid_checks = true;
  ro.compression = rocksdb::kNoCompression;  // float32 noise
  ro.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  ro.keep_log_file_num = 4;
  ro.write_buffer_size = 64 << 20;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, dir, &raw);
  if (!s.ok()) {
    return FromRocks(
        s, absl::StrCat("embedding snapshot store ", dir, ": cannot open"));
  }
  return std::unique_ptr<EmbeddingSnapshotStore>(new EmbeddingSnapshotStore(
      std::make_unique<Impl>(dir, options, std::unique_ptr<rocksdb::DB>(raw))));
}

absl::StatusOr<EmbeddingSnapshotManifest> EmbeddingSnapshotStore::Write(
    const EmbeddingTableCapture& capture,
    const std::map<std::string, std::string>& metadata, int keep_last) {
  return impl_->Write(capture, metadata, keep_last);
}

absl::StatusOr<std::vector<int64_t>> EmbeddingSnapshotStore::Generations(
    const std::string& job_id, const std::string& table) {
  return impl_->Generations(job_id, table);
}

absl::StatusOr<EmbeddingSnapshot> EmbeddingSnapshotStore::Read(
    const std::string& job_id, const std::string& table, int64_t generation) {
  return impl_->Read(job_id, table, generation);
}

absl::StatusOr<EmbeddingSnapshot> EmbeddingSnapshotStore::ReadNewestValid(
    const std::string& job_id, const std::string& table,
    std::vector<std::pair<int64_t, absl::Status>>* skipped) {
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> gens,
                       impl_->Generations(job_id, table));
  if (gens.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "restore: no snapshot of table \"", table, "\" of job ", job_id,
        " in ", impl_->dir_));
  }
  absl::Status first;
  for (int64_t g : gens) {
    absl::StatusOr<EmbeddingSnapshot> r = impl_->Read(job_id, table, g);
    if (r.ok()) return r;
    if (!absl::IsDataLoss(r.status())) return r.status();
    if (first.ok()) first = r.status();
    if (skipped != nullptr) skipped->emplace_back(g, r.status());
  }
  return absl::DataLossError(absl::StrCat(
      first.message(), gens.size() > 1
                           ? absl::StrCat(" (and ", gens.size() - 1,
                                          " older generation(s) fail too)")
                           : std::string()));
}

absl::StatusOr<EmbeddingSnapshot> EmbeddingSnapshotStore::ReadStep(
    const std::string& job_id, const std::string& table, int64_t step,
    std::vector<std::pair<int64_t, absl::Status>>* skipped) {
  if (step <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("restore_step: must be > 0, got ", step));
  }
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> gens,
                       impl_->Generations(job_id, table));
  absl::Status first;
  std::vector<int64_t> steps;  // of the generations that verify
  for (int64_t g : gens) {
    absl::StatusOr<EmbeddingSnapshot> r = impl_->Read(job_id, table, g);
    if (r.ok()) {
      if (r->manifest.step() == step) return r;
      steps.push_back(r->manifest.step());
      continue;
    }
    if (!absl::IsDataLoss(r.status())) return r.status();
    if (first.ok()) first = r.status();
    if (skipped != nullptr) skipped->emplace_back(g, r.status());
  }
  if (!first.ok()) {
    return absl::DataLossError(absl::StrCat(
        "restore_step: no valid snapshot of table \"", table, "\" of job ",
        job_id, " at step ", step, " (a damaged one: ", first.message(), ")"));
  }
  return absl::NotFoundError(absl::StrCat(
      "restore_step: no snapshot of table \"", table, "\" of job ", job_id,
      " at step ", step, " in ", impl_->dir_, " (it has steps [",
      absl::StrJoin(steps, ", "), "])"));
}

const std::string& EmbeddingSnapshotStore::dir() const { return impl_->dir_; }

}  // namespace psd
