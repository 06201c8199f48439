#include "kernels/device.h"

#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"

#ifdef PSD_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

namespace psd::kernels {
namespace {

absl::Status WithDevice(absl::string_view device, const absl::Status& s) {
  return absl::Status(s.code(),
                      absl::StrCat("--device=", device, ": ", s.message()));
}

SelectedBackend Cpu(const DeviceOptions& options, std::string reason) {
  return {CreateCpuBackend(options.blas_threads), std::move(reason)};
}

// Parses "cuda:N"; -1 when `device` is not of that form.
int ParseCudaOrdinal(absl::string_view device) {
  constexpr absl::string_view kPrefix = "cuda:";
  if (!absl::StartsWith(device, kPrefix)) return -1;
  const absl::string_view digits = device.substr(kPrefix.size());
  if (digits.empty() || digits.find_first_not_of("0123456789") !=
                            absl::string_view::npos) {
    return -1;
  }
  int n = -1;
  return absl::SimpleAtoi(digits, &n) ? n : -1;
}

#ifdef PSD_HAVE_CUDA
absl::StatusOr<std::unique_ptr<Backend>> Cuda(int ordinal,
                                              const DeviceOptions& options) {
  CudaBackendOptions cuda;
  cuda.device = ordinal;
  cuda.gemm = options.cuda_bf16_gemm ? GemmPrecision::kBf16
                                     : GemmPrecision::kFp32;
  return CreateCudaBackend(cuda);
}
#endif

}  // namespace

bool CudaBuilt() {
#ifdef PSD_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

// CreateBackendForDevice without the check of cuda_bf16_gemm.
absl::StatusOr<SelectedBackend> Select(absl::string_view device,
                                       const DeviceOptions& options) {
  if (device == "cpu") return Cpu(options, "asked for");
  const bool is_auto = device == "auto";
  const int ordinal = is_auto ? 0 : ParseCudaOrdinal(device);
  if (!is_auto && ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device=", device, ": expected auto, cpu or cuda:N (N >= 0)"));
  }
#ifdef PSD_HAVE_CUDA
  if (is_auto) {
    absl::StatusOr<int> count = CudaDeviceCount();
    if (!count.ok()) {
      return Cpu(options, absl::StrCat("auto: no usable GPU (",
                                       count.status().message(), ")"));
    }
    absl::StatusOr<std::unique_ptr<Backend>> gpu = Cuda(0, options);
    if (!gpu.ok()) {
      return Cpu(options, absl::StrCat("auto: cuda:0 did not start (",
                                       gpu.status().message(), ")"));
    }
    return SelectedBackend{std::move(*gpu),
                           absl::StrCat("auto: ", *count, " GPU(s) visible")};
  }
  absl::StatusOr<std::unique_ptr<Backend>> gpu = Cuda(ordinal, options);
  if (!gpu.ok()) return WithDevice(device, gpu.status());
  return SelectedBackend{std::move(*gpu), "asked for"};
#else
  if (is_auto) {
    return Cpu(options,
               "auto: no CUDA backend in this build (built without "
               "--config=cuda)");
  }
  return WithDevice(device, absl::FailedPreconditionError(
                                "this build has no CUDA backend (rebuild "
                                "with bazel build --config=cuda); use cpu "
                                "or auto"));
#endif
}

}  // namespace

absl::StatusOr<SelectedBackend> CreateBackendForDevice(
    absl::string_view device, const DeviceOptions& options) {
  absl::StatusOr<SelectedBackend> selected = Select(device, options);
  if (selected.ok() && options.cuda_bf16_gemm &&
      selected->backend->UsesHostMemory()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--bf16_gemm: the selected backend ", selected->backend->Name(),
        " (--device=", device, ": ", selected->reason,
        ") computes gemm in fp32 only; bf16 tensor-core gemm needs a GPU "
        "(--device=cuda:N in a --config=cuda build)"));
  }
  return selected;
}

}  // namespace psd::kernels
