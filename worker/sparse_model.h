// The forward and backward passes of the sparse models of issue 25
// (ModelSpec kinds SPARSE_LR and DLRM, proto/job.proto) on the CPU, with
// OpenBLAS cblas for the MLPs' matrix products.
//
// A model reads, per example, one embedding row per categorical field (the
// row FeatureRow (worker/click_data.h) picks in the field's table; the
// caller pulls them) and, for DLRM, the example's dense features. Its dense
// parameters (SparseModelParameters, common/sparse_model_spec.h) are
// passed in on every call; the model holds only scratch buffers.
//
// Maths (float32; z the logit, y the 0/1 label, B the batch):
//   SPARSE_LR: z = bias + sum_f e_f[0]   (every table has dim 1).
//   DLRM (Naumov et al., 2019, as the reference facebookresearch/dlrm
//   dlrm_s_pytorch.py with arch-interaction-op "dot", self-interaction
//   off):
//     z0 = bottom MLP(x): h <- ReLU(h W_i + b_i) for every bottom layer,
//          the last included (as the reference), z0 of width d;
//     dots: v_0 = z0, v_{f+1} = e_f (the F field rows, width d); the dot
//          products v_i . v_j for the (F+1)F/2 pairs j < i, in the order
//          (1,0), (2,0), (2,1), (3,0), ... (i ascending, then j; the
//          reference's lower triangle, offset -1);
//     t = [z0, dots] of width d + (F+1)F/2;
//     z = top MLP(t): ReLU after every hidden layer, the last (width 1)
//          linear.
//   Loss: the mean over the batch of the logistic loss
//     l(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))
//   (= -y log s(z) - (1-y) log(1 - s(z)), s the sigmoid, in a form that
//   never overflows).
//
// Not thread-safe (scratch buffers): one SparseModel per training thread.
#ifndef PSD_WORKER_SPARSE_MODEL_H_
#define PSD_WORKER_SPARSE_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"
#include "common/sparse_model_spec.h"

namespace psd {

class SparseModel {
 public:
  // Builds the model of `model` for batches of up to `max_batch` examples
  // (scratch buffers are sized for it; a bigger batch grows them).
  // Errors: INVALID_ARGUMENT naming the field ("model.tables[1].dim: ...")
  // for a kind other than SPARSE_LR and DLRM, 0 or more than 64 tables,
  // duplicate table names, a table dim outside [1, 65536] (SPARSE_LR: not
  // 1; DLRM: not the last bottom width), 0 or more than 256 fields, a field
  // naming no table, DLRM widths or num_dense_features outside the limits
  // of proto/job.proto, SPARSE_LR with dense features or MLP widths,
  // max_batch outside [1, 1048576], and scratch buffers of more than 1 GiB
  // (max_batch times the activations of one example).
  static absl::StatusOr<std::unique_ptr<SparseModel>> Create(
      const ModelSpec& model, int32_t max_batch);

  // SparseModelParameters(model): the dense parameters, in order.
  std::vector<ParameterSpec> DenseParameters() const;
  // F: categorical fields.
  int32_t num_fields() const { return num_fields_; }
  // Width of every field's embedding rows: 1 (SPARSE_LR) or d (DLRM).
  int32_t field_dim() const { return field_dim_; }
  // Dense features per example: 0 (SPARSE_LR) or num_dense_features.
  int32_t num_dense() const { return num_dense_; }

  // One step's forward and backward pass. Returns the mean logistic loss
  // over the batch, and WRITES (does not add to) the gradients of that
  // mean:
  //   params[p]: DenseParameters()[p]'s values, row-major;
  //   dense_x: [batch, num_dense()] (ignored, may be null, for SPARSE_LR);
  //   field_rows[f]: [batch, field_dim()], example b's row of field f;
  //   labels: [batch], 0 or 1;
  //   param_grads[p]: same shape as params[p];
  //   field_row_grads[f]: [batch, field_dim()]; row b is the gradient with
  //     respect to field_rows[f] row b (several examples may share a row:
  //     the caller sums them, e.g. the server's push does).
  // REQUIRES: params and param_grads of DenseParameters().size(),
  // field_rows and field_row_grads of num_fields() entries, non-null;
  // batch >= 1. The inputs are not changed.
  float ForwardBackward(const std::vector<const float*>& params,
                        const float* dense_x,
                        const std::vector<const float*>& field_rows,
                        const float* labels, int32_t batch,
                        const std::vector<float*>& param_grads,
                        const std::vector<float*>& field_row_grads);

  // The probabilities sigmoid(z) of the batch's examples, to
  // probabilities[0 .. batch). Same REQUIRES as ForwardBackward.
  void Predict(const std::vector<const float*>& params, const float* dense_x,
               const std::vector<const float*>& field_rows, int32_t batch,
               float* probabilities);

  ~SparseModel();
  SparseModel(const SparseModel&) = delete;
  SparseModel& operator=(const SparseModel&) = delete;

 private:
  struct Layer {
    int32_t in = 0;
    int32_t out = 0;
    bool relu = false;
    // Index of the weight in params; the bias is param + 1.
    int32_t param = 0;
  };
  SparseModel() = default;
  void Reserve(int32_t batch);
  // The logits of the batch to logits_[0 .. batch).
  void Forward(const std::vector<const float*>& params, const float* dense_x,
               const std::vector<const float*>& field_rows, int32_t batch);

  // Constant after construction.
  ModelSpec model_;
  bool dlrm_ = false;
  int32_t num_fields_ = 0;
  int32_t field_dim_ = 0;
  int32_t num_dense_ = 0;
  int32_t num_pairs_ = 0;
  std::vector<Layer> bottom_, top_;
  int32_t max_width_ = 0;

  // Scratch, sized for reserved_ examples.
  int32_t reserved_ = 0;
  // Outputs (after the ReLU, if any) of each bottom and top layer.
  std::vector<std::vector<float>> bottom_out_, top_out_;
  std::vector<float> top_in_;   // [B, d + pairs]
  std::vector<float> logits_;   // [B]
  std::vector<float> grad_a_, grad_b_;  // [B, max width]
};

}  // namespace psd

#endif  // PSD_WORKER_SPARSE_MODEL_H_
