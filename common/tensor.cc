#include "common/tensor.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format is little-endian; a big-endian host needs a "
              "byte swap here");

void EncodeFloat32(const float* data, int64_t n, Tensor* out) {
  out->set_dtype(FLOAT32);
  out->clear_shape();
  out->add_shape(n);
  std::string* bytes = out->mutable_data();
  bytes->resize(static_cast<size_t>(n) * sizeof(float));
  if (n > 0) std::memcpy(bytes->data(), data, bytes->size());
}

absl::Status CheckFloat32(const Tensor& tensor, int64_t expected_elements,
                          const std::string& what) {
  if (tensor.dtype() != FLOAT32) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".dtype: want FLOAT32, got ", DType_Name(tensor.dtype())));
  }
  if (tensor.shape_size() != 1 || tensor.shape(0) != expected_elements) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".shape: want [", expected_elements, "], got [",
                     absl::StrJoin(tensor.shape(), ","), "]"));
  }
  const size_t want = static_cast<size_t>(expected_elements) * sizeof(float);
  if (tensor.data().size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".data: want ", want, " bytes, got ", tensor.data().size()));
  }
  return absl::OkStatus();
}

int64_t FindNonFinite(const float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

}  // namespace psd
