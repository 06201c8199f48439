#include "server/parameter_service.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/process.h"
#include "common/status.h"

namespace psd {

grpc::Status ParameterService::Push(grpc::ServerContext*,
                                    const PushRequest* request,
                                    PushResponse* response) {
  auto result = store_->Push(*request);
  if (!result.ok()) {
    Log()->debug("push rejected: job {} rank {} step {}: {}", request->job_id(),
                 request->worker_rank(), request->step(),
                 result.status().ToString());
    return ToGrpcStatus(result.status());
  }
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status ParameterService::Pull(grpc::ServerContext* context,
                                    const PullRequest* request,
                                    PullResponse* response) {
  const absl::Time client_deadline = absl::FromChrono(context->deadline());
  const absl::Time deadline =
      std::min(client_deadline, absl::Now() + absl::Minutes(10));
  return ToGrpcStatus(store_->Pull(
      *request, deadline, [context] { return context->IsCancelled(); },
      response));
}

grpc::Status ParameterService::CreateJob(grpc::ServerContext*,
                                         const CreateJobRequest* request,
                                         CreateJobResponse* response) {
  auto result = store_->CreateJob(*request);
  if (!result.ok()) {
    Log()->warn("create job {} failed: {}", request->job_id(),
                result.status().ToString());
    return ToGrpcStatus(result.status());
  }
  Log()->info("job {}: holding {} partitions, {} bytes of state",
              request->job_id(), result->num_partitions(),
              result->state_bytes());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status ParameterService::DropJob(grpc::ServerContext*,
                                       const DropJobRequest* request,
                                       DropJobResponse*) {
  absl::Status status = store_->DropJob(request->job_id());
  if (status.ok()) Log()->info("job {}: dropped", request->job_id());
  return ToGrpcStatus(status);
}

}  // namespace psd
