// The snapshot store of one psd_server: consistent snapshots of the shards
// it holds, per job and step, in a RocksDB database in the server's data
// directory (DESIGN invariant 6, issue 4).
#ifndef PSD_SERVER_SNAPSHOT_SNAPSHOT_STORE_H_
#define PSD_SERVER_SNAPSHOT_SNAPSHOT_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/proto.h"
#include "proto/snapshot.pb.h"
#include "server/snapshot/shard_snapshot.h"

namespace psd {

struct SnapshotStoreOptions {
  // Snapshots kept per job, >= 1: after a Write, the job's oldest snapshots
  // beyond this many are deleted. Default: 3.
  int keep_last = 3;
};

// A RocksDB database of shard snapshots. Each snapshot is written as one
// WriteBatch (synced), so after a crash it is either all there or not
// there; every partition record carries a CRC-32 kept in the manifest, and
// Read verifies it, so a damaged snapshot gives DATA_LOSS, never garbage.
//
// The on-disk format (keys, partition records, the checksummed manifest)
// is in snapshot_format.h.
//
// Timelines: writing a snapshot at step s also deletes the job's snapshots
// at steps > s. They can only come from a timeline that was abandoned (the
// job resumed from an older snapshot), and must never be mixed with the
// new one's at recovery.
//
// Thread-safe: any method may be called from any thread at any time.
// Writers (Write, DeleteJob, the first ServerUid) are serialized by an
// internal mutex that readers never take; readers see each snapshot either
// whole or not at all.
class SnapshotStore {
 public:
  // Opens the RocksDB database at `dir` (e.g. <data_dir>/snapshots),
  // creating it and its missing parent directories. One process at a time
  // may hold a directory open. Errors (the message names `dir` and carries
  // RocksDB's message): FAILED_PRECONDITION (cannot create or write the
  // directory, `dir` is not a directory, an invalid option), UNAVAILABLE
  // (I/O errors, the database is locked by another store or process),
  // DATA_LOSS (the database's own files are corrupt).
  static absl::StatusOr<std::unique_ptr<SnapshotStore>> Open(
      const std::string& dir, SnapshotStoreOptions options);

  ~SnapshotStore();
  SnapshotStore(const SnapshotStore&) = delete;
  SnapshotStore& operator=(const SnapshotStore&) = delete;

  // Writes the snapshot as one synced WriteBatch, replacing any snapshot of
  // the same job and step; in the same batch, deletes the job's snapshots at
  // steps > manifest.step (see Timelines) and the oldest beyond keep_last.
  // REQUIRES: manifest.job_id non-empty, without '/' or NUL;
  // manifest.step >= 0; partition ids distinct, each in manifest.placement
  // with weights.size() == its num_elements; slots a multiple
  // of weights in size; clocks, when given, as many as config.workers(),
  // each >= manifest.step, and updates >= 0. Errors: INVALID_ARGUMENT (a requirement broken; nothing
  // written), and RocksDB's failure naming the job and step:
  // RESOURCE_EXHAUSTED (disk full), UNAVAILABLE (other I/O errors; a later
  // Write tries again), FAILED_PRECONDITION, DATA_LOSS. A failed Write leaves
  // the earlier snapshots intact and readable.
  absl::Status Write(ShardSnapshot snapshot);

  // The job's snapshots, newest step first, from their manifests only
  // (cheap; nothing verified). A snapshot whose manifest cannot be decoded
  // is still listed, with only job_id and step set (Read reports what is
  // wrong). An unknown job gives an empty list. Errors: INVALID_ARGUMENT (a
  // job id Write would refuse), UNAVAILABLE / DATA_LOSS (RocksDB).
  absl::StatusOr<std::vector<SnapshotInfo>> List(const std::string& job_id);

  // Every job id with at least one snapshot, in byte order.
  absl::StatusOr<std::vector<std::string>> ListJobs();

  // Reads and verifies one snapshot: the manifest's checksum, that it
  // parses and names this job and step; every partition record present,
  // its checksum equal to the manifest's, its id, and its sizes consistent
  // with the placement (weights == num_elements, slots a
  // multiple of it); each async_partitions entry of a stored partition, at
  // most one per partition, with config.workers() clocks each >= the step,
  // and updates >= 0 (copied into the partitions' clocks and updates). Errors: NOT_FOUND (no such snapshot), DATA_LOSS naming the job,
  // step, partition and what is wrong, e.g. "snapshot j-1 step 200
  // partition 3: checksum mismatch (stored 0x1234abcd, computed
  // 0x89ab0123)" (RocksDB's own block checksum failures are DATA_LOSS too),
  // UNAVAILABLE (I/O errors), INVALID_ARGUMENT (bad job id or step < 0).
  absl::StatusOr<ShardSnapshot> Read(const std::string& job_id, int64_t step);

  // The newest snapshot of the job that verifies. Snapshots that fail
  // verification (DATA_LOSS) are skipped and appended to *skipped (if not
  // null) as (step, status), newest first, for the caller to log. Errors:
  // NOT_FOUND when no snapshot verifies; any error other than DATA_LOSS
  // (e.g. UNAVAILABLE) is returned at once, without falling back.
  absl::StatusOr<ShardSnapshot> ReadNewestValid(
      const std::string& job_id,
      std::vector<std::pair<int64_t, absl::Status>>* skipped);

  // As ReadNewestValid, among the snapshots at steps <= max_step (for
  // recovery at the newest step every shard has, see NewestCommonStep).
  absl::StatusOr<ShardSnapshot> ReadNewestValidAtMost(
      const std::string& job_id, int64_t max_step,
      std::vector<std::pair<int64_t, absl::Status>>* skipped);

  // Deletes every snapshot of the job (synced). No snapshots is not an
  // error. Errors: INVALID_ARGUMENT (bad job id), RocksDB's as in Write.
  absl::Status DeleteJob(const std::string& job_id);

  // A stable id of this database, 16 lower-case hex digits (64 random bits
  // from the OS), created and persisted (synced) on the first call, the
  // same after a restart, so a restarted server can be recognised as the
  // holder of its snapshots. Errors: RocksDB's as in Write; DATA_LOSS if the
  // stored id is malformed.
  absl::StatusOr<std::string> ServerUid();

 private:
  class Impl;
  explicit SnapshotStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The newest step that every shard has a valid snapshot of: valid_steps[i]
// lists the valid steps of shard i, in any order, duplicates allowed.
// nullopt if valid_steps is empty, some shard has none, or they share none.
std::optional<int64_t> NewestCommonStep(
    const std::vector<std::vector<int64_t>>& valid_steps);

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_SNAPSHOT_STORE_H_
