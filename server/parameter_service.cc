#include "server/parameter_service.h"

#include "common/process.h"
#include "common/status.h"

namespace psd {

grpc::ServerUnaryReactor* ParameterService::Push(
    grpc::CallbackServerContext* context, const PushRequest* request,
    PushResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto result = store_->Push(*request);
  if (!result.ok()) {
    Log()->debug("push rejected: job {} rank {} step {}: {}", request->job_id(),
                 request->worker_rank(), request->step(),
                 result.status().ToString());
    reactor->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  *response = *std::move(result);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

namespace {

// One pull: finishes when the store answers it; a client that cancels (or
// whose deadline passes) withdraws it from the store.
class PullReactor final : public grpc::ServerUnaryReactor {
 public:
  PullReactor(ParameterStore* store, const PullRequest* request,
              PullResponse* response)
      : store_(store), job_id_(request->job_id()), id_(store->NewPullId()) {
    store_->PullAsync(id_, *request, response, [this](absl::Status status) {
      Finish(ToGrpcStatus(status));
    });
  }

  void OnCancel() override {
    store_->CancelPull(job_id_, id_,
                       absl::CancelledError("pull cancelled by the client"));
  }

  void OnDone() override { delete this; }

 private:
  ParameterStore* const store_;
  const std::string job_id_;
  const uint64_t id_;
};

}  // namespace

grpc::ServerUnaryReactor* ParameterService::Pull(
    grpc::CallbackServerContext*, const PullRequest* request,
    PullResponse* response) {
  return new PullReactor(store_, request, response);
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
  absl::Status status =
      store_->DropJob(request->job_id(), request->keep_parameters());
  if (status.ok()) {
    Log()->info("job {}: {}", request->job_id(),
                request->keep_parameters()
                    ? "finished; training state freed, parameters kept"
                    : "dropped");
  }
  return ToGrpcStatus(status);
}

grpc::Status ParameterService::GetServerStatus(grpc::ServerContext*,
                                               const GetServerStatusRequest*,
                                               ServerStatus* response) {
  *response = store_->Status();
  return grpc::Status::OK;
}

}  // namespace psd
