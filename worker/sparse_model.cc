#include "worker/sparse_model.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace psd {
namespace {

constexpr int32_t kMaxTables = 64;
constexpr int32_t kMaxFields = 256;
constexpr int32_t kMaxDim = 65536;
constexpr int32_t kMaxMlpLayers = 16;
constexpr int32_t kMaxMlpWidth = 4096;
constexpr int32_t kMaxDense = 4096;
constexpr int32_t kMaxBatch = 1 << 20;
constexpr int64_t kMaxScratchFloats = int64_t{1} << 28;

// C = alpha op(A) op(B) + beta C, row-major; op(A) [m, k], op(B) [k, n].
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
          const float* a, const float* b, float beta, float* c) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < int64_t{m} * n; ++i) {
      c[i] = beta == 0.0f ? 0.0f : beta * c[i];
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
              trans_a ? m : k, b, trans_b ? k : n, beta, c, n);
}

// Column sums of x [rows, cols] to out [cols].
void ColumnSums(int rows, int cols, const float* x, float* out) {
  std::fill(out, out + cols, 0.0f);
  for (int r = 0; r < rows; ++r) {
    const float* row = x + int64_t{r} * cols;
    for (int c = 0; c < cols; ++c) out[c] += row[c];
  }
}

absl::Status WidthsError(const std::string& field, int32_t min_layers,
                         int32_t max_layers, int size) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": must have ", min_layers, " to ", max_layers,
                   " layers, got ", size));
}

absl::Status CheckWidths(const std::string& field,
                         const google::protobuf::RepeatedField<int32_t>& w,
                         int32_t min_layers) {
  if (w.size() < min_layers || w.size() > kMaxMlpLayers) {
    return WidthsError(field, min_layers, kMaxMlpLayers, w.size());
  }
  for (int i = 0; i < w.size(); ++i) {
    if (w[i] < 1 || w[i] > kMaxMlpWidth) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "]: must be in [1, ", kMaxMlpWidth,
                       "], got ", w[i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

SparseModel::~SparseModel() = default;

absl::StatusOr<std::unique_ptr<SparseModel>> SparseModel::Create(
    const ModelSpec& model, int32_t max_batch) {
  if (model.kind() != ModelSpec::SPARSE_LR && model.kind() != ModelSpec::DLRM) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.kind: must be SPARSE_LR or DLRM, got ",
                     ModelSpec::Kind_Name(model.kind())));
  }
  if (max_batch < 1 || max_batch > kMaxBatch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch: must be in [1, ", kMaxBatch, "], got ", max_batch));
  }
  const bool dlrm = model.kind() == ModelSpec::DLRM;
  if (model.tables_size() < 1 || model.tables_size() > kMaxTables) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.tables: must have 1 to ", kMaxTables,
                     " tables, got ", model.tables_size()));
  }
  const int32_t d =
      dlrm && model.bottom_mlp_size() > 0 ? model.bottom_mlp().Get(
                                                model.bottom_mlp_size() - 1)
                                          : 1;
  std::set<std::string> tables;
  for (int t = 0; t < model.tables_size(); ++t) {
    const EmbeddingTableSpec& table = model.tables(t);
    if (!tables.insert(table.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.tables[", t, "].name: \"", table.name(),
                       "\" is used twice"));
    }
    if (table.dim() < 1 || table.dim() > kMaxDim) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.tables[", t, "].dim: must be in [1, ", kMaxDim,
                       "], got ", table.dim()));
    }
  }
  if (model.fields_size() < 1 || model.fields_size() > kMaxFields) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.fields: must have 1 to ", kMaxFields,
                     " fields, got ", model.fields_size()));
  }
  for (int f = 0; f < model.fields_size(); ++f) {
    if (tables.count(model.fields(f).table()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.fields[", f, "].table: no table named \"",
                       model.fields(f).table(), "\" in model.tables"));
    }
  }
  if (!dlrm) {
    for (int t = 0; t < model.tables_size(); ++t) {
      if (model.tables(t).dim() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.tables[", t, "].dim: must be 1 for SPARSE_LR, "
                         "got ", model.tables(t).dim()));
      }
    }
    if (model.num_dense_features() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.num_dense_features: must be unset for SPARSE_LR, got ",
          model.num_dense_features()));
    }
    if (model.bottom_mlp_size() != 0 || model.top_mlp_size() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(model.bottom_mlp_size() != 0 ? "model.bottom_mlp"
                                                    : "model.top_mlp",
                       ": must be unset for SPARSE_LR"));
    }
  } else {
    if (model.num_dense_features() < 1 ||
        model.num_dense_features() > kMaxDense) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.num_dense_features: must be in [1, ", kMaxDense,
          "] for DLRM, got ", model.num_dense_features()));
    }
    if (absl::Status s = CheckWidths("model.bottom_mlp", model.bottom_mlp(), 1);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckWidths("model.top_mlp", model.top_mlp(), 0);
        !s.ok()) {
      return s;
    }
    for (int t = 0; t < model.tables_size(); ++t) {
      if (model.tables(t).dim() != d) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model.tables[", t, "].dim: must equal the last bottom_mlp width ",
            d, " for DLRM, got ", model.tables(t).dim()));
      }
    }
  }

  std::unique_ptr<SparseModel> m(new SparseModel());
  m->model_ = model;
  m->dlrm_ = dlrm;
  m->num_fields_ = model.fields_size();
  m->field_dim_ = dlrm ? d : 1;
  m->num_dense_ = dlrm ? model.num_dense_features() : 0;
  if (dlrm) {
    const int32_t f = m->num_fields_;
    m->num_pairs_ = (f + 1) * f / 2;
    int32_t param = 0;
    int32_t in = m->num_dense_;
    m->max_width_ = in;
    for (int32_t width : model.bottom_mlp()) {
      m->bottom_.push_back({in, width, /*relu=*/true, param});
      param += 2;
      in = width;
      m->max_width_ = std::max(m->max_width_, width);
    }
    in = d + m->num_pairs_;
    m->max_width_ = std::max(m->max_width_, in);
    for (int i = 0; i <= model.top_mlp_size(); ++i) {
      const bool last = i == model.top_mlp_size();
      const int32_t width = last ? 1 : model.top_mlp(i);
      m->top_.push_back({in, width, /*relu=*/!last, param});
      param += 2;
      in = width;
      m->max_width_ = std::max(m->max_width_, width);
    }
    m->bottom_out_.resize(m->bottom_.size());
    m->top_out_.resize(m->top_.size());
  }
  // The scratch buffers' floats per example.
  int64_t per_example = 1;
  if (dlrm) {
    per_example += int64_t{m->field_dim_} + m->num_pairs_ + 2 * m->max_width_;
    for (const Layer& l : m->bottom_) per_example += l.out;
    for (const Layer& l : m->top_) per_example += l.out;
  }
  if (per_example * max_batch > kMaxScratchFloats) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch: ", max_batch, " examples of ", per_example,
        " scratch floats each exceed ", kMaxScratchFloats,
        " (1 GiB); use smaller batches"));
  }
  m->Reserve(max_batch);
  return m;
}

std::vector<ParameterSpec> SparseModel::DenseParameters() const {
  return SparseModelParameters(model_);
}

void SparseModel::Reserve(int32_t batch) {
  if (batch <= reserved_) return;
  reserved_ = batch;
  const int64_t b = batch;
  logits_.resize(b);
  if (!dlrm_) return;
  for (size_t l = 0; l < bottom_.size(); ++l) {
    bottom_out_[l].resize(b * bottom_[l].out);
  }
  for (size_t l = 0; l < top_.size(); ++l) {
    top_out_[l].resize(b * top_[l].out);
  }
  top_in_.resize(b * (field_dim_ + num_pairs_));
  grad_a_.resize(b * max_width_);
  grad_b_.resize(b * max_width_);
}

void SparseModel::Forward(const std::vector<const float*>& params,
                          const float* dense_x,
                          const std::vector<const float*>& field_rows,
                          int32_t batch) {
  Reserve(batch);
  if (!dlrm_) {
    for (int32_t b = 0; b < batch; ++b) {
      float z = params[0][0];
      for (int32_t f = 0; f < num_fields_; ++f) z += field_rows[f][b];
      logits_[b] = z;
    }
    return;
  }
  // One layer: out = act(in W + bias).
  auto layer = [&](const Layer& l, const float* in, float* out) {
    const float* w = params[l.param];
    const float* bias = params[l.param + 1];
    for (int32_t b = 0; b < batch; ++b) {
      std::copy(bias, bias + l.out, out + int64_t{b} * l.out);
    }
    Gemm(false, false, batch, l.out, l.in, 1.0f, in, w, 1.0f, out);
    if (l.relu) {
      for (int64_t i = 0; i < int64_t{batch} * l.out; ++i) {
        out[i] = std::max(out[i], 0.0f);
      }
    }
  };
  const float* in = dense_x;
  for (size_t l = 0; l < bottom_.size(); ++l) {
    layer(bottom_[l], in, bottom_out_[l].data());
    in = bottom_out_[l].data();
  }
  const int32_t d = field_dim_;
  const int32_t width = d + num_pairs_;
  const float* z0 = bottom_out_.back().data();
  for (int32_t b = 0; b < batch; ++b) {
    float* t = top_in_.data() + int64_t{b} * width;
    const float* z0b = z0 + int64_t{b} * d;
    std::copy(z0b, z0b + d, t);
    float* dots = t + d;
    for (int32_t i = 1; i <= num_fields_; ++i) {
      const float* vi = field_rows[i - 1] + int64_t{b} * d;
      for (int32_t j = 0; j < i; ++j) {
        const float* vj = j == 0 ? z0b : field_rows[j - 1] + int64_t{b} * d;
        float dot = 0;
        for (int32_t c = 0; c < d; ++c) dot += vi[c] * vj[c];
        *dots++ = dot;
      }
    }
  }
  in = top_in_.data();
  for (size_t l = 0; l < top_.size(); ++l) {
    layer(top_[l], in, top_out_[l].data());
    in = top_out_[l].data();
  }
  std::copy(in, in + batch, logits_.begin());
}

void SparseModel::Predict(const std::vector<const float*>& params,
                          const float* dense_x,
                          const std::vector<const float*>& field_rows,
                          int32_t batch, float* probabilities) {
  if (batch < 1) return;
  Forward(params, dense_x, field_rows, batch);
  for (int32_t b = 0; b < batch; ++b) {
    probabilities[b] =
        static_cast<float>(1.0 / (1.0 + std::exp(-double{logits_[b]})));
  }
}

float SparseModel::ForwardBackward(const std::vector<const float*>& params,
                                   const float* dense_x,
                                   const std::vector<const float*>& field_rows,
                                   const float* labels, int32_t batch,
                                   const std::vector<float*>& param_grads,
                                   const std::vector<float*>& field_row_grads) {
  if (batch < 1) return 0.0f;
  Forward(params, dense_x, field_rows, batch);
  // Loss and d(mean loss)/dz = (sigmoid(z) - y) / B.
  double loss = 0;
  const float inv_batch = 1.0f / static_cast<float>(batch);
  std::vector<float>& dz = dlrm_ ? grad_a_ : logits_;
  for (int32_t b = 0; b < batch; ++b) {
    const double z = logits_[b];
    const double y = labels[b];
    loss += std::max(z, 0.0) - z * y + std::log1p(std::exp(-std::abs(z)));
    const double s = 1.0 / (1.0 + std::exp(-z));
    dz[b] = static_cast<float>((s - y) * inv_batch);
  }
  loss /= batch;
  if (!dlrm_) {
    // logits_ now holds dz.
    float bias_grad = 0;
    for (int32_t b = 0; b < batch; ++b) bias_grad += dz[b];
    param_grads[0][0] = bias_grad;
    for (int32_t f = 0; f < num_fields_; ++f) {
      std::copy(dz.begin(), dz.begin() + batch, field_row_grads[f]);
    }
    return static_cast<float>(loss);
  }
  // Backward through one layer: given da (the gradient at the layer's
  // pre-activation) [B, out] in grad_a_, writes the weight and bias
  // gradients and, when `input_relu`, the gradient at the input's
  // pre-activation (else at the input itself) [B, in] to grad_a_.
  auto back = [&](const Layer& l, const float* in, bool input_relu) {
    const float* da = grad_a_.data();
    Gemm(true, false, l.in, l.out, batch, 1.0f, in, da, 0.0f,
         param_grads[l.param]);
    ColumnSums(batch, l.out, da, param_grads[l.param + 1]);
    Gemm(false, true, batch, l.in, l.out, 1.0f, da, params[l.param], 0.0f,
         grad_b_.data());
    if (input_relu) {
      for (int64_t i = 0; i < int64_t{batch} * l.in; ++i) {
        if (in[i] <= 0.0f) grad_b_[i] = 0.0f;
      }
    }
    std::swap(grad_a_, grad_b_);
  };
  for (size_t l = top_.size(); l-- > 0;) {
    const float* in = l == 0 ? top_in_.data() : top_out_[l - 1].data();
    back(top_[l], in, /*input_relu=*/l > 0);
  }
  // grad_a_: the gradient at the top input t = [z0, dots], [B, d + pairs].
  // Interaction backward: d(vi . vj) gives vj to vi and vi to vj. The
  // gradient at z0 goes to grad_b_ [B, d].
  const int32_t d = field_dim_;
  const int32_t width = d + num_pairs_;
  const float* z0 = bottom_out_.back().data();
  for (int32_t f = 0; f < num_fields_; ++f) {
    std::fill(field_row_grads[f], field_row_grads[f] + int64_t{batch} * d,
              0.0f);
  }
  for (int32_t b = 0; b < batch; ++b) {
    const float* dt = grad_a_.data() + int64_t{b} * width;
    float* dz0 = grad_b_.data() + int64_t{b} * d;
    std::copy(dt, dt + d, dz0);
    const float* ddots = dt + d;
    const float* z0b = z0 + int64_t{b} * d;
    for (int32_t i = 1; i <= num_fields_; ++i) {
      const float* vi = field_rows[i - 1] + int64_t{b} * d;
      float* gi = field_row_grads[i - 1] + int64_t{b} * d;
      for (int32_t j = 0; j < i; ++j) {
        const float g = *ddots++;
        if (g == 0.0f) continue;
        const float* vj = j == 0 ? z0b : field_rows[j - 1] + int64_t{b} * d;
        float* gj = j == 0 ? dz0 : field_row_grads[j - 1] + int64_t{b} * d;
        for (int32_t c = 0; c < d; ++c) {
          gi[c] += g * vj[c];
          gj[c] += g * vi[c];
        }
      }
    }
  }
  // Through the last bottom layer's ReLU.
  for (int64_t i = 0; i < int64_t{batch} * d; ++i) {
    grad_a_[i] = z0[i] > 0.0f ? grad_b_[i] : 0.0f;
  }
  for (size_t l = bottom_.size(); l-- > 0;) {
    const float* in = l == 0 ? dense_x : bottom_out_[l - 1].data();
    if (l == 0) {
      // No gradient at the data: weight and bias only.
      const Layer& layer = bottom_[0];
      Gemm(true, false, layer.in, layer.out, batch, 1.0f, in, grad_a_.data(),
           0.0f, param_grads[layer.param]);
      ColumnSums(batch, layer.out, grad_a_.data(),
                 param_grads[layer.param + 1]);
    } else {
      back(bottom_[l], in, /*input_relu=*/true);
    }
  }
  return static_cast<float>(loss);
}

}  // namespace psd
