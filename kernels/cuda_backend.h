// The CUDA backend of psd::kernels::Backend: cuBLAS for Gemm, hand-written
// kernels (kernels/cuda_backend.cu) for the rest. Built only with
// `bazel build --config=cuda` (the library defines PSD_HAVE_CUDA for its
// dependents); without it this header has no implementation to link to. Use
// kernels/device.h to pick a backend from a --device value instead of
// calling this directly.
//
// Memory: UsesHostMemory() is false. Every pointer given to the math
// methods must point into memory from Allocate() (or a Buffer<T>) of this
// backend: activations and gradients stay on the GPU between calls, and
// only the copy methods move data (see worker/mlp.h for who does that
// during training).
//
// Execution: all work goes on one CUDA stream owned by the backend, in call
// order. Gemm, AddBias, BiasGrad, Relu* and CopyFromHostAsync (a
// host-to-device cudaMemcpyAsync on that stream: the kernels queued after
// it see the data without a wait; its host source must not change until
// Synchronize(), see kernels.h) are asynchronous;
// SoftmaxCrossEntropy (returns the loss), CopyFromHost, CopyToHost and
// Synchronize wait for the stream (Synchronize for the copy stream too,
// also after an error). CopyToHostAsync puts its device-to-host copy on a second
// stream that waits (on the GPU) for an event recorded on the first, so the
// math queued after it runs while the copy goes on; each copy's completion
// is an event behind it (CopyDone queries, WaitCopy synchronizes on it).
// AllocateHost gives pinned memory (cudaMallocHost), which such copies need
// to be truly asynchronous. Each call first makes the backend's GPU current on the
// calling thread, so the backend may be created on one thread and used on
// another (one thread at a time).
//
// Numerics, against the CPU backend (tolerances tested in
// kernels/cuda_parity_test.cc):
//   - fp32 Gemm is cublasSgemm with CUBLAS_DEFAULT_MATH (true fp32, no
//     TF32); it differs from OpenBLAS only by summation order.
//   - bf16 Gemm (GemmPrecision::kBf16) rounds A and B to bfloat16 (round to
//     nearest even, on the GPU, into scratch buffers owned by the backend)
//     and multiplies on tensor cores with fp32 accumulation (cublasGemmEx,
//     CUBLAS_COMPUTE_32F): relative error about 2^-8 per input.
//   - BiasGrad and the loss sums are deterministic (fixed reduction order,
//     no atomics), so a GPU run is reproducible on the same GPU model,
//     driver and cuBLAS version, but not bitwise equal to a CPU run.
//
// Errors: the first CUDA or cuBLAS error is kept (see Backend::status()),
// written once to stderr with the call that failed, and turns every later
// call into a no-op (most CUDA errors leave the context unusable).
#ifndef PSD_KERNELS_CUDA_BACKEND_H_
#define PSD_KERNELS_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace psd::kernels {

enum class GemmPrecision {
  kFp32,  // fp32 inputs, fp32 math (cublasSgemm).
  kBf16,  // inputs rounded to bf16, tensor cores, fp32 accumulate and output.
};

struct CudaBackendOptions {
  // CUDA device ordinal, as in --device=cuda:N. Default: 0.
  int device = 0;
  // Gemm arithmetic; the other kernels are fp32 in both cases.
  // Default: kFp32.
  GemmPrecision gemm = GemmPrecision::kFp32;
};

// Number of CUDA devices the runtime can use: cudaGetDeviceCount. Returns
// FAILED_PRECONDITION with the runtime's reason when it fails (e.g. "no
// CUDA-capable device is detected", or no driver); never 0 with OK.
absl::StatusOr<int> CudaDeviceCount();

// Creates a backend on GPU options.device: a stream, a cuBLAS handle, and
// nothing else until buffers are allocated. Errors: INVALID_ARGUMENT for a
// negative device, NOT_FOUND when there is no such device (the message
// names how many there are), FAILED_PRECONDITION when CUDA or cuBLAS
// cannot start on it.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options);

}  // namespace psd::kernels

#endif  // PSD_KERNELS_CUDA_BACKEND_H_
