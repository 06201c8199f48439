// A trained psd MLP loaded for inference: the parameters of a `psd_ctl
// export` file (common/safetensors.h) and the forward pass of the training
// code (worker/mlp.h), so that served logits equal the trainer's.
#ifndef PSD_SERVER_SERVING_MLP_MODEL_H_
#define PSD_SERVER_SERVING_MLP_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "kernels/kernels.h"

namespace psd::serving {

// An MLP input_dim -> hidden... -> num_classes with ReLU between layers
// (worker/mlp.h), whose parameters are "layer{i}.weight" [fan_in, fan_out]
// and "layer{i}.bias" [fan_out] for i = 0.., as psd_ctl export names them.
//
// Forward runs worker/mlp.h's MlpForward, the forward pass that the
// training code's Mlp runs too, on the same backend, so its logits are bit
// for bit those of the training code for the same rows and batch.
//
// Batch independence: a row's logits must not depend on the batch it runs
// in (dynamic batching must give each request what it would get alone).
// OpenBLAS's sgemm does not promise that: measured with Debian's 0.3.21, a
// [M, 784] x [784, 256] product rounds differently for M <= 4 (its
// small-matrix kernel sums the 784 terms in another order) than for
// M >= 5. So Create calibrates: it runs a probe batch of max_batch rows and
// every smaller batch (prefixes and suffixes of it) and finds the fewest
// rows, min_rows(), from which every batch size up to max_batch gives every
// row bit for bit the same logits; Forward pads a smaller batch with zero
// rows up to min_rows() (discarding their logits). If no size works, every
// row runs alone (min_rows() == 0, per_row()), which is batch-independent
// by construction. The model owns its parameters and the backend (host memory only:
// the CPU backend). Not thread-safe: Forward uses shared scratch buffers;
// call it from one thread at a time (the DynamicBatcher's).
class MlpModel {
 public:
  // Builds the model from an export's tensors, for batches of up to
  // `max_batch` rows (> 0), and calibrates as above. `backend` must use
  // host memory. Errors: INVALID_ARGUMENT naming the tensor when a layer's
  // weight or bias is missing or mis-shaped, the layers do not chain
  // (fan_out of i != fan_in of i + 1), or a tensor is not a layer
  // parameter; FAILED_PRECONDITION for a device backend.
  static absl::StatusOr<std::unique_ptr<MlpModel>> Create(
      std::vector<NamedTensor> tensors,
      std::unique_ptr<kernels::Backend> backend, int32_t max_batch);

  MlpModel(const MlpModel&) = delete;
  MlpModel& operator=(const MlpModel&) = delete;

  // logits[rows, num_classes()] = the MLP on x[rows, input_dim()], both
  // row-major float32, independent of the other rows (see above).
  // REQUIRES: 0 < rows <= max_batch; x and logits hold that much.
  void Forward(const float* x, int32_t rows, float* logits);

  // The fewest rows a batch is padded to (1: no padding), or 0 when every
  // row runs alone.
  int32_t min_rows() const { return min_rows_; }

  // {input_dim, hidden..., num_classes}.
  const std::vector<int32_t>& layer_sizes() const { return layer_sizes_; }
  int32_t input_dim() const { return layer_sizes_.front(); }
  int32_t num_classes() const { return layer_sizes_.back(); }
  // The parameters, "layer0.weight", "layer0.bias", ... in that order.
  const std::vector<NamedTensor>& parameters() const { return params_; }

 private:
  MlpModel(std::vector<int32_t> layer_sizes, std::vector<NamedTensor> params,
           std::unique_ptr<kernels::Backend> backend);
  // The training code's forward pass on exactly `rows` rows.
  void ForwardRows(const float* x, int32_t rows, float* logits);
  // Sets min_rows_ (see the class comment).
  void Calibrate(int32_t max_batch);

  // Constant after construction.
  const std::vector<int32_t> layer_sizes_;
  const std::vector<NamedTensor> params_;
  const std::unique_ptr<kernels::Backend> backend_;
  int32_t min_rows_ = 1;  // set once, by Calibrate
  // Scratch, grown by Forward: each hidden layer's output; padded input
  // and logits.
  std::vector<std::vector<float>> acts_;
  std::vector<float> padded_x_, padded_logits_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_MLP_MODEL_H_
