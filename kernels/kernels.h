// Math kernels behind one interface: the MLP's forward and backward passes
// call only these, so a CPU (OpenBLAS) and a CUDA backend are
// interchangeable.
//
// Conventions for every method:
//   - All matrices are float32, row-major and contiguous (no leading
//     dimension other than the column count).
//   - Pointers are host memory for the CPU backend (device memory for a
//     device backend).
//   - Sizes are element counts; a size of 0 is a no-op.
//   - Output buffers must not alias inputs unless a method says "in place".
//
// Thread safety: a Backend is not thread-safe; use one per thread.
#ifndef PSD_KERNELS_KERNELS_H_
#define PSD_KERNELS_KERNELS_H_

#include <cstdint>
#include <memory>
#include <string>

namespace psd::kernels {

class Backend {
 public:
  virtual ~Backend() = default;

  // A short identifier, e.g. "cpu-openblas".
  virtual std::string Name() const = 0;

  // C[m,n] = alpha * op(A) * op(B) + beta * C, where op(X) = X^T if trans_x.
  // A is [m,k] ([k,m] if trans_a); B is [k,n] ([n,k] if trans_b).
  // With beta == 0, C is overwritten (its old contents may be NaN).
  virtual void Gemm(bool trans_a, bool trans_b, int m, int n, int k,
                    float alpha, const float* a, const float* b, float beta,
                    float* c) = 0;

  // y[rows,cols] += bias[cols], broadcast over rows.
  virtual void AddBias(int rows, int cols, const float* bias, float* y) = 0;

  // grad_bias[cols] = sum over rows of dy[rows,cols] (overwrites).
  virtual void BiasGrad(int rows, int cols, const float* dy,
                        float* grad_bias) = 0;

  // In place: x[i] = max(x[i], 0) for i in [0,n).
  virtual void ReluForward(int n, float* x) = 0;

  // In place: dy[i] = 0 where the ReLU output y[i] <= 0.
  virtual void ReluBackward(int n, const float* y, float* dy) = 0;

  // Softmax cross-entropy of logits[rows,cols] against labels[rows].
  // Returns the MEAN loss over rows, in nats:
  //   loss = (1/rows) * sum_r (log(sum_j exp(z_rj)) - z_r,label_r),
  // and writes dlogits[rows,cols] = (softmax(z) - onehot(label)) / rows, the
  // gradient of that mean loss. Numerically stable (subtracts the row max
  // before exp). dlogits may not alias logits.
  // REQUIRES: rows > 0, labels[r] in [0,cols). The caller validates labels;
  // an out-of-range label does not crash or read out of bounds, but its row
  // contributes an unspecified (finite) loss and gradient.
  virtual float SoftmaxCrossEntropy(int rows, int cols, const float* logits,
                                    const int32_t* labels,
                                    float* dlogits) = 0;

  // out[r] = argmax_j x[r,j] for each row r of x[rows,cols]; ties go to the
  // lowest index. REQUIRES: cols > 0.
  virtual void ArgmaxRows(int rows, int cols, const float* x,
                          int32_t* out) = 0;
};

// The CPU backend: Gemm on OpenBLAS cblas_sgemm, the rest plain loops.
// `threads` sets OpenBLAS's thread count (openblas_set_num_threads, a
// process-wide setting); 0 leaves it as it is.
std::unique_ptr<Backend> CreateCpuBackend(int threads = 0);

}  // namespace psd::kernels

#endif  // PSD_KERNELS_KERNELS_H_
