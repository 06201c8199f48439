// CUDA implementation of psd::kernels::Backend: cuBLAS for Gemm, the kernels
// below for the rest. Contracts and numerics: kernels/cuda_backend.h.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda_backend.h"
#include "kernels/kernels.h"

namespace psd::kernels {
namespace {

constexpr int kThreads = 256;          // Threads per block, 1-D kernels.
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;  // Row kernels: a warp a row.
constexpr int64_t kMaxBlocks = 65535;  // Grid-stride loops beyond this.

int BlocksFor(int64_t n) {
  return static_cast<int>(
      std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// ---- Kernels -----------------------------------------------------------

// c[i] = beta * c[i] (0 when beta == 0, so NaN in c is overwritten).
__global__ void ScaleKernel(int64_t n, float beta, float* c) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    c[i] = beta == 0.0f ? 0.0f : beta * c[i];
  }
}

__global__ void ToBf16Kernel(int64_t n, const float* x, __nv_bfloat16* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = __float2bfloat16_rn(x[i]);
  }
}

__global__ void AddBiasKernel(int64_t n, int cols, const float* bias,
                              float* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] += bias[i % cols];
  }
}

// grad[j] = sum_r dy[r, j]. Block (32, 8): threadIdx.x picks one of 32
// adjacent columns (coalesced reads), threadIdx.y sums every 8th row; the 8
// partial sums are then added in a fixed order (deterministic, no atomics).
constexpr int kBiasCols = 32, kBiasRowLanes = 8;
__global__ void BiasGradKernel(int rows, int cols, const float* dy,
                               float* grad) {
  __shared__ float partial[kBiasRowLanes][kBiasCols];
  const int j = blockIdx.x * kBiasCols + threadIdx.x;
  float sum = 0.0f;
  if (j < cols) {
    for (int r = threadIdx.y; r < rows; r += kBiasRowLanes) {
      sum += dy[int64_t{r} * cols + j];
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float total = 0.0f;
    for (int y = 0; y < kBiasRowLanes; ++y) total += partial[y][threadIdx.x];
    grad[j] = total;
  }
}

__global__ void ReluForwardKernel(int64_t n, float* x) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = x[i] > 0.0f ? x[i] : 0.0f;
  }
}

__global__ void ReluBackwardKernel(int64_t n, const float* y, float* dy) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (y[i] <= 0.0f) dy[i] = 0.0f;
  }
}

// One warp per row. Follows the CPU backend's arithmetic: e = exp(z - max)
// in float, the row sum in double, dz = e * (float(1/sum) * (1/rows)), then
// dz[label] -= 1/rows; row_loss[r] = log(sum) - (z_label - max), in double.
__global__ void SoftmaxXentKernel(int rows, int cols, const float* logits,
                                  const int32_t* labels, float* dlogits,
                                  double* row_loss) {
  const int lane = threadIdx.x % kWarp;
  const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (r >= rows) return;  // Whole warps leave together.
  const float* z = logits + int64_t{r} * cols;
  float* dz = dlogits + int64_t{r} * cols;
  float max_z = -FLT_MAX;
  for (int j = lane; j < cols; j += kWarp) max_z = fmaxf(max_z, z[j]);
  for (int off = kWarp / 2; off > 0; off /= 2) {
    max_z = fmaxf(max_z, __shfl_xor_sync(0xffffffffu, max_z, off));
  }
  double sum = 0.0;
  for (int j = lane; j < cols; j += kWarp) {
    const float e = expf(z[j] - max_z);
    dz[j] = e;
    sum += e;
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, off);
  }
  const float inv_rows = 1.0f / static_cast<float>(rows);
  const float scale = static_cast<float>(1.0 / sum) * inv_rows;
  for (int j = lane; j < cols; j += kWarp) dz[j] *= scale;
  __syncwarp();  // The label's element may belong to another lane.
  if (lane == 0) {
    // Out-of-range labels (a broken REQUIRES) are clamped, not read OOB.
    const int label = min(max(labels[r], 0), cols - 1);
    dz[label] -= inv_rows;
    row_loss[r] = log(sum) - static_cast<double>(z[label] - max_z);
  }
}

// *total = sum of x[0..n), in a fixed order (one block; deterministic).
__global__ void SumKernel(int n, const double* x, double* total) {
  __shared__ double partial[kThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) s += x[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = partial[0];
}

// One warp per row; the first maximum wins (lowest index among equals).
__global__ void ArgmaxRowsKernel(int rows, int cols, const float* x,
                                 int32_t* out) {
  const int lane = threadIdx.x % kWarp;
  const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (r >= rows) return;
  const float* row = x + int64_t{r} * cols;
  float best = -INFINITY;
  int best_j = INT_MAX;
  if (lane < cols) {
    best = row[lane];
    best_j = lane;
  }
  for (int j = lane + kWarp; j < cols; j += kWarp) {
    if (row[j] > best) {  // Strict: this lane's earlier index keeps ties.
      best = row[j];
      best_j = j;
    }
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, off);
    const int other_j = __shfl_xor_sync(0xffffffffu, best_j, off);
    if (other > best || (other == best && other_j < best_j)) {
      best = other;
      best_j = other_j;
    }
  }
  if (lane == 0) out[r] = best_j;
}

// ---- The backend -------------------------------------------------------

const char* CublasStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_(unknown)";
  }
}

class CudaBackend : public Backend {
 public:
  CudaBackend(int device, GemmPrecision gemm, std::string gpu_name)
      : device_(device), gemm_(gemm), gpu_name_(std::move(gpu_name)) {}

  // Second construction phase (CUDA calls can fail).
  absl::Status Init() {
    if (!Cuda(cudaSetDevice(device_), "cudaSetDevice") ||
        !Cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
              "cudaStreamCreate") ||
        !Cuda(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking),
              "cudaStreamCreate(copies)") ||
        !Blas(cublasCreate(&blas_), "cublasCreate") ||
        !Blas(cublasSetStream(blas_, stream_), "cublasSetStream") ||
        !Blas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH),
              "cublasSetMathMode") ||
        !Cuda(cudaMalloc(&loss_total_, sizeof(double)), "cudaMalloc")) {
      return status_;
    }
    return absl::OkStatus();
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (copy_stream_ != nullptr) cudaStreamSynchronize(copy_stream_);
    for (const PendingCopy& c : pending_copies_) cudaEventDestroy(c.done);
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaFree(bf16_a_);
    cudaFree(bf16_b_);
    cudaFree(row_loss_);
    cudaFree(loss_total_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
  }

  std::string Name() const override {
    return absl::StrCat("cuda:", device_,
                        gemm_ == GemmPrecision::kBf16 ? "-bf16" : "-fp32",
                        " (", gpu_name_, ")");
  }

  bool UsesHostMemory() const override { return false; }

  void* Allocate(size_t bytes) override {
    if (!Begin() || bytes == 0) return nullptr;
    void* p = nullptr;
    if (!Cuda(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc(", bytes,
                                                   " bytes)"))) {
      return nullptr;
    }
    return p;
  }

  void Free(void* p) override {
    if (p == nullptr) return;
    cudaSetDevice(device_);
    // Freed even after an error; cudaFree waits for work that may use p.
    const cudaError_t e = cudaFree(p);
    if (status_.ok()) Cuda(e, "cudaFree");
  }

  void CopyFromHost(const void* host_src, void* dst, size_t bytes) override {
    if (!Begin() || bytes == 0) return;
    // Synchronous so that the host source may be reused (it may be pinned).
    Cuda(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice,
                         stream_),
         "cudaMemcpyAsync(host to device)") &&
        Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  // On the compute stream, so the math queued after it sees the data; the
  // host source must stay unchanged until the stream passed it (see the
  // reuse rule in kernels.h). From pinned memory the call returns at once.
  void CopyFromHostAsync(const void* host_src, void* dst,
                         size_t bytes) override {
    if (!Begin() || bytes == 0) return;
    Cuda(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice,
                         stream_),
         "cudaMemcpyAsync(host to device, async)");
  }

  void CopyToHost(const void* src, void* host_dst, size_t bytes) override {
    if (!Begin() || bytes == 0) return;
    Cuda(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost,
                         stream_),
         "cudaMemcpyAsync(device to host)") &&
        Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  void* AllocateHost(size_t bytes) override {
    if (!Begin() || bytes == 0) return nullptr;
    void* p = nullptr;
    if (!Cuda(cudaMallocHost(&p, bytes),
              absl::StrCat("cudaMallocHost(", bytes, " bytes)"))) {
      return nullptr;
    }
    return p;
  }

  void FreeHost(void* p) override {
    if (p == nullptr) return;
    cudaSetDevice(device_);
    // Freed even after an error; waits for copies that may still use it.
    const cudaError_t e = cudaFreeHost(p);
    if (status_.ok()) Cuda(e, "cudaFreeHost");
  }

  // The copy stream waits (on the GPU, not the host) for an event recorded
  // on the compute stream, then copies; an event recorded after the copy
  // marks the ticket done. Copies complete in ticket order (one stream).
  uint64_t CopyToHostAsync(const void* src, void* host_dst,
                           size_t bytes) override {
    if (!Begin()) return 0;
    cudaEvent_t produced = NewEvent();
    if (produced == nullptr) return 0;
    cudaEvent_t copied = NewEvent();
    if (copied == nullptr) {
      free_events_.push_back(produced);
      return 0;
    }
    // `produced` may be reused at once: a wait binds to the record before it.
    const bool ok =
        Cuda(cudaEventRecord(produced, stream_), "cudaEventRecord") &&
        Cuda(cudaStreamWaitEvent(copy_stream_, produced, 0),
             "cudaStreamWaitEvent") &&
        (bytes == 0 ||
         Cuda(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost,
                              copy_stream_),
              "cudaMemcpyAsync(device to host, copy stream)")) &&
        Cuda(cudaEventRecord(copied, copy_stream_), "cudaEventRecord");
    free_events_.push_back(produced);
    if (!ok) {
      free_events_.push_back(copied);
      return 0;
    }
    pending_copies_.push_back({++last_ticket_, copied});
    return last_ticket_;
  }

  bool CopyDone(uint64_t ticket) override {
    while (!pending_copies_.empty() &&
           pending_copies_.front().ticket <= ticket) {
      if (!status_.ok()) return true;
      const cudaError_t e = cudaEventQuery(pending_copies_.front().done);
      if (e == cudaErrorNotReady) return false;
      if (!Cuda(e, "cudaEventQuery")) return true;
      free_events_.push_back(pending_copies_.front().done);
      pending_copies_.pop_front();
    }
    return true;
  }

  void WaitCopy(uint64_t ticket) override {
    while (status_.ok() && !pending_copies_.empty() &&
           pending_copies_.front().ticket <= ticket) {
      if (!Cuda(cudaEventSynchronize(pending_copies_.front().done),
                "cudaEventSynchronize")) {
        return;
      }
      free_events_.push_back(pending_copies_.front().done);
      pending_copies_.pop_front();
    }
  }

  absl::Status Synchronize() override {
    if (Begin()) {
      Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize") &&
          Cuda(cudaStreamSynchronize(copy_stream_),
               "cudaStreamSynchronize(copies)");
    } else {
      // After a failure, still wait for what was queued before it (e.g. an
      // asynchronous upload still reading its host source); errors are
      // ignored, the first one is kept.
      cudaSetDevice(device_);
      if (stream_ != nullptr) cudaStreamSynchronize(stream_);
      if (copy_stream_ != nullptr) cudaStreamSynchronize(copy_stream_);
    }
    if (status_.ok()) WaitCopy(last_ticket_);  // Recycles their events.
    return status_;
  }

  absl::Status status() const override { return status_; }

  void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, const float* b, float beta, float* c) override {
    if (!Begin() || m <= 0 || n <= 0) return;
    if (k <= 0) {  // op(A)*op(B) is zero: C = beta * C, as on the CPU.
      const int64_t size = int64_t{m} * n;
      ScaleKernel<<<BlocksFor(size), kThreads, 0, stream_>>>(size, beta, c);
      Launched("ScaleKernel");
      return;
    }
    // cuBLAS is column-major. Row-major C[m,n] is column-major C^T[n,m], and
    // C^T = op(B)^T op(A)^T: swap the operands, keep the transposes.
    const int lda = trans_a ? m : k;
    const int ldb = trans_b ? k : n;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (gemm_ == GemmPrecision::kFp32) {
      Blas(cublasSgemm(blas_, op_b, op_a, n, m, k, &alpha, b, ldb, a, lda,
                       &beta, c, n),
           "cublasSgemm");
      return;
    }
    const int64_t a_size = int64_t{m} * k, b_size = int64_t{k} * n;
    if (!Reserve(&bf16_a_, &bf16_a_size_, a_size) ||
        !Reserve(&bf16_b_, &bf16_b_size_, b_size)) {
      return;
    }
    ToBf16Kernel<<<BlocksFor(a_size), kThreads, 0, stream_>>>(a_size, a,
                                                              bf16_a_);
    ToBf16Kernel<<<BlocksFor(b_size), kThreads, 0, stream_>>>(b_size, b,
                                                              bf16_b_);
    if (!Launched("ToBf16Kernel")) return;
    Blas(cublasGemmEx(blas_, op_b, op_a, n, m, k, &alpha, bf16_b_, CUDA_R_16BF,
                      ldb, bf16_a_, CUDA_R_16BF, lda, &beta, c, CUDA_R_32F, n,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
         "cublasGemmEx(bf16)");
  }

  void AddBias(int rows, int cols, const float* bias, float* y) override {
    if (!Begin() || rows <= 0 || cols <= 0) return;
    const int64_t n = int64_t{rows} * cols;
    AddBiasKernel<<<BlocksFor(n), kThreads, 0, stream_>>>(n, cols, bias, y);
    Launched("AddBiasKernel");
  }

  void BiasGrad(int rows, int cols, const float* dy,
                float* grad_bias) override {
    if (!Begin() || cols <= 0) return;
    const int blocks = (cols + kBiasCols - 1) / kBiasCols;
    BiasGradKernel<<<blocks, dim3(kBiasCols, kBiasRowLanes), 0, stream_>>>(
        std::max(rows, 0), cols, dy, grad_bias);
    Launched("BiasGradKernel");
  }

  void ReluForward(int n, float* x) override {
    if (!Begin() || n <= 0) return;
    ReluForwardKernel<<<BlocksFor(n), kThreads, 0, stream_>>>(n, x);
    Launched("ReluForwardKernel");
  }

  void ReluBackward(int n, const float* y, float* dy) override {
    if (!Begin() || n <= 0) return;
    ReluBackwardKernel<<<BlocksFor(n), kThreads, 0, stream_>>>(n, y, dy);
    Launched("ReluBackwardKernel");
  }

  float SoftmaxCrossEntropy(int rows, int cols, const float* logits,
                            const int32_t* labels, float* dlogits) override {
    if (!Begin() || rows <= 0 || cols <= 0) return 0.0f;
    if (!Reserve(&row_loss_, &row_loss_size_, rows)) return 0.0f;
    const int blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    SoftmaxXentKernel<<<blocks, kThreads, 0, stream_>>>(
        rows, cols, logits, labels, dlogits, row_loss_);
    SumKernel<<<1, kThreads, 0, stream_>>>(rows, row_loss_, loss_total_);
    if (!Launched("SoftmaxXentKernel")) return 0.0f;
    double total = 0.0;
    CopyToHost(loss_total_, &total, sizeof(total));
    return static_cast<float>(total / rows);
  }

  void ArgmaxRows(int rows, int cols, const float* x, int32_t* out) override {
    if (!Begin() || rows <= 0 || cols <= 0) return;
    const int blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    ArgmaxRowsKernel<<<blocks, kThreads, 0, stream_>>>(rows, cols, x, out);
    Launched("ArgmaxRowsKernel");
  }

 private:
  // Makes the device current on this thread; false after an earlier error.
  bool Begin() {
    if (!status_.ok()) return false;
    return Cuda(cudaSetDevice(device_), "cudaSetDevice");
  }

  // An event from the pool (or a new one); nullptr after an error.
  cudaEvent_t NewEvent() {
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    if (!Cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
              "cudaEventCreate")) {
      return nullptr;
    }
    return e;
  }

  // Records the first error; returns whether `e` was success.
  bool Cuda(cudaError_t e, const std::string& what) {
    if (e == cudaSuccess) return true;
    Fail(absl::StrCat(what, ": ", cudaGetErrorName(e), ": ",
                      cudaGetErrorString(e)));
    return false;
  }
  bool Blas(cublasStatus_t s, const std::string& what) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    Fail(absl::StrCat(what, ": ", CublasStatusName(s)));
    return false;
  }
  bool Launched(const char* kernel) {
    return Cuda(cudaGetLastError(), absl::StrCat("launch of ", kernel));
  }
  void Fail(const std::string& message) {
    if (!status_.ok()) return;
    status_.Update(absl::InternalError(
        absl::StrCat("CUDA backend on cuda:", device_, ": ", message)));
    std::fprintf(stderr, "psd kernels: %s\n",
                 std::string(status_.message()).c_str());
  }

  // Grows a scratch array to at least n elements (waits for queued work on
  // the old one: cudaFree synchronizes). Steps of a fixed shape allocate
  // only on the first call.
  template <typename T>
  bool Reserve(T** p, int64_t* size, int64_t n) {
    if (*size >= n) return true;
    cudaFree(*p);
    *p = nullptr;
    *size = 0;
    if (!Cuda(cudaMalloc(reinterpret_cast<void**>(p), n * sizeof(T)),
              "cudaMalloc(scratch)")) {
      return false;
    }
    *size = n;
    return true;
  }

  // Constant after construction.
  const int device_;
  const GemmPrecision gemm_;
  const std::string gpu_name_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;  // CopyToHostAsync only.
  cublasHandle_t blas_ = nullptr;

  absl::Status status_;  // First error; OK until then.
  // Scratch (device memory), grown on demand.
  __nv_bfloat16* bf16_a_ = nullptr;
  int64_t bf16_a_size_ = 0;
  __nv_bfloat16* bf16_b_ = nullptr;
  int64_t bf16_b_size_ = 0;
  double* row_loss_ = nullptr;  // [rows] per-row losses.
  int64_t row_loss_size_ = 0;
  double* loss_total_ = nullptr;  // One double.
  // CopyToHostAsync: copies not yet seen done, in ticket order, each with
  // the event recorded after it on copy_stream_; events to reuse.
  struct PendingCopy {
    uint64_t ticket;
    cudaEvent_t done;
  };
  std::deque<PendingCopy> pending_copies_;
  std::vector<cudaEvent_t> free_events_;
  uint64_t last_ticket_ = 0;
};

}  // namespace

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // Clear it: the failure is reported, not sticky.
    return absl::FailedPreconditionError(
        absl::StrCat("cudaGetDeviceCount: ", cudaGetErrorName(e), ": ",
                     cudaGetErrorString(e)));
  }
  if (count <= 0) {
    return absl::FailedPreconditionError("cudaGetDeviceCount: 0 devices");
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options) {
  if (options.device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device must be >= 0, got ", options.device));
  }
  absl::StatusOr<int> count = CudaDeviceCount();
  if (!count.ok()) return count.status();
  if (options.device >= *count) {
    return absl::NotFoundError(absl::StrCat("no GPU cuda:", options.device,
                                            " (", *count, " visible: cuda:0",
                                            *count > 1 ? absl::StrCat(
                                                             "..cuda:",
                                                             *count - 1)
                                                       : "",
                                            ")"));
  }
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, options.device);
  if (e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("cudaGetDeviceProperties(", options.device,
                     "): ", cudaGetErrorString(e)));
  }
  if (options.gemm == GemmPrecision::kBf16 && prop.major < 8) {
    return absl::FailedPreconditionError(absl::StrCat(
        "bf16 gemm needs compute capability >= 8.0; cuda:", options.device,
        " (", prop.name, ") has ", prop.major, ".", prop.minor));
  }
  auto backend =
      std::make_unique<CudaBackend>(options.device, options.gemm, prop.name);
  absl::Status init = backend->Init();
  if (!init.ok()) return absl::FailedPreconditionError(init.message());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace psd::kernels
