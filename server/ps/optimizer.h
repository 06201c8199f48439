// Optimizer updates applied by parameter servers.
//
// The kinds (proto/job.proto, OptimizerSpec.Kind) and their sources:
//   SGD      torch.optim.SGD, dampening 0: plain, heavy-ball momentum, or
//            Nesterov momentum (Sutskever et al., ICML 2013, in PyTorch's
//            form); coupled L2 weight decay.
//   ADAGRAD  Duchi, Hazan & Singer, JMLR 2011, as torch.optim.Adagrad with
//            lr_decay 0: s starts at initial_accumulator_value, epsilon is
//            added outside the square root; coupled L2 weight decay.
//   ADAM     Kingma & Ba, ICLR 2015, Algorithm 1, as torch.optim.Adam with
//            amsgrad false: bias-corrected step lr_t / (1 - beta1^k) and
//            epsilon added to sqrt(u) / sqrt(1 - beta2^k), k = step + 1;
//            coupled L2 weight decay (added to the gradient).
//   ADAMW    Loshchilov & Hutter, ICLR 2019, as torch.optim.AdamW: first
//            w <- w * (1 - lr_t * weight_decay), then the Adam update.
// The exact formulas are in proto/job.proto. Each optimizer's state lives in
// the partition's slots (OptimizerSlots), which the store zero-initialises,
// replicates and snapshots; the only other state is `step`.
//
// Every update: the learning rate lr_t = ScheduledLearningRate(spec, step);
// the averaged gradient is clamped to [-clip_value, clip_value] when
// clip_value > 0 (elementwise; before weight decay); then the kind's update.
//
// Determinism: the result is a function of (spec, step, grad, weights,
// slots) only, element by element in a fixed float32 operation order, so
// BSP replicas and replays agree bit for bit (on one build and libm: the
// schedule and bias corrections call std::cos/std::pow in double).
//
// The functions are pure apart from their output arrays; they are safe to
// call concurrently on different arrays.
#ifndef PSD_SERVER_PS_OPTIMIZER_H_
#define PSD_SERVER_PS_OPTIMIZER_H_

#include <cstdint>

#include "common/job_config.h"
#include "common/proto.h"

namespace psd {

// OptimizerSlots(spec): common/job_config.h.

// The learning rate of the update at `step` (0-based: the number of updates
// applied before it) under spec.schedule(): constant, STEP or COSINE (see
// LearningRateSchedule in proto/job.proto). Constant returns
// spec.learning_rate() exactly.
// REQUIRES: spec is valid (ValidateJobConfig; COSINE needs decay_steps >= 1,
// which ApplyJobConfigDefaults fills in), step >= 0.
float ScheduledLearningRate(const OptimizerSpec& spec, int64_t step);

// Applies one update to a partition of n float32 elements.
//   step:    updates applied to the partition before this one (0-based).
//            Adam's bias corrections use k = step + 1; the schedule uses
//            step. ADAGRAD sets its accumulator to initial_accumulator_value
//            at step 0 (its slot is zero before the first update).
//   grad:    n elements, the averaged gradient; finite.
//   weights: n elements, updated in place.
//   slots:   OptimizerSlots(spec) * n elements, one slot after the other
//            (slot j of element i at slots[j * n + i]), zero before the
//            first update; updated in place. May be null when
//            OptimizerSlots(spec) == 0.
// For SGD with a constant schedule and no clipping this performs exactly the
// float operations of ApplySgd (so results are bit-identical).
// REQUIRES: spec is valid (ValidateJobConfig, after ApplyJobConfigDefaults).
void ApplyOptimizer(const OptimizerSpec& spec, int64_t step, const float* grad,
                    int64_t n, float* weights, float* slots);

// SGD with momentum and L2 weight decay, as torch.optim.SGD (dampening 0,
// no Nesterov; Sutskever et al., ICML 2013, in PyTorch's form), at the
// constant learning rate spec.learning_rate(), without clipping:
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

#endif  // PSD_SERVER_PS_OPTIMIZER_H_
