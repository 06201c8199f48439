// The parameter store of one psd_server: the partitions it holds for each
// job, their optimizer state, and the BSP step logic.
#ifndef PSD_SERVER_PARAMETER_STORE_H_
#define PSD_SERVER_PARAMETER_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/proto.h"

namespace psd {

// Holds jobs' partitions (dense float32) and applies updates under BSP:
// a partition at step s collects the gradients of step s from every worker
// rank; when the last one arrives they are summed in rank order (0, 1, ...),
// divided by the number of workers, and applied once with the job's
// optimizer, and the partition moves to step s + 1. So the result does not
// depend on the order pushes arrive in (DESIGN invariant 4).
//
// Pushes are idempotent in (job, rank, step): a push for a step already
// applied, or one already received, is acknowledged as a duplicate and
// changes nothing (invariant 1). A push is validated whole (shapes, dtype,
// finite values, partitions held, step) before any of it is taken.
//
// Thread-safe: any method may be called from any thread. A pull waiting for
// a step holds no thread (PullAsync), so any number of pulls can wait.
// A consistent copy of one server's state of one job at a step boundary,
// for the snapshot writer (server/snapshot_store.h).
struct ShardSnapshot;
// One partition's state (defined in the .cc).
struct PartitionState;

struct ParameterStoreOptions {
  // Receives every snapshot the store captures (see SnapshotPolicy in
  // proto/job.proto), on the thread whose push completed the step; it must
  // not block (queue it and write elsewhere). Unset = never capture.
  std::function<void(ShardSnapshot)> snapshot_sink;
};

class ParameterStore {
 public:
  explicit ParameterStore(ParameterStoreOptions options = {})
      : options_(std::move(options)) {}
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  // Creates the job's partitions on `shards` with their initial values.
  // Errors: INVALID_ARGUMENT (bad config or placement), ALREADY_EXISTS (a
  // job with this id and another config; the same config again is OK).
  absl::StatusOr<CreateJobResponse> CreateJob(const CreateJobRequest& request);

  // Frees the job. With keep_parameters, frees only the training state
  // (gradient buffers, optimizer slots): the parameters stay for pulls, and
  // pushes are refused (FAILED_PRECONDITION). Waiting pulls end with
  // CANCELLED. Errors: NOT_FOUND.
  absl::Status DropJob(const std::string& job_id, bool keep_parameters = false);

  // What this server holds, per job.
  ServerStatus Status();

  // Ids of the jobs held now (live, not dropped).
  std::vector<std::string> JobIds();

  // Captures a snapshot of the job when its partitions reach `step`, as if
  // the policy asked for it. Errors: NOT_FOUND, FAILED_PRECONDITION (a
  // partition already reached the step, or the store has no snapshot sink).
  absl::Status RequestSnapshot(const std::string& job_id, int64_t step);

  // Holds the job as `snapshot` recorded it: its config, placement, shards,
  // parameters, optimizer slots and step, serving in `view_epoch`.
  // Errors: ALREADY_EXISTS (the job is held already), INVALID_ARGUMENT (a
  // snapshot inconsistent with its placement).
  absl::Status Restore(const ShardSnapshot& snapshot, int64_t view_epoch);

  // See ParameterServer.Push in proto/parameter_server.proto.
  absl::StatusOr<PushResponse> Push(const PushRequest& request);

  // Called exactly once with the outcome of a pull; *response is filled
  // when the status is OK.
  using PullDone = std::function<void(absl::Status)>;

  // An id for PullAsync/CancelPull, unique in this store.
  uint64_t NewPullId() { return next_pull_id_.fetch_add(1); }

  // See ParameterServer.Pull. Never blocks: when the step is reached (or the
  // request is bad) `done` runs on the calling thread before PullAsync
  // returns; otherwise the pull waits, holding no thread, and `done` runs
  // later on the thread whose push completes the step, or in DropJob (with
  // CANCELLED) or CancelPull. `response` must stay valid until `done`.
  // Errors: NOT_FOUND, FAILED_PRECONDITION (wrong epoch, partition not held,
  // a step no longer held), CANCELLED.
  void PullAsync(uint64_t pull_id, const PullRequest& request,
                 PullResponse* response, PullDone done);

  // Ends a waiting pull with `status` (e.g. its client went away or its
  // deadline passed). Does nothing when the pull was answered already.
  void CancelPull(const std::string& job_id, uint64_t pull_id,
                  absl::Status status);

  // Blocking form of PullAsync, for callers with a thread to spare (tests):
  // waits until `deadline` (then DEADLINE_EXCEEDED) or until
  // `is_cancelled()` returns true (polled every 100 ms; then CANCELLED).
  absl::Status Pull(const PullRequest& request, absl::Time deadline,
                    const std::function<bool()>& is_cancelled,
                    PullResponse* response);

  // One job's state (defined in the .cc).
  struct Job;

 private:
  absl::StatusOr<std::shared_ptr<Job>> FindJob(const std::string& job_id);
  // Validates the request and builds the job's partitions at step 0.
  absl::StatusOr<std::shared_ptr<Job>> BuildJob(const CreateJobRequest& request);
  // When the job's policy wants a snapshot at state.step, copies the
  // partition into the capture of that step; a capture that has every
  // partition moves to *complete. REQUIRES: job->mu held.
  void CaptureIfDue(Job* job, int32_t partition_id, const PartitionState& state,
                    std::vector<ShardSnapshot>* complete);
  // Moves every waiter whose step is reached (or whose pull failed) into
  // `completions`, with its response filled. REQUIRES: job->mu held.
  void AnswerWaiters(Job* job,
                     std::vector<std::pair<PullDone, absl::Status>>* completions);

  const ParameterStoreOptions options_;
  std::atomic<uint64_t> next_pull_id_{1};
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_PARAMETER_STORE_H_
