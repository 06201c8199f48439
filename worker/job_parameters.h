// A job's parameters pulled from the parameter servers, for `psd_ctl
// export`, `psd_ctl replicas` and `psd_serve --job` (one code path).
#ifndef PSD_WORKER_JOB_PARAMETERS_H_
#define PSD_WORKER_JOB_PARAMETERS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"
#include "common/safetensors.h"

namespace psd {

// The job's status from the coordinator's JobService (GetJob), the call
// given `timeout`. Errors: the call's status (NOT_FOUND for an unknown job,
// PERMISSION_DENIED for a caller without a person's role, ...).
absl::StatusOr<JobStatus> GetJobStatus(JobService::Stub* jobs,
                                       const std::string& job_id,
                                       std::chrono::milliseconds timeout);

// Pulls the current parameters of a started job, named and shaped as its
// placement says ("layer0.weight" [fan_in, fan_out], ...); with replica =
// r, from the r-th replica of every shard (0 = primary, then the backups;
// a shard with fewer replicas gives its last one). Sets *step to the
// servers' step. Errors: FAILED_PRECONDITION when the job has not
// started; those of ParameterClient (UNAVAILABLE, DEADLINE_EXCEEDED when a
// pull takes over `pull_timeout`, ...).
absl::StatusOr<std::vector<NamedTensor>> PullJobParameters(
    const JobStatus& status, int replica, std::chrono::milliseconds pull_timeout,
    int64_t* step);

// The safetensors __metadata__ of an export of `status`'s job at `step`:
// job_id, step, format "pt", and the input normalisation its workers
// applied, x = (pixel/255 - mean) / std (worker/dataset.h), as
// normalization_mean and normalization_std ("%.9g": the float exactly),
// computed from the training images under `data_dir` as the workers do.
// When they cannot be computed (another data set, or the files are not
// readable here) the two keys are left out and *note (if not null) says
// why; otherwise *note is cleared.
std::map<std::string, std::string> ExportMetadata(const JobStatus& status,
                                                  int64_t step,
                                                  const std::string& data_dir,
                                                  std::string* note);

}  // namespace psd

#endif  // PSD_WORKER_JOB_PARAMETERS_H_
