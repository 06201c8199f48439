// Helpers of the ParameterStore tests (parameter_store_test.cc,
// bsp_rule_test.cc, update_path_test.cc, pull_path_test.cc,
// async_rule_test.cc, snapshot_capture_test.cc): one MLP job on one shard,
// requests built for it, and comparisons of parameter sets.
#ifndef PSD_SERVER_PS_PARAMETER_STORE_TEST_UTIL_H_
#define PSD_SERVER_PS_PARAMETER_STORE_TEST_UTIL_H_

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "server/ps/parameter_store.h"

namespace psd {
namespace store_test {

inline constexpr char kJob[] = "job-1";
inline constexpr int64_t kEpoch = 3;
inline constexpr uint64_t kSeed = 7;

// MLP 784-8-10: layer0.weight [784, 8] (25088 bytes, cut into 7 partitions
// of at most 4096 bytes), layer0.bias [8], layer1.weight [8, 10],
// layer1.bias [10]; all on shard 0.
inline JobConfig Config(int workers, float momentum = 0.0f) {
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

inline CreateJobRequest CreateRequest(const JobConfig& config) {
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
inline float Grad(int rank, int64_t step, int32_t partition, int64_t k) {
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
inline bool Bitwise(const Params& a, const Params& b) {
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
inline Params Initial(const JobConfig& config, const Placement& placement) {
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

inline bool StartsWith(absl::string_view s, absl::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
inline bool Contains(absl::string_view s, absl::string_view part) {
  return s.find(part) != absl::string_view::npos;
}

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

}  // namespace store_test
}  // namespace psd

#endif  // PSD_SERVER_PS_PARAMETER_STORE_TEST_UTIL_H_
