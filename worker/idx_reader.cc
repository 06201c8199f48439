#include "worker/idx_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace psd {
namespace {

constexpr int64_t kMaxDim = 4096;
constexpr int64_t kMaxPixels = int64_t{1} << 31;

// Owns a gzFile; closes it on destruction.
class GzReader {
 public:
  explicit GzReader(std::string path) : path_(std::move(path)) {}
  ~GzReader() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  absl::Status Open() {
    errno = 0;
    file_ = gzopen(path_.c_str(), "rb");
    if (file_ != nullptr) {
      gzbuffer(file_, 1 << 18);
      return absl::OkStatus();
    }
    const int err = errno;
    const std::string msg =
        absl::StrCat("cannot open ", path_, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnknownError(msg);
  }

  // Reads up to n bytes into out; returns how many were read (< n only at
  // end of file), or DATA_LOSS on a corrupt stream.
  absl::StatusOr<int64_t> Read(uint8_t* out, int64_t n) {
    int64_t done = 0;
    while (done < n) {
      const unsigned chunk =
          static_cast<unsigned>(std::min<int64_t>(n - done, 1 << 30));
      const int got = gzread(file_, out + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* what = gzerror(file_, &errnum);
        return absl::DataLossError(
            absl::StrCat("cannot read ", path_, ": ", what ? what : "?"));
      }
      if (got == 0) break;
      done += got;
    }
    return done;
  }

  // Counts the bytes left until end of file (for the trailing-bytes check).
  absl::StatusOr<int64_t> CountRemaining() {
    uint8_t buf[4096];
    int64_t total = 0;
    while (true) {
      PSD_ASSIGN_OR_RETURN(int64_t got, Read(buf, sizeof(buf)));
      total += got;
      if (got < static_cast<int64_t>(sizeof(buf))) return total;
    }
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Reads the header_words 32-bit header and checks the magic number.
absl::StatusOr<std::vector<uint32_t>> ReadHeader(GzReader& reader,
                                                 const std::string& path,
                                                 int header_words,
                                                 uint32_t want_magic) {
  uint8_t raw[16];
  const int64_t want = 4 * header_words;
  PSD_ASSIGN_OR_RETURN(int64_t got, reader.Read(raw, want));
  if (got >= 4 && BigEndian32(raw) != want_magic) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad magic 0x%08x in %s, want 0x%08x",
                        BigEndian32(raw), path, want_magic));
  }
  if (got < want) {
    return absl::DataLossError(absl::StrFormat(
        "%s truncated: header needs %d bytes, file has only %d", path, want,
        got));
  }
  std::vector<uint32_t> words(header_words);
  for (int i = 0; i < header_words; ++i) words[i] = BigEndian32(raw + 4 * i);
  return words;
}

// Reads up to `want` bytes into *out, growing it by at most 16 MiB at a
// time as the bytes arrive, so that a header declaring more than the file
// holds costs memory for what the file holds only. Returns the bytes read
// (< want only at end of file); *out has exactly that size.
absl::StatusOr<int64_t> ReadBody(GzReader& reader, int64_t want,
                                 std::vector<uint8_t>* out) {
  constexpr int64_t kStep = int64_t{16} << 20;
  int64_t done = 0;
  while (done < want) {
    const int64_t n = std::min(want - done, kStep);
    out->resize(done + n);
    PSD_ASSIGN_OR_RETURN(int64_t got, reader.Read(out->data() + done, n));
    done += got;
    if (got < n) break;
  }
  out->resize(done);
  return done;
}

absl::Status CheckNoTrailingBytes(GzReader& reader, const std::string& path,
                                  const std::string& declared) {
  PSD_ASSIGN_OR_RETURN(int64_t extra, reader.CountRemaining());
  if (extra > 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s has %d unexpected bytes after the %s its header declares", path,
        extra, declared));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<IdxImages> ReadIdxImages(const std::string& path) {
  GzReader reader(path);
  PSD_RETURN_IF_ERROR(reader.Open());
  PSD_ASSIGN_OR_RETURN(std::vector<uint32_t> header,
                       ReadHeader(reader, path, 4, kIdxImagesMagic));
  const int64_t count = header[1], rows = header[2], cols = header[3];
  if (rows < 1 || rows > kMaxDim || cols < 1 || cols > kMaxDim ||
      count > std::numeric_limits<int32_t>::max() ||
      count * rows * cols > kMaxPixels) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: absurd dimensions %d images of %dx%d (want rows and cols in "
        "[1, %d] and at most %d pixels)",
        path, count, rows, cols, kMaxDim, kMaxPixels));
  }
  IdxImages images;
  images.count = static_cast<int32_t>(count);
  images.rows = static_cast<int32_t>(rows);
  images.cols = static_cast<int32_t>(cols);
  const int64_t want = count * rows * cols;
  PSD_ASSIGN_OR_RETURN(int64_t got, ReadBody(reader, want, &images.pixels));
  if (got < want) {
    return absl::DataLossError(absl::StrFormat(
        "%s truncated: header says %d images of %dx%d, file has only %d "
        "bytes of pixels (want %d)",
        path, count, rows, cols, got, want));
  }
  PSD_RETURN_IF_ERROR(CheckNoTrailingBytes(
      reader, path, absl::StrFormat("%d images of %dx%d", count, rows, cols)));
  return images;
}

absl::StatusOr<IdxLabels> ReadIdxLabels(const std::string& path) {
  GzReader reader(path);
  PSD_RETURN_IF_ERROR(reader.Open());
  PSD_ASSIGN_OR_RETURN(std::vector<uint32_t> header,
                       ReadHeader(reader, path, 2, kIdxLabelsMagic));
  const int64_t count = header[1];
  if (count > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: absurd label count %d", path, count));
  }
  IdxLabels labels;
  PSD_ASSIGN_OR_RETURN(int64_t got, ReadBody(reader, count, &labels.labels));
  if (got < count) {
    return absl::DataLossError(absl::StrFormat(
        "%s truncated: header says %d labels, file has only %d", path, count,
        got));
  }
  PSD_RETURN_IF_ERROR(CheckNoTrailingBytes(
      reader, path, absl::StrFormat("%d labels", count)));
  return labels;
}

}  // namespace psd
