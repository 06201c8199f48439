// Partitioning of parameters and their placement on shards.
//
// A parameter tensor (flattened, float32) is cut into partitions of at most
// `partition_bytes`, near-equal in size. Partitions go to shards by the
// greedy longest-processing-time rule (Graham 1969): largest first, each to
// the shard holding the fewest bytes so far, ties to the lowest shard index.
// So the placement is a pure function of (parameters, partition_bytes,
// num_shards), and the largest shard holds at most 4/3 of the optimum.
#ifndef PSD_COMMON_PLACEMENT_H_
#define PSD_COMMON_PLACEMENT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

// Errors: INVALID_ARGUMENT for num_shards < 1, partition_bytes < 4, or a
// parameter with a non-positive dimension.
absl::StatusOr<Placement> BuildPlacement(
    const std::vector<ParameterSpec>& parameters, int64_t partition_bytes,
    int32_t num_shards);

// Bytes (float32) placed on each shard, indexed by shard.
std::vector<int64_t> ShardBytes(const Placement& placement);

// Number of elements of a parameter: the product of its shape.
int64_t NumElements(const ParameterSpec& parameter);

// The initial values of parameter `index` of a model: Glorot/Xavier uniform
// U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, AISTATS 2010)
// for a 2-D weight [fan_in, fan_out] (the same for torch's [out, in]);
// for more dimensions [a, b, k...], fans a * prod(k) and b * prod(k) (as
// torch.nn.init.xavier_uniform_); zeros for a 1-D bias. A function of
// (seed, index, shape) only, so every server computes the same values for
// any placement.
std::vector<float> InitialValues(const ParameterSpec& parameter, int32_t index,
                                 uint64_t seed);

}  // namespace psd

#endif  // PSD_COMMON_PLACEMENT_H_
