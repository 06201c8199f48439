#include "server/optimizer.h"

namespace psd {

int OptimizerSlots(const OptimizerSpec& spec) {
  return spec.momentum() != 0.0f ? 1 : 0;
}

void ApplyOptimizer(const OptimizerSpec& spec, int64_t /*step*/,
                    const float* grad, int64_t n, float* weights,
                    float* slots) {
  ApplySgd(spec, grad, n, weights, slots);
}

void ApplySgd(const OptimizerSpec& spec, const float* grad, int64_t n,
              float* weights, float* velocity) {
  const float lr = spec.learning_rate();
  const float mu = spec.momentum();
  const float wd = spec.weight_decay();
  if (mu == 0.0f) {
    for (int64_t i = 0; i < n; ++i) {
      weights[i] -= lr * (grad[i] + wd * weights[i]);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] + wd * weights[i];
    velocity[i] = mu * velocity[i] + g;
    weights[i] -= lr * velocity[i];
  }
}

}  // namespace psd
