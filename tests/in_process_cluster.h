// Every psd service in this process, on 127.0.0.1:0, for tests that drive
// them over real gRPC through the generated stubs (bad_job_input_test,
// bad_ps_input_test, hostile_request_test).
#ifndef PSD_TESTS_IN_PROCESS_CLUSTER_H_
#define PSD_TESTS_IN_PROCESS_CLUSTER_H_

#include <chrono>
#include <memory>
#include <string>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/rpc.h"
#include "server/coordinator/coordinator_service.h"
#include "server/coordinator/coordinator_state.h"
#include "server/embedding/embedding_service.h"
#include "server/embedding/embedding_store.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"

namespace psd {

// 30 s from now: the deadline of every call these tests make.
inline std::chrono::system_clock::time_point Deadline() {
  return DeadlineIn(std::chrono::seconds(30));
}

inline bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

inline bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// A parameter server (ParameterServer and EmbeddingServer) and a
// coordinator (Coordinator and JobService), each on its own port. The
// coordinator knows no members: its scheduler never starts a job.
class InProcessCluster {
 public:
  InProcessCluster()
      : parameter_service_(&store_),
        embedding_service_(&embeddings_),
        state_(CoordinatorOptions{}),
        membership_(&state_),
        job_control_(&state_) {
    REQUIRE(state_.Start().ok());
    auto ps = StartRpcServer(RpcServerOptions{},
                             {&parameter_service_, &embedding_service_});
    REQUIRE(ps.ok());
    ps_server_ = std::move(*ps);
    auto coord =
        StartRpcServer(RpcServerOptions{}, {&membership_, &job_control_});
    REQUIRE(coord.ok());
    coord_server_ = std::move(*coord);
    ps_address = absl::StrCat("127.0.0.1:", ps_server_.port);
    coordinator_address = absl::StrCat("127.0.0.1:", coord_server_.port);
    auto coord_channel = MakeChannel(coordinator_address);
    parameter_server = ParameterServer::NewStub(MakeChannel(ps_address));
    coordinator = Coordinator::NewStub(coord_channel);
    jobs = JobService::NewStub(coord_channel);
  }

  ~InProcessCluster() {
    ps_server_.server->Shutdown(Deadline());
    coord_server_.server->Shutdown(Deadline());
  }

  InProcessCluster(const InProcessCluster&) = delete;
  InProcessCluster& operator=(const InProcessCluster&) = delete;

  std::string ps_address;
  std::string coordinator_address;
  std::unique_ptr<ParameterServer::Stub> parameter_server;
  std::unique_ptr<Coordinator::Stub> coordinator;
  std::unique_ptr<JobService::Stub> jobs;

 private:
  ParameterStore store_;
  EmbeddingStore embeddings_;
  ParameterService parameter_service_;
  EmbeddingService embedding_service_;
  CoordinatorState state_;
  MembershipService membership_;
  JobControlService job_control_;
  RpcServer ps_server_;
  RpcServer coord_server_;
};

}  // namespace psd

#endif  // PSD_TESTS_IN_PROCESS_CLUSTER_H_
