// The parameter store of one psd_server: the partitions it holds for each
// job, their optimizer state, and the BSP step logic.
#ifndef PSD_SERVER_PARAMETER_STORE_H_
#define PSD_SERVER_PARAMETER_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

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
// Thread-safe: any method may be called from any thread. Pull blocks (up to
// a deadline) without holding up pushes to the same job.
class ParameterStore {
 public:
  ParameterStore() = default;
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  // Creates the job's partitions on `shards` with their initial values.
  // Errors: INVALID_ARGUMENT (bad config or placement), ALREADY_EXISTS (a
  // job with this id and another config; the same config again is OK).
  absl::StatusOr<CreateJobResponse> CreateJob(const CreateJobRequest& request);

  // Frees the job. Waiting pulls end with CANCELLED. Errors: NOT_FOUND.
  absl::Status DropJob(const std::string& job_id);

  // See ParameterServer.Push in proto/parameter_server.proto.
  absl::StatusOr<PushResponse> Push(const PushRequest& request);

  // See ParameterServer.Pull. Waits until `deadline` at most, or until
  // `is_cancelled()` returns true (polled every 100 ms).
  // Errors: DEADLINE_EXCEEDED, CANCELLED, NOT_FOUND, FAILED_PRECONDITION
  // (wrong epoch, a step no longer held), INVALID_ARGUMENT.
  absl::Status Pull(const PullRequest& request, absl::Time deadline,
                    const std::function<bool()>& is_cancelled,
                    PullResponse* response);

 private:
  struct Job;
  absl::StatusOr<std::shared_ptr<Job>> FindJob(const std::string& job_id);

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_PARAMETER_STORE_H_
