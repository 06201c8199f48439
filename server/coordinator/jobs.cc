// CoordinatorState, the job table: reading and waiting on jobs, ending
// (FinishJob, CancelJob) and deleting them, and the DropJob calls that free
// what their servers hold.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"
#include "server/coordinator/server_calls.h"
#include "server/coordinator/sparse_tables.h"

namespace psd {

namespace {

bool IsFinished(JobState state) {
  return state == SUCCEEDED || state == FAILED || state == CANCELLED;
}

}  // namespace

void CoordinatorState::FinishJob(Job* job, JobState state,
                                 const std::string& reason) {
  if (IsFinished(job->status.state())) return;
  job->status.set_state(state);
  job->status.set_error(reason);
  if (job->started != absl::Time()) {
    job->status.set_elapsed_seconds(
        absl::ToDoubleSeconds(absl::Now() - job->started));
  }
  job->status.set_eta_seconds(0);
  for (const std::string& id : job->worker_ids) {
    auto worker = members_.workers().find(id);
    // A cancelled worker learns it from its next heartbeat, which also
    // frees it; a finished one is free now.
    if (worker != members_.workers().end() && state == SUCCEEDED) {
      worker->second.job_id.clear();
    }
  }
  ++job->version;
  MarkDirty(*job);
  // Servers free the training state; a finished job keeps its parameters
  // for export until DeleteJob, a cancelled one keeps nothing.
  if (job->assignment.servers_size() > 0) {
    drops_.push_back(PendingDrop{job->assignment, state != CANCELLED,
                                 /*delete_snapshots=*/state == CANCELLED});
  }
  Log()->info("job {}: {}{}{}", job->status.job_id(), JobState_Name(state),
              reason.empty() ? "" : ": ", reason);
}

absl::StatusOr<JobStatus> CoordinatorState::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  }
  return it->second.status;
}

std::vector<JobStatus> CoordinatorState::ListJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<JobStatus> result;
  for (const std::string& id : job_order_) {
    JobStatus status = jobs_[id].status;
    status.clear_placement();  // keep listings small
    result.push_back(std::move(status));
  }
  return result;
}

absl::StatusOr<JobStatus> CoordinatorState::CancelJob(const std::string& job_id) {
  JobStatus result;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    FinishJob(&it->second, CANCELLED, "cancelled by the user");
    result = it->second.status;
  }
  RunDrops();  // the servers have freed the job when CancelJob returns
  return result;
}

absl::Status CoordinatorState::DeleteJob(const std::string& job_id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    if (!IsFinished(it->second.status.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job_id: job \"", job_id, "\" is ",
          JobState_Name(it->second.status.state()), "; cancel it first"));
    }
    if (it->second.assignment.servers_size() > 0) {
      drops_.push_back(PendingDrop{it->second.assignment, false,
                                   /*delete_snapshots=*/true});
    }
    ++it->second.version;
    jobs_.erase(it);
    job_order_.erase(std::find(job_order_.begin(), job_order_.end(), job_id));
    dirty_.erase(job_id);
    Log()->info("job {}: deleted", job_id);
  }
  if (options_.db != nullptr) PSD_RETURN_IF_ERROR(options_.db->Delete(job_id));
  RunDrops();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<JobStatus>> CoordinatorState::WaitForJobUpdate(
    const std::string& job_id, int64_t* version, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(job_id);
    return it == jobs_.end() || it->second.version != *version;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  }
  if (it->second.version == *version) return std::nullopt;
  *version = it->second.version;
  return it->second.status;
}

void CoordinatorState::RunDrops() {
  std::vector<PendingDrop> drops;
  {
    absl::MutexLock lock(&mu_);
    drops.swap(drops_);
  }
  for (const PendingDrop& drop : drops) {
    // A failed start attempt's tables stay when a later attempt holds the
    // job (it created the same tables on the same servers, idempotently).
    bool later_attempt = false;
    for (const ServerInfo& server : drop.assignment.servers()) {
      auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
      DropJobRequest request;
      request.set_job_id(drop.assignment.job_id());
      request.set_keep_parameters(drop.keep_parameters);
      request.set_delete_snapshots(drop.delete_snapshots);
      request.set_view_epoch(drop.view_epoch);
      DropJobResponse response;
      grpc::Status status = CallServer(
          stub.get(), &ParameterServer::Stub::DropJob, request, &response,
          std::chrono::milliseconds(options_.server_call_timeout_ms));
      if (status.error_code() == grpc::StatusCode::ABORTED) {
        // A failed start attempt's drop: a later attempt holds the job.
        Log()->info("job {}: {} kept it: {}", drop.assignment.job_id(),
                    server.id(), status.error_message());
        later_attempt = true;
      } else if (!status.ok() &&
                 status.error_code() != grpc::StatusCode::NOT_FOUND) {
        Log()->warn("job {}: DropJob on {} failed: {}",
                    drop.assignment.job_id(), server.id(),
                    status.error_message());
      }
    }
    if (!drop.keep_parameters && !later_attempt) {
      DropJobTables(drop.assignment,
                    std::chrono::milliseconds(options_.server_call_timeout_ms));
    }
  }
}

}  // namespace psd
