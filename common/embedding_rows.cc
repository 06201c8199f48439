#include "common/embedding_rows.h"

#include <cmath>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/job_config.h"

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

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
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

EmbeddingTableSpec WithTableDefaults(EmbeddingTableSpec spec) {
  if (spec.dim() > 0 && spec.initializer().scale() == 0.0f) {
    spec.mutable_initializer()->set_scale(static_cast<float>(
        1.0 / std::sqrt(static_cast<double>(spec.dim()))));
  }
  if (spec.initializer().kind() == EmbeddingInitializer::KIND_UNSPECIFIED) {
    spec.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  }
  // The optimizer's per-kind defaults, through the job config's code.
  JobConfig wrapper;
  *wrapper.mutable_optimizer() = spec.optimizer();
  ApplyJobConfigDefaults(&wrapper);
  *spec.mutable_optimizer() = wrapper.optimizer();
  return spec;
}

absl::Status ValidateTableSpec(const EmbeddingTableSpec& spec,
                               const std::string& prefix) {
  const std::string p = prefix.empty() ? "" : prefix + ".";
  if (spec.name().empty() || spec.name().size() > 128) {
    return Invalid(p + "name", absl::StrCat("must have 1 to 128 characters, got ",
                                            spec.name().size()));
  }
  for (char ch : spec.name()) {
    if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_' && ch != '.') {
      return Invalid(p + "name", absl::StrCat("only [A-Za-z0-9_.-] allowed, got \"",
                                              spec.name(), "\""));
    }
  }
  if (spec.num_rows() < 1 || spec.num_rows() > kMaxEmbeddingRows) {
    return Invalid(p + "num_rows", absl::StrCat("must be in [1, 2^62], got ",
                                                spec.num_rows()));
  }
  if (spec.dim() < 1 || spec.dim() > kMaxEmbeddingDim) {
    return Invalid(p + "dim", absl::StrCat("must be in [1, ", kMaxEmbeddingDim,
                                           "], got ", spec.dim()));
  }
  if (spec.num_shards() < 1 || spec.num_shards() > kMaxEmbeddingShards) {
    return Invalid(p + "num_shards",
                   absl::StrCat("must be in [1, ", kMaxEmbeddingShards,
                                "], got ", spec.num_shards()));
  }
  const EmbeddingInitializer& init = spec.initializer();
  if (init.kind() != EmbeddingInitializer::KIND_UNSPECIFIED &&
      init.kind() != EmbeddingInitializer::ZERO &&
      init.kind() != EmbeddingInitializer::UNIFORM &&
      init.kind() != EmbeddingInitializer::NORMAL) {
    return Invalid(p + "initializer.kind",
                   absl::StrCat("unknown kind ", init.kind()));
  }
  if (!std::isfinite(init.scale()) || init.scale() < 0.0f) {
    return Invalid(p + "initializer.scale",
                   absl::StrCat("must be finite and >= 0, got ", init.scale()));
  }
  if (!spec.has_optimizer()) return Invalid(p + "optimizer", "required");
  const LearningRateSchedule::Kind schedule = spec.optimizer().schedule().kind();
  if (schedule != LearningRateSchedule::KIND_UNSPECIFIED &&
      schedule != LearningRateSchedule::CONSTANT) {
    return Invalid(p + "optimizer.schedule.kind",
                   "sparse tables support only CONSTANT (rows are updated at "
                   "their own pace, so there is no common step)");
  }
  // The optimizer is checked by the job config's validation, on a minimal
  // valid job carrying it; its errors start with "optimizer.".
  JobConfig wrapper;
  wrapper.set_name("embedding");
  wrapper.mutable_model()->set_kind(ModelSpec::MLP);
  wrapper.mutable_model()->set_input_dim(784);
  wrapper.mutable_model()->set_num_classes(10);
  wrapper.mutable_dataset()->set_name("fashion-mnist");
  *wrapper.mutable_optimizer() = spec.optimizer();
  wrapper.set_consistency(BSP);
  wrapper.set_batch_size(1);
  wrapper.set_epochs(1);
  wrapper.set_workers(1);
  ApplyJobConfigDefaults(&wrapper);
  absl::Status status = ValidateJobConfig(wrapper);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(p, status.message()));
  }
  return absl::OkStatus();
}

}  // namespace psd
