// Writing parameters in the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON describing each tensor (dtype, shape,
// byte offsets), then the raw little-endian data. Read by the `safetensors`
// Python package, PyTorch, NumPy (a 10-line reader), and many other tools.
#ifndef PSD_COMMON_SAFETENSORS_H_
#define PSD_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace psd {

struct NamedTensor {
  // [A-Za-z0-9._-] only (no JSON escaping needed).
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // float32, row-major; product(shape) elements
};

// Writes `tensors` (dtype F32) and `metadata` (string -> string, stored
// under "__metadata__") to `path`. Errors: INVALID_ARGUMENT (a name or
// metadata with characters outside [A-Za-z0-9._:-], a tensor name given
// twice or "__metadata__", a negative dimension, a size mismatch),
// UNAVAILABLE (cannot write the file).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata);

// CRC-32 (zlib) over the tensors' names and little-endian bytes in order:
// the checksum psd prints to compare two runs' parameters bit for bit.
uint32_t ParameterChecksum(const std::vector<NamedTensor>& tensors);

}  // namespace psd

#endif  // PSD_COMMON_SAFETENSORS_H_
