// ParameterStore jobs: CreateJob's initial values, its idempotence, and
// the placements and sizes it refuses.
#include "server/ps/parameter_store.h"

#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "server/ps/parameter_store_test_util.h"

namespace psd {
namespace store_test {
namespace {

TEST_CASE("ParameterStore: the initial pull returns the Glorot initial values",
          "[store]") {
  Fixture f(2);
  REQUIRE(f.placement.partitions_size() > 4);  // several partitions
  PullResponse response;
  absl::Status status = f.store.Pull(f.MakePull(0), absl::Now() + absl::Seconds(60),
                                     [] { return false; }, &response);
  REQUIRE(status.ok());
  CHECK(response.step() == 0);
  Params got = Fixture::Decode(response);
  CHECK(Bitwise(got, Initial(f.config, f.placement)));
  // The weights are not all zero (Glorot), the biases are.
  bool nonzero = false;
  for (float v : got[0]) nonzero = nonzero || v != 0.0f;
  CHECK(nonzero);
}

TEST_CASE("ParameterStore: replication only from the view's identities, "
          "and the submitter is kept",
          "[store][create]") {
  ParameterStore store;
  CreateJobRequest request = CreateRequest(Config(1));
  request.set_submitted_by("user/alice");
  for (const char* identity : {"spiffe://psd/server/s0", ""}) {
    ServerInfo* server = request.add_servers();
    server->set_id(identity);
    server->set_identity(identity);
  }
  REQUIRE(store.CreateJob(request).ok());
  CHECK(store.SubmittedBy(kJob).value() == "user/alice");
  CHECK(store.SubmittedBy("other").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(store.CheckReplicaPeer(kJob, "spiffe://psd/server/s0").ok());
  CHECK(store.CheckReplicaPeer(kJob, "").ok());  // plaintext
  CHECK(store.CheckReplicaPeer("other", "spiffe://psd/server/x").ok());
  absl::Status rogue = store.CheckReplicaPeer(kJob, "spiffe://psd/server/x");
  CHECK(rogue.code() == absl::StatusCode::kPermissionDenied);
  CHECK_THAT(std::string(rogue.message()),
             Catch::Contains("spiffe://psd/server/x is not a server of job "
                             "\"job-1\"'s view") &&
                 Catch::Contains("spiffe://psd/server/s0"));

  // A view without identities (a plaintext coordinator) checks nothing.
  ParameterStore plain;
  REQUIRE(plain.CreateJob(CreateRequest(Config(1))).ok());
  CHECK(plain.CheckReplicaPeer(kJob, "spiffe://psd/server/x").ok());
}

TEST_CASE("ParameterStore: CreateJob is idempotent for the same config only",
          "[store][create]") {
  Fixture f(2);
  f.PushOk(0, 0);
  f.PushOk(1, 0);
  f.PushOk(0, 1);  // rank 0's step 1 gradients are pending
  int64_t step = 0;
  const Params before = f.Latest(&step);
  REQUIRE(step == 1);

  auto again = f.store.CreateJob(CreateRequest(f.config));
  REQUIRE(again.ok());
  CHECK(again->num_partitions() == f.placement.partitions_size());
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 1);
  // The pending push survived: rank 0 is a duplicate, rank 1 completes step 1.
  f.PushOk(0, 1, /*duplicate=*/true);
  f.PushOk(1, 1);
  f.Latest(&step);
  CHECK(step == 2);

  JobConfig other = f.config;
  other.mutable_optimizer()->set_learning_rate(0.5f);
  auto conflict = f.store.CreateJob(CreateRequest(other));
  CHECK(conflict.status().code() == absl::StatusCode::kAlreadyExists);

  JobConfig invalid = f.config;
  invalid.set_batch_size(0);
  CreateJobRequest bad = CreateRequest(f.config);
  *bad.mutable_config() = invalid;
  bad.set_job_id("job-2");
  auto rejected = f.store.CreateJob(bad);
  CHECK(rejected.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(rejected.status().message(), "config.batch_size:"));

  JobConfig no_model = f.config;
  no_model.clear_model();
  *bad.mutable_config() = no_model;
  rejected = f.store.CreateJob(bad);
  CHECK(rejected.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(rejected.status().message() == "config.model: required");

  CreateJobRequest no_id = CreateRequest(f.config);
  no_id.clear_job_id();
  CHECK(f.store.CreateJob(no_id).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

// The view epoch of the job held, -1 when none is.
int64_t HeldEpoch(ParameterStore& store) {
  const ServerStatus status = store.Status();
  for (const ServerJobStatus& job : status.jobs()) {
    if (job.job_id() == kJob) return job.view_epoch();
  }
  return -1;
}

TEST_CASE("ParameterStore: start attempts are fenced by view epoch: a late "
          "DropJob keeps a newer attempt, a late CreateJob is refused",
          "[store][create]") {
  ParameterStore store;
  const JobConfig config = Config(2);
  auto at = [&](int64_t epoch) {
    CreateJobRequest request = CreateRequest(config);
    request.set_view_epoch(epoch);
    return request;
  };
  REQUIRE(store.CreateJob(at(5)).ok());
  CHECK(store.CreateJob(at(5)).ok());  // the same request again
  // Attempt 4's drop, arriving after attempt 5 created the job: kept.
  CHECK(store.DropJob(kJob, false, 4).code() == absl::StatusCode::kAborted);
  CHECK(HeldEpoch(store) == 5);
  // Attempt 4's CreateJob, arriving last: refused.
  CHECK(store.CreateJob(at(4)).status().code() == absl::StatusCode::kAborted);
  CHECK(HeldEpoch(store) == 5);
  // Attempt 6 while attempt 5's job took no update: it replaces it.
  REQUIRE(store.CreateJob(at(6)).ok());
  CHECK(HeldEpoch(store) == 6);
  // Attempt 6 failed: its drop, then its own CreateJob arriving late.
  REQUIRE(store.DropJob(kJob, false, 6).ok());
  CHECK(HeldEpoch(store) == -1);
  CHECK(store.CreateJob(at(6)).status().code() == absl::StatusCode::kAborted);
  CHECK(HeldEpoch(store) == -1);
  // A drop before the attempt's CreateJob arrives fences it too.
  CHECK(store.DropJob(kJob, false, 7).code() == absl::StatusCode::kNotFound);
  CHECK(store.CreateJob(at(7)).status().code() == absl::StatusCode::kAborted);
  // Attempt 8 starts clean; an unfenced drop (cancel) drops any epoch.
  REQUIRE(store.CreateJob(at(8)).ok());
  CHECK(HeldEpoch(store) == 8);
  REQUIRE(store.DropJob(kJob).ok());
  CHECK(HeldEpoch(store) == -1);
}

TEST_CASE("ParameterStore: a newer CreateJob never replaces a job that took "
          "a push", "[store][create]") {
  Fixture f(2);
  f.PushOk(0, 0);  // rank 0's step 0 gradients are pending
  CreateJobRequest newer = CreateRequest(f.config);
  newer.set_view_epoch(kEpoch + 1);
  REQUIRE(f.store.CreateJob(newer).ok());
  CHECK(HeldEpoch(f.store) == kEpoch);
  f.PushOk(0, 0, /*duplicate=*/true);  // the pending push survived
  f.PushOk(1, 0);
  int64_t step = 0;
  f.Latest(&step);
  CHECK(step == 1);
}

TEST_CASE("ParameterStore: CreateJob rejects a placement that does not fit "
          "the model",
          "[store][create]") {
  ParameterStore store;
  CreateJobRequest request = CreateRequest(Config(2));
  request.mutable_placement()->mutable_partitions(0)->set_num_elements(1 << 20);
  auto created = store.CreateJob(request);
  CHECK(created.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(created.status().message(), "placement.partitions[0]"));

  request = CreateRequest(Config(2));
  request.mutable_placement()->mutable_partitions(1)->set_parameter(42);
  created = store.CreateJob(request);
  CHECK(created.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(created.status().message(), "placement.partitions[1]"));
}

// Issue 23 item 7: what a CreateJob would allocate is bounded before any of
// it is, and a shape that would overflow is refused, never UNKNOWN.
TEST_CASE("ParameterStore: CreateJob refuses a job bigger than max_job_bytes "
          "before allocating it",
          "[store][create][bounds]") {
  ParameterStoreOptions options;
  options.max_job_bytes = 1 << 20;
  ParameterStore store(options);
  CreateJobRequest request = CreateRequest(Config(2));
  // 2^40 elements in one parameter.
  request.mutable_placement()->mutable_parameters(0)->set_shape(0, 1 << 20);
  request.mutable_placement()->mutable_parameters(0)->set_shape(1, 1 << 20);
  auto created = store.CreateJob(request);
  CHECK(created.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(StartsWith(created.status().message(), "placement.parameters[0].shape"));

  // Dimensions whose product overflows int64.
  request = CreateRequest(Config(2));
  auto* shape = request.mutable_placement()->mutable_parameters(0);
  shape->set_shape(0, int64_t{1} << 40);
  shape->set_shape(1, int64_t{1} << 40);
  created = store.CreateJob(request);
  CHECK(created.status().code() == absl::StatusCode::kResourceExhausted);

  request = CreateRequest(Config(2));
  request.mutable_placement()->mutable_parameters(0)->set_shape(1, -8);
  created = store.CreateJob(request);
  CHECK(created.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(created.status().message(),
                   "placement.parameters[0].shape[1]"));

  // The same job fits a bigger bound, and the store kept serving.
  ParameterStore roomy;
  CHECK(roomy.CreateJob(CreateRequest(Config(2))).ok());
}

}  // namespace
}  // namespace store_test
}  // namespace psd
