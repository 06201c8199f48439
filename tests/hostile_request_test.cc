// Requests that once crashed or bloated a parameter server (issue 23, items
// 1, 7 and 8), over real gRPC: a parameter server, an embedding server and
// a coordinator in this process on 127.0.0.1:0 (tests/in_process_cluster.h). Each gets a clear status,
// the process keeps serving, and what a request may make the server
// allocate is bounded before it is allocated.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/rpc.h"
#include "tests/in_process_cluster.h"
#include "tests/resident_memory.h"

namespace psd {
namespace {

constexpr char kJob[] = "hostile-1";
constexpr int64_t kEpoch = 2;

// Sends `bytes` as the request of `method` ("/pkg.Service/Method").
grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& bytes) {
  grpc::GenericStub stub(MakeChannel(address));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
  absl::Notification done;
  grpc::Status result;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) {
                   result = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();
  return result;
}

TEST_CASE("Every unary method answers request bytes that do not parse with "
          "INVALID_ARGUMENT, and the servers keep serving",
          "[hostile][parse]") {
  InProcessCluster servers;
  // Field 1, length 5, but only 2 bytes follow: no message parses from it.
  const std::string garbage("\x0a\x05" "ab", 4);
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  int called = 0;
  for (const auto& [service, address] :
       std::vector<std::pair<std::string, std::string>>{
           {"psd.v1.ParameterServer", servers.ps_address},
           {"psd.v1.EmbeddingServer", servers.ps_address},
           {"psd.v1.Coordinator", servers.coordinator_address},
           {"psd.v1.JobService", servers.coordinator_address}}) {
    const google::protobuf::ServiceDescriptor* descriptor =
        pool->FindServiceByName(service);
    REQUIRE(descriptor != nullptr);
    for (int m = 0; m < descriptor->method_count(); ++m) {
      const google::protobuf::MethodDescriptor* method = descriptor->method(m);
      if (method->client_streaming() || method->server_streaming()) continue;
      const std::string name = absl::StrCat("/", service, "/", method->name());
      INFO(name);
      grpc::Status status = RawCall(address, name, garbage);
      CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
      CHECK(StartsWith(status.error_message(), "could not parse request"));
      ++called;
    }
  }
  CHECK(called > 20);
  // Both still answer.
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  ServerStatus status;
  CHECK(servers.parameter_server
            ->GetServerStatus(&context, GetServerStatusRequest(), &status)
            .ok());
}

// The quick-start MLP, small: 784-8-10 in 4 KiB partitions on one shard.
CreateJobRequest SmallJob() {
  JobConfig config;
  config.set_name("hostile");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(3);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.05f);
  config.set_consistency(BSP);
  config.set_batch_size(16);
  config.set_epochs(1);
  config.set_workers(2);
  config.set_seed(11);
  config.set_partition_bytes(4096);
  auto placement =
      BuildPlacement(ModelParameters(config.model()), 4096, /*num_shards=*/1);
  REQUIRE(placement.ok());
  CreateJobRequest request;
  request.set_job_id(kJob);
  *request.mutable_config() = config;
  *request.mutable_placement() = *placement;
  request.add_shards(0);
  request.set_view_epoch(kEpoch);
  return request;
}

grpc::Status Pull(InProcessCluster& servers, const PullRequest& request,
                  PullResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(5)));
  return servers.parameter_server->Pull(&context, request, response);
}

TEST_CASE("Pull of step -1 on a job that applied no step is refused; the "
          "server does not crash",
          "[hostile][pull]") {
  InProcessCluster servers;
  CreateJobRequest create = SmallJob();
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    CreateJobResponse created;
    REQUIRE(servers.parameter_server->CreateJob(&context, create, &created).ok());
  }
  PullRequest pull;
  pull.set_job_id(kJob);
  pull.set_view_epoch(kEpoch);
  pull.set_step(-1);
  pull.add_partition_ids(0);
  for (int i = 0; i < 3; ++i) {
    PullResponse response;
    grpc::Status status = Pull(servers, pull, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(StartsWith(status.error_message(), "step: must be >= 0, got -1"));
  }
  // The finished job that keeps its parameters (DropJob keep_parameters).
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    DropJobRequest drop;
    drop.set_job_id(kJob);
    drop.set_keep_parameters(true);
    DropJobResponse dropped;
    REQUIRE(servers.parameter_server->DropJob(&context, drop, &dropped).ok());
  }
  PullResponse response;
  CHECK(Pull(servers, pull, &response).error_code() ==
        grpc::StatusCode::INVALID_ARGUMENT);
  pull.set_latest(true);
  REQUIRE(Pull(servers, pull, &response).ok());
  CHECK(response.parameters_size() == 1);
}

TEST_CASE("A small Pull naming one partition thousands of times is refused "
          "before its answer is built",
          "[hostile][pull][memory]") {
  InProcessCluster servers;
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    CreateJobResponse created;
    REQUIRE(servers.parameter_server->CreateJob(&context, SmallJob(), &created)
                .ok());
  }
  // 23,405 times the 4 KiB partition 0: a 23 KB request, a 96 MB answer.
  PullRequest pull;
  pull.set_job_id(kJob);
  pull.set_view_epoch(kEpoch);
  pull.set_latest(true);
  for (int i = 0; i < 23405; ++i) pull.add_partition_ids(0);
  const int64_t before = ResidentBytes();
  REQUIRE(before > 0);
  for (int i = 0; i < 5; ++i) {
    PullResponse response;
    grpc::Status status = Pull(servers, pull, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(StartsWith(status.error_message(),
                     "partition_ids[1]: partition 0 appears twice"));
  }
  // Before the fix each call built a ~96 MB answer; now none is built.
  CHECK(ResidentBytes() - before < (32 << 20));
}

TEST_CASE("CreateJob of a 2^40-element tensor is RESOURCE_EXHAUSTED naming "
          "the shape, never UNKNOWN",
          "[hostile][create]") {
  InProcessCluster servers;
  CreateJobRequest create = SmallJob();
  create.mutable_placement()->mutable_parameters(0)->set_shape(0, 1 << 20);
  create.mutable_placement()->mutable_parameters(0)->set_shape(1, 1 << 20);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  CreateJobResponse created;
  grpc::Status status =
      servers.parameter_server->CreateJob(&context, create, &created);
  CHECK(status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(StartsWith(status.error_message(), "placement.parameters[0].shape"));
}

TEST_CASE("A 1 MB job id is never echoed whole: statuses stay short, "
          "CreateJob refuses it naming the field",
          "[hostile][echo]") {
  InProcessCluster servers;
  const std::string huge(1 << 20, 'j');
  {
    PullRequest pull;
    pull.set_job_id(huge + "\nforged log line");
    pull.add_partition_ids(0);
    PullResponse response;
    grpc::Status status = Pull(servers, pull, &response);
    CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(status.error_message().size() < 200);
    CHECK(status.error_message().find('\n') == std::string::npos);
  }
  CreateJobRequest create = SmallJob();
  create.set_job_id(huge);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  CreateJobResponse created;
  grpc::Status status =
      servers.parameter_server->CreateJob(&context, create, &created);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(), "job_id:"));
  CHECK(status.error_message().size() < 300);
}

}  // namespace
}  // namespace psd
