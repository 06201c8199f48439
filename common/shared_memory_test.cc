#include "common/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"

namespace psd {
namespace {

bool Exists(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) return false;
  close(fd);
  return true;
}

TEST_CASE("SharedMemory: a created region is seen by an attached mapping",
          "[shared_memory]") {
  auto created = SharedMemory::Create(4096);
  REQUIRE(created.ok());
  const SharedRegion region = (*created)->region();
  CHECK(region.size() == 4096);
  CHECK(region.nonce().size() == SharedMemory::kNonceBytes);
  CHECK(region.name().rfind(absl::StrCat("/psd-", getpid(), "-"), 0) == 0);
  auto attached = SharedMemory::Attach(region, 1 << 20);
  REQUIRE(attached.ok());
  std::memcpy((*created)->data() + 100, "hello", 5);
  CHECK(std::memcmp((*attached)->data() + 100, "hello", 5) == 0);
  std::memcpy((*attached)->data() + 200, "back", 4);
  CHECK(std::memcmp((*created)->data() + 200, "back", 4) == 0);
  // The creator unlinks it; a mapping stays valid.
  const std::string name = region.name();
  created->reset();
  CHECK_FALSE(Exists(name));
  CHECK(std::memcmp((*attached)->data() + 100, "hello", 5) == 0);
}

TEST_CASE("SharedMemory::Create refuses a region /dev/shm cannot hold",
          "[shared_memory]") {
  // Twice /dev/shm's size: an error, not a region whose first touch past
  // the limit would end the process with SIGBUS.
  struct statvfs fs;
  REQUIRE(statvfs("/dev/shm", &fs) == 0);
  const uint64_t shm_bytes = uint64_t{fs.f_blocks} * fs.f_frsize;
  auto huge = SharedMemory::Create(2 * shm_bytes);
  CHECK(huge.status().code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(huge.status().message()).find("cannot create") !=
        std::string::npos);
}

TEST_CASE("SharedMemory::Attach refuses what is not the worker's region",
          "[shared_memory]") {
  auto created = SharedMemory::Create(4096);
  REQUIRE(created.ok());
  const SharedRegion good = (*created)->region();

  SharedRegion bad = good;
  bad.set_nonce(std::string(SharedMemory::kNonceBytes, 'x'));
  auto s = SharedMemory::Attach(bad, 1 << 20);
  CHECK(s.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(s.status().message()).find("nonce") != std::string::npos);

  bad = good;
  bad.set_size(8192);
  s = SharedMemory::Attach(bad, 1 << 20);
  CHECK(s.status().code() == absl::StatusCode::kFailedPrecondition);

  bad = good;
  bad.set_size(good.size());
  s = SharedMemory::Attach(bad, 1024);  // over the limit
  CHECK(s.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(s.status().message()).find("shared_region.size") !=
        std::string::npos);

  for (const char* name : {"/etc/passwd", "/psd-1-abc", "psd-1-0123",
                           "/psd-x-0123456789abcdef0123456789abcdef",
                           "/psd-1-0123456789ABCDEF0123456789ABCDEF",
                           "/psd-1-0123456789abcdef0123456789abcdef/../x"}) {
    bad = good;
    bad.set_name(name);
    s = SharedMemory::Attach(bad, 1 << 20);
    INFO(name);
    CHECK(s.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.status().message()).find("shared_region.name") !=
          std::string::npos);
  }
  // Well formed, but no such object on this host.
  bad = good;
  bad.set_name("/psd-1-0123456789abcdef0123456789abcdef");
  s = SharedMemory::Attach(bad, 1 << 20);
  CHECK(s.status().code() == absl::StatusCode::kFailedPrecondition);

  bad = good;
  bad.set_nonce("short");
  CHECK(SharedMemory::Attach(bad, 1 << 20).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("SharedMemory::CheckSlice bounds a slice to the region",
          "[shared_memory]") {
  auto created = SharedMemory::Create(1024);
  REQUIRE(created.ok());
  const SharedMemory& m = **created;
  SharedSlice slice;
  slice.set_offset(64);
  slice.set_size(960);
  CHECK(m.CheckSlice(slice, 960, "s").ok());
  CHECK(m.CheckSlice(slice, 959, "s").code() ==
        absl::StatusCode::kInvalidArgument);
  slice.set_offset(0);  // over the header
  slice.set_size(16);
  CHECK_FALSE(m.CheckSlice(slice, 16, "s").ok());
  slice.set_offset(1020);
  slice.set_size(8);
  CHECK_FALSE(m.CheckSlice(slice, 8, "s").ok());
  slice.set_offset(UINT64_MAX - 2);  // no wrap-around
  slice.set_size(8);
  const absl::Status s = m.CheckSlice(slice, 8, "gradients[0].shared");
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("gradients[0].shared") !=
        std::string::npos);
}

TEST_CASE("SharedMemory::RemoveStale unlinks regions of dead processes only",
          "[shared_memory]") {
  // A region whose creator died: nobody holds its lock. Its pid is this
  // process's (as another pid namespace would show a live pid), so only the
  // lock can tell.
  const std::string dead =
      absl::StrCat("/psd-", getpid(), "-0123456789abcdef0123456789abcdef");
  const int fd = shm_open(dead.c_str(), O_RDWR | O_CREAT, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 128) == 0);
  close(fd);
  // Live regions, one of them created by a child that still runs.
  auto live = SharedMemory::Create(128);
  REQUIRE(live.ok());
  int ready[2], done[2];
  REQUIRE(pipe(ready) == 0);
  REQUIRE(pipe(done) == 0);
  const pid_t child = fork();
  if (child == 0) {
    close(done[1]);  // else the read below never sees the parent's close
    close(ready[0]);
    auto mine = SharedMemory::Create(128);
    const std::string name = mine.ok() ? (*mine)->region().name() : "";
    (void)!write(ready[1], name.data(), name.size());
    close(ready[1]);
    char c;
    (void)!read(done[0], &c, 1);
    _exit(0);
  }
  close(ready[1]);
  close(done[0]);
  char buf[128];
  const ssize_t n = read(ready[0], buf, sizeof(buf));
  REQUIRE(n > 0);
  const std::string childs(buf, static_cast<size_t>(n));
  CHECK(SharedMemory::RemoveStale() >= 1);
  CHECK_FALSE(Exists(dead));
  CHECK(Exists((*live)->region().name()));
  CHECK(Exists(childs));
  close(done[1]);  // the child exits; its destructor never ran
  REQUIRE(waitpid(child, nullptr, 0) == child);
  CHECK(SharedMemory::RemoveStale() >= 1);
  CHECK_FALSE(Exists(childs));
}

}  // namespace
}  // namespace psd
