#include "common/health.h"

#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>

namespace psd {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

// Hands the builder's service names to the health service when the server
// is built (ServerInitializer is where gRPC exposes them; the reflection
// plugin reads them the same way).
class ServiceListPlugin final : public grpc::ServerBuilderPlugin {
 public:
  explicit ServiceListPlugin(std::function<void(const std::vector<std::string>&)> sink)
      : sink_(std::move(sink)) {}
  std::string name() override { return "psd_health_service_list"; }
  void InitServer(grpc::ServerInitializer* si) override {
    sink_(*si->GetServiceList());
  }
  void Finish(grpc::ServerInitializer*) override {}
  void ChangeArguments(const std::string&, void*) override {}

 private:
  std::function<void(const std::vector<std::string>&)> sink_;
};

class ServiceListOption final : public grpc::ServerBuilderOption {
 public:
  explicit ServiceListOption(std::function<void(const std::vector<std::string>&)> sink)
      : sink_(std::move(sink)) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(
      std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ServiceListPlugin>(sink_));
  }

 private:
  std::function<void(const std::vector<std::string>&)> sink_;
};

}  // namespace

// One Watch call: writes the status it is given, one write at a time, and
// ends at Shutdown() or when the client goes.
class HealthService::Watcher final
    : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* health, ServingStatus status) : health_(health) {
    Send(status, /*last=*/false);
  }

  // Queues `status`; ends the call after it when `last`.
  void Send(ServingStatus status, bool last) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    pending_status_ = status;
    pending_last_ = last;
    if (!writing_) StartWriteLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) return FinishLocked(grpc::Status::CANCELLED);
    if (written_last_) return FinishLocked(grpc::Status::OK);
    if (pending_status_.has_value()) StartWriteLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    health_->Forget(this);
    delete this;
  }

 private:
  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.set_status(*pending_status_);
    written_last_ = pending_last_;
    pending_status_.reset();
    writing_ = true;
    StartWrite(&response_);
  }
  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  HealthService* const health_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_status_ ABSL_GUARDED_BY(mu_);
  bool pending_last_ ABSL_GUARDED_BY(mu_) = false;
  bool written_last_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::~HealthService() { Shutdown(); }

std::unique_ptr<grpc::ServerBuilderOption> HealthService::ServiceListOption() {
  return std::make_unique<psd::ServiceListOption>(
      [this](const std::vector<std::string>& names) { SetServices(names); });
}

void HealthService::SetServices(const std::vector<std::string>& names) {
  absl::MutexLock lock(&mu_);
  services_.insert(names.begin(), names.end());
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (Watcher* watcher : watchers_) {
    watcher->Send(HealthCheckResponse::NOT_SERVING, /*last=*/true);
  }
}

void HealthService::Forget(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

HealthService::ServingStatus HealthService::StatusOf(
    const std::string& service) const {
  if (!service.empty() && services_.count(service) == 0) {
    return HealthCheckResponse::SERVICE_UNKNOWN;
  }
  return shut_down_ ? HealthCheckResponse::NOT_SERVING
                    : HealthCheckResponse::SERVING;
}

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request,
    HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  const ServingStatus status = StatusOf(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "service: not served here"));
  } else {
    response->set_status(status);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext*, const HealthCheckRequest* request) {
  absl::MutexLock lock(&mu_);
  auto* watcher = new Watcher(this, StatusOf(request->service()));
  if (shut_down_) {
    watcher->Send(HealthCheckResponse::NOT_SERVING, /*last=*/true);
  } else {
    watchers_.insert(watcher);
  }
  return watcher;
}

}  // namespace psd
