#include "common/data_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace psd {

absl::StatusOr<std::unique_ptr<DataDirLock>> DataDirLock::Acquire(
    const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) {
    return absl::UnavailableError(absl::StrCat(
        "data directory ", path, ": cannot create it: ", error.message()));
  }
  const std::string lock_path = path + "/psd.lock";
  const int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(
        "data directory ", path, ": cannot open ", lock_path, ": ",
        std::strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int lock_errno = errno;
    char buffer[32] = {0};
    const ssize_t n = pread(fd, buffer, sizeof(buffer) - 1, 0);
    close(fd);
    if (lock_errno != EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat(
          "data directory ", path, ": cannot lock ", lock_path, ": ",
          std::strerror(lock_errno)));
    }
    std::string holder = n > 0 ? std::string(absl::StripAsciiWhitespace(
                                     absl::string_view(buffer, n)))
                               : "unknown";
    return absl::FailedPreconditionError(absl::StrCat(
        "data directory ", path, " is in use by pid ", holder,
        " (each process needs its own --data_dir)"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int write_errno = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat(
        "data directory ", path, ": cannot write ", lock_path, ": ",
        std::strerror(write_errno)));
  }
  return std::unique_ptr<DataDirLock>(new DataDirLock(path, fd));
}

absl::StatusOr<std::string> MoveAside(const std::string& path, absl::Time now) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return absl::NotFoundError(absl::StrCat("cannot move ", path,
                                            " aside: it does not exist"));
  }
  const std::string base = absl::StrCat(
      path, ".corrupt-",
      absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone()));
  std::string target = base;
  for (int n = 1; std::filesystem::exists(target, error); ++n) {
    target = absl::StrCat(base, ".", n);
  }
  if (std::rename(path.c_str(), target.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot move ", path, " to ",
                                               target, ": ",
                                               std::strerror(errno)));
  }
  return target;
}

DataDirLock::~DataDirLock() {
  flock(fd_, LOCK_UN);
  close(fd_);
}

}  // namespace psd
