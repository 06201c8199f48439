// Turning a --device flag value into a kernels::Backend.
//
//   "cpu"     the CPU backend (OpenBLAS).
//   "cuda:N"  the CUDA backend on GPU N (N >= 0). An error, never a silent
//             fallback, when this build has no CUDA backend (it was built
//             without --config=cuda) or GPU N cannot be used.
//   "auto"    cuda:0 when this build has the CUDA backend and
//             cudaGetDeviceCount() > 0 and it starts; otherwise the CPU.
//
// Example:
//   absl::StatusOr<SelectedBackend> b = CreateBackendForDevice("auto", {});
//   if (!b.ok()) { ... b.status() names the value and the reason ... }
//   LOG("device: {} ({})", b->backend->Name(), b->reason);
#ifndef PSD_KERNELS_DEVICE_H_
#define PSD_KERNELS_DEVICE_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace psd::kernels {

struct DeviceOptions {
  // OpenBLAS threads for the CPU backend (a process-wide setting); 0 leaves
  // OpenBLAS's own default. Default: 0.
  int blas_threads = 0;
  // Gemm on tensor cores with bf16 inputs (CUDA backend only; see
  // kernels/cuda_backend.h). Default: false (fp32).
  bool cuda_bf16_gemm = false;
};

struct SelectedBackend {
  std::unique_ptr<Backend> backend;
  // One line saying why this backend, for the log, e.g.
  // "auto: no CUDA backend in this build (built without --config=cuda)".
  std::string reason;
};

// True when this binary was built with --config=cuda (PSD_HAVE_CUDA).
bool CudaBuilt();

// Creates the backend `device` names (see the top of this file). Errors:
// INVALID_ARGUMENT for a value that is none of the forms above;
// FAILED_PRECONDITION or NOT_FOUND for cuda:N when the build has no CUDA
// backend, no GPU is usable, there is no GPU N, or it fails to start. The
// message starts with "--device=<value>: " and says why.
// FAILED_PRECONDITION starting "--bf16_gemm: " when options.cuda_bf16_gemm
// is set and the backend selected is not a GPU (never a silent fp32).
absl::StatusOr<SelectedBackend> CreateBackendForDevice(
    absl::string_view device, const DeviceOptions& options);

}  // namespace psd::kernels

#endif  // PSD_KERNELS_DEVICE_H_
