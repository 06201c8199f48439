// Optimizer updates applied by parameter servers.
#ifndef PSD_SERVER_OPTIMIZER_H_
#define PSD_SERVER_OPTIMIZER_H_

#include <cstdint>

#include "common/proto.h"

namespace psd {

// The number of optimizer slots (arrays of float32 the size of the
// partition) the optimizer of `spec` keeps per partition: 0 for plain SGD,
// 1 with momentum.
int OptimizerSlots(const OptimizerSpec& spec);

// Applies one update to a partition of n float32 elements.
//   step:    updates applied to the partition before this one (0-based).
//   grad:    n elements, the averaged gradient; finite.
//   weights: n elements, updated in place.
//   slots:   OptimizerSlots(spec) * n elements, one slot after the other,
//            zero before the first update; updated in place.
// REQUIRES: spec is valid (ValidateJobConfig).
void ApplyOptimizer(const OptimizerSpec& spec, int64_t step, const float* grad,
                    int64_t n, float* weights, float* slots);

// SGD with momentum and L2 weight decay, as torch.optim.SGD (dampening 0,
// no Nesterov; Sutskever et al., ICML 2013, in PyTorch's form):
//   g_i <- grad_i + weight_decay * w_i
//   v_i <- momentum * v_i + g_i          (v_i = g_i on the first update
//                                         when momentum > 0 is the same
//                                         as v starting at 0)
//   w_i <- w_i - learning_rate * v_i
// All arrays hold n float32 elements. `velocity` is the momentum slot; it is
// untouched when momentum == 0.
// REQUIRES: spec is valid (ValidateJobConfig), grad holds finite values.
void ApplySgd(const OptimizerSpec& spec, const float* grad, int64_t n,
              float* weights, float* velocity);

}  // namespace psd

#endif  // PSD_SERVER_OPTIMIZER_H_
