#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/kernels.h"

namespace psd::kernels {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Naive reference: C = alpha * op(A) * op(B) + beta * C, in double.
void NaiveGemm(bool ta, bool tb, int m, int n, int k, float alpha,
               const std::vector<float>& a, const std::vector<float>& b,
               float beta, std::vector<float>& c) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) {
        const float av = ta ? a[p * m + i] : a[i * k + p];
        const float bv = tb ? b[j * k + p] : b[p * n + j];
        s += double{av} * bv;
      }
      c[i * n + j] = static_cast<float>(alpha * s + beta * c[i * n + j]);
    }
  }
}

TEST_CASE("CpuBackend: name", "[kernels]") {
  REQUIRE(CreateCpuBackend()->Name() == "cpu-openblas");
}

TEST_CASE("Gemm: hand-computed 2x2 product", "[kernels]") {
  auto be = CreateCpuBackend(1);
  const float a[] = {1, 2, 3, 4};  // [[1,2],[3,4]]
  const float b[] = {5, 6, 7, 8};  // [[5,6],[7,8]]
  float c[] = {1, 1, 1, 1};
  be->Gemm(false, false, 2, 2, 2, 1.0f, a, b, 0.0f, c);
  CHECK(std::vector<float>(c, c + 4) == std::vector<float>{19, 22, 43, 50});
  // A^T * B = [[1,3],[2,4]] * B = [[26,30],[38,44]]; plus 2*C.
  be->Gemm(true, false, 2, 2, 2, 1.0f, a, b, 2.0f, c);
  CHECK(std::vector<float>(c, c + 4) ==
        std::vector<float>{26 + 38, 30 + 44, 38 + 86, 44 + 100});
}

TEST_CASE("Gemm: matches naive loops for all transposes, odd sizes",
          "[kernels]") {
  auto be = CreateCpuBackend();
  const int m = 7, n = 5, k = 3;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      const auto a = RandomVector(m * k, 1 + ta);
      const auto b = RandomVector(k * n, 3 + tb);
      auto c = RandomVector(m * n, 5);
      auto want = c;
      NaiveGemm(ta, tb, m, n, k, 0.5f, a, b, 0.25f, want);
      be->Gemm(ta, tb, m, n, k, 0.5f, a.data(), b.data(), 0.25f, c.data());
      for (int i = 0; i < m * n; ++i) {
        INFO("ta=" << ta << " tb=" << tb << " i=" << i);
        CHECK(c[i] == Approx(want[i]).margin(1e-5));
      }
    }
  }
}

TEST_CASE("Gemm: k == 0 scales C by beta", "[kernels]") {
  auto be = CreateCpuBackend();
  float c[] = {1, 2, 3};
  be->Gemm(false, false, 1, 3, 0, 1.0f, nullptr, nullptr, 2.0f, c);
  CHECK(std::vector<float>(c, c + 3) == std::vector<float>{2, 4, 6});
}

TEST_CASE("AddBias and BiasGrad: broadcast and column sums", "[kernels]") {
  auto be = CreateCpuBackend();
  float y[] = {1, 2, 3, 4, 5, 6};  // [2,3]
  const float bias[] = {10, 20, 30};
  be->AddBias(2, 3, bias, y);
  CHECK(std::vector<float>(y, y + 6) ==
        std::vector<float>{11, 22, 33, 14, 25, 36});
  float grad[] = {99, 99, 99};
  be->BiasGrad(2, 3, y, grad);
  CHECK(std::vector<float>(grad, grad + 3) == std::vector<float>{25, 47, 69});
  be->BiasGrad(0, 3, y, grad);  // No rows: zero gradient.
  CHECK(std::vector<float>(grad, grad + 3) == std::vector<float>{0, 0, 0});
}

TEST_CASE("Relu: forward clamps, backward masks where y <= 0", "[kernels]") {
  auto be = CreateCpuBackend();
  float x[] = {-1.5f, 0.0f, 2.0f, -0.0f, 3.0f};
  be->ReluForward(5, x);
  CHECK(std::vector<float>(x, x + 5) == std::vector<float>{0, 0, 2, 0, 3});
  float dy[] = {1, 2, 3, 4, 5};
  be->ReluBackward(5, x, dy);
  CHECK(std::vector<float>(dy, dy + 5) == std::vector<float>{0, 0, 3, 0, 5});
}

TEST_CASE("SoftmaxCrossEntropy: hand-computed values", "[kernels]") {
  auto be = CreateCpuBackend();
  // Row 0: uniform logits over 3 classes -> loss log 3, softmax 1/3.
  // Row 1: logits {0, ln 2, ln 7} -> softmax {0.1, 0.2, 0.7}, label 2.
  const float logits[] = {5, 5, 5, 0, std::log(2.0f), std::log(7.0f)};
  const int32_t labels[] = {0, 2};
  float d[6];
  const float loss = be->SoftmaxCrossEntropy(2, 3, logits, labels, d);
  CHECK(loss == Approx((std::log(3.0) - std::log(0.7)) / 2));
  const float want[] = {(1 / 3.0f - 1) / 2, 1 / 6.0f, 1 / 6.0f,
                        0.05f,              0.1f,     (0.7f - 1) / 2};
  for (int i = 0; i < 6; ++i) CHECK(d[i] == Approx(want[i]).margin(1e-6));
}

TEST_CASE("SoftmaxCrossEntropy: stable for huge logits", "[kernels]") {
  auto be = CreateCpuBackend();
  const float logits[] = {1000.0f, 0.0f, -1000.0f};
  const int32_t label = 1;
  float d[3];
  const float loss = be->SoftmaxCrossEntropy(1, 3, logits, &label, d);
  CHECK(loss == Approx(1000.0f));
  CHECK(d[0] == Approx(1.0f));
  CHECK(d[1] == Approx(-1.0f));
  CHECK(d[2] == Approx(0.0f).margin(1e-12));
}

TEST_CASE("SoftmaxCrossEntropy: out-of-range label does not crash",
          "[kernels]") {
  auto be = CreateCpuBackend();
  const float logits[] = {1, 2, 3};
  const int32_t labels[] = {7};
  float d[3];
  CHECK(std::isfinite(be->SoftmaxCrossEntropy(1, 3, logits, labels, d)));
}

TEST_CASE("SoftmaxCrossEntropy: gradient matches finite differences",
          "[kernels]") {
  auto be = CreateCpuBackend();
  const int rows = 3, cols = 5;
  auto logits = RandomVector(rows * cols, 11);
  for (float& z : logits) z *= 3.0f;
  const int32_t labels[] = {4, 0, 2};
  std::vector<float> d(rows * cols), scratch(rows * cols);
  be->SoftmaxCrossEntropy(rows, cols, logits.data(), labels, d.data());
  const float h = 1e-2f;
  for (int i = 0; i < rows * cols; ++i) {
    auto plus = logits, minus = logits;
    plus[i] += h;
    minus[i] -= h;
    const double lp = be->SoftmaxCrossEntropy(rows, cols, plus.data(), labels,
                                              scratch.data());
    const double lm = be->SoftmaxCrossEntropy(rows, cols, minus.data(),
                                              labels, scratch.data());
    INFO("i=" << i);
    CHECK(d[i] == Approx((lp - lm) / (2 * h)).margin(1e-3));
  }
}

TEST_CASE("ArgmaxRows: first maximum of each row", "[kernels]") {
  auto be = CreateCpuBackend();
  const float x[] = {0, 3, 1, -1, -2, -3, 2, 5, 5};  // [3,3]
  int32_t out[3];
  be->ArgmaxRows(3, 3, x, out);
  CHECK(out[0] == 1);
  CHECK(out[1] == 0);
  CHECK(out[2] == 1);
}

TEST_CASE("CpuBackend: CopyFromHostAsync copies at once, HostBuffer frees "
          "what AllocateHost gave",
          "[kernels]") {
  auto be = CreateCpuBackend();
  HostBuffer<float> host(be.get(), 1000);
  REQUIRE(host.data() != nullptr);
  CHECK(host.size() == 1000);
  const std::vector<float> values = RandomVector(1000, 5);
  std::memcpy(host.data(), values.data(), 1000 * sizeof(float));
  Buffer<float> dev(be.get(), 1000);
  dev.CopyFromHostAsync(host.data(), 1000);
  // A host backend's upload is done on return: the source may be reused.
  std::memset(host.data(), 0, 1000 * sizeof(float));
  CHECK(std::memcmp(dev.data(), values.data(), 1000 * sizeof(float)) == 0);
  be->CopyFromHostAsync(values.data(), dev.data(), 0);  // A no-op.
  CHECK(be->Synchronize().ok());

  HostBuffer<float> moved = std::move(host);
  CHECK(host.data() == nullptr);
  CHECK(host.size() == 0);
  CHECK(moved.size() == 1000);
  HostBuffer<int32_t> empty(be.get(), 0);
  CHECK(empty.data() == nullptr);
  CHECK(empty.size() == 0);
}

}  // namespace
}  // namespace psd::kernels
