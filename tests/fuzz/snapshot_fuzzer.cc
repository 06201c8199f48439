// Fuzzes the decoders of dense shard snapshots (server/snapshot/
// snapshot_format.h): DecodeManifest, DecodePartitionRecord and ParseStep,
// which SnapshotStore runs on what it reads from disk. A damaged or forged
// snapshot must give DATA_LOSS, never a crash or an allocation of what its
// header claims.
//
// Input: one mode byte, then the value. Mode bit 0: a partition record,
// else a manifest. Bit 1: the checksum is made to match (manifest: its
// CRC-32 is prepended to the value; record: the CRC-32 expected is the
// record's), so that inputs reach past it as a forged snapshot would;
// else taken from the input. Bit 2 (manifest): the job id and step
// expected are the manifest's own, else "job-1" and 0. Bit 2 (record): the
// placement's element count is the header's own count, else the 8 bytes
// after the mode byte.
//
// Invariants: errors are DATA_LOSS with a message; a decoded manifest
// encodes and decodes back equal; a decoded record has the sizes asked for
// and re-encodes to the same CRC-32.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/snapshot/rocksdb_util.h"
#include "server/snapshot/snapshot_format.h"
#include "tests/fuzz/fuzz_util.h"

namespace psd {
namespace {

void RequireDataLoss(const absl::Status& status) {
  fuzz::RequireClearError(status);
  FUZZ_REQUIRE(status.code() == absl::StatusCode::kDataLoss,
               status.ToString());
}

void FuzzManifest(uint8_t mode, const std::string& payload) {
  std::string value = payload;
  if (mode & 2) {
    const uint32_t crc = Crc32(0, payload.data(), payload.size());
    value.insert(0, reinterpret_cast<const char*>(&crc), 4);
  }
  std::string job_id = "job-1";
  int64_t step = 0;
  if (mode & 4) {
    SnapshotManifest own;
    if (value.size() >= 4 &&
        own.ParseFromArray(value.data() + 4, static_cast<int>(value.size() - 4))) {
      job_id = own.job_id();
      step = own.step();
    }
  }
  absl::StatusOr<SnapshotManifest> m =
      DecodeManifest(rocksdb::Slice(value), job_id, step, "fuzz");
  if (!m.ok()) return RequireDataLoss(m.status());
  FUZZ_REQUIRE(m->job_id() == job_id && m->step() == step, m->ShortDebugString());
  FUZZ_REQUIRE(m->partition_ids_size() == m->partition_crc32_size(),
               m->ShortDebugString());
  absl::StatusOr<std::string> encoded = EncodeManifest(*m, "fuzz");
  FUZZ_REQUIRE(encoded.ok(), encoded.status().ToString());
  absl::StatusOr<SnapshotManifest> again =
      DecodeManifest(rocksdb::Slice(*encoded), job_id, step, "fuzz again");
  FUZZ_REQUIRE(again.ok(), again.status().ToString());
  // Bytes, not MessageDifferencer: a NaN in the config is not equal to itself.
  FUZZ_REQUIRE(again->SerializeAsString() == m->SerializeAsString(),
               m->ShortDebugString());
}

void FuzzRecord(uint8_t mode, fuzz::Input& in) {
  int64_t num_elements = static_cast<int64_t>(in.Uint(8));
  const std::string value = in.Rest();
  RecordHeader h{};
  std::memcpy(&h, value.data(), std::min(value.size(), sizeof(h)));
  if (mode & 4) num_elements = static_cast<int64_t>(h.num_weights);
  const int32_t id = h.id;
  const uint32_t want_crc = (mode & 2) ? Crc32(0, value.data(), value.size())
                                       : static_cast<uint32_t>(num_elements);
  absl::StatusOr<PartitionSnapshot> p = DecodePartitionRecord(
      rocksdb::Slice(value), id, num_elements, want_crc, "fuzz");
  if (!p.ok()) return RequireDataLoss(p.status());
  FUZZ_REQUIRE(p->id == id, absl::StrCat(p->id));
  FUZZ_REQUIRE(static_cast<int64_t>(p->weights.size()) == num_elements,
               absl::StrCat(p->weights.size()));
  FUZZ_REQUIRE(p->weights.empty() ? p->slots.empty()
                                  : p->slots.size() % p->weights.size() == 0,
               absl::StrCat(p->slots.size()));
  FUZZ_REQUIRE(
      value.size() == kRecordHeaderBytes +
                          4 * (p->weights.size() + p->slots.size()),
      absl::StrCat(value.size()));
  const RecordHeader again = MakeRecordHeader(*p);
  FUZZ_REQUIRE(RecordCrc32(again, *p) == want_crc, "re-encoded CRC-32 differs");
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::Input in(data, size);
  const uint8_t mode = in.Byte();
  if (mode & 1) {
    psd::FuzzRecord(mode, in);
  } else {
    const std::string payload = in.Rest();
    psd::FuzzManifest(mode, payload);
    // The <step> part of a key.
    const int64_t step = psd::ParseStep(rocksdb::Slice(payload));
    FUZZ_REQUIRE(step >= -1, payload);
    if (step >= 0) {
      FUZZ_REQUIRE(psd::SnapshotManifestKey("j", step) == "m/j/" + payload,
                   payload);
    }
  }
  return 0;
}
