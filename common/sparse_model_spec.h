// The dense parameters of the sparse models of issue 25 (ModelSpec kinds
// SPARSE_LR and DLRM; proto/job.proto): the part of the model held as
// ordinary (dense) parameters on the servers, next to its embedding
// tables. worker/sparse_model.h computes with them. Here, in common/,
// rather than in worker/sparse_model.h, so that common/job_config.cc
// (ModelParameters) can use it without linking the worker's BLAS code.
// A pure function; thread-safe.
#ifndef PSD_COMMON_SPARSE_MODEL_SPEC_H_
#define PSD_COMMON_SPARSE_MODEL_SPEC_H_

#include <vector>

#include "common/proto.h"

namespace psd {

// The dense parameters, in order, float32, row-major:
//   SPARSE_LR: "bias" [1].
//   DLRM, with bottom widths b_0..b_{L-1} (model.bottom_mlp), top hidden
//   widths t_0..t_{M-1} (model.top_mlp), D = num_dense_features, F fields
//   and d = b_{L-1}:
//     "bottom{i}.weight" [fan_in, fan_out], "bottom{i}.bias" [fan_out] for
//       i = 0..L-1, fan_in D for i = 0, else b_{i-1}; fan_out b_i;
//     "top{i}.weight" [fan_in, fan_out], "top{i}.bias" [fan_out] for
//       i = 0..M, fan_in d + (F+1)F/2 for i = 0, else t_{i-1}; fan_out t_i
//       for i < M and 1 for i = M (the logit).
//   Any other kind: empty.
// A weight [fan_in, fan_out] maps x [batch, fan_in] to x W [batch,
// fan_out]. Initial values: common/placement.h's InitialValues (Glorot
// uniform for the weights, zeros for the biases). The spec is not checked
// (common/job_config.h validates it; SparseModel::Create checks again): a
// non-positive width gives a non-positive dimension.
std::vector<ParameterSpec> SparseModelParameters(const ModelSpec& model);

}  // namespace psd

#endif  // PSD_COMMON_SPARSE_MODEL_SPEC_H_
