#include "common/placement.h"

#include <algorithm>
#include <numeric>

#include <catch2/catch.hpp>

#include "common/job_config.h"

namespace psd {
namespace {

std::vector<ParameterSpec> Mlp(std::vector<int> hidden) {
  ModelSpec model;
  model.set_input_dim(784);
  for (int h : hidden) model.add_hidden_sizes(h);
  model.set_num_classes(10);
  return ModelParameters(model);
}

TEST_CASE("Placement: partitions cover every parameter exactly once",
          "[placement]") {
  auto params = Mlp({256, 128});
  auto placement = BuildPlacement(params, 64 << 10, 3);
  REQUIRE(placement.ok());
  for (int p = 0; p < static_cast<int>(params.size()); ++p) {
    int64_t next = 0;
    for (const Partition& part : placement->partitions()) {
      if (part.parameter() != p) continue;
      CHECK(part.offset() == next);
      CHECK(part.num_elements() * 4 <= (64 << 10));
      next += part.num_elements();
    }
    CHECK(next == NumElements(params[p]));
  }
  for (int i = 0; i < placement->partitions_size(); ++i) {
    CHECK(placement->partitions(i).id() == i);
  }
}

TEST_CASE("Placement: bytes are balanced across shards", "[placement]") {
  auto params = Mlp({1024, 1024, 512});
  for (int shards : {2, 3, 5, 8}) {
    auto placement = BuildPlacement(params, 256 << 10, shards);
    REQUIRE(placement.ok());
    std::vector<int64_t> bytes = ShardBytes(*placement);
    const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
    const int64_t largest = *std::max_element(bytes.begin(), bytes.end());
    // Greedy LPT: no shard exceeds the mean by more than one partition.
    INFO("shards " << shards);
    CHECK(largest <= total / shards + (256 << 10));
    CHECK(*std::min_element(bytes.begin(), bytes.end()) > 0);
  }
}

TEST_CASE("Placement: deterministic in its inputs", "[placement]") {
  auto params = Mlp({256, 128});
  auto a = BuildPlacement(params, 1 << 20, 2);
  auto b = BuildPlacement(params, 1 << 20, 2);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->SerializeAsString() == b->SerializeAsString());
}

TEST_CASE("Placement: bad arguments are errors, not crashes", "[placement]") {
  auto params = Mlp({256});
  CHECK(BuildPlacement(params, 1 << 20, 0).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(BuildPlacement(params, 2, 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
  params[0].set_shape(0, 0);
  CHECK(BuildPlacement(params, 1 << 20, 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("InitialValues: Glorot range, zero bias, seed-determined",
          "[placement]") {
  auto params = Mlp({256, 128});
  auto w = InitialValues(params[0], 0, 7);
  REQUIRE(w.size() == 784u * 256u);
  const float limit = std::sqrt(6.0f / (784 + 256));
  CHECK(*std::max_element(w.begin(), w.end()) <= limit);
  CHECK(*std::min_element(w.begin(), w.end()) >= -limit);
  CHECK(*std::max_element(w.begin(), w.end()) > 0.9f * limit);
  CHECK(w == InitialValues(params[0], 0, 7));
  CHECK(w != InitialValues(params[0], 0, 8));
  auto b = InitialValues(params[1], 1, 7);
  CHECK(std::all_of(b.begin(), b.end(), [](float x) { return x == 0.0f; }));
}

TEST_CASE("InitialValues: a convolution's fans count its kernel (torch's "
          "xavier_uniform_)",
          "[placement]") {
  ParameterSpec conv;
  conv.set_name("conv1.weight");
  for (int d : {32, 16, 3, 3}) conv.add_shape(d);
  auto w = InitialValues(conv, 0, 7);
  REQUIRE(w.size() == 32u * 16u * 9u);
  const float limit = std::sqrt(6.0f / ((32 + 16) * 9));
  CHECK(*std::max_element(w.begin(), w.end()) <= limit);
  CHECK(*std::min_element(w.begin(), w.end()) >= -limit);
  CHECK(*std::max_element(w.begin(), w.end()) > 0.9f * limit);
}

}  // namespace
}  // namespace psd
