#include "common/quote.h"

#include <string>

#include <catch2/catch.hpp>

namespace psd {
namespace {

TEST_CASE("Quote: short strings are quoted whole, control bytes escaped",
          "[quote]") {
  CHECK(Quote("job-1") == "\"job-1\"");
  CHECK(Quote("a\nb\"c\x01") == "\"a\\nb\\\"c\\001\"");
  CHECK(Quote("") == "\"\"");
}

TEST_CASE("Quote: a long string is cut to its first characters and its size",
          "[quote]") {
  const std::string huge(10 << 20, 'x');
  CHECK(Quote(huge, 4) == "\"xxxx...\" (10485760 bytes)");
  CHECK(Quote(huge).size() < 100);
}

}  // namespace
}  // namespace psd
