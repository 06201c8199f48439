// Fuzzes the IDX reader (worker/idx_reader.h) that workers run on the
// (Fashion-)MNIST files: ReadIdxImages and ReadIdxLabels over the input
// written to a file, plain or (mode bit 0) gzip-compressed, so that the
// fuzzer reaches the IDX layer through zlib's gzread too.
//
// Input: one mode byte, then the file's contents (before compression).
// Invariants: errors are INVALID_ARGUMENT or DATA_LOSS with a message; a
// file read has exactly the pixels and labels its header declares; a small
// file never makes the reader allocate what its header claims.
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/idx_reader.h"

namespace psd {
namespace {

// One file per process, rewritten for each input.
const std::string& TempPath() {
  static const std::string* path = [] {
    const char* dir = std::getenv("TEST_TMPDIR");
    if (dir == nullptr) dir = std::getenv("TMPDIR");
    if (dir == nullptr) dir = "/tmp";
    return new std::string(
        absl::StrCat(dir, "/idx_reader_fuzzer.", getpid(), ".idx"));
  }();
  return *path;
}

void Write(const std::string& path, const std::string& contents, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    FUZZ_REQUIRE(f != nullptr, path);
    if (!contents.empty()) {
      gzwrite(f, contents.data(), static_cast<unsigned>(contents.size()));
    }
    gzclose(f);
    return;
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  FUZZ_REQUIRE(f != nullptr, path);
  std::fwrite(contents.data(), 1, contents.size(), f);
  std::fclose(f);
}

void RequireReadError(const absl::Status& status) {
  fuzz::RequireClearError(status);
  FUZZ_REQUIRE(status.code() == absl::StatusCode::kInvalidArgument ||
                   status.code() == absl::StatusCode::kDataLoss,
               status.ToString());
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::Input in(data, size);
  const uint8_t mode = in.Byte();
  const std::string contents = in.Rest();
  const std::string& path = psd::TempPath();
  psd::Write(path, contents, mode & 1);
  absl::StatusOr<psd::IdxImages> images = psd::ReadIdxImages(path);
  if (images.ok()) {
    FUZZ_REQUIRE(images->count >= 0 && images->rows >= 1 && images->cols >= 1,
                 "dimensions");
    FUZZ_REQUIRE(static_cast<int64_t>(images->pixels.size()) ==
                     int64_t{images->count} * images->rows * images->cols,
                 absl::StrCat(images->pixels.size()));
    FUZZ_REQUIRE(images->pixels.size() + 16 <= contents.size(), "pixels");
  } else {
    psd::RequireReadError(images.status());
  }
  absl::StatusOr<psd::IdxLabels> labels = psd::ReadIdxLabels(path);
  if (labels.ok()) {
    FUZZ_REQUIRE(labels->labels.size() + 8 <= contents.size(), "labels");
  } else {
    psd::RequireReadError(labels.status());
  }
  std::remove(path.c_str());
  // A file of at most a few MiB (a fuzz input) must not have made the reader
  // allocate (and zero) what its header declares, up to 2 GiB.
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  FUZZ_REQUIRE(usage.ru_maxrss < (1 << 20),  // KiB: 1 GiB
               absl::StrCat("peak RSS ", usage.ru_maxrss, " KiB"));
  return 0;
}
