// A multi-layer perceptron's forward and backward passes, computed through
// a kernels::Backend. The Mlp holds no parameters: each call is given
// pointers to them (e.g. a worker's copy pulled from the parameter
// servers), so one Mlp serves any parameter version.
#ifndef PSD_WORKER_MLP_H_
#define PSD_WORKER_MLP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace psd {

// MLP input_dim -> hidden... -> num_classes, ReLU after every layer but the
// last, softmax cross-entropy loss (mean over the batch, in nats).
//
// Parameters, all float32 row-major, in this order: for each layer i
// (0-based) "layer{i}.weight" [fan_in, fan_out], then "layer{i}.bias"
// [fan_out]. A layer computes Y[batch, fan_out] = X[batch, fan_in] * W + b.
// Inputs x are [batch, input_dim] row-major float32; labels are int32.
//
// Memory: every pointer passed to the Mlp is HOST memory, whatever the
// backend (the parameters come from and the gradients go to the network).
// With a host-memory backend (the CPU) the kernels work on those pointers
// directly. With a device backend (Backend::UsesHostMemory() false, e.g.
// CUDA) the Mlp owns device copies: a call uploads the parameters, the batch
// and its labels, runs every kernel on device buffers (activations and
// their gradients never leave the device), and downloads the gradients
// (ForwardBackward) or the predictions (CountCorrect).
//
// Parameter upload (device backend): each tensor goes with
// Backend::CopyFromHostAsync, queued on the device in order before the
// kernels that read it, so the call does not wait for it; it is truly
// asynchronous when the parameters are in memory from
// Backend::AllocateHost() (pinned), which is what the trainer pulls into.
// The reuse rule: the caller must not write the parameters while a call
// runs (GradientReady callbacks included); every call synchronizes the
// backend (Backend::Synchronize) before it returns, also after a device
// failure, so the parameters may be overwritten (e.g. by the next step's
// pull) as soon as ForwardBackward or CountCorrect has returned.
//
// Device errors: if the backend fails (Backend::status() not OK, e.g. a
// CUDA error), ForwardBackward returns NaN and fills every gradient with
// NaN, so the push is refused by the servers' finite-gradient check rather
// than applied; CountCorrect returns -1. backend->status() says why.
//
// Backward pass (standard backpropagation), with dZ the gradient of the mean
// loss w.r.t. a layer's pre-activation output Z:
//   dZ_last = (softmax - onehot) / batch, dW = X^T dZ, db = colsum(dZ),
//   dX = dZ W^T, and dZ = dX * [Y > 0] through each ReLU.
//
// Gradients as they become final (overlapping communication with the
// backward pass, the way PyTorch DDP and BytePS do): ForwardBackward may be
// given a GradientReady callback, called once per parameter tensor, in
// backward order (layer last first; in a layer the weight, then the bias),
// as soon as that tensor's gradient in grads[i] is final, while the
// gradients of the layers before it are still to be computed. A caller can
// start sending tensor i from inside the callback. With a host backend the
// callback follows the layer's dW and db kernels directly. With a device
// backend each layer's dW and db are copied to pinned host staging
// (Backend::AllocateHost) with Backend::CopyToHostAsync, so the next
// layer's backward runs on the device while they travel, then copied into
// grads[i] on the calling thread just before the callback; all layers'
// work is queued first and the callbacks follow their copies' completion
// in order. The gradients, and so the bytes a caller pushes, are the same
// with or without a callback.
//
// Activation buffers for max_batch rows (and, for a device backend, the
// device copies of parameters, inputs and gradients) are allocated once, in
// the constructor, in the backend's memory; steps allocate nothing. Not thread-safe (the buffers are
// shared between calls): use one Mlp per thread.
// The inference entry point: the forward pass of an MLP, the one kernel
// sequence that Mlp's training and evaluation and psd_serve's MlpModel
// (server/serving/mlp_model.h) all run, so that served logits are bit for
// bit the trainer's. For each layer i (0-based), on `rows` rows:
//   outputs[i] = inputs_i * W_i (Backend::Gemm, alpha 1, beta 0),
//   outputs[i] += b_i (AddBias), then ReLU (ReluForward) unless i is last,
// with inputs_0 = x and inputs_i = outputs[i - 1]. layer_sizes = {input_dim,
// hidden..., num_classes}; params as Mlp's (W_0, b_0, W_1, b_1, ...);
// x is [rows, input_dim] and outputs[i] [rows, layer_sizes[i + 1]], all
// row-major float32 in the backend's memory; the last output is the
// logits. Queues the kernels on `backend` (a device backend may still be
// running them on return). REQUIRES: rows > 0, params.size() ==
// 2 * outputs.size() == 2 * (layer_sizes.size() - 1), each buffer large
// enough.
void MlpForward(kernels::Backend* backend, const std::vector<int32_t>& layer_sizes,
                const std::vector<const float*>& params, const float* x,
                int32_t rows, const std::vector<float*>& outputs);

class Mlp {
 public:
  // layer_sizes = {input_dim, hidden..., num_classes}; max_batch = largest
  // batch passed to ForwardBackward and the chunk size of CountCorrect.
  // `backend` is not owned and must outlive the Mlp.
  // REQUIRES: layer_sizes.size() >= 2, every size > 0, max_batch > 0,
  // backend != nullptr. Use Create() to check these on untrusted input.
  Mlp(std::vector<int32_t> layer_sizes, int32_t max_batch,
      kernels::Backend* backend);

  // Like the constructor, but returns INVALID_ARGUMENT when a REQUIRES
  // above does not hold (e.g. sizes from a job config), and the backend's
  // error when its buffers cannot be allocated (e.g. GPU out of memory).
  static absl::StatusOr<std::unique_ptr<Mlp>> Create(
      std::vector<int32_t> layer_sizes, int32_t max_batch,
      kernels::Backend* backend);

  Mlp(const Mlp&) = delete;
  Mlp& operator=(const Mlp&) = delete;

  // Element counts of the 2 * num_layers parameter tensors, in the order
  // above: fan_in * fan_out, fan_out, ...
  std::vector<int64_t> ParameterSizes() const;
  // Names of the same tensors: "layer0.weight", "layer0.bias", ...
  std::vector<std::string> ParameterNames() const;

  // Called with the index (ParameterSizes() order) of a parameter tensor
  // whose gradient is final; see "Gradients as they become final" above.
  // It runs on the thread that called ForwardBackward and must not call
  // the Mlp; grads[tensor] may be read until ForwardBackward returns, and
  // stays unchanged after that unless the backend failed (then it is NaN).
  using GradientReady = std::function<void(int32_t tensor)>;

  // One training step on a batch. params[i] points at tensor i (host
  // memory, read-only, not to be written until this returns: "Parameter
  // upload" above); grads[i] gets the gradient of the MEAN loss over the
  // batch w.r.t. tensor i (overwritten). Returns the mean loss. When `on_ready` is set it is
  // called exactly once for every tensor before this returns, in the order
  // 2L-2, 2L-1, 2L-4, 2L-3, ..., 0, 1 for L layers; a tensor announced
  // after a backend failure was seen holds NaN (the device-error contract
  // above), one announced before holds its computed gradient.
  // REQUIRES: 0 < batch <= max_batch, params.size() == grads.size() ==
  // ParameterSizes().size(), labels in [0, num_classes).
  float ForwardBackward(const std::vector<const float*>& params,
                        const float* x, const int32_t* labels, int32_t batch,
                        const std::vector<float*>& grads,
                        const GradientReady& on_ready = nullptr);

  // Number of the n examples x [n, input_dim] whose argmax prediction equals
  // their label, evaluated in chunks of max_batch rows. REQUIRES: n >= 0.
  int64_t CountCorrect(const std::vector<const float*>& params,
                       const float* x, const int32_t* labels, int64_t n);

  const std::vector<int32_t>& layer_sizes() const { return layer_sizes_; }
  int32_t max_batch() const { return max_batch_; }
  int32_t num_layers() const {
    return static_cast<int32_t>(layer_sizes_.size()) - 1;
  }
  int32_t num_classes() const { return layer_sizes_.back(); }

 private:
  // Runs the forward pass on `batch` rows of x; the logits end up in
  // acts_.back(). All pointers in the backend's memory space.
  void Forward(const std::vector<const float*>& params, const float* x,
               int32_t batch);
  // For a device backend: copies the host parameters into params_dev_ and
  // returns pointers to those; for a host backend returns `params` as is.
  std::vector<const float*> StageParams(
      const std::vector<const float*>& params);
  // Before a public call returns: waits for the backend's queued work (the
  // parameter uploads still reading the caller's memory among it).
  void EndOfCall();

  // Constant after construction.
  const std::vector<int32_t> layer_sizes_;
  const int32_t max_batch_;
  kernels::Backend* const backend_;
  const bool staged_;  // !backend_->UsesHostMemory().

  // Scratch in the backend's memory, [max_batch, layer_sizes_[i + 1]] each:
  // acts_[i] is layer i's output (post-ReLU for hidden layers), dacts_[i]
  // its gradient.
  std::vector<kernels::Buffer<float>> acts_;
  std::vector<kernels::Buffer<float>> dacts_;
  kernels::Buffer<int32_t> predictions_;      // [max_batch]
  std::vector<int32_t> host_predictions_;     // [max_batch]
  // Device copies, only when staged_ (empty otherwise): the parameters and
  // gradients (ParameterSizes() each), a batch and its labels.
  std::vector<kernels::Buffer<float>> params_dev_;
  std::vector<kernels::Buffer<float>> grads_dev_;
  kernels::Buffer<float> x_dev_;          // [max_batch, input_dim]
  kernels::Buffer<int32_t> labels_dev_;   // [max_batch]
  // Only when staged_: pinned host staging of each gradient tensor
  // (Backend::AllocateHost), the target of the asynchronous copies.
  std::vector<kernels::HostBuffer<float>> grads_staging_;
};

}  // namespace psd

#endif  // PSD_WORKER_MLP_H_
