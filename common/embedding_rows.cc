#include "common/embedding_rows.h"

#include <cmath>
#include <string>


namespace psd {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
// The second stream of NORMAL (the fractional bits of sqrt(2), SHA-2's
// first initial hash word), so u2 is independent of u1.
constexpr uint64_t kSecondStream = 0x6a09e667f3bcc909ULL;

inline uint64_t Bits(uint64_t seed, uint64_t row, int32_t col) {
  return SplitMix64Mix(SplitMix64Mix(SplitMix64Mix(seed) ^ row) +
                       static_cast<uint64_t>(col));
}

float Scale(const EmbeddingInitializer& init, int32_t dim) {
  return init.scale() != 0.0f
             ? init.scale()
             : static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
}

}  // namespace

float InitialRowValue(const EmbeddingInitializer& init, int32_t dim,
                      uint64_t row, int32_t col) {
  const float scale = Scale(init, dim);
  switch (init.kind()) {
    case EmbeddingInitializer::ZERO:
      return 0.0f;
    case EmbeddingInitializer::NORMAL: {
      const uint64_t b1 = Bits(init.seed(), row, col);
      const uint64_t b2 = Bits(init.seed() ^ kSecondStream, row, col);
      const double u1 = static_cast<double>((b1 >> 11) + 1) * 0x1p-53;
      const double u2 = static_cast<double>(b2 >> 11) * 0x1p-53;
      return static_cast<float>(static_cast<double>(scale) *
                                std::sqrt(-2.0 * std::log(u1)) *
                                std::cos(kTwoPi * u2));
    }
    default: {  // UNIFORM
      const float u = static_cast<float>(Bits(init.seed(), row, col) >> 40) *
                      0x1p-24f;
      return (2.0f * u - 1.0f) * scale;
    }
  }
}

void InitialRow(const EmbeddingInitializer& init, int32_t dim, uint64_t row,
                float* out) {
  if (init.kind() == EmbeddingInitializer::ZERO) {
    for (int32_t c = 0; c < dim; ++c) out[c] = 0.0f;
    return;
  }
  for (int32_t c = 0; c < dim; ++c) out[c] = InitialRowValue(init, dim, row, c);
}

}  // namespace psd
