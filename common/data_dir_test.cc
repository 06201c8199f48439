#include "common/data_dir.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

namespace psd {
namespace {

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  return std::string(base != nullptr ? base : "/tmp") + "/" + name + "." +
         std::to_string(getpid());
}

TEST_CASE("DataDirLock: a second holder is refused with the first one's pid",
          "[data_dir]") {
  const std::string dir = TempDir("held");
  auto first = DataDirLock::Acquire(dir);
  REQUIRE(first.ok());
  // flock is per open file description: a second open in this process
  // conflicts just as another process would.
  auto second = DataDirLock::Acquire(dir);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == absl::StatusCode::kFailedPrecondition);
  const std::string message(second.status().message());
  CHECK(message.find(dir) != std::string::npos);
  CHECK(message.find("in use by pid " + std::to_string(getpid())) !=
        std::string::npos);
  first->reset();
  CHECK(DataDirLock::Acquire(dir).ok());
}

TEST_CASE("DataDirLock: a killed holder leaves no stale lock", "[data_dir]") {
  const std::string dir = TempDir("killed");
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto lock = DataDirLock::Acquire(dir);
    _exit(lock.ok() ? 0 : 1);  // exits holding it, without the destructor
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(DataDirLock::Acquire(dir).ok());
}

TEST_CASE("DataDirLock: a path that cannot be a directory is a clear error",
          "[data_dir]") {
  const std::string file = TempDir("plain-file");
  std::ofstream(file) << "x";
  auto lock = DataDirLock::Acquire(file + "/sub");
  REQUIRE_FALSE(lock.ok());
  CHECK(std::string(lock.status().message()).find(file) != std::string::npos);
}

TEST_CASE("MoveAside: a damaged store goes to <path>.corrupt-<time>, never "
          "over an earlier one", "[data_dir]") {
  const std::string dir = TempDir("aside");
  const std::string store = dir + "/snapshots";
  std::filesystem::create_directories(store);
  std::ofstream(store + "/MANIFEST-000001") << "damaged";
  const absl::Time now = absl::FromUnixSeconds(1796481000);  // 2026-12-05
  auto moved = MoveAside(store, now);
  REQUIRE(moved.ok());
  CHECK(*moved == store + ".corrupt-20261205T143000Z");
  CHECK_FALSE(std::filesystem::exists(store));
  CHECK(std::filesystem::exists(*moved + "/MANIFEST-000001"));

  std::filesystem::create_directories(store);  // damaged again, same second
  auto again = MoveAside(store, now);
  REQUIRE(again.ok());
  CHECK(*again == store + ".corrupt-20261205T143000Z.1");
  CHECK(std::filesystem::exists(*moved + "/MANIFEST-000001"));

  auto missing = MoveAside(store, now);
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace psd
