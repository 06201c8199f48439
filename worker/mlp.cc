#include "worker/mlp.h"

#include <algorithm>
#include <cstdint>
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
      predictions_(max_batch) {
  for (int32_t i = 0; i < num_layers(); ++i) {
    const size_t n = size_t(max_batch_) * layer_sizes_[i + 1];
    acts_.emplace_back(n);
    dacts_.emplace_back(n);
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
  return std::make_unique<Mlp>(std::move(layer_sizes), max_batch, backend);
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

void Mlp::Forward(const std::vector<const float*>& params, const float* x,
                  int32_t batch) {
  const float* in = x;
  for (int32_t i = 0; i < num_layers(); ++i) {
    const int fan_in = layer_sizes_[i], fan_out = layer_sizes_[i + 1];
    float* out = acts_[i].data();
    backend_->Gemm(false, false, batch, fan_out, fan_in, 1.0f, in,
                   params[2 * i], 0.0f, out);
    backend_->AddBias(batch, fan_out, params[2 * i + 1], out);
    if (i + 1 < num_layers()) backend_->ReluForward(batch * fan_out, out);
    in = out;
  }
}

float Mlp::ForwardBackward(const std::vector<const float*>& params,
                           const float* x, const int32_t* labels,
                           int32_t batch, const std::vector<float*>& grads) {
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
    // dX[batch, fan_in] = dZ W^T, the previous layer's output gradient.
    if (i > 0) {
      backend_->Gemm(false, true, batch, fan_in, fan_out, 1.0f, dz,
                     params[2 * i], 0.0f, dacts_[i - 1].data());
    }
  }
  return loss;
}

int64_t Mlp::CountCorrect(const std::vector<const float*>& params,
                          const float* x, const int32_t* labels, int64_t n) {
  int64_t correct = 0;
  const int64_t dim = layer_sizes_[0];
  for (int64_t start = 0; start < n; start += max_batch_) {
    const int32_t batch =
        static_cast<int32_t>(std::min<int64_t>(max_batch_, n - start));
    Forward(params, x + start * dim, batch);
    backend_->ArgmaxRows(batch, num_classes(), acts_.back().data(),
                         predictions_.data());
    for (int32_t r = 0; r < batch; ++r) {
      correct += predictions_[r] == labels[start + r];
    }
  }
  return correct;
}

}  // namespace psd
