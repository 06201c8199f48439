#include "worker/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "worker/idx_reader.h"

namespace psd {
namespace {

// Uniform integer in [0, bound], from the engine's raw 64-bit output by
// rejection (std::uniform_int_distribution is implementation-defined).
uint64_t UniformUpTo(std::mt19937_64& rng, uint64_t bound) {
  if (bound == std::numeric_limits<uint64_t>::max()) return rng();
  const uint64_t range = bound + 1;
  // Largest multiple of range that fits in [0, 2^64): reject values above.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                         (std::numeric_limits<uint64_t>::max() % range + 1) %
                             range;
  uint64_t v;
  do {
    v = rng();
  } while (v > limit);
  return v % range;
}

}  // namespace

absl::StatusOr<Dataset> LoadDataset(const std::string& images_path,
                                    const std::string& labels_path,
                                    int32_t limit, int32_t num_classes,
                                    const Normalization& norm) {
  if (limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dataset limit must be >= 0, got %d", limit));
  }
  if (num_classes < 1 || num_classes > 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_classes must be in [1, 256], got %d", num_classes));
  }
  if (!(norm.std > 0.0f) || !std::isfinite(norm.std) ||
      !std::isfinite(norm.mean)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "normalisation needs a finite mean and std > 0, got mean %g std %g",
        norm.mean, norm.std));
  }
  PSD_ASSIGN_OR_RETURN(IdxImages images, ReadIdxImages(images_path));
  PSD_ASSIGN_OR_RETURN(IdxLabels labels, ReadIdxLabels(labels_path));
  if (static_cast<int64_t>(labels.labels.size()) != images.count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has %d images but %s has %d labels", images_path, images.count,
        labels_path, labels.labels.size()));
  }
  Dataset data;
  data.size = limit == 0 ? images.count : std::min(limit, images.count);
  data.dim = images.rows * images.cols;
  data.num_classes = num_classes;
  data.labels.resize(data.size);
  for (int32_t i = 0; i < data.size; ++i) {
    if (labels.labels[i] >= num_classes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: label %d of example %d is outside [0, %d)", labels_path,
          labels.labels[i], i, num_classes));
    }
    data.labels[i] = labels.labels[i];
  }
  // x = (p/255 - mean)/std = p * scale + shift.
  const float scale = 1.0f / (255.0f * norm.std);
  const float shift = -norm.mean / norm.std;
  const int64_t n = int64_t{data.size} * data.dim;
  data.features.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    data.features[i] = images.pixels[i] * scale + shift;
  }
  return data;
}

absl::StatusOr<Normalization> ComputeNormalization(
    const std::string& images_path, int32_t limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("normalisation limit must be >= 0, got %d", limit));
  }
  PSD_ASSIGN_OR_RETURN(IdxImages images, ReadIdxImages(images_path));
  const int32_t count =
      limit == 0 ? images.count : std::min(limit, images.count);
  const int64_t n = int64_t{count} * images.rows * images.cols;
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has no images to compute a mean over", images_path));
  }
  // Exact integer sums: at most 2^31 pixels * 255^2 < 2^63.
  uint64_t sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t p = images.pixels[i];
    sum += p;
    sum_sq += p * p;
  }
  const double mean = static_cast<double>(sum) / n;
  const double var = static_cast<double>(sum_sq) / n - mean * mean;
  if (!(var > 0.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: all %d pixels are equal, cannot normalise by std 0", images_path,
        n));
  }
  return Normalization{static_cast<float>(mean / 255.0),
                       static_cast<float>(std::sqrt(var) / 255.0)};
}

std::vector<int32_t> ShardIndices(int32_t size, int32_t rank,
                                  int32_t num_ranks) {
  if (size < 0 || num_ranks <= 0 || rank < 0 || rank >= num_ranks) return {};
  const int64_t begin = int64_t{rank} * size / num_ranks;
  const int64_t end = (int64_t{rank} + 1) * size / num_ranks;
  std::vector<int32_t> out(end - begin);
  for (int64_t i = begin; i < end; ++i) out[i - begin] = static_cast<int32_t>(i);
  return out;
}

std::vector<int32_t> EpochOrder(const std::vector<int32_t>& shard,
                                uint64_t seed, int32_t epoch, int32_t rank) {
  std::seed_seq seq{static_cast<uint32_t>(seed),
                    static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(epoch), static_cast<uint32_t>(rank)};
  std::mt19937_64 rng(seq);
  std::vector<int32_t> order = shard;
  for (size_t i = order.size(); i > 1; --i) {
    const size_t j = UniformUpTo(rng, i - 1);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

void GatherBatch(const Dataset& data, const int32_t* idx, int32_t n,
                 float* features_out, int32_t* labels_out) {
  const size_t row_bytes = sizeof(float) * data.dim;
  for (int32_t i = 0; i < n; ++i) {
    std::memcpy(features_out + int64_t{i} * data.dim,
                data.features.data() + int64_t{idx[i]} * data.dim, row_bytes);
    labels_out[i] = data.labels[idx[i]];
  }
}

}  // namespace psd
