#include "common/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// bfloat16 of x through the wire: encode, then widen.
float ThroughBfloat16(float x) {
  Tensor t;
  EncodeBfloat16(&x, 1, &t);
  REQUIRE(t.dtype() == BFLOAT16);
  REQUIRE(t.data().size() == 2);
  REQUIRE(WidenToFloat32(&t, "t").ok());
  REQUIRE(CheckFloat32(t, 1, "t").ok());
  return Float32Data(t)[0];
}

TEST_CASE("bfloat16: exact values pass unchanged, others round to nearest "
          "even",
          "[tensor]") {
  for (float x : {0.0f, -0.0f, 1.0f, -2.0f, 0.5f, 3.0f, 1e30f, -1e-30f}) {
    INFO(x);
    const float exact = FromBits(Bits(x) & 0xffff0000u);
    CHECK(Bits(ThroughBfloat16(exact)) == Bits(exact));
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even
  // mantissa (1.0); 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and
  // 1 + 2^-6 (even): it goes up.
  CHECK(ThroughBfloat16(1.0f + 1.0f / 256) == 1.0f);
  CHECK(ThroughBfloat16(1.0f + 3.0f / 256) == 1.0f + 1.0f / 64);
  // Just above a tie rounds up, just below rounds down.
  CHECK(ThroughBfloat16(FromBits(0x3f808001u)) == FromBits(0x3f810000u));
  CHECK(ThroughBfloat16(FromBits(0x3f807fffu)) == 1.0f);
  // The relative error is at most half an ulp: 2^-8 (8 bits of precision).
  for (float x = -3.0f; x < 3.0f; x += 0.0137f) {
    const float y = ThroughBfloat16(x);
    CHECK(std::fabs(y - x) <= std::fabs(x) * (1.0f / 256) + 1e-30f);
  }
  CHECK(std::isnan(ThroughBfloat16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isinf(ThroughBfloat16(std::numeric_limits<float>::infinity())));
}

TEST_CASE("bfloat16: a tensor is half the bytes, and bad ones are refused",
          "[tensor]") {
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<float>(i));
  Tensor b16, f32;
  EncodeBfloat16(v.data(), static_cast<int64_t>(v.size()), &b16);
  EncodeFloat32(v.data(), static_cast<int64_t>(v.size()), &f32);
  CHECK(b16.data().size() * 2 == f32.data().size());
  CHECK(b16.shape(0) == 1000);

  Tensor odd = b16;
  odd.mutable_data()->pop_back();
  absl::Status status = WidenToFloat32(&odd, "gradients[3]");
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).find("gradients[3].data") == 0);

  Tensor unknown = b16;
  unknown.set_dtype(DTYPE_UNSPECIFIED);
  CHECK(WidenToFloat32(&unknown, "g").code() ==
        absl::StatusCode::kInvalidArgument);
  // FLOAT32 passes through untouched.
  Tensor same = f32;
  REQUIRE(WidenToFloat32(&same, "g").ok());
  CHECK(same.data() == f32.data());
}

TEST_CASE("DecodeToFloat32: both dtypes into a caller's buffer; bad "
          "tensors are refused naming the field and leave it untouched",
          "[tensor]") {
  std::vector<float> v(100);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::cos(static_cast<float>(i));
  Tensor b16, f32;
  EncodeBfloat16(v.data(), 100, &b16);
  EncodeFloat32(v.data(), 100, &f32);
  std::vector<float> out(100, -7.0f);
  REQUIRE(DecodeToFloat32(f32, 100, out.data(), "p").ok());
  CHECK(out == v);
  REQUIRE(DecodeToFloat32(b16, 100, out.data(), "p").ok());
  for (size_t i = 0; i < v.size(); ++i) {
    CHECK(Bits(out[i]) == Bits(ThroughBfloat16(v[i])));
  }
  std::fill(out.begin(), out.end(), -7.0f);
  absl::Status status = DecodeToFloat32(b16, 99, out.data(), "p");
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).find("p.shape: want [99]") == 0);
  Tensor short_data = b16;
  short_data.mutable_data()->resize(198);
  status = DecodeToFloat32(short_data, 100, out.data(), "p");
  CHECK(std::string(status.message()).find("p.data: want 200 bytes") == 0);
  Tensor unknown = f32;
  unknown.set_dtype(DTYPE_UNSPECIFIED);
  status = DecodeToFloat32(unknown, 100, out.data(), "p");
  CHECK(std::string(status.message()).find("p.dtype: want FLOAT32 or") == 0);
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == -7.0f; }));
}

}  // namespace
}  // namespace psd
