// Row placement and seeded row initialisation (common/embedding_rows.h),
// which servers and workers must agree on bit for bit.
#include "common/embedding_rows.h"

#include <cmath>
#include <cstdlib>
#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

TEST_CASE("SplitMix64Mix: the reference generator's first outputs",
          "[embedding]") {
  // splitmix64 seeded with 0 (Vigna's splitmix64.c) returns
  // Mix(0), Mix(gamma), ...: the published first two outputs.
  CHECK(SplitMix64Mix(0) == 0xe220a8397b1dcdafULL);
  CHECK(SplitMix64Mix(0x9e3779b97f4a7c15ULL) == 0x6e789e6aa1b965f4ULL);
}

TEST_CASE("InitialRow: seeded, in range, and statistically sane",
          "[embedding]") {
  EmbeddingInitializer uniform;
  uniform.set_kind(EmbeddingInitializer::UNIFORM);
  uniform.set_scale(0.5f);
  uniform.set_seed(7);
  EmbeddingInitializer normal = uniform;
  normal.set_kind(EmbeddingInitializer::NORMAL);
  const int dim = 16;
  double sum = 0, sum2 = 0, nsum = 0, nsum2 = 0;
  const int rows = 20000;
  std::vector<float> row(dim), again(dim);
  for (int r = 0; r < rows; ++r) {
    InitialRow(uniform, dim, 1000003ULL * r, row.data());
    InitialRow(uniform, dim, 1000003ULL * r, again.data());
    REQUIRE(row == again);
    for (float v : row) {
      REQUIRE(v >= -0.5f);
      REQUIRE(v < 0.5f);
      sum += v;
      sum2 += v * v;
    }
    InitialRow(normal, dim, r, row.data());
    for (float v : row) {
      REQUIRE(std::isfinite(v));
      nsum += v;
      nsum2 += v * v;
    }
  }
  const double n = double{rows} * dim;
  CHECK(sum / n == Approx(0.0).margin(0.005));
  CHECK(sum2 / n == Approx(0.25 / 3).epsilon(0.02));  // var of U(-a, a)
  CHECK(nsum / n == Approx(0.0).margin(0.005));
  CHECK(nsum2 / n == Approx(0.25).epsilon(0.02));  // scale^2
  // Another seed gives other values.
  EmbeddingInitializer other = uniform;
  other.set_seed(8);
  InitialRow(uniform, dim, 5, row.data());
  InitialRow(other, dim, 5, again.data());
  CHECK(row != again);
}

TEST_CASE("ShardOfRow: deterministic and balanced", "[embedding]") {
  std::vector<int> count(4, 0);
  for (uint64_t r = 0; r < 40000; ++r) {
    const int s = ShardOfRow(r * 1000, 4);  // structured ids
    REQUIRE(s == ShardOfRow(r * 1000, 4));
    ++count[s];
  }
  for (int c : count) CHECK(std::abs(c - 10000) < 500);
}

}  // namespace
}  // namespace psd
