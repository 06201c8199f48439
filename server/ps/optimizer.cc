#include "server/ps/optimizer.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace psd {
namespace {

constexpr double kPi = 3.14159265358979323846;

// The clipping bound: +inf when clipping is off, so that Clip() returns its
// argument unchanged, bit for bit (-0 included).
float ClipLimit(const OptimizerSpec& spec) {
  return spec.clip_value() > 0.0f ? spec.clip_value()
                                  : std::numeric_limits<float>::infinity();
}

inline float Clip(float g, float limit) {
  return std::min(std::max(g, -limit), limit);
}

// SGD, heavy-ball or Nesterov momentum (torch.optim.SGD, dampening 0). The
// float operations of the momentum == 0 and heavy-ball paths are those of
// the original ApplySgd, in the same order; Clip() is the identity when
// clipping is off.
void Sgd(float lr, float mu, float wd, bool nesterov, float limit,
         const float* grad, int64_t n, float* weights, float* velocity) {
  if (mu == 0.0f) {
    for (int64_t i = 0; i < n; ++i) {
      weights[i] -= lr * (Clip(grad[i], limit) + wd * weights[i]);
    }
    return;
  }
  if (!nesterov) {
    for (int64_t i = 0; i < n; ++i) {
      const float g = Clip(grad[i], limit) + wd * weights[i];
      velocity[i] = mu * velocity[i] + g;
      weights[i] -= lr * velocity[i];
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = Clip(grad[i], limit) + wd * weights[i];
    velocity[i] = mu * velocity[i] + g;
    weights[i] -= lr * (g + mu * velocity[i]);
  }
}

// Adagrad (torch.optim.Adagrad, lr_decay 0). `sum` is the accumulator s.
void Adagrad(const OptimizerSpec& spec, float lr, int64_t step, float limit,
             const float* grad, int64_t n, float* weights, float* sum) {
  const float wd = spec.weight_decay();
  const float eps = spec.epsilon();
  if (step == 0) {
    // The store's slots start at zero; the accumulator starts here.
    std::fill(sum, sum + n, spec.initial_accumulator_value());
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = Clip(grad[i], limit) + wd * weights[i];
    sum[i] += g * g;
    weights[i] -= lr * g / (std::sqrt(sum[i]) + eps);
  }
}

// Adam and AdamW (torch.optim.Adam / AdamW, amsgrad false). `m` and `u`
// are the first and second moments.
void Adam(const OptimizerSpec& spec, bool decoupled, float lr, int64_t step,
          float limit, const float* grad, int64_t n, float* weights, float* m,
          float* u) {
  const float b1 = spec.beta1();
  const float b2 = spec.beta2();
  const float eps = spec.epsilon();
  const float wd = spec.weight_decay();
  // Per-step scalars in double, rounded once (as PyTorch computes them in
  // Python floats). k = step + 1 >= 1 and beta < 1, so 1 - beta^k > 0.
  const double k = static_cast<double>(step) + 1.0;
  const double bias1 = 1.0 - std::pow(static_cast<double>(b1), k);
  const double bias2 = 1.0 - std::pow(static_cast<double>(b2), k);
  const float step_size = static_cast<float>(lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float one_minus_b1 = static_cast<float>(1.0 - b1);
  const float one_minus_b2 = static_cast<float>(1.0 - b2);
  if (decoupled) {
    if (wd != 0.0f) {
      const float keep = static_cast<float>(1.0 - static_cast<double>(lr) * wd);
      for (int64_t i = 0; i < n; ++i) weights[i] *= keep;
    }
    for (int64_t i = 0; i < n; ++i) {
      const float g = Clip(grad[i], limit);
      m[i] = b1 * m[i] + one_minus_b1 * g;
      u[i] = b2 * u[i] + one_minus_b2 * g * g;
      weights[i] -= step_size * m[i] / (std::sqrt(u[i]) / bias2_sqrt + eps);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = Clip(grad[i], limit) + wd * weights[i];
    m[i] = b1 * m[i] + one_minus_b1 * g;
    u[i] = b2 * u[i] + one_minus_b2 * g * g;
    weights[i] -= step_size * m[i] / (std::sqrt(u[i]) / bias2_sqrt + eps);
  }
}

}  // namespace

float ScheduledLearningRate(const OptimizerSpec& spec, int64_t step) {
  const float lr = spec.learning_rate();
  const LearningRateSchedule& s = spec.schedule();
  switch (s.kind()) {
    case LearningRateSchedule::STEP: {
      const int64_t decays = step / s.step_size();
      return static_cast<float>(static_cast<double>(lr) *
                                std::pow(static_cast<double>(s.gamma()),
                                         static_cast<double>(decays)));
    }
    case LearningRateSchedule::COSINE: {
      const double horizon = static_cast<double>(s.decay_steps());
      const double t = static_cast<double>(std::min(step, s.decay_steps()));
      const double min_lr = s.min_learning_rate();
      return static_cast<float>(min_lr +
                                (static_cast<double>(lr) - min_lr) *
                                    (1.0 + std::cos(kPi * t / horizon)) / 2.0);
    }
    default:  // CONSTANT
      return lr;
  }
}

void ApplyOptimizer(const OptimizerSpec& spec, int64_t step, const float* grad,
                    int64_t n, float* weights, float* slots) {
  const float lr = ScheduledLearningRate(spec, step);
  const float limit = ClipLimit(spec);
  switch (spec.kind()) {
    case OptimizerSpec::ADAGRAD:
      Adagrad(spec, lr, step, limit, grad, n, weights, slots);
      return;
    case OptimizerSpec::ADAM:
    case OptimizerSpec::ADAMW:
      Adam(spec, spec.kind() == OptimizerSpec::ADAMW, lr, step, limit, grad, n,
           weights, slots, slots + n);
      return;
    default:  // SGD
      Sgd(lr, spec.momentum(), spec.weight_decay(), spec.nesterov(), limit,
          grad, n, weights, slots);
      return;
  }
}

void ApplySgd(const OptimizerSpec& spec, const float* grad, int64_t n,
              float* weights, float* velocity) {
  Sgd(spec.learning_rate(), spec.momentum(), spec.weight_decay(),
      /*nesterov=*/false, std::numeric_limits<float>::infinity(), grad, n,
      weights, velocity);
}

}  // namespace psd
