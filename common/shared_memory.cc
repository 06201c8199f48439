#include "common/shared_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace psd {
namespace {

constexpr char kPrefix[] = "psd-";
constexpr size_t kRandomHexDigits = 32;

std::string ErrnoText(int error) { return std::strerror(error); }

absl::Status RandomBytes(void* out, size_t n) {
  auto* p = static_cast<uint8_t*>(out);
  while (n > 0) {
    const ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(
          absl::StrCat("getrandom: ", ErrnoText(errno)));
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

// Parses "/psd-<pid>-<32 lowercase hex>" (without the '/' when
// `with_slash` is false: a /dev/shm directory entry). Returns the pid, or
// -1 for any other form.
int64_t ParseName(absl::string_view name, bool with_slash) {
  if (with_slash) {
    if (!absl::ConsumePrefix(&name, "/")) return -1;
  }
  if (!absl::ConsumePrefix(&name, kPrefix)) return -1;
  std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(name, absl::MaxSplits('-', 1));
  int64_t pid;
  if (parts.first.empty() || parts.first.size() > 10 ||
      !absl::SimpleAtoi(parts.first, &pid) || pid <= 0) {
    return -1;
  }
  if (parts.second.size() != kRandomHexDigits) return -1;
  for (char c : parts.second) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return -1;
  }
  return pid;
}

uint8_t* Map(int fd, uint64_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Create(
    uint64_t size) {
  if (size < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared memory: size ", size, " is below the header's ", kHeaderBytes,
        " bytes"));
  }
  uint8_t random[kRandomHexDigits / 2];
  SharedRegion region;
  std::string nonce(kNonceBytes, '\0');
  if (absl::Status s = RandomBytes(random, sizeof(random)); !s.ok()) return s;
  if (absl::Status s = RandomBytes(nonce.data(), nonce.size()); !s.ok()) {
    return s;
  }
  region.set_name(absl::StrCat(
      "/", kPrefix, getpid(), "-",
      absl::BytesToHexString(absl::string_view(
          reinterpret_cast<const char*>(random), sizeof(random)))));
  region.set_nonce(nonce);
  region.set_size(size);
  const int fd = shm_open(region.name().c_str(), O_RDWR | O_CREAT | O_EXCL,
                          S_IRUSR | S_IWUSR);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(
        "shared memory: shm_open ", region.name(), ": ", ErrnoText(errno)));
  }
  // Held while this process lives (RemoveStale), taken before the object
  // has a size.
  uint8_t* data = nullptr;
  int error = 0;
  // posix_fallocate, not only ftruncate: tmpfs gives pages on first touch,
  // and a full /dev/shm (64 MiB in many containers) would then end the
  // process with SIGBUS; reserved now, a too small one fails here.
  if (flock(fd, LOCK_EX | LOCK_NB) != 0 ||
      ftruncate(fd, static_cast<off_t>(size)) != 0) {
    error = errno;
  } else if ((error = posix_fallocate(fd, 0, static_cast<off_t>(size))) != 0) {
    // (posix_fallocate returns the error instead of setting errno.)
  } else if ((data = Map(fd, size)) == nullptr) {
    error = errno;
  }
  if (data == nullptr) {
    close(fd);
    shm_unlink(region.name().c_str());
    return absl::UnavailableError(absl::StrCat(
        "shared memory: cannot create ", size, " bytes at ", region.name(),
        ": ", ErrnoText(error)));
  }
  std::memcpy(data, nonce.data(), nonce.size());
  return std::unique_ptr<SharedMemory>(
      new SharedMemory(std::move(region), data, fd));
}

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Attach(
    const SharedRegion& region, uint64_t max_size) {
  if (ParseName(region.name(), /*with_slash=*/true) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared_region.name: want \"/psd-<pid>-<32 hex digits>\", got a name "
        "of ", region.name().size(), " bytes"));
  }
  if (region.nonce().size() != kNonceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared_region.nonce: want ", kNonceBytes,
                     " bytes, got ", region.nonce().size()));
  }
  if (region.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared_region.size: ", region.size(), " is below the header's ",
        kHeaderBytes, " bytes"));
  }
  if (region.size() > max_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shared_region.size: ", region.size(), " bytes is over this server's "
        "limit of ", max_size, " (--shared_memory_max_bytes)"));
  }
  // glibc's shm_open opens with O_NOFOLLOW | O_CLOEXEC.
  const int fd = shm_open(region.name().c_str(), O_RDWR, 0);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared_region.name: ", region.name(), " cannot be opened here (",
        ErrnoText(errno), "): not on this server's host"));
  }
  struct stat st;
  std::string why;
  if (fstat(fd, &st) != 0) {
    why = absl::StrCat("fstat: ", ErrnoText(errno));
  } else if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (st.st_uid != geteuid()) {
    why = absl::StrCat("owned by uid ", st.st_uid, ", not ", geteuid());
  } else if (static_cast<uint64_t>(st.st_size) != region.size()) {
    why = absl::StrCat("its size is ", st.st_size, " bytes, not ",
                       region.size());
  }
  uint8_t* data = nullptr;
  if (why.empty() && (data = Map(fd, region.size())) == nullptr) {
    why = absl::StrCat("mmap: ", ErrnoText(errno));
  }
  close(fd);
  if (data != nullptr &&
      std::memcmp(data, region.nonce().data(), kNonceBytes) != 0) {
    munmap(data, region.size());
    data = nullptr;
    why = "its nonce differs";
  }
  if (data == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("shared_region: ", region.name(), ": ", why));
  }
  return std::unique_ptr<SharedMemory>(new SharedMemory(region, data, -1));
}

int SharedMemory::RemoveStale() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int removed = 0;
  while (const dirent* entry = readdir(dir)) {
    if (ParseName(entry->d_name, /*with_slash=*/false) <= 0) continue;
    // Its creator holds a lock on it while it lives, in whatever pid
    // namespace (the pid in the name is only informative). One of size 0
    // may be a creator between shm_open and flock: left alone.
    const std::string name = absl::StrCat("/", entry->d_name);
    const int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) continue;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > 0 &&
        flock(fd, LOCK_EX | LOCK_NB) == 0 && shm_unlink(name.c_str()) == 0) {
      ++removed;
    }
    close(fd);
  }
  closedir(dir);
  return removed;
}

SharedMemory::~SharedMemory() {
  munmap(data_, region_.size());
  if (lock_fd_ >= 0) {
    shm_unlink(region_.name().c_str());
    close(lock_fd_);
  }
}

absl::Status SharedMemory::CheckSlice(const SharedSlice& slice,
                                      uint64_t want_size,
                                      const std::string& what) const {
  if (slice.size() != want_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".size: want ", want_size, " bytes, got ", slice.size()));
  }
  if (slice.offset() < kHeaderBytes || slice.offset() > size() ||
      slice.size() > size() - slice.offset()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": bytes [", slice.offset(), ", +", slice.size(),
        ") are not inside the region's [", kHeaderBytes, ", ", size(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace psd
