#include "common/placement.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"

namespace psd {

int64_t NumElements(const ParameterSpec& parameter) {
  int64_t n = 1;
  for (int64_t d : parameter.shape()) n *= d;
  return n;
}

absl::StatusOr<Placement> BuildPlacement(
    const std::vector<ParameterSpec>& parameters, int64_t partition_bytes,
    int32_t num_shards) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_shards must be >= 1, got ", num_shards));
  }
  const int64_t max_elements = partition_bytes / static_cast<int64_t>(sizeof(float));
  if (max_elements < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "partition_bytes must be >= ", sizeof(float), ", got ", partition_bytes));
  }
  Placement placement;
  placement.set_num_shards(num_shards);
  for (size_t p = 0; p < parameters.size(); ++p) {
    const ParameterSpec& param = parameters[p];
    for (int64_t d : param.shape()) {
      if (d <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "parameter ", param.name(), " has dimension ", d, " (must be >= 1)"));
      }
    }
    *placement.add_parameters() = param;
    const int64_t n = NumElements(param);
    const int64_t pieces = (n + max_elements - 1) / max_elements;
    for (int64_t i = 0; i < pieces; ++i) {
      Partition* part = placement.add_partitions();
      part->set_id(placement.partitions_size() - 1);
      part->set_parameter(static_cast<int32_t>(p));
      const int64_t begin = n * i / pieces;
      const int64_t end = n * (i + 1) / pieces;
      part->set_offset(begin);
      part->set_num_elements(end - begin);
    }
  }
  // Largest first (ties by id), each to the least-loaded shard.
  std::vector<Partition*> order;
  for (Partition& part : *placement.mutable_partitions()) order.push_back(&part);
  std::stable_sort(order.begin(), order.end(),
                   [](const Partition* a, const Partition* b) {
                     return a->num_elements() > b->num_elements();
                   });
  std::vector<int64_t> load(num_shards, 0);
  for (Partition* part : order) {
    const int32_t shard = static_cast<int32_t>(
        std::min_element(load.begin(), load.end()) - load.begin());
    part->set_shard(shard);
    load[shard] += part->num_elements();
  }
  return placement;
}

std::vector<int64_t> ShardBytes(const Placement& placement) {
  std::vector<int64_t> bytes(placement.num_shards(), 0);
  for (const Partition& part : placement.partitions()) {
    bytes[part.shard()] += part.num_elements() * static_cast<int64_t>(sizeof(float));
  }
  return bytes;
}

std::vector<float> InitialValues(const ParameterSpec& parameter, int32_t index,
                                 uint64_t seed) {
  std::vector<float> values(NumElements(parameter), 0.0f);
  if (parameter.shape_size() < 2) return values;
  // Beyond 2 dimensions (a convolution's [out, in, kh, kw], EXTERNAL
  // models) both fans take the product of the trailing dimensions, as
  // torch.nn.init.xavier_uniform_ does.
  double receptive = 1;
  for (int d = 2; d < parameter.shape_size(); ++d) receptive *= parameter.shape(d);
  const double limit = std::sqrt(
      6.0 / ((static_cast<double>(parameter.shape(0)) +
              static_cast<double>(parameter.shape(1))) * receptive));
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(index)};
  std::mt19937_64 rng(seq);
  for (float& v : values) {
    // 53 random bits -> [0, 1); the mapping is ours, so it is the same on
    // every standard library (std::uniform_real_distribution is not).
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    v = static_cast<float>((2.0 * u - 1.0) * limit);
  }
  return values;
}

}  // namespace psd
