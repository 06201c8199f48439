#include "worker/row_cache.h"

#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

TEST_CASE("RowCache: staleness bound, LRU order, counters", "[row_cache]") {
  auto made = RowCache::Create(2, /*staleness_steps=*/3, /*capacity_rows=*/2);
  REQUIRE(made.ok());
  RowCache cache = *std::move(made);
  float out[2] = {0, 0};
  CHECK_FALSE(cache.Lookup(1, 0, out));
  const float a[2] = {1, 2}, b[2] = {3, 4}, c[2] = {5, 6};
  cache.Insert(1, 10, a);
  cache.Insert(2, 10, b);
  // Fetched at 10: usable up to step 13.
  REQUIRE(cache.Lookup(1, 13, out));
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
  // 1 is now more recent than 2: inserting 3 drops 2.
  cache.Insert(3, 12, c);
  CHECK(cache.size() == 2);
  CHECK(cache.evictions() == 1);
  CHECK_FALSE(cache.Lookup(2, 12, out));
  REQUIRE(cache.Lookup(3, 12, out));
  CHECK(out[0] == 5);
  // Too old at step 14: a miss, and the copy is dropped.
  CHECK_FALSE(cache.Lookup(1, 14, out));
  CHECK(cache.size() == 1);
  // A re-insert refreshes the copy.
  cache.Insert(1, 14, b);
  REQUIRE(cache.Lookup(1, 17, out));
  CHECK(out[0] == 3);
  CHECK(cache.hits() == 3);
  CHECK(cache.misses() == 3);
  cache.Clear();
  CHECK(cache.size() == 0);
  CHECK_FALSE(cache.Lookup(1, 17, out));
}

TEST_CASE("RowCache: staleness 0 answers only copies of the same step",
          "[row_cache]") {
  RowCache cache = *RowCache::Create(1, 0, 10);
  const float v = 7;
  float out = 0;
  cache.Insert(4, 5, &v);
  CHECK(cache.Lookup(4, 5, &out));
  CHECK_FALSE(cache.Lookup(4, 6, &out));
}

TEST_CASE("RowCache: bad arguments are named", "[row_cache]") {
  CHECK(RowCache::Create(0, 1, 1).status().message().find("dim") !=
        std::string::npos);
  CHECK(RowCache::Create(1, -1, 1).status().message().find("staleness_steps") !=
        std::string::npos);
  CHECK(RowCache::Create(1, 1, 0).status().message().find("capacity_rows") !=
        std::string::npos);
}

}  // namespace
}  // namespace psd
