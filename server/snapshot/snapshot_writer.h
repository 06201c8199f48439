// Writes captured snapshots to the SnapshotStore on a background thread, so
// that training never waits for the disk.
#ifndef PSD_SERVER_SNAPSHOT_SNAPSHOT_WRITER_H_
#define PSD_SERVER_SNAPSHOT_SNAPSHOT_WRITER_H_

#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "common/proto.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {

// Owns one writer thread. Enqueue() never blocks: when `max_queued`
// snapshots already wait (the disk is slower than the snapshot policy), the
// new one is skipped and reported as a failure. Write errors (disk full, an
// unwritable directory) are logged and kept for TakeFailures(); earlier
// snapshots stay valid. Thread-safe. Does not own `store`.
class SnapshotWriter {
 public:
  // `metrics` (not owned; may be null) gets psd_server_snapshot_seconds
  // (histogram of write times), psd_server_snapshot_bytes_total,
  // psd_server_snapshots_total and psd_server_snapshot_failures_total.
  SnapshotWriter(SnapshotStore* store, int max_queued,
                 MetricsRegistry* metrics = nullptr);
  ~SnapshotWriter();  // finishes the snapshot being written, drops the rest
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  void Enqueue(ShardSnapshot snapshot);

  // Failures since the last call, oldest first.
  std::vector<SnapshotFailure> TakeFailures();

  // Blocks until every snapshot enqueued so far has been written or has
  // failed (for tests and graceful shutdown).
  void Flush();

 private:
  void Run();
  void Fail(const SnapshotManifest& manifest, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  SnapshotStore* const store_;
  const int max_queued_;
  // Null without a registry.
  Histogram* write_seconds_ = nullptr;
  Counter* bytes_ = nullptr;
  Counter* written_ = nullptr;
  Counter* failed_ = nullptr;
  absl::Mutex mu_;
  std::deque<ShardSnapshot> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<SnapshotFailure> failures_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_SNAPSHOT_WRITER_H_
