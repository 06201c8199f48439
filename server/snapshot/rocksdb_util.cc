#include "server/snapshot/rocksdb_util.h"

#include "absl/strings/str_cat.h"

namespace psd {

absl::Status FromRocks(const rocksdb::Status& s, const std::string& context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(context, ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsInvalidArgument() || s.IsNotSupported()) {
    return absl::FailedPreconditionError(msg);
  }
  if (s.IsIOError()) {
    if (s.IsPathNotFound() ||
        s.ToString().find("Permission denied") != std::string::npos ||
        s.ToString().find("Not a directory") != std::string::npos ||
        s.ToString().find("Read-only file system") != std::string::npos) {
      return absl::FailedPreconditionError(msg);
    }
    return absl::UnavailableError(msg);
  }
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() || s.IsAborted() ||
      s.IsIncomplete() || s.IsShutdownInProgress()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

std::string PrefixEnd(std::string prefix) {
  prefix.back() = '0';
  return prefix;
}

}  // namespace psd
