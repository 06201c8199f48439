// Tests of sharding, per-epoch data order and batch gathering. (Loading
// from IDX files is tested in idx_reader_test.cc, which writes the files.)
#include "worker/dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

TEST_CASE("ShardIndices: balanced, disjoint, contiguous and covering",
          "[dataset]") {
  for (int32_t size : {0, 1, 7, 10, 60000, 59999}) {
    for (int32_t ranks : {1, 2, 3, 7, 16}) {
      INFO("size=" << size << " ranks=" << ranks);
      std::vector<int32_t> all;
      size_t smallest = SIZE_MAX, largest = 0;
      for (int32_t r = 0; r < ranks; ++r) {
        const auto shard = ShardIndices(size, r, ranks);
        smallest = std::min(smallest, shard.size());
        largest = std::max(largest, shard.size());
        for (size_t i = 1; i < shard.size(); ++i) {
          REQUIRE(shard[i] == shard[i - 1] + 1);
        }
        all.insert(all.end(), shard.begin(), shard.end());
      }
      CHECK(largest - smallest <= 1);
      // Concatenated in rank order, the shards are exactly 0..size-1.
      std::vector<int32_t> want(size);
      std::iota(want.begin(), want.end(), 0);
      CHECK(all == want);
    }
  }
}

TEST_CASE("ShardIndices: the documented block boundaries", "[dataset]") {
  CHECK(ShardIndices(10, 0, 3) == std::vector<int32_t>{0, 1, 2});
  CHECK(ShardIndices(10, 1, 3) == std::vector<int32_t>{3, 4, 5});
  CHECK(ShardIndices(10, 2, 3) == std::vector<int32_t>{6, 7, 8, 9});
  CHECK(ShardIndices(10, 3, 3).empty());  // rank out of range
  CHECK(ShardIndices(10, 0, 0).empty());
}

TEST_CASE("EpochOrder: a deterministic permutation of the shard",
          "[dataset]") {
  const auto shard = ShardIndices(1000, 1, 3);
  const auto order = EpochOrder(shard, 42, 0, 1);
  CHECK(order == EpochOrder(shard, 42, 0, 1));
  auto sorted = order;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == shard);
  CHECK(order != shard);  // 1/333! chance of a false failure.
}

TEST_CASE("EpochOrder: differs across seeds, epochs and ranks", "[dataset]") {
  std::vector<int32_t> shard(500);
  std::iota(shard.begin(), shard.end(), 0);
  const auto base = EpochOrder(shard, 7, 3, 2);
  CHECK(base != EpochOrder(shard, 8, 3, 2));
  CHECK(base != EpochOrder(shard, 7, 4, 2));
  CHECK(base != EpochOrder(shard, 7, 3, 1));
  CHECK(base != EpochOrder(shard, 7ull | (1ull << 32), 3, 2));
  std::set<std::vector<int32_t>> epochs;
  for (int32_t e = 0; e < 20; ++e) epochs.insert(EpochOrder(shard, 7, e, 2));
  CHECK(epochs.size() == 20);
}

TEST_CASE("EpochOrder: small shards", "[dataset]") {
  CHECK(EpochOrder({}, 1, 0, 0).empty());
  CHECK(EpochOrder({5}, 1, 0, 0) == std::vector<int32_t>{5});
  // Every order of 3 elements shows up over enough epochs (roughly uniform).
  std::set<std::vector<int32_t>> seen;
  int first_is_zero = 0;
  for (int32_t e = 0; e < 600; ++e) {
    const auto order = EpochOrder({0, 1, 2}, 99, e, 0);
    seen.insert(order);
    first_is_zero += order[0] == 0;
  }
  CHECK(seen.size() == 6);
  CHECK(first_is_zero > 120);  // expected 200
  CHECK(first_is_zero < 280);
}

TEST_CASE("GatherBatch: copies rows and labels in index order", "[dataset]") {
  Dataset data;
  data.size = 4;
  data.dim = 3;
  data.features = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};
  data.labels = {5, 6, 7, 8};
  const int32_t idx[] = {3, 0, 3};
  std::vector<float> x(9);
  std::vector<int32_t> y(3);
  GatherBatch(data, idx, 3, x.data(), y.data());
  CHECK(x == std::vector<float>{30, 31, 32, 0, 1, 2, 30, 31, 32});
  CHECK(y == std::vector<int32_t>{8, 5, 8});
}

TEST_CASE("LoadDataset: real Fashion-MNIST test split, normalised",
          "[dataset][real]") {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    WARN("skipped: " << dir << " is absent (dataset-fashion-mnist)");
    return;
  }
  auto norm = ComputeNormalization(dir + "/train-images-idx3-ubyte.gz", 0);
  REQUIRE(norm.ok());
  // Published Fashion-MNIST statistics: mean 0.2860, std 0.3530.
  CHECK(norm->mean == Approx(0.2860).margin(1e-3));
  CHECK(norm->std == Approx(0.3530).margin(1e-3));
  auto data = LoadDataset(dir + "/t10k-images-idx3-ubyte.gz",
                          dir + "/t10k-labels-idx1-ubyte.gz", 0, 10, *norm);
  REQUIRE(data.ok());
  CHECK(data->size == 10000);
  CHECK(data->dim == 784);
  CHECK(data->features.size() == 10000u * 784);
  const double mean =
      std::accumulate(data->features.begin(), data->features.end(), 0.0) /
      data->features.size();
  CHECK(std::abs(mean) < 0.05);  // test set, train statistics
  CHECK(std::all_of(data->labels.begin(), data->labels.end(),
                    [](int32_t l) { return l >= 0 && l < 10; }));
}

}  // namespace
}  // namespace psd
