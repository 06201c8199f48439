// Row placement and seeded row initialisation of sparse embedding tables
// (proto/embedding.proto). Pure functions, shared by servers and clients;
// thread-safe.
//
// Hash: the SplitMix64 output function (Steele, Lea & Flood, "Fast
// splittable pseudorandom number generators", OOPSLA 2014; constants of
// Vigna's splitmix64.c, public domain):
//   Mix(z) = z + 0x9e3779b97f4a7c15, then
//            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//            z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//            z ^ (z >> 31)
// used counter-based (as in Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011): the random bits of (seed, row, column) are
//   Bits(seed, row, col) = Mix(Mix(Mix(seed) ^ row) + col)
// with no generator state, so any server computes any row's values alone.
#ifndef PSD_COMMON_EMBEDDING_ROWS_H_
#define PSD_COMMON_EMBEDDING_ROWS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "common/proto.h"
#include "common/sparse_config.h"
#include "proto/embedding.pb.h"

namespace psd {

// The SplitMix64 output function of z (see above). A bijection on 64 bits.
inline uint64_t SplitMix64Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The shard of row `row` in a table of `num_shards` shards:
//   SplitMix64Mix(row) mod num_shards.
// Hashing first spreads structured ids (e.g. field * 10^6 + value) evenly.
// REQUIRES: num_shards >= 1.
inline int32_t ShardOfRow(uint64_t row, int32_t num_shards) {
  return static_cast<int32_t>(SplitMix64Mix(row) %
                              static_cast<uint64_t>(num_shards));
}

// The initial value of column `col` of row `row` under `init` for a table
// of width `dim`:
//   u = (Bits(seed, row, col) >> 40) * 2^-24          in [0, 1)
//   UNIFORM (and KIND_UNSPECIFIED): (2u - 1) * scale    in [-scale, scale)
//   NORMAL: Box-Muller (Box & Muller, 1958), cosine branch, with
//     u1 = ((bits >> 11) + 1) * 2^-53 in (0, 1] and
//     u2 = (Bits(seed ^ 0x6a09e667f3bcc909, row, col) >> 11) * 2^-53:
//     scale * sqrt(-2 ln u1) * cos(2 pi u2)   (double, rounded once)
//   ZERO: 0.
// scale 0 means 1 / sqrt(dim). A pure function: the same on every server.
float InitialRowValue(const EmbeddingInitializer& init, int32_t dim,
                      uint64_t row, int32_t col);

// Writes the `dim` initial values of `row` to out[0 .. dim).
void InitialRow(const EmbeddingInitializer& init, int32_t dim, uint64_t row,
                float* out);

// ValidateTableSpec and WithTableDefaults: common/sparse_config.h.

// kMaxEmbeddingDim, kMaxEmbeddingShards, kMaxEmbeddingRows:
// common/sparse_config.h.
// Most replicas of one shard (ShardReplicas.replicas).
inline constexpr int32_t kMaxShardReplicas = 16;

}  // namespace psd

#endif  // PSD_COMMON_EMBEDDING_ROWS_H_
