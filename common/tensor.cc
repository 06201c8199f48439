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

void EncodeBfloat16(const float* data, int64_t n, Tensor* out) {
  out->set_dtype(BFLOAT16);
  out->clear_shape();
  out->add_shape(n);
  std::string* bytes = out->mutable_data();
  bytes->resize(static_cast<size_t>(n) * 2);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &data[i], 4);
    uint16_t half;
    if (std::isnan(data[i])) {
      half = static_cast<uint16_t>((bits >> 16) | 0x0040);  // stays a NaN
    } else {
      // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
      half = static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }
    std::memcpy(bytes->data() + 2 * i, &half, 2);
  }
}

// Widens n bfloat16 values (2 little-endian bytes each) at `half` into
// float32 at `wide`: the bfloat16 bits become the upper half of the float.
static void WidenBfloat16(const char* half, int64_t n, char* wide) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, half + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    std::memcpy(wide + 4 * i, &bits, 4);
  }
}

absl::Status DecodeToFloat32(const Tensor& tensor, int64_t expected_elements,
                             float* out, const std::string& what) {
  if (tensor.dtype() != FLOAT32 && tensor.dtype() != BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".dtype: want FLOAT32 or BFLOAT16, got ",
                     DType_Name(tensor.dtype())));
  }
  if (tensor.shape_size() != 1 || tensor.shape(0) != expected_elements) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".shape: want [", expected_elements, "], got [",
                     absl::StrJoin(tensor.shape(), ","), "]"));
  }
  const size_t width = tensor.dtype() == FLOAT32 ? 4 : 2;
  const size_t want = static_cast<size_t>(expected_elements) * width;
  if (tensor.data().size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".data: want ", want, " bytes of ", DType_Name(tensor.dtype()),
        ", got ", tensor.data().size()));
  }
  if (expected_elements == 0) return absl::OkStatus();
  if (tensor.dtype() == FLOAT32) {
    std::memcpy(out, tensor.data().data(), want);
  } else {
    WidenBfloat16(tensor.data().data(), expected_elements,
                  reinterpret_cast<char*>(out));
  }
  return absl::OkStatus();
}

absl::Status WidenToFloat32(const Tensor& in, Tensor* out,
                            const std::string& what) {
  if (in.dtype() == FLOAT32) {
    *out = in;
    return absl::OkStatus();
  }
  if (in.dtype() != BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".dtype: want FLOAT32 or BFLOAT16, got ",
                     DType_Name(in.dtype())));
  }
  const std::string& half = in.data();
  if (half.size() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".data: ", half.size(), " bytes is not a whole number of BFLOAT16"));
  }
  out->set_dtype(FLOAT32);
  *out->mutable_shape() = in.shape();
  std::string* wide = out->mutable_data();
  wide->resize(half.size() * 2);
  WidenBfloat16(half.data(), static_cast<int64_t>(half.size() / 2),
                wide->data());
  return absl::OkStatus();
}

absl::Status WidenToFloat32(Tensor* tensor, const std::string& what) {
  if (tensor->dtype() == FLOAT32) return absl::OkStatus();
  Tensor wide;
  absl::Status status = WidenToFloat32(*tensor, &wide, what);
  if (status.ok()) *tensor = std::move(wide);
  return status;
}

int64_t FindNonFinite(const float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

}  // namespace psd
