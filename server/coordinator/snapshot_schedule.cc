// CoordinatorState, snapshots: asking a running job's servers for a
// snapshot at one step boundary, on request and by the jobs' snapshot
// policy.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"
#include "server/coordinator/server_calls.h"

namespace psd {

absl::StatusOr<int64_t> CoordinatorState::SnapshotJob(const std::string& job_id) {
  Assignment assignment;
  int64_t total_steps = 0;
  bool async = false;  // some parameter under ASP/SSP
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    if (it->second.status.state() != RUNNING) {
      return absl::FailedPreconditionError(
          absl::StrCat("job_id: job \"", job_id, "\" is ",
                       JobState_Name(it->second.status.state()), ", not RUNNING"));
    }
    assignment = it->second.assignment;
    total_steps = it->second.status.total_steps();
    async = HasAsyncParameters(it->second.status.config());
  }
  const auto timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  std::vector<std::unique_ptr<ParameterServer::Stub>> stubs;
  for (const ServerInfo& server : assignment.servers()) {
    stubs.push_back(ParameterServer::NewStub(MakeChannel(server.address())));
  }
  // The step: ahead of every partition now, with a margin for the steps
  // taken while we ask; if one got there first, try again further ahead.
  // ServerJobStatus.step counts updates, which under ASP/SSP are one per
  // push, not one per step: there the slowest rank's clock says how far the
  // job is (an ASP/SSP partition reaches snapshot step k when its slowest
  // rank's clock does, see SnapshotManifest.step).
  absl::Status last;
  for (int64_t margin : {10, 50, 200}) {
    int64_t highest = 0;
    for (auto& stub : stubs) {
      ServerStatus status;
      PSD_RETURN_IF_ERROR(FromGrpcStatus(
          CallServer(stub.get(), &ParameterServer::Stub::GetServerStatus,
                     GetServerStatusRequest(), &status, timeout)));
      for (const ServerJobStatus& job : status.jobs()) {
        if (job.job_id() != job_id) continue;
        if (!async) {
          highest = std::max(highest, job.step());
          continue;
        }
        // The slowest rank: an ASP/SSP partition captures step k when its
        // slowest rank's clock reaches k (a faster rank may be at the end).
        if (job.worker_clocks_size() > 0) {
          highest = std::max(highest, *std::min_element(
                                          job.worker_clocks().begin(),
                                          job.worker_clocks().end()));
        }
      }
    }
    const int64_t step = highest + margin;
    if (step >= total_steps) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job_id: job \"", job_id, "\" is at step ", highest, " of ",
          total_steps, ": too close to its end for a snapshot"));
    }
    last = absl::OkStatus();
    for (size_t i = 0; i < stubs.size() && last.ok(); ++i) {
      SnapshotJobRequest request;
      request.set_job_id(job_id);
      request.set_step(step);
      SnapshotJobResponse response;
      grpc::Status status =
          CallServer(stubs[i].get(), &ParameterServer::Stub::SnapshotJob,
                     request, &response, timeout);
      if (!status.ok()) {
        last = absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            absl::StrCat("server ", assignment.servers(i).id(),
                                         ": ", status.error_message()));
      }
    }
    if (last.ok()) {
      Log()->info("job {}: snapshot requested at step {}", job_id, step);
      return step;
    }
    if (last.message().find("already") == absl::string_view::npos) return last;
  }
  return last;
}

void CoordinatorState::TimedSnapshots() {
  std::vector<std::string> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto& [id, job] : jobs_) {
      const int32_t every = job.status.config().snapshot().every_seconds();
      if (job.status.state() != RUNNING || every <= 0) continue;
      if (job.last_timed_snapshot == absl::Time()) job.last_timed_snapshot = now;
      if (now - job.last_timed_snapshot < absl::Seconds(every)) continue;
      job.last_timed_snapshot = now;
      due.push_back(id);
    }
  }
  for (const std::string& id : due) {
    absl::StatusOr<int64_t> step = SnapshotJob(id);
    if (!step.ok()) {
      Log()->warn("job {}: timed snapshot not taken: {}", id,
                  step.status().ToString());
    }
  }
}

}  // namespace psd
