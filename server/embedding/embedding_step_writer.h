// Writes a sparse job's step captures of its embedding tables
// (EmbeddingStore::ScheduleStepCaptures) to an EmbeddingSnapshotStore in
// the background, so that no BSP step waits for the disk (as the dense
// snapshots' server/snapshot/snapshot_writer). Each capture becomes one
// generation of its table, whose manifest carries the step
// (EmbeddingSnapshotManifest.step) and metadata {"step": "<k>"}, keeping
// capture.keep_last generations.
//
// Bounded: at most 4 captures wait; a fifth is dropped and logged as an
// error (the table's previous step snapshots stay valid; recovery then
// resumes from an older common step). Write errors (disk full) are logged
// and counted; training goes on.
// Thread-safe. Does not own `snapshots`, which must outlive it.
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_STEP_WRITER_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_STEP_WRITER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"

namespace psd {

class EmbeddingStepWriter {
 public:
  explicit EmbeddingStepWriter(EmbeddingSnapshotStore* snapshots);
  // Writes what is queued, then stops.
  ~EmbeddingStepWriter();
  EmbeddingStepWriter(const EmbeddingStepWriter&) = delete;
  EmbeddingStepWriter& operator=(const EmbeddingStepWriter&) = delete;

  // Queues one capture (never blocks on I/O).
  void Enqueue(std::shared_ptr<EmbeddingTableCapture> capture);

  // Blocks until nothing is queued or being written (tests).
  void Flush();

  // Generations written, captures dropped (queue full), writes failed.
  int64_t written() const;
  int64_t dropped() const;
  int64_t failed() const;

 private:
  void Run();

  EmbeddingSnapshotStore* const snapshots_;
  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<EmbeddingTableCapture>> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_STEP_WRITER_H_
