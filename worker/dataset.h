// A Fashion-MNIST split in memory, how it is sharded across worker ranks,
// and the order each rank visits its shard in each epoch.
#ifndef PSD_WORKER_DATASET_H_
#define PSD_WORKER_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace psd {

// `size` examples of `dim` float32 features each.
//   features: [size, dim] row-major; x = (pixel/255 - mean) / std.
//   labels:   [size], int32 in [0, num_classes).
struct Dataset {
  int32_t size = 0;
  int32_t dim = 0;
  int32_t num_classes = 10;
  std::vector<float> features;
  std::vector<int32_t> labels;
};

// Input normalisation, in units of pixel/255 (so a pixel in [0,1]).
struct Normalization {
  float mean = 0.0f;
  float std = 1.0f;
};

// Loads an IDX images file and its labels file (see idx_reader.h), keeps
// the first `limit` examples (0 = all; more than the file has = all), and
// normalises every pixel: x = (pixel/255 - norm.mean) / norm.std.
// Errors: those of ReadIdxImages/ReadIdxLabels, and INVALID_ARGUMENT when
// limit < 0, num_classes is outside [1, 256], norm.std is not > 0, the two
// files' counts differ ("... has 60000 images but ... has 59999 labels"), or
// a label is >= num_classes (the message names the file and the example).
absl::StatusOr<Dataset> LoadDataset(const std::string& images_path,
                                    const std::string& labels_path,
                                    int32_t limit, int32_t num_classes,
                                    const Normalization& norm);

// Mean and (population) standard deviation of pixel/255 over all pixels of
// the first `limit` images of a file (0 = all). Use the training set's own
// statistics for both training and test sets.
// Errors: those of ReadIdxImages, and INVALID_ARGUMENT for limit < 0, a
// file with no images, or zero variance (std would divide by zero).
absl::StatusOr<Normalization> ComputeNormalization(
    const std::string& images_path, int32_t limit);

// The example indices of rank `rank` of `num_ranks`: the contiguous,
// balanced block [rank*size/num_ranks, (rank+1)*size/num_ranks) (integer
// division; block sizes differ by at most one). Every index of [0,size) is
// in exactly one shard.
// REQUIRES: size >= 0, num_ranks > 0, 0 <= rank < num_ranks (otherwise an
// empty vector is returned).
std::vector<int32_t> ShardIndices(int32_t size, int32_t rank,
                                  int32_t num_ranks);

// The order of a rank's shard in one epoch: a permutation of `shard` that
// depends only on (seed, epoch, rank) and the shard's contents, identically
// on every platform: std::mt19937_64 seeded through std::seed_seq with the
// words {seed low, seed high, epoch, rank}, then a Fisher-Yates shuffle
// (Knuth, TAOCP vol. 2, Algorithm 3.4.2 P) with unbiased rejection sampling.
std::vector<int32_t> EpochOrder(const std::vector<int32_t>& shard,
                                uint64_t seed, int32_t epoch, int32_t rank);

// Copies the examples idx[0..n) of `data` into features_out [n, dim] and
// labels_out [n] (caller-allocated).
// REQUIRES: each idx[i] in [0, data.size).
void GatherBatch(const Dataset& data, const int32_t* idx, int32_t n,
                 float* features_out, int32_t* labels_out);

}  // namespace psd

#endif  // PSD_WORKER_DATASET_H_
