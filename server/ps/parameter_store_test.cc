#include "server/ps/parameter_store.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "server/ps/optimizer.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-1";
constexpr int64_t kEpoch = 3;
constexpr uint64_t kSeed = 7;

// MLP 784-8-10: layer0.weight [784, 8] (25088 bytes, cut into 7 partitions
// of at most 4096 bytes), layer0.bias [8], layer1.weight [8, 10],
// layer1.bias [10]; all on shard 0.
JobConfig Config(int workers, float momentum = 0.0f) {
  JobConfig config;
  config.set_name("store-test");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(kSeed);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.1f);
  config.mutable_optimizer()->set_momentum(momentum);
  config.set_consistency(BSP);
  config.set_batch_size(4);
  config.set_epochs(1);
  config.set_workers(workers);
  config.set_seed(1);
  config.set_partition_bytes(4096);
  return config;
}

CreateJobRequest CreateRequest(const JobConfig& config) {
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

using Params = std::map<int32_t, std::vector<float>>;  // by partition id

// A gradient value, deterministic in (rank, step, partition, element).
float Grad(int rank, int64_t step, int32_t partition, int64_t k) {
  return 0.05f * static_cast<float>(rank + 1) *
         std::cos(static_cast<float>(k + 7 * partition + 13 * step + 3 * rank));
}

struct Fixture {
  explicit Fixture(int workers, float momentum = 0.0f)
      : config(Config(workers, momentum)) {
    CreateJobRequest request = CreateRequest(config);
    placement = request.placement();
    auto created = store.CreateJob(request);
    REQUIRE(created.ok());
    REQUIRE(created->num_partitions() == placement.partitions_size());
  }

  int64_t Size(int32_t id) const {
    return placement.partitions(id).num_elements();
  }

  // A push from `rank` at `step` of every partition, gradients from Grad()
  // (or `salt` added to make them differ from the canonical ones).
  PushRequest MakePush(int rank, int64_t step, float salt = 0.0f) const {
    PushRequest request;
    request.set_job_id(kJob);
    request.set_worker_rank(rank);
    request.set_step(step);
    request.set_view_epoch(kEpoch);
    for (const Partition& part : placement.partitions()) {
      std::vector<float> g(part.num_elements());
      for (int64_t k = 0; k < part.num_elements(); ++k) {
        g[k] = Grad(rank, step, part.id(), k) + salt;
      }
      PartitionTensor* out = request.add_gradients();
      out->set_partition_id(part.id());
      EncodeFloat32(g.data(), part.num_elements(), out->mutable_tensor());
    }
    return request;
  }

  PullRequest MakePull(int64_t step, bool latest = false) const {
    PullRequest request;
    request.set_job_id(kJob);
    request.set_worker_rank(0);
    request.set_step(step);
    request.set_view_epoch(kEpoch);
    request.set_latest(latest);
    for (const Partition& part : placement.partitions()) {
      request.add_partition_ids(part.id());
    }
    return request;
  }

  // The current parameters and their step (Pull with latest = true).
  Params Latest(int64_t* step = nullptr) {
    PullResponse response;
    absl::Status status = store.Pull(MakePull(0, /*latest=*/true),
                                     absl::Now() + absl::Seconds(60),
                                     [] { return false; }, &response);
    REQUIRE(status.ok());
    if (step != nullptr) *step = response.step();
    return Decode(response);
  }

  static Params Decode(const PullResponse& response) {
    Params params;
    for (const PartitionTensor& p : response.parameters()) {
      REQUIRE(CheckFloat32(p.tensor(), p.tensor().shape(0), "p").ok());
      const float* data = Float32Data(p.tensor());
      params[p.partition_id()].assign(data, data + p.tensor().shape(0));
    }
    return params;
  }

  void PushOk(int rank, int64_t step, bool duplicate = false) {
    auto response = store.Push(MakePush(rank, step));
    REQUIRE(response.ok());
    CHECK(response->duplicate() == duplicate);
  }

  JobConfig config;
  Placement placement;
  ParameterStore store;
};

// Bitwise equality of two parameter sets (NaN-safe, -0 != +0).
bool Bitwise(const Params& a, const Params& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [id, values] : a) {
    auto it = b.find(id);
    if (it == b.end() || it->second.size() != values.size()) return false;
    if (std::memcmp(values.data(), it->second.data(),
                    values.size() * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

// Initial values sliced per the placement.
Params Initial(const JobConfig& config, const Placement& placement) {
  std::vector<ParameterSpec> specs = ModelParameters(config.model());
  Params params;
  for (const Partition& part : placement.partitions()) {
    std::vector<float> all =
        InitialValues(specs[part.parameter()], part.parameter(), kSeed);
    params[part.id()].assign(all.begin() + part.offset(),
                             all.begin() + part.offset() + part.num_elements());
  }
  return params;
}

bool StartsWith(absl::string_view s, absl::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool Contains(absl::string_view s, absl::string_view part) {
  return s.find(part) != absl::string_view::npos;
}

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

TEST_CASE("ParameterStore: a BSP step is applied once every rank has pushed, "
          "as SGD on the rank-ordered mean",
          "[store][bsp]") {
  Fixture f(3);
  const Params before = f.Latest();
  f.PushOk(0, 0);
  f.PushOk(2, 0);
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);

  auto last = f.store.Push(f.MakePush(1, 0));
  REQUIRE(last.ok());
  CHECK_FALSE(last->duplicate());
  CHECK(last->applied_step() == 1);
  const Params after = f.Latest(&step);
  CHECK(step == 1);

  // w1 = w0 - lr * ((g0 + g1 + g2) / 3), lr = 0.1, no momentum or decay.
  for (const Partition& part : f.placement.partitions()) {
    INFO("partition " << part.id());
    for (int64_t k = 0; k < part.num_elements(); ++k) {
      const double mean = (static_cast<double>(Grad(0, 0, part.id(), k)) +
                           Grad(1, 0, part.id(), k) + Grad(2, 0, part.id(), k)) /
                          3.0;
      const double want = before.at(part.id())[k] - 0.1 * mean;
      if (after.at(part.id())[k] != Approx(want).margin(1e-6)) {
        FAIL("element " << k << ": got " << after.at(part.id())[k]
                        << ", want " << want);
      }
    }
  }
}

TEST_CASE("ParameterStore: the order pushes arrive in does not change the "
          "result, bit for bit",
          "[store][bsp]") {
  // Momentum on, so the velocity path is covered too; two steps.
  for (int workers : {2, 3}) {
    INFO("workers " << workers);
    Fixture in_order(workers, 0.9f);
    Fixture reversed(workers, 0.9f);
    for (int64_t step = 0; step < 2; ++step) {
      for (int r = 0; r < workers; ++r) in_order.PushOk(r, step);
      for (int r = workers - 1; r >= 0; --r) reversed.PushOk(r, step);
    }
    int64_t s1 = 0, s2 = 0;
    const Params a = in_order.Latest(&s1);
    const Params b = reversed.Latest(&s2);
    CHECK(s1 == 2);
    CHECK(s2 == 2);
    CHECK(Bitwise(a, b));
    CHECK_FALSE(Bitwise(a, Initial(in_order.config, in_order.placement)));
  }
}

TEST_CASE("ParameterStore: a retried push is acknowledged and never applied "
          "twice",
          "[store][dedup]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  f.PushOk(0, 0);
  const Params before = f.Latest();
  // Retry before the step is applied; with other values, to see that the
  // first push's gradients are the ones kept.
  auto retry = f.store.Push(f.MakePush(0, 0, /*salt=*/1.0f));
  REQUIRE(retry.ok());
  CHECK(retry->duplicate());
  CHECK(retry->applied_step() == 0);
  CHECK(Bitwise(f.Latest(), before));

  f.PushOk(1, 0);
  int64_t step = 0;
  const Params applied = f.Latest(&step);
  CHECK(step == 1);
  CHECK(Bitwise(applied, want));

  // Retries after the step is applied, from both ranks.
  for (int rank : {0, 1, 1}) {
    auto late = f.store.Push(f.MakePush(rank, 0, /*salt=*/0.5f));
    REQUIRE(late.ok());
    CHECK(late->duplicate());
    CHECK(late->applied_step() == 1);
    CHECK(Bitwise(f.Latest(&step), applied));
    CHECK(step == 1);
  }
}

TEST_CASE("ParameterStore: pushes with a bad step, epoch, job or rank are "
          "refused",
          "[store][errors]") {
  Fixture f(2);
  const Params before = f.Latest();

  PushRequest future = f.MakePush(0, 1);
  auto status = f.store.Push(future).status();
  CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(status.message(), "step"));

  PushRequest epoch = f.MakePush(0, 0);
  epoch.set_view_epoch(kEpoch + 1);  // this server's view is behind
  status = f.store.Push(epoch).status();
  CHECK(status.code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(status.message(), "view_epoch"));
  epoch.set_view_epoch(kEpoch - 1);  // the pusher's view is behind
  status = f.store.Push(epoch).status();
  CHECK(status.code() == absl::StatusCode::kAborted);
  CHECK(Contains(status.message(), "view_epoch"));

  PushRequest job = f.MakePush(0, 0);
  job.set_job_id("no-such-job");
  status = f.store.Push(job).status();
  CHECK(status.code() == absl::StatusCode::kNotFound);
  CHECK(Contains(status.message(), "no-such-job"));

  for (int rank : {-1, 2, 1000}) {
    INFO("rank " << rank);
    status = f.store.Push(f.MakePush(rank, 0)).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(status.message(), "worker_rank"));
  }

  PushRequest negative = f.MakePush(0, 0);
  negative.set_step(-1);
  CHECK(f.store.Push(negative).status().code() ==
        absl::StatusCode::kInvalidArgument);

  PushRequest unknown_partition = f.MakePush(0, 0);
  unknown_partition.mutable_gradients(1)->set_partition_id(999);
  status = f.store.Push(unknown_partition).status();
  CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(status.message(), "gradients[1]"));

  PushRequest twice = f.MakePush(0, 0);
  *twice.add_gradients() = twice.gradients(0);
  status = f.store.Push(twice).status();
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(status.message(), "appears twice"));

  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);
  // Nothing was taken: both ranks can still push step 0, and it applies.
  f.PushOk(0, 0);
  f.PushOk(1, 0);
  f.Latest(&step);
  CHECK(step == 1);
}

TEST_CASE("ParameterStore: malformed gradient tensors are refused, naming the "
          "gradients index",
          "[store][errors]") {
  Fixture f(2);
  const Params before = f.Latest();
  struct Case {
    const char* what;
    void (*spoil)(Tensor*);
    const char* field;
  };
  const Case cases[] = {
      {"wrong shape",
       [](Tensor* t) {
         t->set_shape(0, t->shape(0) + 1);
         t->mutable_data()->append(4, '\0');
       },
       ".shape"},
      {"2-D shape", [](Tensor* t) { t->add_shape(1); }, ".shape"},
      {"wrong dtype", [](Tensor* t) { t->set_dtype(DTYPE_UNSPECIFIED); },
       ".dtype"},
      {"short data", [](Tensor* t) { t->mutable_data()->resize(t->data().size() - 4); },
       ".data"},
      {"ragged data", [](Tensor* t) { t->mutable_data()->resize(t->data().size() - 1); },
       ".data"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    PushRequest request = f.MakePush(1, 0);
    c.spoil(request.mutable_gradients(2)->mutable_tensor());
    absl::Status status = f.store.Push(request).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(StartsWith(status.message(), "gradients[2]"));
    CHECK(Contains(status.message(), c.field));
  }
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);
}

TEST_CASE("ParameterStore: NaN and Inf gradients are refused and never "
          "applied",
          "[store][errors]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  const Params before = f.Latest();
  f.PushOk(0, 0);
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (float bad : bad_values) {
    INFO("value " << bad);
    PushRequest request = f.MakePush(1, 0);
    std::string* data = request.mutable_gradients(3)->mutable_tensor()->mutable_data();
    std::memcpy(&(*data)[5 * sizeof(float)], &bad, sizeof(float));
    absl::Status status = f.store.Push(request).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(StartsWith(status.message(), "gradients[3]"));
    CHECK(Contains(status.message(), "element 5"));
    int64_t step = -1;
    CHECK(Bitwise(f.Latest(&step), before));
    CHECK(step == 0);
  }
  // The rank's valid push is then taken as if the bad ones never came.
  f.PushOk(1, 0);
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), want));
  CHECK(step == 1);
}

TEST_CASE("ParameterStore: a push with one valid and one invalid partition is "
          "rejected whole",
          "[store][errors]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  // Rank 1: partition 0 valid (but with other values), partition 1 bad.
  PushRequest mixed = f.MakePush(1, 0, /*salt=*/2.0f);
  while (mixed.gradients_size() > 2) mixed.mutable_gradients()->RemoveLast();
  mixed.mutable_gradients(1)->mutable_tensor()->mutable_data()->resize(8);
  CHECK(f.store.Push(mixed).status().code() ==
        absl::StatusCode::kInvalidArgument);
  // Same with the bad partition first and a NaN.
  PushRequest mixed_nan = f.MakePush(1, 0, /*salt=*/2.0f);
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(mixed_nan.mutable_gradients(0)->mutable_tensor()->mutable_data()->data(),
              &nan, sizeof(float));
  CHECK(f.store.Push(mixed_nan).status().code() ==
        absl::StatusCode::kInvalidArgument);

  f.PushOk(0, 0);
  auto valid = f.store.Push(f.MakePush(1, 0));
  REQUIRE(valid.ok());
  CHECK_FALSE(valid->duplicate());
  CHECK(valid->applied_step() == 1);
  CHECK(Bitwise(f.Latest(), want));
}

TEST_CASE("ParameterStore: a pull waits for the step until the last rank "
          "pushes",
          "[store][pull]") {
  Fixture f(2);
  // Nothing pushed yet: a pull of step 1 with a short deadline times out.
  PullResponse early;
  absl::Status status =
      f.store.Pull(f.MakePull(1), absl::Now() + absl::Milliseconds(50),
                   [] { return false; }, &early);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);

  absl::Notification waiting;  // the pull has checked the step and waits
  absl::Notification done;
  absl::Status pulled;
  PullResponse response;
  std::thread puller([&] {
    pulled = f.store.Pull(
        f.MakePull(1), absl::InfiniteFuture(),
        [&] {
          if (!waiting.HasBeenNotified()) waiting.Notify();
          return false;
        },
        &response);
    done.Notify();
  });
  waiting.WaitForNotification();
  f.PushOk(1, 0);
  CHECK_FALSE(done.HasBeenNotified());  // rank 0 has not pushed yet
  f.PushOk(0, 0);
  puller.join();
  REQUIRE(pulled.ok());
  CHECK(response.step() == 1);
  CHECK(Bitwise(Fixture::Decode(response), f.Latest()));
}

TEST_CASE("ParameterStore: a pull with a deadline in the past times out",
          "[store][pull]") {
  Fixture f(2);
  PullResponse response;
  absl::Status status =
      f.store.Pull(f.MakePull(1), absl::Now() - absl::Seconds(1),
                   [] { return false; }, &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  // A step already reached is returned even then.
  PullResponse now;
  CHECK(f.store
            .Pull(f.MakePull(0), absl::Now() - absl::Seconds(1),
                  [] { return false; }, &now)
            .ok());
}

TEST_CASE("ParameterStore: a pull ends with CANCELLED when the client cancels",
          "[store][pull]") {
  Fixture f(2);
  PullResponse response;
  absl::Status status = f.store.Pull(f.MakePull(1), absl::InfiniteFuture(),
                                     [] { return true; }, &response);
  CHECK(status.code() == absl::StatusCode::kCancelled);
}

TEST_CASE("ParameterStore: DropJob wakes a waiting pull with CANCELLED",
          "[store][pull]") {
  Fixture f(2);
  absl::Notification waiting;
  absl::Status pulled;
  std::thread puller([&] {
    PullResponse response;
    pulled = f.store.Pull(
        f.MakePull(1), absl::InfiniteFuture(),
        [&] {
          if (!waiting.HasBeenNotified()) waiting.Notify();
          return false;
        },
        &response);
  });
  waiting.WaitForNotification();
  REQUIRE(f.store.DropJob(kJob).ok());
  puller.join();
  CHECK(pulled.code() == absl::StatusCode::kCancelled);

  // The job is gone.
  CHECK(f.store.DropJob(kJob).code() == absl::StatusCode::kNotFound);
  CHECK(f.store.Push(f.MakePush(0, 0)).status().code() ==
        absl::StatusCode::kNotFound);
  PullResponse response;
  CHECK(f.store
            .Pull(f.MakePull(0, true), absl::InfiniteFuture(),
                  [] { return false; }, &response)
            .code() == absl::StatusCode::kNotFound);
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

// Issue 23 item 1: a pull's step is a peer's number; -1 once matched the
// "no previous weights" sentinel and read an empty vector (SIGSEGV).
TEST_CASE("ParameterStore: pulls of a negative step, of no partition, of a "
          "partition twice or of too much are refused",
          "[store][pull][bounds]") {
  Fixture f(2);
  PullResponse response;
  auto pull = [&](const PullRequest& request) {
    return f.store.Pull(request, absl::Now() + absl::Seconds(5),
                        [] { return false; }, &response);
  };
  absl::Status status = pull(f.MakePull(-1));
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "step: must be >= 0, got -1"));

  PullRequest empty = f.MakePull(0);
  empty.clear_partition_ids();
  status = pull(empty);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "partition_ids: empty"));

  PullRequest twice = f.MakePull(0);
  twice.add_partition_ids(0);
  status = pull(twice);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(),
                   absl::StrCat("partition_ids[", twice.partition_ids_size() - 1,
                                "]: partition 0 appears twice")));

  // After a step is applied the previous weights are kept; -1 still matches
  // nothing, and the finished job's (dropped training state) neither.
  f.PushOk(0, 0);
  f.PushOk(1, 0);
  CHECK(pull(f.MakePull(-1)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(pull(f.MakePull(0)).ok());
  CHECK(pull(f.MakePull(1)).ok());
  REQUIRE(f.store.DropJob(kJob, /*keep_parameters=*/true).ok());
  CHECK(pull(f.MakePull(-1)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(pull(f.MakePull(0)).code() == absl::StatusCode::kFailedPrecondition);
  f.Latest();
}

TEST_CASE("ParameterStore: a pull whose answer would exceed "
          "max_pull_bytes is refused before it is built",
          "[store][pull][bounds]") {
  ParameterStoreOptions options;
  options.max_pull_bytes = 8192;  // two of the test job's 4096-byte partitions
  ParameterStore store(options);
  REQUIRE(store.CreateJob(CreateRequest(Config(1))).ok());
  PullRequest pull;
  pull.set_job_id(kJob);
  pull.set_view_epoch(kEpoch);
  pull.add_partition_ids(0);
  pull.add_partition_ids(1);
  PullResponse response;
  auto run = [&] {
    return store.Pull(pull, absl::Now() + absl::Seconds(5),
                      [] { return false; }, &response);
  };
  CHECK(run().ok());
  pull.add_partition_ids(2);
  absl::Status status = run();
  CHECK(status.code() == absl::StatusCode::kResourceExhausted);
  CHECK(StartsWith(status.message(), "partition_ids: the answer would exceed "
                                     "8192 bytes at partition_ids[2]"));
}

// Issue 7: each optimizer keeps BSP deterministic. The same multi-rank
// pushes, arriving in different orders, give bit-identical parameters.
TEST_CASE(
    "ParameterStore: with every optimizer, the order pushes arrive in "
    "does not change the result, bit for bit",
    "[store][bsp][optimizer]") {
  struct Kind {
    const char* name;
    void (*set)(OptimizerSpec*);
  };
  const Kind kinds[] = {
      {"SGD", [](OptimizerSpec* o) { o->set_weight_decay(1e-3f); }},
      {"momentum",
       [](OptimizerSpec* o) {
         o->set_momentum(0.9f);
         o->set_weight_decay(1e-3f);
       }},
      {"Nesterov",
       [](OptimizerSpec* o) {
         o->set_momentum(0.9f);
         o->set_nesterov(true);
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
         o->mutable_schedule()->set_step_size(1);
       }},
      {"Adagrad",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAGRAD);
         o->set_initial_accumulator_value(0.1f);
         o->set_clip_value(0.05f);
       }},
      {"Adam",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAM);
         o->set_learning_rate(0.01f);
         o->set_weight_decay(1e-3f);
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
       }},
      {"AdamW",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAMW);
         o->set_learning_rate(0.01f);
         o->set_weight_decay(0.01f);
         o->set_clip_value(0.05f);
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
         o->mutable_schedule()->set_decay_steps(3);
       }},
  };
  constexpr int64_t kSteps = 3;
  for (int workers : {2, 3}) {
    Fixture shape(workers);  // builds the pushes and pulls; its own job unused
    Params previous;         // the last kind's result, to tell kinds apart
    for (const Kind& kind : kinds) {
      INFO("workers " << workers << ", optimizer " << kind.name);
      JobConfig config = Config(workers);
      kind.set(config.mutable_optimizer());
      // Three stores, three arrival orders per step: by rank, reversed, and
      // rotated by the step.
      ParameterStore stores[3];
      for (ParameterStore& store : stores) {
        auto created = store.CreateJob(CreateRequest(config));
        REQUIRE(created.ok());
      }
      for (int64_t step = 0; step < kSteps; ++step) {
        for (int i = 0; i < workers; ++i) {
          const int orders[3] = {i, workers - 1 - i,
                                 static_cast<int>((i + step + 1) % workers)};
          for (int o = 0; o < 3; ++o) {
            auto pushed = stores[o].Push(shape.MakePush(orders[o], step));
            REQUIRE(pushed.ok());
            CHECK_FALSE(pushed->duplicate());
          }
        }
      }
      Params got[3];
      for (int o = 0; o < 3; ++o) {
        PullResponse response;
        absl::Status status = stores[o].Pull(
            shape.MakePull(0, /*latest=*/true), absl::Now() + absl::Seconds(60),
            [] { return false; }, &response);
        REQUIRE(status.ok());
        CHECK(response.step() == kSteps);
        got[o] = Fixture::Decode(response);
      }
      CHECK(Bitwise(got[0], got[1]));
      CHECK(Bitwise(got[0], got[2]));
      CHECK_FALSE(Bitwise(got[0], Initial(config, shape.placement)));
      CHECK_FALSE(Bitwise(got[0], previous));
      for (const auto& [id, values] : got[0]) {
        for (float v : values) REQUIRE(std::isfinite(v));
      }
      previous = got[0];
    }
  }
}

// ---- ASP and SSP (issue 7: consistency models) ----

// A store holding one ASP or SSP job (the Fixture's model and placement).
struct AsyncFixture {
  AsyncFixture(Consistency mode, int workers, int staleness = 0,
               ParameterStoreOptions options = {},
               const std::function<void(JobConfig*)>& edit = nullptr)
      : shape(workers), store(std::move(options)) {
    config = Config(workers);
    config.set_consistency(mode);
    config.set_staleness(staleness);
    if (edit) edit(&config);
    CreateJobRequest request = CreateRequest(config);
    auto created = store.CreateJob(request);
    REQUIRE(created.ok());
  }

  PullRequest MakePull(int rank, int64_t clock) const {
    PullRequest request = shape.MakePull(clock);
    request.set_worker_rank(rank);
    return request;
  }

  // Pulls with a deadline `wait` from now.
  absl::Status PullFor(int rank, int64_t clock, absl::Duration wait,
                       PullResponse* response) {
    return store.Pull(MakePull(rank, clock), absl::Now() + wait,
                      [] { return false; }, response);
  }

  absl::StatusOr<PushResponse> Push(int rank, int64_t step) {
    return store.Push(shape.MakePush(rank, step));
  }

  Params Latest(int64_t* step = nullptr) {
    PullResponse response;
    REQUIRE(store
                .Pull(shape.MakePull(0, /*latest=*/true),
                      absl::Now() + absl::Seconds(60), [] { return false; },
                      &response)
                .ok());
    if (step != nullptr) *step = response.step();
    return Fixture::Decode(response);
  }

  ServerJobStatus JobStatus() {
    ServerStatus status = store.Status();
    REQUIRE(status.jobs_size() == 1);
    return status.jobs(0);
  }

  Fixture shape;  // its own BSP job is only used to build requests
  JobConfig config;
  ParameterStore store;
};

// The parameters after applying `pushes` (rank, step) one by one, each
// gradient scaled by 1/workers, as single SGD updates (the ASP rule).
Params AspReference(const AsyncFixture& f,
                    const std::vector<std::pair<int, int64_t>>& pushes) {
  Params params = Initial(f.config, f.shape.placement);
  const float scale = 1.0f / static_cast<float>(f.config.workers());
  int64_t update = 0;
  for (const auto& [rank, step] : pushes) {
    for (auto& [id, w] : params) {
      std::vector<float> g(w.size());
      for (size_t k = 0; k < g.size(); ++k) {
        g[k] = Grad(rank, step, id, static_cast<int64_t>(k)) * scale;
      }
      ApplyOptimizer(f.config.optimizer(), update, g.data(),
                     static_cast<int64_t>(w.size()), w.data(), nullptr);
    }
    ++update;
  }
  return params;
}

TEST_CASE("ParameterStore: ASP applies each push on arrival, scaled by "
          "1/workers, and a pull does not wait for other ranks",
          "[store][asp]") {
  AsyncFixture f(ASP, 2);
  REQUIRE(f.Push(0, 0).ok());
  int64_t step = 0;
  Params after_one = f.Latest(&step);
  CHECK(step == 1);  // applied without rank 1's push
  CHECK(Bitwise(after_one, AspReference(f, {{0, 0}})));
  // Rank 0 pulls for its step 1 at once, and pushes it: rank 1 has pushed
  // nothing yet.
  PullResponse response;
  REQUIRE(f.PullFor(0, 1, absl::Seconds(5), &response).ok());
  CHECK(response.clock() == 1);
  CHECK(Bitwise(Fixture::Decode(response), after_one));
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(1, 0).ok());
  Params got = f.Latest(&step);
  CHECK(step == 3);
  CHECK(Bitwise(got, AspReference(f, {{0, 0}, {0, 1}, {1, 0}})));
  ServerJobStatus status = f.JobStatus();
  CHECK(status.consistency() == "ASP");
  REQUIRE(status.worker_clocks_size() == 2);
  CHECK(status.worker_clocks(0) == 2);
  CHECK(status.worker_clocks(1) == 1);
  // The pull at clock 1 read while rank 1 was at clock 0: staleness 1.
  CHECK(status.max_staleness() == 1);
  REQUIRE(status.staleness_counts_size() == 16);
  CHECK(status.staleness_counts(1) == 1);
}

TEST_CASE("ParameterStore: parameter groups: each partition follows its "
          "parameter's consistency model",
          "[store][asp][groups]") {
  // The job is BSP; layer1.weight and layer1.bias form an ASP group.
  Fixture bsp(2);  // the same job all under BSP, for reference
  JobConfig config = Config(2);
  ParameterGroup* group = config.add_parameter_groups();
  group->add_parameters("layer1.weight");
  group->add_parameters("layer1.bias");
  group->set_consistency(ASP);
  ParameterStore store;
  REQUIRE(store.CreateJob(CreateRequest(config)).ok());
  const std::vector<ParameterSpec> specs = ModelParameters(config.model());
  std::set<int32_t> asp_ids;
  for (const Partition& part : bsp.placement.partitions()) {
    if (specs[part.parameter()].name().rfind("layer1.", 0) == 0) {
      asp_ids.insert(part.id());
    }
  }
  REQUIRE(!asp_ids.empty());
  REQUIRE(asp_ids.size() < static_cast<size_t>(bsp.placement.partitions_size()));
  auto latest = [&] {
    PullResponse response;
    REQUIRE(store
                .Pull(bsp.MakePull(0, /*latest=*/true),
                      absl::Now() + absl::Seconds(60), [] { return false; },
                      &response)
                .ok());
    return Fixture::Decode(response);
  };
  const Params initial = Initial(config, bsp.placement);

  // Rank 0's push: applied at once to the ASP partitions only.
  REQUIRE(store.Push(bsp.MakePush(0, 0)).ok());
  Params got = latest();
  for (const auto& [id, values] : got) {
    const bool changed =
        std::memcmp(values.data(), initial.at(id).data(),
                    values.size() * sizeof(float)) != 0;
    CHECK(changed == (asp_ids.count(id) > 0));
  }
  // Its pull of step 1 waits for the BSP partitions (rank 1's push).
  PullResponse response;
  absl::Status waited = store.Pull(bsp.MakePull(1), absl::Now(),
                                   [] { return false; }, &response);
  CHECK(waited.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(waited.message(), "waiting for other workers' pushes"));

  REQUIRE(store.Push(bsp.MakePush(1, 0)).ok());
  REQUIRE(store.Pull(bsp.MakePull(1), absl::Now() + absl::Seconds(5),
                     [] { return false; }, &response)
              .ok());
  CHECK(response.clock() == 1);
  CHECK(response.step() == 1);  // BSP partitions: 1 step; ASP ones: 2 updates
  // BSP partitions as in the all-BSP job; ASP ones as two ASP updates.
  bsp.PushOk(0, 0);
  bsp.PushOk(1, 0);
  const Params all_bsp = bsp.Latest();
  AsyncFixture reference(ASP, 2);
  const Params asp = AspReference(reference, {{0, 0}, {1, 0}});
  got = Fixture::Decode(response);
  for (const auto& [id, values] : got) {
    const Params& want = asp_ids.count(id) ? asp : all_bsp;
    CHECK(Bitwise({{id, values}}, {{id, want.at(id)}}));
  }
  ServerStatus status = store.Status();
  REQUIRE(status.jobs_size() == 1);
  CHECK(status.jobs(0).consistency() == "BSP; ASP: layer1.weight, layer1.bias");
  REQUIRE(status.jobs(0).worker_clocks_size() == 2);
  CHECK(status.jobs(0).worker_clocks(0) == 1);
  CHECK(status.jobs(0).worker_clocks(1) == 1);
  CHECK(status.jobs(0).staleness_counts_size() == 16);
}

TEST_CASE("ParameterStore: an ASP pull waits for the rank's own previous "
          "push only (read-my-writes)",
          "[store][asp]") {
  AsyncFixture f(ASP, 2);
  PullResponse response;
  absl::Status status = f.PullFor(0, 1, absl::ZeroDuration(), &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(status.message(), "rank 0's own push of step 0"));
  REQUIRE(f.Push(0, 0).ok());
  CHECK(f.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
}

TEST_CASE("ParameterStore: under ASP and SSP a retried push is acknowledged "
          "and never applied twice, and a push ahead is refused",
          "[store][asp][ssp][dedup]") {
  for (Consistency mode : {ASP, SSP}) {
    INFO("mode " << mode);
    AsyncFixture f(mode, 2, /*staleness=*/mode == SSP ? 3 : 0);
    auto first = f.Push(1, 0);
    REQUIRE(first.ok());
    CHECK_FALSE(first->duplicate());
    Params once = f.Latest();
    auto again = f.Push(1, 0);
    REQUIRE(again.ok());
    CHECK(again->duplicate());
    int64_t step = 0;
    CHECK(Bitwise(f.Latest(&step), once));
    CHECK(step == 1);
    // Rank 1's next step is 1: 2 is a gap.
    auto ahead = f.Push(1, 2);
    CHECK(ahead.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(StartsWith(ahead.status().message(), "step: 2 from rank 1"));
    REQUIRE(f.Push(1, 1).ok());
    CHECK(f.Push(1, 1)->duplicate());
    CHECK(f.Push(1, 0)->duplicate());
    f.Latest(&step);
    CHECK(step == 2);
  }
}

TEST_CASE("ParameterStore: an SSP pull waits until the slowest rank is "
          "within the staleness bound",
          "[store][ssp]") {
  AsyncFixture f(SSP, 3, /*staleness=*/1);
  // Rank 0 runs ahead: clock 0 and 1 readable at once (bound 1).
  PullResponse response;
  REQUIRE(f.PullFor(0, 0, absl::ZeroDuration(), &response).ok());
  REQUIRE(f.Push(0, 0).ok());
  REQUIRE(f.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(1, 0).ok());
  // Clock 2 needs every rank at >= 1; rank 2 is at 0.
  absl::Notification answered;
  absl::Status result;
  PullResponse waited;
  f.store.PullAsync(f.store.NewPullId(), f.MakePull(0, 2), &waited,
                    [&](absl::Status status) {
                      result = status;
                      answered.Notify();
                    });
  CHECK_FALSE(answered.HasBeenNotified());
  REQUIRE(f.Push(2, 0).ok());  // rank 2 reaches clock 1
  REQUIRE(answered.HasBeenNotified());
  REQUIRE(result.ok());
  CHECK(waited.clock() == 2);
  CHECK(waited.step() == 4);  // 4 pushes applied
  ServerJobStatus status = f.JobStatus();
  CHECK(status.consistency() == "SSP(s=1)");
  CHECK(status.max_staleness() == 1);
  REQUIRE(status.worker_clocks_size() == 3);
  CHECK(status.worker_clocks(0) == 2);
  CHECK(status.worker_clocks(1) == 1);
  CHECK(status.worker_clocks(2) == 1);
}

TEST_CASE("ParameterStore: an SSP pull past its deadline ends with "
          "DEADLINE_EXCEEDED naming the bound and the slowest rank",
          "[store][ssp]") {
  AsyncFixture f(SSP, 3, /*staleness=*/1);
  REQUIRE(f.Push(0, 0).ok());
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(2, 0).ok());
  PullResponse response;
  absl::Status status =
      f.PullFor(0, 2, absl::Milliseconds(50), &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(status.message(), "SSP staleness bound 1"));
  CHECK(Contains(status.message(), "rank 0 at clock 2"));
  CHECK(Contains(status.message(), "slowest is rank 1 at clock 0"));
  // The expired pull is gone: a later push answers nothing and works.
  REQUIRE(f.Push(1, 0).ok());
  CHECK(f.PullFor(0, 2, absl::ZeroDuration(), &response).ok());
}

TEST_CASE("ParameterStore: SSP workers running at different speeds never "
          "read beyond the staleness bound",
          "[store][ssp]") {
  constexpr int kWorkers = 3;
  constexpr int kStaleness = 2;
  constexpr int64_t kSteps = 30;
  AsyncFixture f(SSP, kWorkers, kStaleness);
  std::vector<std::thread> threads;
  std::vector<absl::Status> errors(kWorkers);
  for (int rank = 0; rank < kWorkers; ++rank) {
    threads.emplace_back([&, rank] {
      for (int64_t c = 0; c < kSteps; ++c) {
        PullResponse response;
        absl::Status status = f.PullFor(rank, c, absl::Seconds(30), &response);
        if (!status.ok()) {
          errors[rank] = status;
          return;
        }
        auto pushed = f.Push(rank, c);
        if (!pushed.ok()) {
          errors[rank] = pushed.status();
          return;
        }
        // Rank 2 is slow.
        if (rank == 2) absl::SleepFor(absl::Milliseconds(2));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& e : errors) REQUIRE(e.ok());
  ServerJobStatus status = f.JobStatus();
  CHECK(status.max_staleness() <= kStaleness);
  int64_t pulls = 0;
  for (int64_t n : status.staleness_counts()) pulls += n;
  CHECK(pulls == kWorkers * kSteps);
  for (int64_t c : status.worker_clocks()) CHECK(c == kSteps);
  int64_t step = 0;
  f.Latest(&step);
  CHECK(step == kWorkers * kSteps);
}

// Replication under ASP: the primary's updates go to its backup first; pushes
// arriving meanwhile are aggregated into the next update; the backup stays
// bitwise equal, with the same dedup table (clocks).
TEST_CASE("ParameterStore: ASP updates are replicated before they are "
          "visible, queued pushes aggregate, and the backup stays bitwise "
          "equal",
          "[store][asp][replication]") {
  std::vector<ReplicationTask> sent;
  ParameterStoreOptions options;
  options.replicate = [&sent](ReplicationTask task) {
    sent.push_back(std::move(task));
  };
  AsyncFixture primary(ASP, 3, 0, options);
  AsyncFixture backup(ASP, 3);
  for (auto [store, id] : {std::pair{&primary.store, "p"},
                           std::pair{&backup.store, "b"}}) {
    SetViewRequest view;
    view.set_job_id(kJob);
    view.set_server_id(id);
    view.mutable_view()->set_epoch(kEpoch);
    ShardReplicas* shard = view.mutable_view()->add_shards();
    shard->set_shard(0);
    shard->set_primary("p");
    shard->add_backups("b");
    ServerInfo* p = view.mutable_view()->add_servers();
    p->set_id("p");
    p->set_address("P:1");
    ServerInfo* b = view.mutable_view()->add_servers();
    b->set_id("b");
    b->set_address("B:1");
    REQUIRE(store->SetView(view).ok());
  }
  const int partitions = primary.shape.placement.partitions_size();
  // Delivers every task sent so far to the backup and acknowledges it.
  auto deliver = [&] {
    std::vector<ReplicationTask> tasks;
    tasks.swap(sent);
    for (const ReplicationTask& task : tasks) {
      CHECK(task.address == "B:1");
      auto replicated = backup.store.Replicate(*task.request);
      REQUIRE(replicated.ok());
      CHECK(primary.store.OnReplicated(task, absl::OkStatus()) == std::nullopt);
    }
    return tasks;
  };
  REQUIRE(primary.Push(0, 0).ok());
  REQUIRE(static_cast<int>(sent.size()) == partitions);
  CHECK(sent[0].request->step() == 0);
  CHECK(std::vector<int64_t>(sent[0].request->clocks().begin(),
                             sent[0].request->clocks().end()) ==
        std::vector<int64_t>{1, 0, 0});
  // Not visible before the backup has it: rank 0's pull of clock 1 waits.
  PullResponse response;
  CHECK(primary.PullFor(0, 1, absl::ZeroDuration(), &response).code() ==
        absl::StatusCode::kDeadlineExceeded);
  int64_t step = -1;
  primary.Latest(&step);
  CHECK(step == 0);
  // Ranks 1 and 2 push while it is replicated: queued, one update.
  REQUIRE(primary.Push(2, 0).ok());
  REQUIRE(primary.Push(1, 0).ok());
  CHECK(primary.Push(1, 0)->duplicate());  // queued counts as taken
  CHECK(static_cast<int>(sent.size()) == partitions);
  std::vector<ReplicationTask> first = deliver();
  // The first update is applied; the aggregate of ranks 2 and 1 is sent.
  REQUIRE(static_cast<int>(sent.size()) == partitions);
  CHECK(sent[0].request->step() == 1);
  CHECK(std::vector<int64_t>(sent[0].request->clocks().begin(),
                             sent[0].request->clocks().end()) ==
        std::vector<int64_t>{1, 1, 1});
  REQUIRE(primary.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
  CHECK(primary.PullFor(1, 1, absl::ZeroDuration(), &response).code() ==
        absl::StatusCode::kDeadlineExceeded);
  deliver();
  CHECK(sent.empty());
  REQUIRE(primary.PullFor(1, 1, absl::ZeroDuration(), &response).ok());
  Params p = primary.Latest(&step);
  CHECK(step == 2);
  int64_t backup_step = -1;
  CHECK(Bitwise(backup.Latest(&backup_step), p));
  CHECK(backup_step == 2);
  // The aggregate is (g2 + g1) / 3, summed in arrival order, as one update.
  Params expected = AspReference(primary, {{0, 0}});
  for (auto& [id, w] : expected) {
    std::vector<float> g(w.size());
    for (size_t k = 0; k < g.size(); ++k) {
      g[k] = Grad(2, 0, id, static_cast<int64_t>(k)) * (1.0f / 3.0f);
      g[k] += Grad(1, 0, id, static_cast<int64_t>(k)) * (1.0f / 3.0f);
    }
    ApplyOptimizer(primary.config.optimizer(), 1, g.data(),
                   static_cast<int64_t>(w.size()), w.data(), nullptr);
  }
  CHECK(Bitwise(p, expected));
  // A replication retried after it was applied is a duplicate on the backup.
  auto again = backup.store.Replicate(*first[0].request);
  REQUIRE(again.ok());
  CHECK(again->duplicate());
  // The backup has the dedup table: promoted, it refuses rank 1's step 0
  // again as a duplicate and takes step 1.
  SetViewRequest promote;
  promote.set_job_id(kJob);
  promote.set_server_id("b");
  promote.mutable_view()->set_epoch(kEpoch);
  ShardReplicas* shard = promote.mutable_view()->add_shards();
  shard->set_shard(0);
  shard->set_primary("b");
  REQUIRE(backup.store.SetView(promote).ok());
  CHECK(backup.Push(1, 0)->duplicate());
  CHECK_FALSE(backup.Push(1, 1)->duplicate());
  ServerJobStatus status = backup.JobStatus();
  REQUIRE(status.worker_clocks_size() == 3);
  CHECK(status.worker_clocks(1) == 2);
}


// ---- Snapshots of ASP/SSP partitions (snapshot step k: every rank's pushes
// of steps < k applied) ----

// The partition's current state as the store holds it (CopyPartition).
InstallPartitionRequest Current(ParameterStore& store, int32_t id) {
  auto copy = store.CopyPartition(kJob, id);
  REQUIRE(copy.ok());
  return *copy;
}

// The snapshot's partition equals the store's current state of it: weights
// and slots bit for bit, clocks and update count (ASP/SSP) or no clocks.
void CheckCapturedNow(ParameterStore& store, const PartitionSnapshot& part,
                      bool async) {
  const InstallPartitionRequest now = Current(store, part.id);
  INFO("partition " << part.id);
  CHECK(now.weights().data() ==
        std::string(reinterpret_cast<const char*>(part.weights.data()),
                    4 * part.weights.size()));
  CHECK(now.slots().data() ==
        std::string(reinterpret_cast<const char*>(part.slots.data()),
                    4 * part.slots.size()));
  CHECK(!part.slots.empty());  // momentum: one slot
  if (async) {
    CHECK(part.clocks == std::vector<int64_t>(now.clocks().begin(),
                                              now.clocks().end()));
    CHECK(part.updates == now.step());
  } else {
    CHECK(part.clocks.empty());
  }
}

TEST_CASE("ParameterStore: an ASP job is captured when its slowest rank's "
          "clock reaches the snapshot step, with its clocks; restored, the "
          "pushes it holds are duplicates",
          "[store][asp][snapshot]") {
  std::vector<ShardSnapshot> captured;
  ParameterStoreOptions options;
  options.snapshot_sink = [&captured](ShardSnapshot s) {
    captured.push_back(std::move(s));
  };
  auto edit = [](JobConfig* c) {
    c->mutable_optimizer()->set_momentum(0.9f);
    c->mutable_snapshot()->set_every_steps(2);
  };
  AsyncFixture f(ASP, 2, 0, options, edit);
  const int partitions = f.shape.placement.partitions_size();
  // Rank 0 runs ahead to clock 3; rank 1 is at 1: the slowest is at 1.
  for (int64_t step : {0, 1, 2}) REQUIRE(f.Push(0, step).ok());
  REQUIRE(f.Push(1, 0).ok());
  CHECK(captured.empty());
  // A requested snapshot at a step the slowest rank has reached is refused.
  absl::Status late = f.store.RequestSnapshot(kJob, 1);
  CHECK(absl::IsFailedPrecondition(late));
  CHECK(Contains(late.message(), "slowest rank's clock"));
  REQUIRE(f.store.RequestSnapshot(kJob, 3).ok());
  // Rank 1's push of step 1 brings the slowest clock to 2: step 2 is due.
  REQUIRE(f.Push(1, 1).ok());
  REQUIRE(captured.size() == 1);
  const ShardSnapshot snap = captured[0];
  CHECK(snap.manifest.step() == 2);
  REQUIRE(static_cast<int>(snap.partitions.size()) == partitions);
  for (const PartitionSnapshot& part : snap.partitions) {
    CheckCapturedNow(f.store, part, /*async=*/true);
    CHECK(part.clocks == std::vector<int64_t>{3, 2});
    CHECK(part.updates == 5);
  }
  // The weights are those of the five pushes, rank 0's step 2 included.
  Params weights;
  for (const PartitionSnapshot& part : snap.partitions) {
    weights[part.id] = part.weights;
  }
  // (The reference applies plain SGD; compare with momentum through the
  // store itself instead: a fresh store given the same pushes.)
  AsyncFixture again(ASP, 2, 0, {}, edit);
  for (auto [rank, step] : std::vector<std::pair<int, int64_t>>{
           {0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}}) {
    REQUIRE(again.Push(rank, step).ok());
  }
  CHECK(Bitwise(weights, again.Latest()));
  // The requested step 3 comes when rank 1 reaches clock 3.
  REQUIRE(f.Push(1, 2).ok());
  REQUIRE(captured.size() == 2);
  CHECK(captured[1].manifest.step() == 3);
  CHECK(captured[1].partitions[0].clocks == std::vector<int64_t>{3, 3});

  // Restored at step 2 in a new store: every rank resumes at step 2.
  ParameterStore restored;
  REQUIRE(restored.Restore(snap, kEpoch).ok());
  for (const PartitionSnapshot& part : snap.partitions) {
    CheckCapturedNow(restored, part, /*async=*/true);
  }
  // Both ranks may read clock 2 at once.
  for (int rank : {0, 1}) {
    PullRequest pull = f.MakePull(rank, 2);
    PullResponse response;
    REQUIRE(restored.Pull(pull, absl::Now(), [] { return false; }, &response)
                .ok());
    CHECK(Bitwise(Fixture::Decode(response), weights));
  }
  // Rank 0 re-sends its step 2: a duplicate, not applied twice.
  auto dup = restored.Push(f.shape.MakePush(0, 2));
  REQUIRE(dup.ok());
  CHECK(dup->duplicate());
  // Rank 1's step 2 is new: applied as in the run never stopped.
  auto fresh = restored.Push(f.shape.MakePush(1, 2));
  REQUIRE(fresh.ok());
  CHECK_FALSE(fresh->duplicate());
  for (const Partition& part : f.shape.placement.partitions()) {
    const InstallPartitionRequest a = Current(restored, part.id());
    const InstallPartitionRequest b = Current(f.store, part.id());
    CHECK(a.weights().data() == b.weights().data());
    CHECK(a.slots().data() == b.slots().data());
    CHECK(a.step() == b.step());
    CHECK(std::vector<int64_t>(a.clocks().begin(), a.clocks().end()) ==
          std::vector<int64_t>{3, 3});
  }
  // A snapshot whose partitions lack their clocks is refused.
  ShardSnapshot stripped = snap;
  stripped.manifest.set_job_id("job-2");
  stripped.partitions[0].clocks.clear();
  absl::Status bad = restored.Restore(stripped, kEpoch);
  CHECK(absl::IsInvalidArgument(bad));
  CHECK(Contains(bad.message(), "is under ASP/SSP but has 0 worker clocks"));
}

TEST_CASE("ParameterStore: a job mixing BSP and ASP groups captures its BSP "
          "partitions at the step boundary and its ASP ones by the slowest "
          "clock, in one snapshot",
          "[store][asp][groups][snapshot]") {
  std::vector<ShardSnapshot> captured;
  ParameterStoreOptions options;
  options.snapshot_sink = [&captured](ShardSnapshot s) {
    captured.push_back(std::move(s));
  };
  Fixture shape(2);
  JobConfig config = Config(2, /*momentum=*/0.9f);
  ParameterGroup* group = config.add_parameter_groups();
  group->add_parameters("layer1.weight");
  group->add_parameters("layer1.bias");
  group->set_consistency(ASP);
  config.mutable_snapshot()->set_every_steps(2);
  ParameterStore store(options);
  REQUIRE(store.CreateJob(CreateRequest(config)).ok());
  const std::vector<ParameterSpec> specs = ModelParameters(config.model());
  std::set<int32_t> asp_ids;
  for (const Partition& part : shape.placement.partitions()) {
    if (specs[part.parameter()].name().rfind("layer1.", 0) == 0) {
      asp_ids.insert(part.id());
    }
  }
  REQUIRE(!asp_ids.empty());
  for (int64_t step : {0, 1}) {
    REQUIRE(store.Push(shape.MakePush(0, step)).ok());
    CHECK(captured.empty());
    REQUIRE(store.Push(shape.MakePush(1, step)).ok());
  }
  REQUIRE(captured.size() == 1);
  const ShardSnapshot snap = captured[0];
  CHECK(snap.manifest.step() == 2);
  REQUIRE(static_cast<int>(snap.partitions.size()) ==
          shape.placement.partitions_size());
  for (const PartitionSnapshot& part : snap.partitions) {
    const bool async = asp_ids.count(part.id) > 0;
    CheckCapturedNow(store, part, async);
    if (async) {
      CHECK(part.clocks == std::vector<int64_t>{2, 2});
      CHECK(part.updates == 4);
    }
  }
  // Restored: both ranks go on at step 2; a re-sent step 1 is a duplicate.
  ParameterStore restored;
  REQUIRE(restored.Restore(snap, kEpoch).ok());
  auto dup = restored.Push(shape.MakePush(0, 1));
  REQUIRE(dup.ok());
  CHECK(dup->duplicate());
  for (ParameterStore* s : {&store, &restored}) {
    REQUIRE(s->Push(shape.MakePush(0, 2)).ok());
    REQUIRE(s->Push(shape.MakePush(1, 2)).ok());
  }
  for (const Partition& part : shape.placement.partitions()) {
    const InstallPartitionRequest a = Current(restored, part.id());
    const InstallPartitionRequest b = Current(store, part.id());
    INFO("partition " << part.id());
    CHECK(a.weights().data() == b.weights().data());
    CHECK(a.slots().data() == b.slots().data());
    CHECK(a.step() == b.step());
  }
}

}  // namespace
}  // namespace psd
