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
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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
// twice or "__metadata__", a negative dimension or one over 2^53 (which
// ParseSafetensors could not read back exactly), a size mismatch),
// UNAVAILABLE (cannot write the file).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata);

// A tensor of any dtype WriteTypedSafetensors knows, as its raw bytes.
struct TypedTensor {
  // [A-Za-z0-9._:-] only.
  std::string name;
  // "F32" (float32), "I64" (int64) or "U64" (uint64): safetensors' names.
  std::string dtype;
  std::vector<int64_t> shape;
  // product(shape) elements of dtype, little-endian, row-major.
  std::string data;
};

// Writes `tensors` (each of its own dtype) in the order given, and
// `metadata` under "__metadata__": keys [A-Za-z0-9._:-], values any UTF-8
// string (JSON-escaped, e.g. a JSON document). Errors: INVALID_ARGUMENT
// (as WriteSafetensors, plus "dtype" not one of the three, data not
// product(shape) x element size bytes), UNAVAILABLE (cannot write).
absl::Status WriteTypedSafetensors(
    const std::string& path, const std::vector<TypedTensor>& tensors,
    const std::map<std::string, std::string>& metadata);

// CRC-32 (zlib) over the tensors' names and data bytes in order (for F32
// tensors the same value as ParameterChecksum).
uint32_t TypedTensorChecksum(const std::vector<TypedTensor>& tensors);

// A safetensors file read back: its tensors in data order (ascending
// data_offsets, which for WriteSafetensors' files is the order written)
// and its "__metadata__" (string -> string; empty when absent).
struct SafetensorsContents {
  std::vector<NamedTensor> tensors;
  std::map<std::string, std::string> metadata;
};

struct SafetensorsReadOptions {
  // Largest JSON header accepted, in bytes (the length prefix is checked
  // against it before anything is allocated). Default: 100 MiB, the limit
  // of the reference implementation.
  uint64_t max_header_bytes = uint64_t{100} << 20;
  // Largest whole file accepted, in bytes. Default: 16 GiB.
  uint64_t max_file_bytes = uint64_t{16} << 30;
};

// Parses a whole safetensors file held in `bytes`. Strict: the header is a
// JSON object (parsed as a google.protobuf.Struct) whose keys are tensor
// names, each {"dtype": "F32", "shape": [non-negative integers],
// "data_offsets": [begin, end]}, plus an optional "__metadata__" object of
// strings; only F32 tensors are supported (the dtype psd writes). The
// tensors' byte ranges must exactly tile the data after the header (no
// holes, no overlap, nothing after the last), and each range must hold
// product(shape) * 4 bytes. Every error is INVALID_ARGUMENT whose message
// names the tensor and field at fault (e.g. "tensor layer0.weight:
// data_offsets [0, 12] hold 12 bytes, shape [2,3] needs 24"); nothing here
// aborts on bad input. Thread-safe (no shared state).
absl::StatusOr<SafetensorsContents> ParseSafetensors(
    absl::string_view bytes, const SafetensorsReadOptions& options = {});

// Reads `path` and parses it with ParseSafetensors. Errors: NOT_FOUND or
// UNAVAILABLE when the file cannot be opened or read, INVALID_ARGUMENT
// (message prefixed with the path) for a malformed or over-size file.
absl::StatusOr<SafetensorsContents> ReadSafetensors(
    const std::string& path, const SafetensorsReadOptions& options = {});

// CRC-32 (zlib) over the tensors' names and little-endian bytes in order:
// the checksum psd prints to compare two runs' parameters bit for bit.
uint32_t ParameterChecksum(const std::vector<NamedTensor>& tensors);

}  // namespace psd

#endif  // PSD_COMMON_SAFETENSORS_H_
