// The data path between a worker and a parameter server on one host:
// shared memory (common/shared_memory.h; AttachSharedMemory in
// proto/parameter_server.proto) and pushes that pull the next step
// (PushRequest.pull_next). The worker's ParameterClient
// (worker/ps_client.h) against real ParameterServices in this process on
// 127.0.0.1:0, one with shared memory on and one with it off. The same
// pushes give bitwise the same parameters either way; bytes go through
// shared memory only where the server maps the region; a request naming a
// region that is not the worker's, or a slice outside it, gets a status
// naming the field, and the server keeps serving.
#include <cmath>
#include <cstdint>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/job_config.h"
#include "common/metrics.h"
#include "common/placement.h"
#include "common/rpc.h"
#include "common/shared_memory.h"
#include "common/tensor.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"
#include "tests/bad_input_lib.h"
#include "worker/ps_client.h"

namespace psd {
namespace {

constexpr char kServerId[] = "server-a";

// A parameter server in this process: a store and its service on
// 127.0.0.1:0, with shared memory on or off.
struct Server {
  explicit Server(bool shared_memory)
      : service(&store, &registry, nullptr,
                SharedRegions::Options{shared_memory}) {
    auto rpc = StartRpcServer(RpcServerOptions{}, {&service});
    REQUIRE(rpc.ok());
    server = std::move(*rpc);
    address = absl::StrCat("127.0.0.1:", server.port);
    stub = ParameterServer::NewStub(MakeChannel(address));
  }
  ~Server() { server.server->Shutdown(DeadlineIn(std::chrono::seconds(5))); }

  // psd_server_shared_memory_bytes_total.
  double SharedBytes() const {
    std::smatch m;
    const std::string text = registry.RenderPrometheusText();
    REQUIRE(std::regex_search(
        text, m, std::regex("psd_server_shared_memory_bytes_total ([0-9.e+]+)")));
    return std::stod(m[1]);
  }

  ParameterStore store;
  MetricsRegistry registry;
  ParameterService service;
  RpcServer server;
  std::string address;
  std::unique_ptr<ParameterServer::Stub> stub;
};

// bad_input_lib's job, one worker, on one shard held by `server`.
Assignment CreateJob(Server& server, int workers = 1) {
  JobConfig config = ValidConfig();
  config.set_workers(workers);
  auto placement = BuildPlacement(ModelParameters(config.model()),
                                  config.partition_bytes(), 1);
  REQUIRE(placement.ok());
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = config;
  *create.mutable_placement() = *placement;
  create.add_shards(0);
  create.set_view_epoch(kEpoch);
  CreateJobResponse created;
  grpc::ClientContext context;
  REQUIRE(server.stub->CreateJob(&context, create, &created).ok());

  Assignment assignment;
  assignment.set_job_id(kJob);
  assignment.set_rank(0);
  *assignment.mutable_config() = config;
  *assignment.mutable_placement() = *placement;
  ShardReplicas* shard = assignment.add_shards();
  shard->set_shard(0);
  shard->set_primary(kServerId);
  ServerInfo* info = assignment.add_servers();
  info->set_id(kServerId);
  info->set_address(server.address);
  assignment.set_view_epoch(kEpoch);
  return assignment;
}

// Pushes 3 steps of distinct gradients and returns the parameters after
// them.
std::vector<std::vector<float>> Train(ParameterClient& client) {
  std::vector<std::vector<float>> params;
  for (int64_t step = 0; step < 3; ++step) {
    const absl::Status pulled = client.Pull(step, false, &params);
    INFO(pulled.ToString());
    REQUIRE(pulled.ok());
    std::vector<std::vector<float>> grads(params.size());
    for (size_t t = 0; t < params.size(); ++t) {
      grads[t].resize(params[t].size());
      for (size_t k = 0; k < grads[t].size(); ++k) {
        grads[t][k] = 0.01f * std::sin(0.7f * k + t + 3.0f * step) +
                      0.001f * params[t][k];
      }
    }
    const absl::Status pushed = client.Push(step, grads);
    INFO(pushed.ToString());
    REQUIRE(pushed.ok());
  }
  REQUIRE(client.Pull(3, false, &params).ok());
  return params;
}

TEST_CASE("Shared memory: the same parameters as gRPC messages, and only "
          "where the server maps the region", "[shared_memory]") {
  Server on(/*shared_memory=*/true), off(/*shared_memory=*/false);
  ParameterClientOptions options;
  options.shared_memory = true;
  auto via_on = ParameterClient::Create(CreateJob(on), options);
  auto via_off = ParameterClient::Create(CreateJob(off), options);
  REQUIRE(via_on.ok());
  REQUIRE(via_off.ok());
  const auto shared = Train(**via_on);
  const auto messages = Train(**via_off);
  CHECK(shared == messages);  // bitwise
  // 3 pushes and 4 pulls of the whole model went through shared memory.
  int64_t model_bytes = 0;
  for (int64_t n : (*via_on)->parameter_sizes()) model_bytes += 4 * n;
  CHECK(on.SharedBytes() == 7.0 * model_bytes);
  CHECK(off.SharedBytes() == 0.0);

  // A client with shared memory off sends messages to a server with it on.
  Server on2(true);
  options.shared_memory = false;
  auto plain = ParameterClient::Create(CreateJob(on2), options);
  REQUIRE(plain.ok());
  CHECK(Train(**plain) == messages);
  CHECK(on2.SharedBytes() == 0.0);
}

TEST_CASE("Shared memory: requests naming a region or slice that is not the "
          "worker's are refused, and the server keeps serving",
          "[shared_memory]") {
  Server server(true);
  const Assignment assignment = CreateJob(server, /*workers=*/2);
  auto region = SharedMemory::Create(SharedMemory::kHeaderBytes + (1 << 20));
  REQUIRE(region.ok());
  const Partition& part = assignment.placement().partitions(0);
  const uint64_t bytes = part.num_elements() * 4;

  auto attach = [&](const SharedRegion& r) {
    AttachSharedMemoryRequest request;
    request.set_job_id(kJob);
    *request.mutable_region() = r;
    AttachSharedMemoryResponse response;
    grpc::ClientContext context;
    return server.stub->AttachSharedMemory(&context, request, &response);
  };
  CHECK(attach((*region)->region()).ok());
  CHECK(attach((*region)->region()).ok());  // again: fine
  SharedRegion wrong = (*region)->region();
  wrong.set_nonce(std::string(16, 'n'));
  grpc::Status s = attach(wrong);
  CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(s.error_message().find("shared_region") != std::string::npos);
  wrong = (*region)->region();
  wrong.set_name("/etc/passwd");
  s = attach(wrong);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.error_message().find("shared_region.name") != std::string::npos);

  auto push = [&](uint64_t offset, uint64_t size) {
    PushRequest request;
    request.set_job_id(kJob);
    request.set_worker_rank(0);
    request.set_step(0);
    request.set_view_epoch(kEpoch);
    *request.mutable_shared_region() = (*region)->region();
    PartitionTensor* g = request.add_gradients();
    g->set_partition_id(part.id());
    g->mutable_tensor()->set_dtype(FLOAT32);
    g->mutable_tensor()->add_shape(part.num_elements());
    g->mutable_shared()->set_offset(offset);
    g->mutable_shared()->set_size(size);
    PushResponse response;
    grpc::ClientContext context;
    return server.stub->Push(&context, request, &response);
  };
  // Outside the region, over its header, past its end.
  for (uint64_t offset : {uint64_t{0}, (*region)->size() - 8, ~uint64_t{0} - 3}) {
    s = push(offset, bytes);
    INFO(offset);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().find("gradients[0]") != std::string::npos);
    CHECK(s.error_message().find(".shared") != std::string::npos);
  }
  // NaN in the region is refused like NaN in a message.
  float* data = reinterpret_cast<float*>((*region)->data() + 64);
  for (int64_t k = 0; k < part.num_elements(); ++k) data[k] = 0.5f;
  data[3] = std::nanf("");
  s = push(64, bytes);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.error_message().find("element 3") != std::string::npos);

  // A pull whose slices do not match its partitions.
  PullRequest pull;
  pull.set_job_id(kJob);
  pull.set_worker_rank(0);
  pull.set_view_epoch(kEpoch);
  pull.set_latest(true);
  pull.add_partition_ids(part.id());
  *pull.mutable_shared_region() = (*region)->region();
  {
    PullResponse response;
    grpc::ClientContext context;
    s = server.stub->Pull(&context, pull, &response);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().find("shared") != std::string::npos);
  }
  SharedSlice* slice = pull.add_shared();
  slice->set_offset(64);
  slice->set_size(bytes + 4);  // not the partition's size
  {
    PullResponse response;
    grpc::ClientContext context;
    s = server.stub->Pull(&context, pull, &response);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().find("shared[0]") != std::string::npos);
  }
  // Still serving: the right slice gets the initial parameters there.
  slice->set_size(bytes);
  for (int64_t k = 0; k < part.num_elements(); ++k) data[k] = -7.0f;
  PullResponse response;
  grpc::ClientContext context;
  REQUIRE(server.stub->Pull(&context, pull, &response).ok());
  REQUIRE(response.parameters_size() == 1);
  CHECK(response.parameters(0).has_shared());
  CHECK(response.parameters(0).tensor().data().empty());
  const std::vector<float> initial =
      InitialValues(assignment.placement().parameters(part.parameter()),
                    part.parameter(), assignment.config().model().init_seed());
  CHECK(std::vector<float>(data, data + part.num_elements()) ==
        std::vector<float>(initial.begin() + part.offset(),
                           initial.begin() + part.offset() + part.num_elements()));
}

TEST_CASE("Push with pull_next: one call brings the next step's parameters; "
          "a push whose pull part fails is still taken", "[pull_next]") {
  Server server(/*shared_memory=*/true);
  const Assignment assignment = CreateJob(server, /*workers=*/2);
  ParameterClientOptions options;
  options.pull_with_push = true;
  auto client = ParameterClient::Create(assignment, options);  // rank 0
  REQUIRE(client.ok());
  std::vector<std::vector<float>> params;
  REQUIRE((*client)->Pull(0, false, &params).ok());

  // Rank 1 pushes step 0 first (no pull), so rank 0's push completes the
  // step and its answer carries step 1.
  auto raw_push = [&](int rank, int64_t step, bool pull_next) {
    PushRequest request;
    request.set_job_id(kJob);
    request.set_worker_rank(rank);
    request.set_step(step);
    request.set_view_epoch(kEpoch);
    request.set_pull_next(pull_next);
    for (const Partition& part : assignment.placement().partitions()) {
      std::vector<float> g(part.num_elements(), 0.25f * (rank + 1));
      PartitionTensor* out = request.add_gradients();
      out->set_partition_id(part.id());
      EncodeFloat32(g.data(), part.num_elements(), out->mutable_tensor());
    }
    return request;
  };
  {
    PushResponse response;
    grpc::ClientContext context;
    REQUIRE(server.stub->Push(&context, raw_push(1, 0, false), &response).ok());
    CHECK_FALSE(response.has_pulled());
  }
  std::vector<std::vector<float>> grads(params.size());
  for (size_t t = 0; t < params.size(); ++t) grads[t].assign(params[t].size(), 0.5f);
  REQUIRE((*client)->Push(0, grads).ok());
  std::vector<std::vector<float>> next, latest;
  int64_t step = -1;
  REQUIRE((*client)->Pull(1, false, &next, &step).ok());  // from the push
  CHECK(step == 1);
  REQUIRE((*client)->Pull(0, /*latest=*/true, &latest, &step).ok());  // a call
  CHECK(step == 1);
  CHECK(next == latest);
  CHECK(next != params);

  // A raw push with pull_next whose pull part is malformed (no slices for
  // its partitions): INVALID_ARGUMENT naming `shared`, but the push was
  // taken: the same push again is a duplicate.
  PushRequest bad = raw_push(1, 1, true);
  auto region = SharedMemory::Create(SharedMemory::kHeaderBytes + 64);
  REQUIRE(region.ok());
  *bad.mutable_shared_region() = (*region)->region();
  {
    PushResponse response;
    grpc::ClientContext context;
    const grpc::Status s = server.stub->Push(&context, bad, &response);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().find("shared") != std::string::npos);
  }
  {
    PushResponse response;
    grpc::ClientContext context;
    REQUIRE(server.stub->Push(&context, raw_push(1, 1, false), &response).ok());
    CHECK(response.duplicate());
  }
  // Rank 0 completes step 1; a retried push of rank 1 with pull_next is a
  // duplicate that still answers with the parameters after 2 steps.
  REQUIRE((*client)->Push(1, grads).ok());
  PushResponse retried;
  grpc::ClientContext context;
  REQUIRE(server.stub->Push(&context, raw_push(1, 1, true), &retried).ok());
  CHECK(retried.duplicate());
  REQUIRE(retried.has_pulled());
  CHECK(retried.pulled().step() == 2);
  CHECK(retried.pulled().parameters_size() ==
        assignment.placement().partitions_size());
  REQUIRE((*client)->Pull(2, false, &next, &step).ok());
  REQUIRE((*client)->Pull(0, /*latest=*/true, &latest).ok());
  CHECK(next == latest);
}

}  // namespace
}  // namespace psd
