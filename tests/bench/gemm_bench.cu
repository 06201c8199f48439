// gemm_bench: TFLOP/s of psd's CUDA Gemm path (kernels::Backend::Gemm on
// the CUDA backend) against a direct cuBLAS call on the same shapes, on one
// GPU. Built only with --config=cuda:
//
//   bazel build --config=cuda //tests/bench:gemm_bench
//   ./bazel-bin/tests/bench/gemm_bench [--device=0] [--min_ms=200]
//
// For each shape (m, n, k) and precision it runs warm-up calls, then
// repeats the Gemm until at least --min_ms of wall time has passed, and
// reports 2*m*n*k*calls / seconds / 1e12. Both sides are timed the same
// way: host clock around the loop, with a full synchronization at the end.
//   - fp32: ours = cublasSgemm behind the Backend; direct = cublasSgemm.
//   - bf16: ours = fp32 inputs rounded to bf16 on every call (two small
//     kernels) + cublasGemmEx; direct = cublasGemmEx on inputs already in
//     bf16. The gap is the cost of that conversion.
// Shapes: the Fashion-MNIST MLP's forward and backward gemms at batch 128,
// 1024 and 8192, and squares 1024..8192.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda_backend.h"
#include "kernels/kernels.h"

namespace {

using psd::kernels::Backend;
using psd::kernels::Buffer;
using psd::kernels::CudaBackendOptions;
using psd::kernels::GemmPrecision;

struct Shape {
  const char* what;
  bool ta, tb;
  int m, n, k;
};

std::vector<Shape> Shapes() {
  std::vector<Shape> shapes;
  for (int b : {128, 1024, 8192}) {
    shapes.push_back({"mlp fwd x*W0", false, false, b, 256, 784});
    shapes.push_back({"mlp bwd X^T*dZ0", true, false, 784, 256, b});
    shapes.push_back({"mlp bwd dZ1*W1^T", false, true, b, 256, 128});
  }
  for (int s : {1024, 4096, 8192}) {
    shapes.push_back({"square", false, false, s, s, s});
  }
  return shapes;
}

#define CHECK_CUDA(expr)                                                   \
  do {                                                                     \
    cudaError_t e_ = (expr);                                               \
    if (e_ != cudaSuccess) {                                               \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(e_));     \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)
#define CHECK_CUBLAS(expr)                                                 \
  do {                                                                     \
    cublasStatus_t s_ = (expr);                                            \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                     \
      std::fprintf(stderr, "%s: cuBLAS status %d\n", #expr, int(s_));      \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)

__global__ void Fill(int64_t n, uint32_t seed, float* x) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    x[i] = (h % 2001) / 1000.0f - 1.0f;  // In [-1, 1].
  }
}

__global__ void ToBf16(int64_t n, const float* x, __nv_bfloat16* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = __float2bfloat16_rn(x[i]);
  }
}

// Runs fn() until min_ms have passed (after 3 warm-up calls); returns
// seconds per call. sync() waits for the GPU.
template <typename Fn, typename Sync>
double TimePerCall(double min_ms, Fn fn, Sync sync) {
  for (int i = 0; i < 3; ++i) fn();
  sync();
  int64_t calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed_ms = 0.0;
  int64_t batch = 1;
  while (elapsed_ms < min_ms) {
    for (int64_t i = 0; i < batch; ++i) fn();
    sync();
    calls += batch;
    batch *= 2;
    elapsed_ms = std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - start)
                     .count();
  }
  return elapsed_ms / 1e3 / calls;
}

}  // namespace

int main(int argc, char** argv) {
  int device = 0;
  double min_ms = 200.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--device=", 9) == 0) {
      device = std::atoi(argv[i] + 9);
    } else if (std::strncmp(argv[i], "--min_ms=", 9) == 0) {
      min_ms = std::atof(argv[i] + 9);
    } else {
      std::fprintf(stderr, "usage: %s [--device=N] [--min_ms=MS]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("gemm_bench: cuda:%d %s (cc %d.%d), runtime %d, driver %d, "
              "min %.0f ms per case\n",
              device, prop.name, prop.major, prop.minor, runtime, driver,
              min_ms);
  CHECK_CUDA(cudaSetDevice(device));

  cublasHandle_t blas;
  CHECK_CUBLAS(cublasCreate(&blas));
  std::printf("%-18s %5s %6s %6s %6s %5s %12s %12s %7s\n", "shape", "trans",
              "m", "n", "k", "prec", "ours TF/s", "cuBLAS TF/s", "ratio");
  for (GemmPrecision precision : {GemmPrecision::kFp32, GemmPrecision::kBf16}) {
    CudaBackendOptions options;
    options.device = device;
    options.gemm = precision;
    auto ours = psd::kernels::CreateCudaBackend(options);
    if (!ours.ok()) {
      std::fprintf(stderr, "CreateCudaBackend: %s\n",
                   ours.status().ToString().c_str());
      return 1;
    }
    Backend* be = ours->get();
    const bool bf16 = precision == GemmPrecision::kBf16;
    for (const Shape& s : Shapes()) {
      const int64_t a_n = int64_t{s.m} * s.k, b_n = int64_t{s.k} * s.n,
                    c_n = int64_t{s.m} * s.n;
      Buffer<float> a(be, a_n), b(be, b_n), c(be, c_n);
      if (!be->status().ok()) {
        std::fprintf(stderr, "%s\n", be->status().ToString().c_str());
        return 1;
      }
      Fill<<<1024, 256>>>(a_n, 1, a.data());
      Fill<<<1024, 256>>>(b_n, 2, b.data());
      __nv_bfloat16 *a16 = nullptr, *b16 = nullptr;
      if (bf16) {
        CHECK_CUDA(cudaMalloc(&a16, a_n * sizeof(__nv_bfloat16)));
        CHECK_CUDA(cudaMalloc(&b16, b_n * sizeof(__nv_bfloat16)));
        ToBf16<<<1024, 256>>>(a_n, a.data(), a16);
        ToBf16<<<1024, 256>>>(b_n, b.data(), b16);
      }
      CHECK_CUDA(cudaDeviceSynchronize());

      const double t_ours = TimePerCall(
          min_ms,
          [&] {
            be->Gemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data(), b.data(),
                     0.0f, c.data());
          },
          [&] {
            if (!be->Synchronize().ok()) {
              std::fprintf(stderr, "%s\n", be->status().ToString().c_str());
              std::exit(1);
            }
          });
      // The same column-major mapping as the backend: C^T = op(B)^T op(A)^T.
      const int lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
      const cublasOperation_t op_a = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      const cublasOperation_t op_b = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      const float alpha = 1.0f, beta = 0.0f;
      const double t_direct = TimePerCall(
          min_ms,
          [&] {
            if (bf16) {
              CHECK_CUBLAS(cublasGemmEx(
                  blas, op_b, op_a, s.n, s.m, s.k, &alpha, b16, CUDA_R_16BF,
                  ldb, a16, CUDA_R_16BF, lda, &beta, c.data(), CUDA_R_32F,
                  s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            } else {
              CHECK_CUBLAS(cublasSgemm(blas, op_b, op_a, s.n, s.m, s.k,
                                       &alpha, b.data(), ldb, a.data(), lda,
                                       &beta, c.data(), s.n));
            }
          },
          [] { CHECK_CUDA(cudaDeviceSynchronize()); });
      const double flops = 2.0 * s.m * s.n * s.k;
      const double tf_ours = flops / t_ours / 1e12;
      const double tf_direct = flops / t_direct / 1e12;
      std::printf("%-18s %2s%-3s %6d %6d %6d %5s %12.2f %12.2f %7.3f\n",
                  s.what, s.ta ? "T" : "N", s.tb ? "T" : "N", s.m, s.n, s.k,
                  bf16 ? "bf16" : "fp32", tf_ours, tf_direct,
                  tf_ours / tf_direct);
      cudaFree(a16);
      cudaFree(b16);
    }
  }
  cublasDestroy(blas);
  return 0;
}
