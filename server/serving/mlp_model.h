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
// Forward runs exactly the kernels of Mlp's forward pass, in the same order
// and on the same backend (Gemm, AddBias, ReluForward per layer), so its
// logits are bit for bit those of the training code for the same rows and
// batch. The model owns its parameters and the backend (host memory only:
// the CPU backend). Not thread-safe: Forward uses shared scratch buffers;
// call it from one thread at a time (the DynamicBatcher's).
class MlpModel {
 public:
  // Builds the model from an export's tensors. `backend` must use host
  // memory. Errors: INVALID_ARGUMENT naming the tensor when a layer's
  // weight or bias is missing or mis-shaped, the layers do not chain
  // (fan_out of i != fan_in of i + 1), or a tensor is not a layer
  // parameter; FAILED_PRECONDITION for a device backend.
  static absl::StatusOr<std::unique_ptr<MlpModel>> Create(
      std::vector<NamedTensor> tensors,
      std::unique_ptr<kernels::Backend> backend);

  MlpModel(const MlpModel&) = delete;
  MlpModel& operator=(const MlpModel&) = delete;

  // logits[rows, num_classes()] = the MLP on x[rows, input_dim()], both
  // row-major float32. REQUIRES: rows > 0; x and logits hold that much.
  void Forward(const float* x, int32_t rows, float* logits);

  // {input_dim, hidden..., num_classes}.
  const std::vector<int32_t>& layer_sizes() const { return layer_sizes_; }
  int32_t input_dim() const { return layer_sizes_.front(); }
  int32_t num_classes() const { return layer_sizes_.back(); }
  // The parameters, "layer0.weight", "layer0.bias", ... in that order.
  const std::vector<NamedTensor>& parameters() const { return params_; }

 private:
  MlpModel(std::vector<int32_t> layer_sizes, std::vector<NamedTensor> params,
           std::unique_ptr<kernels::Backend> backend);

  // Constant after construction.
  const std::vector<int32_t> layer_sizes_;
  const std::vector<NamedTensor> params_;
  const std::unique_ptr<kernels::Backend> backend_;
  // Scratch, grown by Forward: each hidden layer's output.
  std::vector<std::vector<float>> acts_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_MLP_MODEL_H_
