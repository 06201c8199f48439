// What the two bad-input tests share: the small job they submit or create.
#ifndef PSD_TESTS_BAD_INPUT_LIB_H_
#define PSD_TESTS_BAD_INPUT_LIB_H_

#include <cstdint>

#include "common/proto.h"

namespace psd {

inline constexpr char kJob[] = "bad-input-1";
inline constexpr int64_t kEpoch = 5;
inline constexpr int kWorkers = 2;

// The quick-start job, made smaller: MLP 784-8-10, partitions of 4 KiB.
inline JobConfig ValidConfig() {
  JobConfig config;
  config.set_name("bad-input");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->add_hidden_sizes(4);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(3);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.05f);
  config.mutable_optimizer()->set_momentum(0.9f);
  config.mutable_optimizer()->set_weight_decay(0.0005f);
  config.set_consistency(BSP);
  config.set_batch_size(16);
  config.set_epochs(1);
  config.set_workers(kWorkers);
  config.set_seed(11);
  config.set_partition_bytes(4096);
  return config;
}

}  // namespace psd

#endif  // PSD_TESTS_BAD_INPUT_LIB_H_
