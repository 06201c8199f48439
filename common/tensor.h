// Encoding of float32 data in the Tensor message (proto/psd_tensor.proto):
// little-endian bytes beside dtype and shape.
#ifndef PSD_COMMON_TENSOR_H_
#define PSD_COMMON_TENSOR_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/proto.h"

namespace psd {

// Writes n floats as a 1-D FLOAT32 tensor of shape [n], reusing out's buffer.
void EncodeFloat32(const float* data, int64_t n, Tensor* out);

// Checks that `tensor` is FLOAT32 with shape [expected_elements] and
// 4 * expected_elements bytes of data. `what` names it in the error, e.g.
// "gradients[2] (partition 7)". Errors: INVALID_ARGUMENT.
absl::Status CheckFloat32(const Tensor& tensor, int64_t expected_elements,
                          const std::string& what);

// The tensor's elements. REQUIRES: CheckFloat32(tensor, ...) is OK.
inline const float* Float32Data(const Tensor& tensor) {
  return reinterpret_cast<const float*>(tensor.data().data());
}

// Writes n floats as a 1-D BFLOAT16 tensor of shape [n] (2 bytes each,
// rounded to nearest even as in Intel's BF16 spec and PyTorch's
// float -> bfloat16 cast; NaN stays NaN), reusing out's buffer.
void EncodeBfloat16(const float* data, int64_t n, Tensor* out);

// Writes a BFLOAT16 or FLOAT32 tensor as FLOAT32 into *out (exact: every
// bfloat16 is a float32). Errors: INVALID_ARGUMENT (an odd number of
// bytes, another dtype) naming `what`; *out is then unspecified.
absl::Status WidenToFloat32(const Tensor& in, Tensor* out,
                            const std::string& what);
// The same, in place.
absl::Status WidenToFloat32(Tensor* tensor, const std::string& what);

// Writes the FLOAT32 or BFLOAT16 tensor `tensor`, which must have shape
// [expected_elements] and 4 (FLOAT32) or 2 (BFLOAT16) bytes per element, as
// expected_elements floats at out (BFLOAT16 widened exactly). Errors:
// INVALID_ARGUMENT naming `what` and the field (dtype, shape, data); out is
// then untouched.
absl::Status DecodeToFloat32(const Tensor& tensor, int64_t expected_elements,
                             float* out, const std::string& what);

// Index of the first NaN or Inf of data[0, n), or -1 when all are finite.
int64_t FindNonFinite(const float* data, int64_t n);

}  // namespace psd

#endif  // PSD_COMMON_TENSOR_H_
