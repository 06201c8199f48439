// Reader for the IDX files of (Fashion-)MNIST, gzip-compressed or plain.
//
// Format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): all
// header integers are 32-bit big-endian.
//   images: magic 0x00000803, count, rows, cols, then count*rows*cols
//           uint8 pixels, row-major ([count, rows, cols]), 0 = background.
//   labels: magic 0x00000801, count, then count uint8 labels.
// Files are read with zlib's gzopen/gzread, which also reads plain files.
//
// Errors (each message names the path):
//   NOT_FOUND         the file does not exist.
//   PERMISSION_DENIED / UNKNOWN  the file cannot be opened for another reason.
//   INVALID_ARGUMENT  wrong magic (e.g. a labels file passed as images), or
//                     absurd dimensions (rows or cols outside [1, 4096], or
//                     more than 2^31 pixels in all).
//   DATA_LOSS         truncated header or body, bytes after the declared
//                     body, or a corrupt gzip stream.
#ifndef PSD_WORKER_IDX_READER_H_
#define PSD_WORKER_IDX_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace psd {

inline constexpr uint32_t kIdxImagesMagic = 0x00000803;
inline constexpr uint32_t kIdxLabelsMagic = 0x00000801;

// count images of rows x cols; pixels is [count, rows, cols] row-major.
struct IdxImages {
  int32_t count = 0;
  int32_t rows = 0;
  int32_t cols = 0;
  std::vector<uint8_t> pixels;
};

// One uint8 label per example (0..9 for Fashion-MNIST; not checked here).
struct IdxLabels {
  std::vector<uint8_t> labels;
};

// Reads a whole images file (magic 0x00000803).
absl::StatusOr<IdxImages> ReadIdxImages(const std::string& path);

// Reads a whole labels file (magic 0x00000801).
absl::StatusOr<IdxLabels> ReadIdxLabels(const std::string& path);

}  // namespace psd

#endif  // PSD_WORKER_IDX_READER_H_
