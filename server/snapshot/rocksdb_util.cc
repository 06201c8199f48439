#include "server/snapshot/rocksdb_util.h"

#include <zlib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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

uint32_t Crc32(uint32_t crc, const void* data, size_t size) {
  // zlib returns the initial value for a null buffer, whatever `crc` is.
  if (size == 0) return crc;
  return static_cast<uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), size));
}

std::string Hex32(uint32_t v) { return absl::StrFormat("0x%08x", v); }

}  // namespace psd
