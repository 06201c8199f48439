// Bad input over real gRPC: a parameter server and a coordinator in this
// process on 127.0.0.1:0, driven through the generated stubs. Every bad
// request gets the documented status code and a message naming the problem,
// and the servers keep serving with their state unchanged.
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/rpc.h"
#include "common/tensor.h"
#include "server/coordinator/coordinator_service.h"
#include "server/coordinator/coordinator_state.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"
#include "tests/resident_memory.h"

namespace psd {
namespace {

constexpr char kJob[] = "bad-input-1";
constexpr int64_t kEpoch = 5;
constexpr int kWorkers = 2;

// The quick-start job, made smaller: MLP 784-8-10, partitions of 4 KiB.
JobConfig ValidConfig() {
  JobConfig config;
  config.set_name("bad-input");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->add_hidden_sizes(4);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(3);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.05f);
  config.mutable_optimizer()->set_momentum(0.9f);
  config.mutable_optimizer()->set_weight_decay(0.0005f);
  config.set_consistency(BSP);
  config.set_batch_size(16);
  config.set_epochs(1);
  config.set_workers(kWorkers);
  config.set_seed(11);
  config.set_partition_bytes(4096);
  return config;
}

std::chrono::system_clock::time_point Deadline() {
  return DeadlineIn(std::chrono::seconds(30));
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}
bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// A parameter server and a coordinator, each on its own port.
class Cluster {
 public:
  Cluster()
      : parameter_service_(&store_),
        state_(CoordinatorOptions{}),
        membership_(&state_),
        job_control_(&state_) {
    REQUIRE(state_.Start().ok());
    auto ps = StartRpcServer(RpcServerOptions{}, {&parameter_service_});
    REQUIRE(ps.ok());
    ps_server_ = std::move(*ps);
    auto coord = StartRpcServer(RpcServerOptions{}, {&membership_, &job_control_});
    REQUIRE(coord.ok());
    coord_server_ = std::move(*coord);
    auto ps_channel =
        MakeChannel(absl::StrCat("127.0.0.1:", ps_server_.port));
    auto coord_channel =
        MakeChannel(absl::StrCat("127.0.0.1:", coord_server_.port));
    parameter_server = ParameterServer::NewStub(ps_channel);
    coordinator = Coordinator::NewStub(coord_channel);
    jobs = JobService::NewStub(coord_channel);
  }

  ~Cluster() {
    ps_server_.server->Shutdown(Deadline());
    coord_server_.server->Shutdown(Deadline());
  }

  std::unique_ptr<ParameterServer::Stub> parameter_server;
  std::unique_ptr<Coordinator::Stub> coordinator;
  std::unique_ptr<JobService::Stub> jobs;

 private:
  ParameterStore store_;
  ParameterService parameter_service_;
  CoordinatorState state_;
  MembershipService membership_;
  JobControlService job_control_;
  RpcServer ps_server_;
  RpcServer coord_server_;
};

grpc::Status Submit(Cluster& cluster, const JobConfig& config,
                    SubmitJobResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  return cluster.jobs->SubmitJob(&context, config, response);
}

TEST_CASE("JobService: a bad config is refused with INVALID_ARGUMENT naming "
          "the field",
          "[bad_input][coordinator]") {
  Cluster cluster;
  struct Case {
    const char* prefix;
    void (*spoil)(JobConfig*);
  };
  const Case cases[] = {
      {"batch_size:", [](JobConfig* c) { c->clear_batch_size(); }},
      {"batch_size:", [](JobConfig* c) { c->set_batch_size(-1); }},
      // Larger than the training set over the workers.
      {"batch_size:", [](JobConfig* c) { c->set_batch_size(40000); }},
      {"model.hidden_sizes[1]:",
       [](JobConfig* c) { c->mutable_model()->set_hidden_sizes(1, 0); }},
      {"model.hidden_sizes[0]:",
       [](JobConfig* c) { c->mutable_model()->set_hidden_sizes(0, 1 << 20); }},
      {"model.input_dim:",
       [](JobConfig* c) { c->mutable_model()->set_input_dim(100); }},
      {"model.num_classes:",
       [](JobConfig* c) { c->mutable_model()->set_num_classes(1); }},
      {"name:", [](JobConfig* c) { c->clear_name(); }},
      {"name:", [](JobConfig* c) { c->set_name("has space"); }},
      {"dataset.name:",
       [](JobConfig* c) { c->mutable_dataset()->set_name("mnist"); }},
      {"dataset.train_limit:",
       [](JobConfig* c) { c->mutable_dataset()->set_train_limit(-5); }},
      {"optimizer.learning_rate:",
       [](JobConfig* c) { c->mutable_optimizer()->set_learning_rate(0); }},
      {"optimizer.learning_rate:",
       [](JobConfig* c) {
         c->mutable_optimizer()->set_learning_rate(
             std::numeric_limits<float>::quiet_NaN());
       }},
      {"optimizer.momentum:",
       [](JobConfig* c) { c->mutable_optimizer()->set_momentum(1.0f); }},
      {"optimizer.weight_decay:",
       [](JobConfig* c) { c->mutable_optimizer()->set_weight_decay(-1.0f); }},
      {"epochs:", [](JobConfig* c) { c->set_epochs(0); }},
      {"workers:", [](JobConfig* c) { c->set_workers(0); }},
      {"workers:", [](JobConfig* c) { c->set_workers(5000); }},
      {"partition_bytes:", [](JobConfig* c) { c->set_partition_bytes(100); }},
      {"epochs:", [](JobConfig* c) { c->set_epochs(2147483647); }},
      {"optimizer.learning_rate: must be finite, got inf",
       [](JobConfig* c) {
         c->mutable_optimizer()->set_learning_rate(
             std::numeric_limits<float>::infinity());
       }},
      // A 1 MB request of a million layers.
      {"model.hidden_sizes: at most 64 layers",
       [](JobConfig* c) {
         c->mutable_model()->mutable_hidden_sizes()->Resize(1000000, 1);
       }},
      {"consistency: must be BSP, ASP or SSP, got 9",
       [](JobConfig* c) { c->set_consistency(static_cast<Consistency>(9)); }},
  };
  for (const Case& c : cases) {
    JobConfig config = ValidConfig();
    c.spoil(&config);
    INFO("want " << c.prefix);
    SubmitJobResponse response;
    grpc::Status status = Submit(cluster, config, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    INFO("got " << status.error_message());
    CHECK(StartsWith(status.error_message(), c.prefix));
  }
  // An empty config names the first field.
  SubmitJobResponse response;
  grpc::Status status = Submit(cluster, JobConfig(), &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(), "name:"));

  // None of them was queued; a valid one still is.
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    ListJobsResponse listed;
    REQUIRE(cluster.jobs->ListJobs(&context, ListJobsRequest(), &listed).ok());
    CHECK(listed.jobs_size() == 0);
  }
  status = Submit(cluster, ValidConfig(), &response);
  REQUIRE(status.ok());
  CHECK(StartsWith(response.job_id(), "bad-input-"));
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  GetJobRequest get;
  get.set_job_id(response.job_id());
  JobStatus job;
  REQUIRE(cluster.jobs->GetJob(&context, get, &job).ok());
  CHECK(job.state() == PENDING);
}

TEST_CASE("JobService: a 10 MB name or job id is refused with INVALID_ARGUMENT "
          "naming the field, and the coordinator keeps serving",
          "[bad_input][coordinator]") {
  Cluster cluster;
  const std::string huge(10 << 20, 'n');
  JobConfig config = ValidConfig();
  config.set_name(huge);
  SubmitJobResponse submitted;
  grpc::Status status = Submit(cluster, config, &submitted);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(),
                   "name: at most 128 characters, got 10485760"));
  CHECK(status.error_message().size() < 1000);  // not echoed back whole
  // The coordinator keeps nothing of them (an accepted 10 MB name once grew
  // it by 500+ MB). Client and server share this process, so the first
  // calls leave the allocator's free lists holding their transient 10 MB
  // buffers: ten calls warm it up, ten more must add (almost) nothing.
  auto submit_ten = [&] {
    for (int i = 0; i < 10; ++i) {
      CHECK(Submit(cluster, config, &submitted).error_code() ==
            grpc::StatusCode::INVALID_ARGUMENT);
    }
  };
  submit_ten();
  const int64_t before = ResidentBytes();
  REQUIRE(before > 0);
  submit_ten();
  CHECK(ResidentBytes() - before < (40 << 20));
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    GetJobRequest request;
    request.set_job_id(huge);
    JobStatus job;
    status = cluster.jobs->GetJob(&context, request, &job);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(StartsWith(status.error_message(), "job_id: at most 148 characters"));
    CHECK(status.error_message().size() < 1000);
  }
  // Nothing was queued, and ListJobs answers within a standard client's
  // 4 MB limit.
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  ListJobsResponse listed;
  REQUIRE(cluster.jobs->ListJobs(&context, ListJobsRequest(), &listed).ok());
  CHECK(listed.jobs_size() == 0);
  REQUIRE(Submit(cluster, ValidConfig(), &submitted).ok());
}

TEST_CASE("JobService: GetJob and CancelJob of an unknown job are NOT_FOUND",
          "[bad_input][coordinator]") {
  Cluster cluster;
  for (const std::string id : {"", "no-such-job-1"}) {
    INFO("job id \"" << id << "\"");
    {
      grpc::ClientContext context;
      context.set_deadline(Deadline());
      GetJobRequest request;
      request.set_job_id(id);
      JobStatus response;
      grpc::Status status = cluster.jobs->GetJob(&context, request, &response);
      CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
      CHECK(Contains(status.error_message(), "job_id"));
    }
    {
      grpc::ClientContext context;
      context.set_deadline(Deadline());
      CancelJobRequest request;
      request.set_job_id(id);
      JobStatus response;
      grpc::Status status = cluster.jobs->CancelJob(&context, request, &response);
      CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
      CHECK(Contains(status.error_message(), "job_id"));
    }
  }
}

TEST_CASE("Coordinator: a peer with another protocol version, or no address, "
          "is refused; an unknown member's heartbeat is NOT_FOUND",
          "[bad_input][coordinator]") {
  Cluster cluster;
  for (bool server : {true, false}) {
    INFO((server ? "RegisterServer" : "RegisterWorker"));
    RegisterRequest request;
    request.set_address("127.0.0.1:1");
    request.set_protocol_version(PROTOCOL_VERSION_UNSPECIFIED);
    RegisterResponse response;
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    grpc::Status status =
        server ? cluster.coordinator->RegisterServer(&context, request, &response)
               : cluster.coordinator->RegisterWorker(&context, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(StartsWith(status.error_message(), "protocol_version:"));

    request.set_protocol_version(static_cast<ProtocolVersion>(7));
    grpc::ClientContext context2;
    context2.set_deadline(Deadline());
    status = server
                 ? cluster.coordinator->RegisterServer(&context2, request, &response)
                 : cluster.coordinator->RegisterWorker(&context2, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);

    request.set_protocol_version(PROTOCOL_VERSION_1);
    request.clear_address();
    grpc::ClientContext context3;
    context3.set_deadline(Deadline());
    status = server
                 ? cluster.coordinator->RegisterServer(&context3, request, &response)
                 : cluster.coordinator->RegisterWorker(&context3, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(Contains(status.error_message(), "address"));
  }
  {
    HeartbeatRequest request;
    request.set_member_id("w-12345");
    HeartbeatResponse response;
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    grpc::Status status =
        cluster.coordinator->Heartbeat(&context, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(StartsWith(status.error_message(), "member_id:"));
  }
  // Nothing joined.
  GetClusterViewRequest request;
  ClusterView view;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  REQUIRE(cluster.coordinator->GetClusterView(&context, request, &view).ok());
  CHECK(view.servers_size() == 0);
  CHECK(view.workers_size() == 0);
}

// --- The parameter server ---------------------------------------------------

using Params = std::map<int32_t, std::string>;  // partition id -> raw bytes

float Grad(int rank, int64_t step, int32_t partition, int64_t k) {
  return 0.02f * static_cast<float>(rank + 1) *
         std::sin(static_cast<float>(3 * k + partition + 5 * step + rank));
}

class ParameterClient {
 public:
  ParameterClient(ParameterServer::Stub* stub, Placement placement)
      : stub_(stub), placement_(std::move(placement)) {}

  PushRequest MakePush(int rank, int64_t step) const {
    PushRequest request;
    request.set_job_id(kJob);
    request.set_worker_rank(rank);
    request.set_step(step);
    request.set_view_epoch(kEpoch);
    for (const Partition& part : placement_.partitions()) {
      std::vector<float> g(part.num_elements());
      for (int64_t k = 0; k < part.num_elements(); ++k) {
        g[k] = Grad(rank, step, part.id(), k);
      }
      PartitionTensor* out = request.add_gradients();
      out->set_partition_id(part.id());
      EncodeFloat32(g.data(), part.num_elements(), out->mutable_tensor());
    }
    return request;
  }

  grpc::Status Push(const PushRequest& request, PushResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    return stub_->Push(&context, request, response);
  }

  PullRequest MakePull(int64_t step, bool latest) const {
    PullRequest request;
    request.set_job_id(kJob);
    request.set_step(step);
    request.set_view_epoch(kEpoch);
    request.set_latest(latest);
    for (const Partition& part : placement_.partitions()) {
      request.add_partition_ids(part.id());
    }
    return request;
  }

  grpc::Status Pull(const PullRequest& request, PullResponse* response,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(timeout));
    return stub_->Pull(&context, request, response);
  }

  // Pull with latest = true: must succeed (the server still serves).
  Params Latest(int64_t* step) {
    PullResponse response;
    grpc::Status status = Pull(MakePull(0, /*latest=*/true), &response);
    REQUIRE(status.ok());
    *step = response.step();
    Params params;
    for (const PartitionTensor& p : response.parameters()) {
      params[p.partition_id()] = p.tensor().data();
    }
    REQUIRE(static_cast<int>(params.size()) == placement_.partitions_size());
    return params;
  }

 private:
  ParameterServer::Stub* const stub_;
  const Placement placement_;
};

// ValidConfig()'s job for one parameter server: 4 KiB partitions, all on
// shard 0, in view epoch kEpoch.
CreateJobRequest ValidCreate() {
  const JobConfig config = ValidConfig();
  auto placement = BuildPlacement(ModelParameters(config.model()), 4096, 1);
  REQUIRE(placement.ok());
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = config;
  *create.mutable_placement() = *placement;
  create.add_shards(0);
  create.set_view_epoch(kEpoch);
  return create;
}

// Creates the job on the cluster's parameter server (REQUIREs success).
CreateJobResponse CreateOn(Cluster& cluster, const CreateJobRequest& create) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  CreateJobResponse response;
  REQUIRE(cluster.parameter_server->CreateJob(&context, create, &response).ok());
  return response;
}

TEST_CASE("ParameterServer: bad pushes and pulls get the right status, and "
          "the server keeps serving with parameters unchanged",
          "[bad_input][parameter_server]") {
  Cluster cluster;
  const CreateJobRequest create = ValidCreate();
  const Placement* placement = &create.placement();
  REQUIRE(placement->partitions_size() >= 4);
  CHECK(CreateOn(cluster, create).num_partitions() ==
        placement->partitions_size());
  // The same state built in-process, fed only the valid pushes.
  ParameterStore reference;
  REQUIRE(reference.CreateJob(create).ok());

  ParameterClient client(cluster.parameter_server.get(), *placement);
  PushResponse ack;
  // Step 0 from both ranks, then rank 0's step 1: a step in progress.
  for (const PushRequest& push :
       {client.MakePush(0, 0), client.MakePush(1, 0), client.MakePush(0, 1)}) {
    REQUIRE(client.Push(push, &ack).ok());
    CHECK_FALSE(ack.duplicate());
    REQUIRE(reference.Push(push).ok());
  }
  int64_t step = -1;
  const Params snapshot = client.Latest(&step);
  REQUIRE(step == 1);

  struct Case {
    const char* what;
    PushRequest request;
    grpc::StatusCode code;
    std::vector<std::string> message_has;
  };
  std::vector<Case> cases;
  {
    PushRequest r = client.MakePush(1, 1);
    Tensor* t = r.mutable_gradients(1)->mutable_tensor();
    t->set_shape(0, t->shape(0) - 1);
    t->mutable_data()->resize(t->data().size() - 4);
    cases.push_back({"wrong shape", r, grpc::StatusCode::INVALID_ARGUMENT,
                     {"gradients[1]", "shape"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.mutable_gradients(2)->mutable_tensor()->set_dtype(DTYPE_UNSPECIFIED);
    cases.push_back({"wrong dtype", r, grpc::StatusCode::INVALID_ARGUMENT,
                     {"gradients[2]", "dtype", "FLOAT32"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.mutable_gradients(0)->mutable_tensor()->mutable_data()->resize(12);
    cases.push_back({"short data", r, grpc::StatusCode::INVALID_ARGUMENT,
                     {"gradients[0]", "data"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.set_job_id("no-such-job");
    cases.push_back({"unknown job", r, grpc::StatusCode::NOT_FOUND,
                     {"job_id", "no-such-job"}});
  }
  {
    PushRequest r = client.MakePush(1, 2);
    cases.push_back({"future step", r, grpc::StatusCode::FAILED_PRECONDITION,
                     {"step", "ahead"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.set_step(-1);
    cases.push_back({"negative step", r, grpc::StatusCode::INVALID_ARGUMENT,
                     {"step"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.set_view_epoch(kEpoch - 1);
    cases.push_back({"stale view epoch", r, grpc::StatusCode::ABORTED,
                     {"view_epoch"}});
  }
  {
    PushRequest r = client.MakePush(kWorkers, 1);
    cases.push_back({"rank out of range", r,
                     grpc::StatusCode::INVALID_ARGUMENT, {"worker_rank"}});
  }
  {
    PushRequest r = client.MakePush(1, 1);
    r.mutable_gradients(3)->set_partition_id(10000);
    cases.push_back({"partition not held", r,
                     grpc::StatusCode::FAILED_PRECONDITION,
                     {"gradients[3]", "10000"}});
  }
  const float non_finite[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity()};
  for (float bad : non_finite) {
    PushRequest r = client.MakePush(1, 1);
    std::string* data = r.mutable_gradients(1)->mutable_tensor()->mutable_data();
    std::memcpy(&(*data)[2 * sizeof(float)], &bad, sizeof(float));
    cases.push_back({std::isnan(bad) ? "NaN" : "Inf", r,
                     grpc::StatusCode::INVALID_ARGUMENT,
                     {"gradients[1]", "element 2", "non-finite"}});
  }

  for (const Case& c : cases) {
    INFO(c.what);
    PushResponse response;
    grpc::Status status = client.Push(c.request, &response);
    CHECK(status.error_code() == c.code);
    INFO("message: " << status.error_message());
    for (const std::string& part : c.message_has) {
      CHECK(Contains(status.error_message(), part));
    }
    const Params now = client.Latest(&step);
    CHECK(step == 1);
    CHECK(now == snapshot);
  }

  // A stale step (already applied) is acknowledged as a duplicate: OK, and
  // nothing changes.
  {
    PushResponse response;
    REQUIRE(client.Push(client.MakePush(1, 0), &response).ok());
    CHECK(response.duplicate());
    CHECK(response.applied_step() == 1);
    CHECK(client.Latest(&step) == snapshot);
  }

  // Bad pulls.
  {
    PullRequest wrong_epoch = client.MakePull(1, /*latest=*/false);
    wrong_epoch.set_view_epoch(kEpoch + 1);
    PullResponse response;
    grpc::Status status = client.Pull(wrong_epoch, &response);
    CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
    CHECK(Contains(status.error_message(), "view_epoch"));

    PullRequest unknown = client.MakePull(1, false);
    unknown.set_job_id("no-such-job");
    status = client.Pull(unknown, &response);
    CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);

    PullRequest no_partitions = client.MakePull(1, false);
    no_partitions.clear_partition_ids();
    status = client.Pull(no_partitions, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().rfind("partition_ids: empty", 0) == 0);

    PullRequest not_held = client.MakePull(1, false);
    not_held.add_partition_ids(10000);
    status = client.Pull(not_held, &response);
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(Contains(status.error_message(), "10000"));

    // The step before the partitions' is still served (a replacement
    // worker recomputes it); older ones are not.
    PullRequest previous_step = client.MakePull(0, false);
    status = client.Pull(previous_step, &response);
    CHECK(status.ok());
    CHECK(response.step() == 0);

    // Step 2 is not reached until rank 1 pushes: the pull times out.
    status = client.Pull(client.MakePull(2, false), &response,
                         std::chrono::milliseconds(200));
    CHECK(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
    CHECK(client.Latest(&step) == snapshot);
  }

  // Finally rank 1's valid step 1: the step is applied, with exactly the
  // valid gradients (as in the in-process reference).
  const PushRequest last = client.MakePush(1, 1);
  REQUIRE(client.Push(last, &ack).ok());
  CHECK_FALSE(ack.duplicate());
  CHECK(ack.applied_step() == 2);
  REQUIRE(reference.Push(last).ok());
  const Params after = client.Latest(&step);
  CHECK(step == 2);
  CHECK(after != snapshot);

  PullRequest reference_pull = client.MakePull(2, false);
  PullResponse want;
  REQUIRE(reference
              .Pull(reference_pull, absl::Now() + absl::Seconds(30),
                    [] { return false; }, &want)
              .ok());
  REQUIRE(want.parameters_size() == placement->partitions_size());
  for (const PartitionTensor& p : want.parameters()) {
    INFO("partition " << p.partition_id());
    CHECK(after.at(p.partition_id()) == p.tensor().data());
  }
  PullResponse pulled;
  REQUIRE(client.Pull(client.MakePull(2, false), &pulled).ok());
  CHECK(pulled.step() == 2);
}

TEST_CASE("ParameterServer: bad CreateJob and DropJob requests are refused",
          "[bad_input][parameter_server]") {
  Cluster cluster;
  const CreateJobRequest create = ValidCreate();

  auto call = [&](const CreateJobRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    CreateJobResponse response;
    return cluster.parameter_server->CreateJob(&context, request, &response);
  };
  CreateJobRequest bad = create;
  bad.mutable_config()->set_workers(0);
  grpc::Status status = call(bad);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(), "config.workers:"));

  bad = create;
  bad.mutable_placement()->mutable_partitions(0)->set_offset(-1);
  status = call(bad);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(), "placement.partitions[0]"));

  REQUIRE(call(create).ok());
  CHECK(call(create).ok());  // a retry
  bad = create;
  bad.mutable_config()->set_batch_size(32);
  status = call(bad);
  CHECK(status.error_code() == grpc::StatusCode::ALREADY_EXISTS);

  DropJobRequest drop;
  drop.set_job_id("no-such-job");
  DropJobResponse dropped;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  status = cluster.parameter_server->DropJob(&context, drop, &dropped);
  CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
}

TEST_CASE("ParameterServer: ListSnapshots of an unknown job is NOT_FOUND, "
          "of a job held without snapshots an empty list",
          "[bad_input][parameter_server]") {
  Cluster cluster;
  auto list = [&](const std::string& job_id, ListSnapshotsResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    ListSnapshotsRequest request;
    request.set_job_id(job_id);
    return cluster.parameter_server->ListSnapshots(&context, request, response);
  };
  ListSnapshotsResponse response;
  grpc::Status status = list("no-such-job-7", &response);
  CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
  INFO(status.error_message());
  CHECK(StartsWith(status.error_message(), "job_id: no job \"no-such-job-7\""));
  CHECK(response.snapshots_size() == 0);

  // A long id is quoted, cut, not echoed whole.
  status = list(std::string(100000, 'x'), &response);
  CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(status.error_message().size() < 1000);

  CreateOn(cluster, ValidCreate());
  status = list(kJob, &response);
  INFO(status.error_message());
  CHECK(status.ok());
  CHECK(response.snapshots_size() == 0);
}

}  // namespace
}  // namespace psd
