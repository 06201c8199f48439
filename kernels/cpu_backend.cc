// CPU implementation of psd::kernels::Backend on OpenBLAS.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "kernels/kernels.h"

namespace psd::kernels {
namespace {

class CpuBackend : public Backend {
 public:
  std::string Name() const override { return "cpu-openblas"; }

  // Host memory: allocation is malloc, copies are memcpy, nothing is queued.
  bool UsesHostMemory() const override { return true; }
  void* Allocate(size_t bytes) override {
    return bytes == 0 ? nullptr : std::malloc(bytes);
  }
  void Free(void* p) override { std::free(p); }
  void CopyFromHost(const void* host_src, void* dst, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host_src, bytes);
  }
  void CopyToHost(const void* src, void* host_dst, size_t bytes) override {
    if (bytes > 0) std::memcpy(host_dst, src, bytes);
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::Status status() const override { return absl::OkStatus(); }

  void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, const float* b, float beta, float* c) override {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {  // op(A)*op(B) is zero; BLAS may not handle k == 0.
      for (int64_t i = 0; i < int64_t{m} * n; ++i) {
        c[i] = beta == 0.0f ? 0.0f : beta * c[i];
      }
      return;
    }
    const int lda = trans_a ? m : k;
    const int ldb = trans_b ? k : n;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda,
                b, ldb, beta, c, n);
  }

  void AddBias(int rows, int cols, const float* bias, float* y) override {
    for (int r = 0; r < rows; ++r) {
      float* row = y + int64_t{r} * cols;
      for (int j = 0; j < cols; ++j) row[j] += bias[j];
    }
  }

  void BiasGrad(int rows, int cols, const float* dy,
                float* grad_bias) override {
    std::fill(grad_bias, grad_bias + std::max(cols, 0), 0.0f);
    for (int r = 0; r < rows; ++r) {
      const float* row = dy + int64_t{r} * cols;
      for (int j = 0; j < cols; ++j) grad_bias[j] += row[j];
    }
  }

  void ReluForward(int n, float* x) override {
    for (int i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
  }

  void ReluBackward(int n, const float* y, float* dy) override {
    for (int i = 0; i < n; ++i) {
      if (y[i] <= 0.0f) dy[i] = 0.0f;
    }
  }

  float SoftmaxCrossEntropy(int rows, int cols, const float* logits,
                            const int32_t* labels, float* dlogits) override {
    if (rows <= 0 || cols <= 0) return 0.0f;
    const float inv_rows = 1.0f / static_cast<float>(rows);
    double total = 0.0;
    for (int r = 0; r < rows; ++r) {
      const float* z = logits + int64_t{r} * cols;
      float* dz = dlogits + int64_t{r} * cols;
      const float max_z = *std::max_element(z, z + cols);
      double sum = 0.0;
      for (int j = 0; j < cols; ++j) {
        dz[j] = std::exp(z[j] - max_z);
        sum += dz[j];
      }
      const float inv_sum = static_cast<float>(1.0 / sum);
      for (int j = 0; j < cols; ++j) dz[j] *= inv_sum * inv_rows;
      // Out-of-range labels (a broken REQUIRES) are clamped, not read OOB.
      const int label = std::clamp<int>(labels[r], 0, cols - 1);
      dz[label] -= inv_rows;
      // -log softmax_label = log(sum) - (z_label - max).
      total += std::log(sum) - static_cast<double>(z[label] - max_z);
    }
    return static_cast<float>(total / rows);
  }

  void ArgmaxRows(int rows, int cols, const float* x, int32_t* out) override {
    for (int r = 0; r < rows; ++r) {
      const float* row = x + int64_t{r} * cols;
      out[r] = static_cast<int32_t>(std::max_element(row, row + cols) - row);
    }
  }
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int threads) {
  if (threads > 0) openblas_set_num_threads(threads);
  return std::make_unique<CpuBackend>();
}

}  // namespace psd::kernels
