// Bad input to a parameter server over real gRPC (Push, Pull, CreateJob,
// DropJob, ListSnapshots): a parameter server in this process on
// 127.0.0.1:0, driven through the generated stubs. Every bad request gets
// the documented status code and a message naming the problem, and the
// server keeps serving with its parameters unchanged.
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
#include "tests/bad_input_lib.h"
#include "tests/in_process_cluster.h"
#include "tests/resident_memory.h"

namespace psd {
namespace {
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
CreateJobResponse CreateOn(InProcessCluster& cluster, const CreateJobRequest& create) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  CreateJobResponse response;
  REQUIRE(cluster.parameter_server->CreateJob(&context, create, &response).ok());
  return response;
}

TEST_CASE("ParameterServer: bad pushes and pulls get the right status, and "
          "the server keeps serving with parameters unchanged",
          "[bad_input][parameter_server]") {
  InProcessCluster cluster;
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
  InProcessCluster cluster;
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
  InProcessCluster cluster;
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
