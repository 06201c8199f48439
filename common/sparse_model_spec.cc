#include "common/sparse_model_spec.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace psd {
namespace {

void AddLayer(const std::string& prefix, int64_t fan_in, int64_t fan_out,
              std::vector<ParameterSpec>* out) {
  ParameterSpec weight;
  weight.set_name(absl::StrCat(prefix, ".weight"));
  weight.add_shape(fan_in);
  weight.add_shape(fan_out);
  out->push_back(std::move(weight));
  ParameterSpec bias;
  bias.set_name(absl::StrCat(prefix, ".bias"));
  bias.add_shape(fan_out);
  out->push_back(std::move(bias));
}

}  // namespace

std::vector<ParameterSpec> SparseModelParameters(const ModelSpec& model) {
  std::vector<ParameterSpec> out;
  if (model.kind() == ModelSpec::SPARSE_LR) {
    ParameterSpec bias;
    bias.set_name("bias");
    bias.add_shape(1);
    out.push_back(std::move(bias));
    return out;
  }
  if (model.kind() != ModelSpec::DLRM) return out;
  int64_t fan_in = model.num_dense_features();
  for (int i = 0; i < model.bottom_mlp_size(); ++i) {
    AddLayer(absl::StrCat("bottom", i), fan_in, model.bottom_mlp(i), &out);
    fan_in = model.bottom_mlp(i);
  }
  const int64_t f = model.fields_size();
  fan_in += (f + 1) * f / 2;
  for (int i = 0; i <= model.top_mlp_size(); ++i) {
    const int64_t fan_out = i < model.top_mlp_size() ? model.top_mlp(i) : 1;
    AddLayer(absl::StrCat("top", i), fan_in, fan_out, &out);
    fan_in = fan_out;
  }
  return out;
}

}  // namespace psd
