// Tests of --device parsing and backend selection. They run on any machine:
// where the build or the machine has no GPU they check the CPU fallback of
// "auto" and the error of "cuda:N".
#include "kernels/device.h"

#include <string>

#include <catch2/catch.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"

namespace psd::kernels {
namespace {

TEST_CASE("Device: cpu gives the CPU backend", "[device]") {
  auto selected = CreateBackendForDevice("cpu", {});
  REQUIRE(selected.ok());
  CHECK(selected->backend->Name() == "cpu-openblas");
  CHECK(selected->backend->UsesHostMemory());
  CHECK(selected->reason == "asked for");
}

TEST_CASE("Device: bf16 gemm on the CPU is an error, not a silent fp32",
          "[device]") {
  DeviceOptions options;
  options.cuda_bf16_gemm = true;
  auto selected = CreateBackendForDevice("cpu", options);
  REQUIRE_FALSE(selected.ok());
  CHECK(selected.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(selected.status().message().rfind(
            "--bf16_gemm: the selected backend cpu-openblas (--device=cpu: "
            "asked for) computes gemm in fp32 only",
            0) == 0);
  // auto: a GPU when there is one, else the same error.
  auto automatic = CreateBackendForDevice("auto", options);
  if (automatic.ok()) {
    CHECK_FALSE(automatic->backend->UsesHostMemory());
  } else {
    CHECK(automatic.status().code() == absl::StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("Device: auto picks a backend and says why", "[device]") {
  auto selected = CreateBackendForDevice("auto", {});
  REQUIRE(selected.ok());
  INFO("auto -> " << selected->backend->Name() << " (" << selected->reason
                  << ")");
  CHECK(absl::StartsWith(selected->reason, "auto: "));
  if (!CudaBuilt()) {
    CHECK(selected->backend->Name() == "cpu-openblas");
    CHECK(selected->reason ==
          "auto: no CUDA backend in this build (built without "
          "--config=cuda)");
  } else if (selected->backend->UsesHostMemory()) {
    // CUDA built, but no usable GPU (e.g. a CPU-only CI machine).
    CHECK(selected->backend->Name() == "cpu-openblas");
    CHECK((absl::StrContains(selected->reason, "auto: no usable GPU") ||
           absl::StrContains(selected->reason, "did not start")));
  } else {
    CHECK(absl::StartsWith(selected->backend->Name(), "cuda:0"));
  }
}

TEST_CASE("Device: cuda:N without a CUDA build or GPU is an error",
          "[device]") {
  auto selected = CreateBackendForDevice("cuda:0", {});
  if (selected.ok()) {
    // Only where a GPU is present (CUDA build on a GPU machine).
    REQUIRE(CudaBuilt());
    CHECK(absl::StartsWith(selected->backend->Name(), "cuda:0"));
    CHECK_FALSE(selected->backend->UsesHostMemory());
    auto missing = CreateBackendForDevice("cuda:4096", {});
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.status().code() == absl::StatusCode::kNotFound);
    CHECK(absl::StrContains(missing.status().message(), "no GPU cuda:4096"));
    return;
  }
  INFO(selected.status().ToString());
  CHECK(absl::StartsWith(selected.status().message(), "--device=cuda:0: "));
  CHECK(selected.status().code() == absl::StatusCode::kFailedPrecondition);
  if (!CudaBuilt()) {
    CHECK(absl::StrContains(selected.status().message(),
                            "this build has no CUDA backend"));
  } else {
    // The CUDA runtime's own reason, e.g. no CUDA-capable device.
    CHECK(absl::StrContains(selected.status().message(),
                            "cudaGetDeviceCount"));
  }
}

TEST_CASE("Device: malformed values are INVALID_ARGUMENT", "[device]") {
  for (const char* bad : {"", "gpu", "CPU", "cuda", "cuda:", "cuda:-1",
                          "cuda:x", "cuda:0 ", "cuda:99999999999"}) {
    INFO("--device=" << bad);
    auto selected = CreateBackendForDevice(bad, {});
    REQUIRE_FALSE(selected.ok());
    CHECK(selected.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(selected.status().message(),
                            "expected auto, cpu or cuda:N"));
  }
}

}  // namespace
}  // namespace psd::kernels
