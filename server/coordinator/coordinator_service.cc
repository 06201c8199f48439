#include "server/coordinator/coordinator_service.h"

#include "absl/strings/str_cat.h"
#include "common/authorization.h"
#include "common/job_config.h"
#include "common/status.h"

namespace psd {

namespace {

// Copies an OK result into *out; returns the status as gRPC's.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* out) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *out = *std::move(result);
  return grpc::Status::OK;
}

// Finishes a callback call at once with `status`.
grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context,
                                 const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// Runs `call` when `job_id` passes CheckJobId; otherwise answers
// INVALID_ARGUMENT, so that no unbounded id reaches the state or its logs.
template <typename Call>
grpc::Status WithJobId(const std::string& job_id, Call call) {
  absl::Status valid = CheckJobId("job_id", job_id);
  if (!valid.ok()) return ToGrpcStatus(valid);
  return call();
}

// WithJobId, for an action only the job's submitter or an admin may take
// (AuthorizeJobAction): PERMISSION_DENIED for anyone else, NOT_FOUND for
// an unknown job.
template <typename Call>
grpc::Status AsJobOwner(CoordinatorState* state, grpc::ServerContext* context,
                        const std::string& job_id, absl::string_view action,
                        Call call) {
  return WithJobId(job_id, [&] {
    absl::StatusOr<JobStatus> job = state->GetJob(job_id);
    if (!job.ok()) return ToGrpcStatus(job.status());
    absl::Status allowed = AuthorizeJobAction(
        CallerOf(*context), job->submitted_by(), action, job_id);
    if (!allowed.ok()) return ToGrpcStatus(allowed);
    return call();
  });
}

}  // namespace

grpc::ServerUnaryReactor* MembershipService::RegisterServer(
    grpc::CallbackServerContext* context, const RegisterRequest* request,
    RegisterResponse* response) {
  // The identity its certificate proved (mutual TLS), not one it claims.
  return Finish(context, Reply(state_->RegisterServer(
                                   *request, CallerIdentity(*context)),
                               response));
}

grpc::ServerUnaryReactor* MembershipService::RegisterWorker(
    grpc::CallbackServerContext* context, const RegisterRequest* request,
    RegisterResponse* response) {
  return Finish(context, WithJobId(request->job_id(), [&] {
                  return Reply(state_->RegisterWorker(*request), response);
                }));
}

grpc::ServerUnaryReactor* MembershipService::Heartbeat(
    grpc::CallbackServerContext* context, const HeartbeatRequest* request,
    HeartbeatResponse* response) {
  return Finish(context, Reply(state_->Heartbeat(*request), response));
}

grpc::ServerUnaryReactor* MembershipService::ReportProgress(
    grpc::CallbackServerContext* context, const ReportProgressRequest* request,
    ReportProgressResponse* response) {
  return Finish(context, WithJobId(request->job_id(), [&] {
                  return Reply(state_->ReportProgress(*request), response);
                }));
}

grpc::ServerUnaryReactor* MembershipService::GetClusterView(
    grpc::CallbackServerContext* context, const GetClusterViewRequest*,
    ClusterView* response) {
  *response = state_->GetClusterView();
  return Finish(context, grpc::Status::OK);
}

grpc::Status JobControlService::SubmitJob(grpc::ServerContext* context,
                                          const JobConfig* config,
                                          SubmitJobResponse* response) {
  std::optional<SpiffeId> caller = CallerOf(*context);
  auto id = state_->SubmitJob(
      *config, caller.has_value() ? PrincipalName(*caller) : std::string());
  if (!id.ok()) return ToGrpcStatus(id.status());
  response->set_job_id(*id);
  return grpc::Status::OK;
}

grpc::Status JobControlService::GetJob(grpc::ServerContext*,
                                       const GetJobRequest* request,
                                       JobStatus* response) {
  return WithJobId(request->job_id(), [&] {
    return Reply(state_->GetJob(request->job_id()), response);
  });
}

grpc::Status JobControlService::ListJobs(grpc::ServerContext*,
                                         const ListJobsRequest*,
                                         ListJobsResponse* response) {
  for (JobStatus& job : state_->ListJobs()) {
    *response->add_jobs() = std::move(job);
  }
  return grpc::Status::OK;
}

grpc::Status JobControlService::CancelJob(grpc::ServerContext* context,
                                          const CancelJobRequest* request,
                                          JobStatus* response) {
  return AsJobOwner(state_, context, request->job_id(), "cancel", [&] {
    return Reply(state_->CancelJob(request->job_id()), response);
  });
}

grpc::Status JobControlService::WatchJob(grpc::ServerContext* context,
                                         const GetJobRequest* request,
                                         grpc::ServerWriter<JobStatus>* writer) {
  if (absl::Status valid = CheckJobId("job_id", request->job_id());
      !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  if (watches_.fetch_add(1) >= kMaxWatches) {
    watches_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("more than ", kMaxWatches,
                                     " watches open; use GetJob to poll"));
  }
  struct Release {
    std::atomic<int>* count;
    ~Release() { count->fetch_sub(1); }
  } release{&watches_};
  int64_t version = -1;
  while (!context->IsCancelled()) {
    auto update =
        state_->WaitForJobUpdate(request->job_id(), &version, absl::Seconds(1));
    if (!update.ok()) return ToGrpcStatus(update.status());
    if (!update->has_value()) continue;
    JobStatus& status = **update;
    status.clear_placement();  // large and constant: GetJob has it
    if (!writer->Write(status)) return grpc::Status::CANCELLED;
    const JobState state = status.state();
    if (state == SUCCEEDED || state == FAILED || state == CANCELLED) {
      return grpc::Status::OK;
    }
  }
  return grpc::Status::CANCELLED;
}

grpc::Status JobControlService::DeleteJob(grpc::ServerContext* context,
                                          const DeleteJobRequest* request,
                                          DeleteJobResponse*) {
  return AsJobOwner(state_, context, request->job_id(), "delete", [&] {
    return ToGrpcStatus(state_->DeleteJob(request->job_id()));
  });
}

grpc::Status JobControlService::SnapshotJob(grpc::ServerContext* context,
                                            const SnapshotJobRequest* request,
                                            SnapshotJobResponse* response) {
  return AsJobOwner(state_, context, request->job_id(), "snapshot", [&] {
    auto step = state_->SnapshotJob(request->job_id());
    if (!step.ok()) return ToGrpcStatus(step.status());
    response->set_step(*step);
    return grpc::Status::OK;
  });
}

grpc::Status JobControlService::ReshardJob(grpc::ServerContext* context,
                                           const ReshardJobRequest* request,
                                           ReshardJobResponse* response) {
  return AsJobOwner(state_, context, request->job_id(), "reshard", [&] {
    return Reply(state_->ReshardJob(*request), response);
  });
}

}  // namespace psd
