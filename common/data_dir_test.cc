#include "common/data_dir.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
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

}  // namespace
}  // namespace psd
