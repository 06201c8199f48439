// The CUDA backend against its CPU twin: every kernel on random shapes
// (odd sizes included), then one MLP training step and an evaluation.
//
// Tolerances (inputs uniform in [-1, 1], |alpha|, |beta| <= 1):
//   - Gemm fp32: |gpu - cpu| <= 1e-5 * (k + 1) (summation order only).
//   - Gemm bf16 (tensor cores): against a double reference computed on the
//     bf16-rounded inputs, the same 1e-5 * (k + 1); against the fp32 CPU
//     result, |gpu - cpu| <= 2^-6 * sum_p |a_ip b_pj| + 1e-5 (rounding each
//     input to bf16, unit roundoff 2^-8, changes each product by at most
//     about 2^-7 of itself; 2^-6 leaves a factor of 2).
//   - AddBias, ReluForward, ReluBackward, ArgmaxRows: exactly equal.
//   - BiasGrad: |gpu - cpu| <= 4e-6 * (rows + 1) (float sums of values in
//     [-2, 2], in another order).
//   - SoftmaxCrossEntropy: loss within 1e-5 relative, dlogits within 1e-6.
//   - MLP step: loss within 1e-4 relative; each gradient tensor within
//     1e-3 * max|cpu gradient| + 1e-6; CountCorrect equal. The same step
//     with a GradientReady callback (per-layer asynchronous copies) gives
//     bitwise the GPU's gradients without one, announced in CPU order; so
//     does the step with its parameters in pinned memory.
//   - CopyToHostAsync: bitwise copies, done in ticket order.
//   - CopyFromHostAsync (pinned and pageable sources): bitwise copies,
//     visible to the math queued after it without a wait; the source may
//     be overwritten after Synchronize() without changing the device data.
//
// Without --config=cuda, or with it on a machine with no usable GPU, every
// case passes after the warning "no GPU: CUDA parity tests skipped (...)"
// (Catch2 2.13 has no SKIP).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/kernels.h"
#include "worker/mlp.h"

#ifdef PSD_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

namespace psd::kernels {
namespace {

enum class Precision { kFp32, kBf16 };

// The CUDA backend, or nullptr after a "no GPU" warning.
std::unique_ptr<Backend> GpuOrSkip(Precision precision = Precision::kFp32) {
#ifdef PSD_HAVE_CUDA
  CudaBackendOptions options;
  options.gemm = precision == Precision::kBf16 ? GemmPrecision::kBf16
                                               : GemmPrecision::kFp32;
  absl::StatusOr<int> count = CudaDeviceCount();
  if (!count.ok()) {
    WARN("no GPU: CUDA parity tests skipped (" << count.status().ToString()
                                               << ")");
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<Backend>> gpu = CreateCudaBackend(options);
  // A GPU is present: failing to start it is a failure, not a skip.
  REQUIRE(gpu.ok());
  return std::move(*gpu);
#else
  (void)precision;
  WARN(
      "no GPU: CUDA parity tests skipped (built without --config=cuda, so "
      "there is no CUDA backend)");
  return nullptr;
#endif
}

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <typename T>
Buffer<T> ToDevice(Backend* be, const std::vector<T>& host) {
  Buffer<T> buf(be, host.size());
  REQUIRE(buf.size() == host.size());
  buf.CopyFromHost(host.data(), host.size());
  return buf;
}

template <typename T>
std::vector<T> ToHost(Backend* be, const Buffer<T>& buf) {
  std::vector<T> host(buf.size());
  buf.CopyToHost(host.data(), host.size());
  REQUIRE(be->Synchronize().ok());
  return host;
}

// Rounds to bfloat16 (round to nearest, ties to even), as __float2bfloat16_rn.
float RoundToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&x, &bits, sizeof(bits));
  return x;
}

struct Shape {
  int m, n, k;
};
const Shape kGemmShapes[] = {{1, 1, 1},    {7, 5, 3},     {33, 65, 17},
                             {64, 10, 128}, {127, 129, 31}, {200, 256, 784},
                             {5, 3, 0}};

TEST_CASE("CUDA parity: fp32 Gemm, all transposes, odd shapes", "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  uint32_t seed = 1;
  for (const Shape& s : kGemmShapes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (float beta : {0.0f, 0.5f}) {
          const auto a = Random(size_t(s.m) * s.k, seed++);
          const auto b = Random(size_t(s.k) * s.n, seed++);
          auto c = Random(size_t(s.m) * s.n, seed++);
          // beta == 0 must overwrite C, even NaN.
          if (beta == 0.0f && !c.empty()) c[0] = std::nanf("");
          auto da = ToDevice(gpu.get(), a), db = ToDevice(gpu.get(), b),
               dc = ToDevice(gpu.get(), c);
          cpu->Gemm(ta, tb, s.m, s.n, s.k, 0.75f, a.data(), b.data(), beta,
                    c.data());
          gpu->Gemm(ta, tb, s.m, s.n, s.k, 0.75f, da.data(), db.data(), beta,
                    dc.data());
          const auto got = ToHost(gpu.get(), dc);
          const float tol = 1e-5f * (s.k + 1);
          for (size_t i = 0; i < c.size(); ++i) {
            INFO("m=" << s.m << " n=" << s.n << " k=" << s.k << " ta=" << ta
                      << " tb=" << tb << " beta=" << beta << " i=" << i);
            REQUIRE(std::fabs(got[i] - c[i]) <= tol);
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA parity: bf16 tensor-core Gemm within its stated bound",
          "[cuda]") {
  auto gpu = GpuOrSkip(Precision::kBf16);
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  uint32_t seed = 100;
  for (const Shape& s : kGemmShapes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        const auto a = Random(size_t(s.m) * s.k, seed++);
        const auto b = Random(size_t(s.k) * s.n, seed++);
        const auto c0 = Random(size_t(s.m) * s.n, seed++);
        auto da = ToDevice(gpu.get(), a), db = ToDevice(gpu.get(), b),
             dc = ToDevice(gpu.get(), c0);
        gpu->Gemm(ta, tb, s.m, s.n, s.k, 1.0f, da.data(), db.data(), 0.5f,
                  dc.data());
        const auto got = ToHost(gpu.get(), dc);
        auto fp32 = c0;
        cpu->Gemm(ta, tb, s.m, s.n, s.k, 1.0f, a.data(), b.data(), 0.5f,
                  fp32.data());
        for (int i = 0; i < s.m; ++i) {
          for (int j = 0; j < s.n; ++j) {
            double rounded = 0.0, magnitude = 0.0;
            for (int p = 0; p < s.k; ++p) {
              const float av = ta ? a[size_t(p) * s.m + i]
                                  : a[size_t(i) * s.k + p];
              const float bv = tb ? b[size_t(j) * s.k + p]
                                  : b[size_t(p) * s.n + j];
              rounded += double{RoundToBf16(av)} * RoundToBf16(bv);
              magnitude += std::fabs(double{av} * bv);
            }
            const size_t idx = size_t(i) * s.n + j;
            rounded += 0.5 * c0[idx];
            INFO("m=" << s.m << " n=" << s.n << " k=" << s.k << " ta=" << ta
                      << " tb=" << tb << " i=" << i << " j=" << j);
            REQUIRE(std::fabs(got[idx] - rounded) <= 1e-5 * (s.k + 1));
            REQUIRE(std::fabs(got[idx] - fp32[idx]) <=
                    std::ldexp(magnitude, -6) + 1e-5);
          }
        }
      }
    }
  }
}

const int kRowCols[][2] = {{1, 1}, {3, 7}, {64, 10}, {37, 257}, {129, 33},
                           {1000, 3}};

TEST_CASE("CUDA parity: AddBias, BiasGrad, Relu forward and backward",
          "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  uint32_t seed = 200;
  for (const auto& rc : kRowCols) {
    const int rows = rc[0], cols = rc[1];
    const size_t n = size_t(rows) * cols;
    INFO("rows=" << rows << " cols=" << cols);
    auto y = Random(n, seed++);
    const auto bias = Random(cols, seed++);
    auto dy = ToDevice(gpu.get(), y);
    auto dbias = ToDevice(gpu.get(), bias);
    cpu->AddBias(rows, cols, bias.data(), y.data());
    gpu->AddBias(rows, cols, dbias.data(), dy.data());
    CHECK(ToHost(gpu.get(), dy) == y);  // One fp32 add each: exact.

    std::vector<float> grad(cols, 99.0f);
    Buffer<float> dgrad = ToDevice(gpu.get(), grad);
    cpu->BiasGrad(rows, cols, y.data(), grad.data());
    gpu->BiasGrad(rows, cols, dy.data(), dgrad.data());
    const auto got_grad = ToHost(gpu.get(), dgrad);
    for (int j = 0; j < cols; ++j) {
      INFO("j=" << j);
      REQUIRE(std::fabs(got_grad[j] - grad[j]) <= 1e-6f * (rows + 1) * 4);
    }

    cpu->ReluForward(static_cast<int>(n), y.data());
    gpu->ReluForward(static_cast<int>(n), dy.data());
    CHECK(ToHost(gpu.get(), dy) == y);

    auto g = Random(n, seed++);
    auto dg = ToDevice(gpu.get(), g);
    cpu->ReluBackward(static_cast<int>(n), y.data(), g.data());
    gpu->ReluBackward(static_cast<int>(n), dy.data(), dg.data());
    CHECK(ToHost(gpu.get(), dg) == g);
  }
}

TEST_CASE("CUDA parity: SoftmaxCrossEntropy loss and gradient", "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  uint32_t seed = 300;
  for (const auto& rc : kRowCols) {
    const int rows = rc[0], cols = rc[1];
    INFO("rows=" << rows << " cols=" << cols);
    const auto logits = Random(size_t(rows) * cols, seed++, 8.0f);
    std::vector<int32_t> labels(rows);
    std::mt19937 rng(seed++);
    for (int32_t& l : labels) l = static_cast<int32_t>(rng() % cols);
    labels[0] = cols + 5;  // Out of range: clamped the same way on both.
    std::vector<float> d(logits.size());
    const float want = cpu->SoftmaxCrossEntropy(rows, cols, logits.data(),
                                                labels.data(), d.data());
    auto dlogits = ToDevice(gpu.get(), logits);
    auto dlabels = ToDevice(gpu.get(), labels);
    Buffer<float> dd(gpu.get(), logits.size());
    const float got = gpu->SoftmaxCrossEntropy(
        rows, cols, dlogits.data(), dlabels.data(), dd.data());
    REQUIRE(gpu->status().ok());
    CHECK(got == Approx(want).epsilon(1e-5));
    const auto got_d = ToHost(gpu.get(), dd);
    for (size_t i = 0; i < d.size(); ++i) {
      INFO("i=" << i);
      REQUIRE(std::fabs(got_d[i] - d[i]) <= 1e-6f);
    }
  }
}

TEST_CASE("CUDA parity: ArgmaxRows, ties to the lowest index", "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  uint32_t seed = 400;
  for (const auto& rc : kRowCols) {
    const int rows = rc[0], cols = rc[1];
    INFO("rows=" << rows << " cols=" << cols);
    auto x = Random(size_t(rows) * cols, seed++);
    // Small integers: many ties, in any lane of the warp.
    for (size_t i = 0; i < x.size(); i += 2) x[i] = std::round(x[i] * 2);
    std::vector<int32_t> want(rows);
    cpu->ArgmaxRows(rows, cols, x.data(), want.data());
    auto dx = ToDevice(gpu.get(), x);
    Buffer<int32_t> dout(gpu.get(), rows);
    gpu->ArgmaxRows(rows, cols, dx.data(), dout.data());
    CHECK(ToHost(gpu.get(), dout) == want);
  }
}

// He-style initialisation, as in worker/mlp_test.cc.
std::vector<std::vector<float>> InitParams(const Mlp& mlp, uint32_t seed) {
  std::vector<std::vector<float>> values;
  std::mt19937 rng(seed);
  for (int32_t i = 0; i < mlp.num_layers(); ++i) {
    const float a = std::sqrt(6.0f / mlp.layer_sizes()[i]);
    std::uniform_real_distribution<float> dist(-a, a);
    std::vector<float> w(size_t(mlp.layer_sizes()[i]) *
                         mlp.layer_sizes()[i + 1]);
    std::vector<float> b(mlp.layer_sizes()[i + 1]);
    for (float& v : w) v = dist(rng);
    for (float& v : b) v = 0.1f * dist(rng);
    values.push_back(std::move(w));
    values.push_back(std::move(b));
  }
  return values;
}

TEST_CASE("CUDA parity: CopyToHostAsync into pinned memory, in ticket order",
          "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  const std::vector<size_t> sizes = {1, 37, 1000, 65537};
  std::vector<Buffer<float>> src;
  std::vector<float*> dst;
  std::vector<uint64_t> tickets;
  for (size_t i = 0; i < sizes.size(); ++i) {
    src.push_back(ToDevice(gpu.get(), Random(sizes[i], 40 + i)));
    dst.push_back(
        static_cast<float*>(gpu->AllocateHost(sizes[i] * sizeof(float))));
    REQUIRE(dst.back() != nullptr);
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    // Math queued after a copy does not change what it copies.
    tickets.push_back(gpu->CopyToHostAsync(src[i].data(), dst[i],
                                           sizes[i] * sizeof(float)));
    gpu->ReluForward(static_cast<int>(sizes[i]), src[i].data());
  }
  for (size_t i = 1; i < tickets.size(); ++i) {
    CHECK(tickets[i] > tickets[i - 1]);
  }
  gpu->WaitCopy(tickets[1]);
  CHECK(gpu->CopyDone(tickets[0]));
  CHECK(gpu->CopyDone(tickets[1]));
  gpu->WaitCopy(tickets.back());
  CHECK(gpu->CopyDone(tickets.back()));
  REQUIRE(gpu->status().ok());
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::vector<float> want = Random(sizes[i], 40 + i);
    CHECK(std::memcmp(dst[i], want.data(), sizes[i] * sizeof(float)) == 0);
    gpu->FreeHost(dst[i]);
  }
  REQUIRE(gpu->Synchronize().ok());
}

TEST_CASE("CUDA parity: CopyFromHostAsync from pinned and pageable memory",
          "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  for (const size_t n : {size_t{1}, size_t{37}, size_t{65537}}) {
    const std::vector<float> values = Random(n, 50 + n);
    HostBuffer<float> pinned(gpu.get(), n);
    REQUIRE(pinned.data() != nullptr);
    std::memcpy(pinned.data(), values.data(), n * sizeof(float));
    std::vector<float> pageable = values;
    Buffer<float> from_pinned(gpu.get(), n), from_pageable(gpu.get(), n);
    from_pinned.CopyFromHostAsync(pinned.data(), n);
    from_pageable.CopyFromHostAsync(pageable.data(), n);
    // Queued after the uploads on the same stream: sees their data.
    gpu->ReluForward(static_cast<int>(n), from_pinned.data());
    REQUIRE(gpu->Synchronize().ok());
    // The reuse rule: after Synchronize the sources may change.
    std::memset(pinned.data(), 0, n * sizeof(float));
    std::fill(pageable.begin(), pageable.end(), 0.0f);
    std::vector<float> want_relu = values;
    cpu->ReluForward(static_cast<int>(n), want_relu.data());
    CHECK(ToHost(gpu.get(), from_pinned) == want_relu);
    CHECK(ToHost(gpu.get(), from_pageable) == values);
  }
  CHECK(gpu->status().ok());
}

TEST_CASE("CUDA parity: one MLP training step and an evaluation", "[cuda]") {
  auto gpu = GpuOrSkip();
  if (!gpu) return;
  auto cpu = CreateCpuBackend(1);
  const std::vector<std::vector<int32_t>> models = {{784, 256, 128, 10},
                                                    {29, 33, 7}};
  for (const auto& layers : models) {
    const int32_t max_batch = 64, batch = 37, input = layers[0];
    Mlp on_cpu(layers, max_batch, cpu.get());
    auto on_gpu_or = Mlp::Create(layers, max_batch, gpu.get());
    REQUIRE(on_gpu_or.ok());
    Mlp& on_gpu = **on_gpu_or;
    const auto params = InitParams(on_cpu, 7);
    std::vector<const float*> pv;
    for (const auto& p : params) pv.push_back(p.data());
    const auto x = Random(size_t(batch) * input, 8);
    std::vector<int32_t> labels(batch);
    for (int32_t r = 0; r < batch; ++r) labels[r] = r % layers.back();

    std::vector<std::vector<float>> g_cpu, g_gpu;
    std::vector<float*> gp_cpu, gp_gpu;
    for (int64_t n : on_cpu.ParameterSizes()) {
      g_cpu.emplace_back(n);
      g_gpu.emplace_back(n);
    }
    for (size_t i = 0; i < g_cpu.size(); ++i) {
      gp_cpu.push_back(g_cpu[i].data());
      gp_gpu.push_back(g_gpu[i].data());
    }
    const float loss_cpu =
        on_cpu.ForwardBackward(pv, x.data(), labels.data(), batch, gp_cpu);
    const float loss_gpu =
        on_gpu.ForwardBackward(pv, x.data(), labels.data(), batch, gp_gpu);
    REQUIRE(gpu->status().ok());
    CHECK(loss_gpu == Approx(loss_cpu).epsilon(1e-4));
    for (size_t t = 0; t < g_cpu.size(); ++t) {
      float max_abs = 0.0f;
      for (float v : g_cpu[t]) max_abs = std::max(max_abs, std::fabs(v));
      const float tol = 1e-3f * max_abs + 1e-6f;
      for (size_t i = 0; i < g_cpu[t].size(); ++i) {
        INFO("tensor " << on_cpu.ParameterNames()[t] << " i=" << i);
        REQUIRE(std::fabs(g_gpu[t][i] - g_cpu[t][i]) <= tol);
      }
    }
    // The overlapped path (GradientReady: per-layer copies on the copy
    // stream into pinned staging): the same order as on the CPU, and
    // bitwise the GPU's own gradients without a callback.
    std::vector<std::vector<float>> g_seen(g_gpu.size());
    std::vector<std::vector<float>> g_cb(g_gpu.size());
    std::vector<float*> gp_cb;
    for (size_t i = 0; i < g_gpu.size(); ++i) {
      g_cb[i].resize(g_gpu[i].size());
      gp_cb.push_back(g_cb[i].data());
    }
    std::vector<int32_t> order;
    const float loss_cb = on_gpu.ForwardBackward(
        pv, x.data(), labels.data(), batch, gp_cb, [&](int32_t t) {
          order.push_back(t);
          g_seen[t] = g_cb[t];
        });
    REQUIRE(gpu->status().ok());
    std::vector<int32_t> want_order;
    for (int32_t l = on_cpu.num_layers() - 1; l >= 0; --l) {
      want_order.push_back(2 * l);
      want_order.push_back(2 * l + 1);
    }
    CHECK(order == want_order);
    CHECK(loss_cb == loss_gpu);
    CHECK(g_seen == g_gpu);
    CHECK(g_cb == g_gpu);
    // Parameters in pinned memory (the trainer's pull buffers), uploaded
    // asynchronously: bitwise the gradients from pageable ones; and the
    // buffers may be overwritten once the call returned.
    std::vector<HostBuffer<float>> pinned;
    std::vector<const float*> pv_pinned;
    for (const auto& p : params) {
      pinned.emplace_back(gpu.get(), p.size());
      REQUIRE(pinned.back().data() != nullptr);
      std::memcpy(pinned.back().data(), p.data(), p.size() * sizeof(float));
      pv_pinned.push_back(pinned.back().data());
    }
    std::vector<std::vector<float>> g_pin(g_gpu.size());
    std::vector<float*> gp_pin;
    for (size_t i = 0; i < g_gpu.size(); ++i) {
      g_pin[i].resize(g_gpu[i].size());
      gp_pin.push_back(g_pin[i].data());
    }
    const float loss_pin = on_gpu.ForwardBackward(pv_pinned, x.data(),
                                                  labels.data(), batch, gp_pin);
    for (auto& b : pinned) std::memset(b.data(), 0, b.size() * sizeof(float));
    REQUIRE(gpu->status().ok());
    CHECK(loss_pin == loss_gpu);
    CHECK(g_pin == g_gpu);
    // Evaluation over more rows than max_batch (chunks of 64).
    const int64_t n_eval = 200;
    const auto x_eval = Random(size_t(n_eval) * input, 9);
    std::vector<int32_t> y_eval(n_eval);
    for (int64_t r = 0; r < n_eval; ++r) y_eval[r] = r % layers.back();
    CHECK(on_gpu.CountCorrect(pv, x_eval.data(), y_eval.data(), n_eval) ==
          on_cpu.CountCorrect(pv, x_eval.data(), y_eval.data(), n_eval));
  }
}

}  // namespace
}  // namespace psd::kernels
