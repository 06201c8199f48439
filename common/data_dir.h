// A process's data directory, held exclusively while the process runs.
#ifndef PSD_COMMON_DATA_DIR_H_
#define PSD_COMMON_DATA_DIR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace psd {

// Exclusive hold on a data directory, by an advisory lock (flock) on the
// file "psd.lock" inside it, which also records the holder's pid. The lock
// goes with the process, so a killed process never leaves a stale lock.
// Thread-compatible.
class DataDirLock {
 public:
  // Creates `path` (and parents) if missing, then locks it. Errors:
  // FAILED_PRECONDITION "data directory ... is in use by pid N" when another
  // process holds it; UNAVAILABLE (or the errno's code) naming the path when
  // it cannot be created or opened (e.g. read-only, not a directory).
  static absl::StatusOr<std::unique_ptr<DataDirLock>> Acquire(
      const std::string& path);
  ~DataDirLock();  // releases the lock

  const std::string& path() const { return path_; }

 private:
  DataDirLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  const std::string path_;
  const int fd_;
};

// Moves a damaged store (a directory or file inside a data directory, e.g.
// <data_dir>/snapshots) aside to "<path>.corrupt-<UTC time>" (e.g.
// snapshots.corrupt-20261205T143000Z; ".1", ".2", ... appended if taken), so
// that an empty one can be created in its place; nothing is deleted.
// Returns the new path. Errors: NOT_FOUND (no `path`), or the rename's
// errno as UNAVAILABLE naming both paths.
absl::StatusOr<std::string> MoveAside(const std::string& path, absl::Time now);

}  // namespace psd

#endif  // PSD_COMMON_DATA_DIR_H_
