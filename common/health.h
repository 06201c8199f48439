// grpc.health.v1.Health, built from Debian grpc-proto's health.proto, so that
// server reflection can describe it: `grpcurl -plaintext ADDR
// grpc.health.v1.Health/Check` works with no .proto files (gRPC's built-in
// default health service has no descriptor).
#ifndef PSD_COMMON_HEALTH_H_
#define PSD_COMMON_HEALTH_H_

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace psd {

// Serves the health of one gRPC server: SERVING for "" (the whole server)
// and for every service registered with it, until Shutdown(); NOT_SERVING
// after. Check of an unknown service is NOT_FOUND; Watch of one sends
// SERVICE_UNKNOWN and stays open, as health.proto says. Watch sends the
// current status, then NOT_SERVING at Shutdown() and ends.
// Thread-safe. Register it with the server (it must outlive the server), and
// pass ServiceListOption() to the builder so that it learns the names.
class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  HealthService() = default;
  ~HealthService() override;

  // A builder option that tells this service the names of the services the
  // server was built with. REQUIRES: used with one builder only.
  std::unique_ptr<grpc::ServerBuilderOption> ServiceListOption();

  // Every service NOT_SERVING from now on; open watches get it and end.
  // Call before grpc::Server::Shutdown, so a draining server says so.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request,
      grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  class Watcher;  // the reactor of one Watch call (health.cc)

 private:
  // The status of `service`. REQUIRES: mu_ held.
  ServingStatus StatusOf(const std::string& service) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetServices(const std::vector<std::string>& names);
  void Forget(Watcher* watcher);

  absl::Mutex mu_;
  std::set<std::string> services_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_COMMON_HEALTH_H_
