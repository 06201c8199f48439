#include "worker/mlp.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {

Mlp::Mlp(std::vector<int32_t> layer_sizes, int32_t max_batch,
         kernels::Backend* backend)
    : layer_sizes_(std::move(layer_sizes)),
      max_batch_(max_batch),
      backend_(backend),
      staged_(!backend->UsesHostMemory()),
      predictions_(backend, max_batch),
      host_predictions_(max_batch) {
  for (int32_t i = 0; i < num_layers(); ++i) {
    const size_t n = size_t(max_batch_) * layer_sizes_[i + 1];
    acts_.emplace_back(backend_, n);
    dacts_.emplace_back(backend_, n);
  }
  if (staged_) {
    for (int64_t n : ParameterSizes()) {
      params_dev_.emplace_back(backend_, n);
      grads_dev_.emplace_back(backend_, n);
      grads_staging_.emplace_back(backend_, n);
    }
    x_dev_ = kernels::Buffer<float>(backend_,
                                    size_t(max_batch_) * layer_sizes_[0]);
    labels_dev_ = kernels::Buffer<int32_t>(backend_, max_batch_);
  }
}

absl::StatusOr<std::unique_ptr<Mlp>> Mlp::Create(
    std::vector<int32_t> layer_sizes, int32_t max_batch,
    kernels::Backend* backend) {
  if (layer_sizes.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MLP needs at least 2 layer sizes (input, classes), got [",
        absl::StrJoin(layer_sizes, ","), "]"));
  }
  for (int32_t s : layer_sizes) {
    if (s <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("MLP layer sizes must be > 0, got [",
                       absl::StrJoin(layer_sizes, ","), "]"));
    }
  }
  if (max_batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MLP max_batch must be > 0, got ", max_batch));
  }
  if (backend == nullptr) {
    return absl::InvalidArgumentError("MLP backend is null");
  }
  auto mlp = std::make_unique<Mlp>(std::move(layer_sizes), max_batch, backend);
  // Buffer allocation failures (e.g. GPU memory) show in the backend.
  if (absl::Status s = backend->status(); !s.ok()) return s;
  return mlp;
}

std::vector<int64_t> Mlp::ParameterSizes() const {
  std::vector<int64_t> sizes;
  for (int32_t i = 0; i < num_layers(); ++i) {
    sizes.push_back(int64_t{layer_sizes_[i]} * layer_sizes_[i + 1]);
    sizes.push_back(layer_sizes_[i + 1]);
  }
  return sizes;
}

std::vector<std::string> Mlp::ParameterNames() const {
  std::vector<std::string> names;
  for (int32_t i = 0; i < num_layers(); ++i) {
    names.push_back(absl::StrCat("layer", i, ".weight"));
    names.push_back(absl::StrCat("layer", i, ".bias"));
  }
  return names;
}

std::vector<const float*> Mlp::StageParams(
    const std::vector<const float*>& params) {
  if (!staged_) return params;
  std::vector<const float*> out;
  for (size_t i = 0; i < params_dev_.size(); ++i) {
    // Queued before the kernels that read it (no wait needed); the caller's
    // host copy stays untouched until EndOfCall() synchronized.
    params_dev_[i].CopyFromHostAsync(params[i], params_dev_[i].size());
    out.push_back(params_dev_[i].data());
  }
  return out;
}

void Mlp::EndOfCall() {
  // Waits for the parameter uploads (and everything else queued): the
  // caller may overwrite its host parameters once the call returned. Also
  // after a failure (see Backend::Synchronize); status() is checked after.
  if (staged_) backend_->Synchronize().IgnoreError();
}

void MlpForward(kernels::Backend* backend, const std::vector<int32_t>& layer_sizes,
                const std::vector<const float*>& params, const float* x,
                int32_t rows, const std::vector<float*>& outputs) {
  const float* in = x;
  const int32_t layers = static_cast<int32_t>(layer_sizes.size()) - 1;
  for (int32_t i = 0; i < layers; ++i) {
    const int fan_in = layer_sizes[i], fan_out = layer_sizes[i + 1];
    float* out = outputs[i];
    backend->Gemm(false, false, rows, fan_out, fan_in, 1.0f, in, params[2 * i],
                  0.0f, out);
    backend->AddBias(rows, fan_out, params[2 * i + 1], out);
    if (i + 1 < layers) backend->ReluForward(rows * fan_out, out);
    in = out;
  }
}

void Mlp::Forward(const std::vector<const float*>& params, const float* x,
                  int32_t batch) {
  std::vector<float*> outputs;
  for (auto& act : acts_) outputs.push_back(act.data());  // backend memory
  MlpForward(backend_, layer_sizes_, params, x, batch, outputs);
}

float Mlp::ForwardBackward(const std::vector<const float*>& host_params,
                           const float* host_x, const int32_t* host_labels,
                           int32_t batch,
                           const std::vector<float*>& host_grads,
                           const GradientReady& on_ready) {
  const std::vector<int64_t> sizes = ParameterSizes();
  // The pointers the kernels see: the caller's (host backend) or the device
  // copies (device backend).
  std::vector<const float*> params = StageParams(host_params);
  const float* x = host_x;
  const int32_t* labels = host_labels;
  std::vector<float*> grads = host_grads;
  if (staged_) {
    x_dev_.CopyFromHost(host_x, size_t(batch) * layer_sizes_[0]);
    labels_dev_.CopyFromHost(host_labels, batch);
    x = x_dev_.data();
    labels = labels_dev_.data();
    for (size_t i = 0; i < grads_dev_.size(); ++i) {
      grads[i] = grads_dev_[i].data();
    }
  }
  // Announces layer i's two tensors; for a device backend, once their
  // copies to the staging buffers are done (REQUIRES: they are).
  auto announce = [&](int32_t layer) {
    for (int32_t t = 2 * layer; t <= 2 * layer + 1; ++t) {
      if (!backend_->status().ok()) {  // Never push what a failed device left.
        std::fill(host_grads[t], host_grads[t] + sizes[t],
                  std::numeric_limits<float>::quiet_NaN());
      } else if (staged_) {
        std::memcpy(host_grads[t], grads_staging_[t].data(),
                    sizes[t] * sizeof(float));
      }
      if (on_ready) on_ready(t);
    }
  };
  // Device backend: layers whose gradients are being copied, last first,
  // each with the ticket of its bias copy (copies complete in order).
  std::vector<std::pair<int32_t, uint64_t>> copying;
  size_t announced = 0;  // Prefix of `copying` already announced.

  Forward(params, x, batch);
  const int32_t last = num_layers() - 1;
  const float loss = backend_->SoftmaxCrossEntropy(
      batch, num_classes(), acts_[last].data(), labels, dacts_[last].data());
  for (int32_t i = last; i >= 0; --i) {
    const int fan_in = layer_sizes_[i], fan_out = layer_sizes_[i + 1];
    float* dz = dacts_[i].data();
    if (i < last) backend_->ReluBackward(batch * fan_out, acts_[i].data(), dz);
    const float* in = i == 0 ? x : acts_[i - 1].data();
    // dW[fan_in, fan_out] = X^T dZ; db = column sums of dZ.
    backend_->Gemm(true, false, fan_in, fan_out, batch, 1.0f, in, dz, 0.0f,
                   grads[2 * i]);
    backend_->BiasGrad(batch, fan_out, dz, grads[2 * i + 1]);
    if (staged_) {
      backend_->CopyToHostAsync(grads[2 * i], grads_staging_[2 * i].data(),
                                sizes[2 * i] * sizeof(float));
      copying.emplace_back(
          i, backend_->CopyToHostAsync(grads[2 * i + 1],
                                       grads_staging_[2 * i + 1].data(),
                                       sizes[2 * i + 1] * sizeof(float)));
      // Announce, without waiting, the layers whose copies have landed.
      while (announced < copying.size() &&
             backend_->CopyDone(copying[announced].second)) {
        announce(copying[announced++].first);
      }
    } else {
      announce(i);
    }
    // dX[batch, fan_in] = dZ W^T, the previous layer's output gradient.
    if (i > 0) {
      backend_->Gemm(false, true, batch, fan_in, fan_out, 1.0f, dz,
                     params[2 * i], 0.0f, dacts_[i - 1].data());
    }
  }
  for (; announced < copying.size(); ++announced) {
    backend_->WaitCopy(copying[announced].second);
    announce(copying[announced].first);
  }
  EndOfCall();
  if (!backend_->status().ok()) {  // Never push what a failed device left.
    for (size_t i = 0; i < host_grads.size(); ++i) {
      std::fill(host_grads[i], host_grads[i] + sizes[i],
                std::numeric_limits<float>::quiet_NaN());
    }
    return std::numeric_limits<float>::quiet_NaN();
  }
  return loss;
}

int64_t Mlp::CountCorrect(const std::vector<const float*>& host_params,
                          const float* x, const int32_t* labels, int64_t n) {
  const std::vector<const float*> params = StageParams(host_params);
  int64_t correct = 0;
  const int64_t dim = layer_sizes_[0];
  for (int64_t start = 0; start < n; start += max_batch_) {
    const int32_t batch =
        static_cast<int32_t>(std::min<int64_t>(max_batch_, n - start));
    const float* chunk = x + start * dim;
    if (staged_) {
      x_dev_.CopyFromHost(chunk, size_t(batch) * dim);
      chunk = x_dev_.data();
    }
    Forward(params, chunk, batch);
    backend_->ArgmaxRows(batch, num_classes(), acts_.back().data(),
                         predictions_.data());
    predictions_.CopyToHost(host_predictions_.data(), batch);
    for (int32_t r = 0; r < batch; ++r) {
      correct += host_predictions_[r] == labels[start + r];
    }
  }
  EndOfCall();
  if (!backend_->status().ok()) return -1;
  return correct;
}

}  // namespace psd
