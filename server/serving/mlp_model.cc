#include "server/serving/mlp_model.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/mlp.h"

namespace psd::serving {

absl::StatusOr<std::unique_ptr<MlpModel>> MlpModel::Create(
    std::vector<NamedTensor> tensors,
    std::unique_ptr<kernels::Backend> backend, int32_t max_batch) {
  if (max_batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MlpModel: max_batch ", max_batch, ", must be > 0"));
  }
  if (backend == nullptr || !backend->UsesHostMemory()) {
    return absl::FailedPreconditionError(
        "MlpModel: only a host-memory backend (the CPU) is supported");
  }
  std::map<std::string, NamedTensor> by_name;
  for (NamedTensor& t : tensors) {
    const std::string name = t.name;
    by_name[name] = std::move(t);
  }
  std::vector<int32_t> sizes;
  std::vector<NamedTensor> params;
  for (int i = 0;; ++i) {
    const std::string w = absl::StrCat("layer", i, ".weight");
    const std::string b = absl::StrCat("layer", i, ".bias");
    auto wi = by_name.find(w);
    if (wi == by_name.end()) {
      if (by_name.count(b) != 0) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", w, ": missing (", b, " is there)"));
      }
      break;
    }
    const std::vector<int64_t>& ws = wi->second.shape;
    if (ws.size() != 2 || ws[0] <= 0 || ws[1] <= 0 || ws[0] > (1 << 30) ||
        ws[1] > (1 << 30)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", w, ": shape [", absl::StrJoin(ws, ","),
                       "], want [fan_in, fan_out], both > 0"));
    }
    if (i == 0) {
      sizes.push_back(static_cast<int32_t>(ws[0]));
    } else if (ws[0] != sizes.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", w, ": shape [", absl::StrJoin(ws, ","),
                       "], want fan_in ", sizes.back(),
                       " (the previous layer's fan_out)"));
    }
    sizes.push_back(static_cast<int32_t>(ws[1]));
    auto bi = by_name.find(b);
    if (bi == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", b, ": missing"));
    }
    if (bi->second.shape != std::vector<int64_t>{ws[1]}) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", b, ": shape [", absl::StrJoin(bi->second.shape, ","),
                       "], want [", ws[1], "]"));
    }
    params.push_back(std::move(wi->second));
    params.push_back(std::move(bi->second));
    by_name.erase(w);
    by_name.erase(b);
  }
  if (params.empty()) {
    return absl::InvalidArgumentError("tensor layer0.weight: missing (no layers)");
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", by_name.begin()->first,
        ": not a parameter of the MLP (layer{i}.weight / layer{i}.bias)"));
  }
  std::unique_ptr<MlpModel> model(
      new MlpModel(std::move(sizes), std::move(params), std::move(backend)));
  model->Calibrate(max_batch);
  return model;
}

MlpModel::MlpModel(std::vector<int32_t> layer_sizes,
                   std::vector<NamedTensor> params,
                   std::unique_ptr<kernels::Backend> backend)
    : layer_sizes_(std::move(layer_sizes)),
      params_(std::move(params)),
      backend_(std::move(backend)),
      acts_(layer_sizes_.size() - 2) {}

// worker/mlp.h's MlpForward: the training code's kernels, in its order.
void MlpModel::ForwardRows(const float* x, int32_t rows, float* logits) {
  const size_t layers = layer_sizes_.size() - 1;
  std::vector<float*> outputs;
  for (size_t i = 0; i + 1 < layers; ++i) {
    std::vector<float>& act = acts_[i];
    const size_t n = size_t(rows) * layer_sizes_[i + 1];
    if (act.size() < n) act.resize(n);
    outputs.push_back(act.data());
  }
  outputs.push_back(logits);
  std::vector<const float*> params;
  for (const NamedTensor& t : params_) params.push_back(t.values.data());
  MlpForward(backend_.get(), layer_sizes_, params, x, rows, outputs);
}

}  // namespace psd::serving

namespace psd::serving {

void MlpModel::Forward(const float* x, int32_t rows, float* logits) {
  const size_t in = input_dim(), out = num_classes();
  if (min_rows_ == 0) {  // every row alone
    for (int32_t r = 0; r < rows; ++r) ForwardRows(x + r * in, 1, logits + r * out);
    return;
  }
  if (rows >= min_rows_) {
    ForwardRows(x, rows, logits);
    return;
  }
  padded_x_.assign(size_t(min_rows_) * in, 0.0f);
  std::copy(x, x + rows * in, padded_x_.begin());
  padded_logits_.resize(size_t(min_rows_) * out);
  ForwardRows(padded_x_.data(), min_rows_, padded_logits_.data());
  std::copy(padded_logits_.begin(), padded_logits_.begin() + rows * out, logits);
}

void MlpModel::Calibrate(int32_t max_batch) {
  const size_t in = input_dim(), out = num_classes();
  // A fixed pseudo-random probe, values of the order of normalised pixels.
  std::mt19937 rng(20261207);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(max_batch) * in);
  for (float& v : x) v = normal(rng);
  std::vector<float> reference(size_t(max_batch) * out), y(reference.size());
  ForwardRows(x.data(), max_batch, reference.data());
  // Does a batch of m rows (the first m, then the last m) reproduce them?
  auto agrees = [&](int32_t m) {
    for (int32_t start : {0, max_batch - m}) {
      ForwardRows(x.data() + start * in, m, y.data());
      if (std::memcmp(y.data(), reference.data() + start * out,
                      sizeof(float) * m * out) != 0) {
        return false;
      }
    }
    return true;
  };
  // Every size up to 64, then powers of two and the largest few (checking
  // each of thousands would cost max_batch^2 rows).
  std::vector<int32_t> sizes;
  for (int32_t m = 1; m <= max_batch; m = m < 64 ? m + 1 : m * 2) sizes.push_back(m);
  for (int32_t m = std::max(1, max_batch - 2); m <= max_batch; ++m) sizes.push_back(m);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  // The smallest size from which every larger one agrees.
  min_rows_ = 0;
  for (auto m = sizes.rbegin(); m != sizes.rend(); ++m) {
    if (!agrees(*m)) break;
    min_rows_ = *m;
  }
}

}  // namespace psd::serving
