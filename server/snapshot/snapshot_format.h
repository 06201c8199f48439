// The on-disk format of dense shard snapshots (SnapshotStore): the key
// layout, the partition records and the checksummed manifest. Encoding,
// decoding and verification only; the RocksDB reads and writes are in
// snapshot_store.cc. Private to server/snapshot.
//
// Keys are byte strings; <job> is the job id, <step> the step as 20
// decimal digits, zero-padded, <id> the partition id as 10:
//   m/<job>/<step>        the manifest: fixed32 little-endian CRC-32 of the
//                         rest, then the serialized SnapshotManifest
//   p/<job>/<step>/<id>   a partition record (below)
//   meta/server_uid       SnapshotStore::ServerUid(), 16 lower-case hex
//                         digits
// A partition record is a 24-byte header, all little-endian: fixed32 magic
// 0x50445350 ("PSDP"), int32 partition id, uint64 number of weights W,
// uint64 number of optimizer-slot elements V (a multiple of W); then W
// float32 weights and V float32 slot elements. Its CRC-32 (zlib crc32)
// covers the whole record. Manifests sort before partitions, so listing
// reads manifests only. The clocks and update count of ASP/SSP partitions
// are in the manifest (async_partitions, covered by its CRC-32), not in the
// records: so the record format is unchanged, and snapshots written before
// (BSP only, no async_partitions) read as before.
#ifndef PSD_SERVER_SNAPSHOT_SNAPSHOT_FORMAT_H_
#define PSD_SERVER_SNAPSHOT_SNAPSHOT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include <rocksdb/slice.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/snapshot.pb.h"
#include "server/snapshot/shard_snapshot.h"

namespace psd {

inline constexpr char kServerUidKey[] = "meta/server_uid";

// The manifest key of (job, step): m/<job>/<step>.
std::string SnapshotManifestKey(const std::string& job_id, int64_t step);

// The key of one partition record: p/<job>/<step>/<id>.
std::string SnapshotPartitionKey(const std::string& job_id, int64_t step,
                                 int32_t partition_id);

// m/<job>/: every manifest of the job is in [it, PrefixEnd(it)).
std::string ManifestPrefix(const std::string& job_id);

// p/<job>/<step>/: every partition record of the snapshot.
std::string PartitionPrefix(const std::string& job_id, int64_t step);

// Parses "<20 digits>" (the <step> part of a key) into a step; -1 if
// malformed.
int64_t ParseStep(rocksdb::Slice s);

// INVALID_ARGUMENT "job_id: ..." for an empty job id or one with '/' or NUL
// (it would break the key layout).
absl::Status CheckJobId(const std::string& job_id);

// The 24-byte header of a partition record.
struct RecordHeader {
  uint32_t magic;
  int32_t id;
  uint64_t num_weights;
  uint64_t num_slot_elements;
};
inline constexpr uint32_t kRecordMagic = 0x50445350;  // "PSDP" little-endian
inline constexpr size_t kRecordHeaderBytes = 24;
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes, "packed header");

// Checks `snapshot` against SnapshotStore::Write's requirements (`what`
// names it in errors: INVALID_ARGUMENT "<what> partition <id>: ..."), sorts
// its partitions by id, and sets manifest.async_partitions from the
// partitions' clocks.
absl::Status PrepareForWrite(ShardSnapshot* snapshot, const std::string& what);

// The header of `p`'s record, and the CRC-32 of the record it starts
// (header, weights, slots).
RecordHeader MakeRecordHeader(const PartitionSnapshot& p);
uint32_t RecordCrc32(const RecordHeader& header, const PartitionSnapshot& p);

// The stored manifest: its CRC-32 (4 bytes) then `m` serialized. Errors:
// INTERNAL when `m` cannot be serialized.
absl::StatusOr<std::string> EncodeManifest(const SnapshotManifest& m,
                                           const std::string& what);

// Decodes and verifies a stored manifest of (job_id, step): its checksum,
// that it parses and names this job and step, as many partition checksums
// as ids, and each async_partitions entry (of a stored partition, at most
// one per partition, config.workers() clocks each >= step, updates >= 0).
// Errors: DATA_LOSS "<what>: ...".
absl::StatusOr<SnapshotManifest> DecodeManifest(rocksdb::Slice value,
                                                const std::string& job_id,
                                                int64_t step,
                                                const std::string& what);

// Decodes and verifies partition `id`'s record against the manifest: its
// CRC-32 equal to `want_crc`, the header's magic and id, and the sizes
// (`num_elements` weights from the placement, slots a multiple of them).
// Errors: DATA_LOSS "<pwhat>: ...".
absl::StatusOr<PartitionSnapshot> DecodePartitionRecord(
    rocksdb::Slice value, int32_t id, int64_t num_elements, uint32_t want_crc,
    const std::string& pwhat);

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_SNAPSHOT_FORMAT_H_
