// Math kernels behind one interface: the MLP's forward and backward passes
// call only these, so a CPU (OpenBLAS) and a CUDA backend are
// interchangeable.
//
// Conventions for every method:
//   - All matrices are float32, row-major and contiguous (no leading
//     dimension other than the column count).
//   - Pointers are in the backend's memory space: host memory for the CPU
//     backend, device memory for a device backend (see UsesHostMemory() and
//     Buffer<T> below for allocating and copying it).
//   - Sizes are element counts; a size of 0 is a no-op.
//   - Output buffers must not alias inputs unless a method says "in place".
//
// Errors: the math methods return nothing. A device backend queues its work
// asynchronously; the first failure (e.g. a CUDA error) is kept and every
// later call is a no-op; status() and Synchronize() report it. The CPU
// backend never fails (status() is always OK).
//
// Thread safety: a Backend is not thread-safe; use one per thread.
#ifndef PSD_KERNELS_KERNELS_H_
#define PSD_KERNELS_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"

namespace psd::kernels {

class Backend {
 public:
  virtual ~Backend() = default;

  // A short identifier, e.g. "cpu-openblas" or "cuda:0-fp32 (NVIDIA H100)".
  virtual std::string Name() const = 0;

  // ---- Memory -------------------------------------------------------------
  // True when the backend's memory space is host memory, i.e. the math
  // methods may be given any host pointer (the CPU backend). False for a
  // device backend: its pointers must come from Allocate().
  virtual bool UsesHostMemory() const = 0;

  // Allocates `bytes` (> 0) in the backend's memory space, aligned for any
  // element type used here. Returns nullptr on failure (status() says why;
  // for a device backend the failure is sticky). Prefer Buffer<T>.
  virtual void* Allocate(size_t bytes) = 0;
  // Frees what Allocate() returned; nullptr is a no-op. Waits for queued
  // work that may still use it.
  virtual void Free(void* p) = 0;
  // Copies `bytes` from host memory into the backend's memory. Ordered with
  // the math methods; the host source may be reused when this returns.
  virtual void CopyFromHost(const void* host_src, void* dst, size_t bytes) = 0;
  // Starts copying `bytes` from host memory into the backend's memory and
  // returns without waiting for it. The copy is queued in order with the
  // math methods (CUDA: cudaMemcpyAsync on the compute stream), so math
  // queued after it reads the copied data: no wait is needed before using
  // `dst` in math.
  // REQUIRES (the reuse rule): `host_src` is neither written nor freed
  // until the copy is complete, i.e. until Synchronize() returned, or
  // another call that waits for all work queued before it (CopyToHost,
  // SoftmaxCrossEntropy, WaitCopy of a later ticket). Writing it earlier
  // (e.g. pulling the next step's parameters into it) may change what
  // arrives on the device. `host_src` should come from AllocateHost(): from
  // pageable memory CUDA may copy synchronously. After a failure the copy
  // does not happen (see status()). The default (a host backend) copies at
  // once with CopyFromHost(), so there the source may be reused at once.
  virtual void CopyFromHostAsync(const void* host_src, void* dst,
                                 size_t bytes) {
    CopyFromHost(host_src, dst, bytes);
  }
  // Copies `bytes` from the backend's memory to host memory; returns when
  // the data is there (waits for the queued work that produces it).
  virtual void CopyToHost(const void* src, void* host_dst, size_t bytes) = 0;

  // ---- Asynchronous copies to host (overlapping transfers with math) ----
  // Allocates `bytes` (> 0) of host memory that asynchronous copies from
  // this backend are fastest with: page-locked ("pinned") memory for a
  // device backend (CUDA: cudaMallocHost), plain malloc for a host backend
  // (the default). Returns nullptr on failure (a device backend's status()
  // says why). Free it with FreeHost(); nullptr is a no-op there. Prefer
  // HostBuffer<T>, which does both.
  virtual void* AllocateHost(size_t bytes) {
    return bytes == 0 ? nullptr : std::malloc(bytes);
  }
  virtual void FreeHost(void* p) { std::free(p); }

  // Starts copying `bytes` from the backend's memory to host memory once
  // the work queued so far has produced them, on a copy queue of its own:
  // math queued after this call does not wait for the copy (CUDA: a second
  // stream that waits on an event recorded after the queued work). Returns
  // a ticket, increasing from 1, for CopyDone() / WaitCopy(); until the
  // copy is done, `host_dst` must not be read and `src` must not be
  // overwritten. `host_dst` should come from AllocateHost() (a pageable
  // destination works, but CUDA may then copy synchronously). The default
  // (a host backend) copies at once with CopyToHost() and returns 0, a
  // ticket that is always done. After a failure the copy does not happen:
  // check status() before reading `host_dst`.
  virtual uint64_t CopyToHostAsync(const void* src, void* host_dst,
                                   size_t bytes) {
    CopyToHost(src, host_dst, bytes);
    return 0;
  }
  // True when the copy with this ticket and every earlier one is complete,
  // or the backend failed (see status()). Never blocks.
  virtual bool CopyDone(uint64_t ticket) {
    (void)ticket;
    return true;
  }
  // Waits until CopyDone(ticket) would be true.
  virtual void WaitCopy(uint64_t ticket) { (void)ticket; }

  // Waits for all queued work, copies included (also after a failure, for
  // what was queued before it); returns status(). When it returns, the
  // host sources of CopyFromHostAsync may be reused.
  virtual absl::Status Synchronize() = 0;
  // OK, or the backend's first error (after which it does nothing).
  virtual absl::Status status() const = 0;

  // ---- Math ---------------------------------------------------------------

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

namespace internal {

// An array of n elements of T, allocated with (backend->*Allocate)(bytes)
// and freed with (backend->*Release)(p) on destruction: the common part of
// Buffer and HostBuffer below. Move-only. The backend is not owned and
// must outlive it. An allocation failure leaves data() == nullptr (the
// backend's status() then says why). The contents start uninitialised.
// T must be trivially copyable (float, int32_t).
template <typename T, void* (Backend::*Allocate)(size_t),
          void (Backend::*Release)(void*)>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(Backend* backend, size_t n)
      : backend_(backend),
        data_(n == 0 ? nullptr
                     : static_cast<T*>((backend->*Allocate)(n * sizeof(T)))),
        size_(data_ == nullptr ? 0 : n) {}
  ~BackendArray() { Reset(); }
  BackendArray(BackendArray&& o) noexcept { *this = std::move(o); }
  BackendArray& operator=(BackendArray&& o) noexcept {
    if (this != &o) {
      Reset();
      backend_ = std::exchange(o.backend_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }

 protected:
  Backend* backend() const { return backend_; }

 private:
  void Reset() {
    if (data_ != nullptr) (backend_->*Release)(data_);
    data_ = nullptr;
    size_ = 0;
  }

  Backend* backend_ = nullptr;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace internal

// An array of n elements of T in a backend's memory space (Allocate/Free),
// with copies to and from host memory. See internal::BackendArray.
template <typename T>
class Buffer
    : public internal::BackendArray<T, &Backend::Allocate, &Backend::Free> {
 public:
  using internal::BackendArray<T, &Backend::Allocate,
                               &Backend::Free>::BackendArray;

  // Copies n elements between host memory and the start of this buffer.
  // REQUIRES: n <= size().
  void CopyFromHost(const T* host, size_t n) {
    if (n > 0) this->backend()->CopyFromHost(host, this->data(), n * sizeof(T));
  }
  void CopyToHost(T* host, size_t n) const {
    if (n > 0) this->backend()->CopyToHost(this->data(), host, n * sizeof(T));
  }
  // Backend::CopyFromHostAsync of n elements (its reuse rule applies to
  // `host`). REQUIRES: n <= size().
  void CopyFromHostAsync(const T* host, size_t n) {
    if (n > 0) {
      this->backend()->CopyFromHostAsync(host, this->data(), n * sizeof(T));
    }
  }
};

// An array of n elements of T in host memory from a backend's
// AllocateHost() (pinned for a device backend, malloc for a host backend),
// freed with its FreeHost(): the source and destination of the
// asynchronous copies. See internal::BackendArray.
template <typename T>
using HostBuffer =
    internal::BackendArray<T, &Backend::AllocateHost, &Backend::FreeHost>;

// The CPU backend: Gemm on OpenBLAS cblas_sgemm, the rest plain loops.
// `threads` sets OpenBLAS's thread count (openblas_set_num_threads, a
// process-wide setting); 0 leaves it as it is.
std::unique_ptr<Backend> CreateCpuBackend(int threads = 0);

}  // namespace psd::kernels

#endif  // PSD_KERNELS_KERNELS_H_
