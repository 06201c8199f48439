#include "server/optimizer.h"

#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

// Every case starts from w = [1, -2, 0.5] and applies these three gradients
// with learning rate 0.1. The expected values below were computed by hand
// with exact rationals (python3 fractions), e.g. for momentum 0.9:
//   v1 = g1 = [0.5, -1, 0.25]              w1 = w0 - 0.1 v1 = [0.95, -1.9, 0.475]
//   v2 = 0.9 v1 + g2 = [0.7, -0.4, -0.275]  w2 = [0.88, -1.86, 0.5025]
//   v3 = 0.9 v2 + g3 = [-0.37, -0.36, 0.7525] w3 = [0.917, -1.824, 0.42725]
// float32 arithmetic is within a few ulps of them.
const float kGrads[3][3] = {
    {0.5f, -1.0f, 0.25f},
    {0.25f, 0.5f, -0.5f},
    {-1.0f, 0.0f, 1.0f},
};

OptimizerSpec Sgd(float momentum, float weight_decay) {
  OptimizerSpec spec;
  spec.set_kind(OptimizerSpec::SGD);
  spec.set_learning_rate(0.1f);
  spec.set_momentum(momentum);
  spec.set_weight_decay(weight_decay);
  return spec;
}

void CheckNear(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    CHECK(got[i] == Approx(want[i]).margin(1e-6));
  }
}

TEST_CASE("ApplySgd: plain SGD, three steps by hand", "[optimizer]") {
  // w <- w - 0.1 g.
  const std::vector<double> want[3] = {
      {0.95, -1.9, 0.475},
      {0.925, -1.95, 0.525},
      {1.025, -1.95, 0.425},
  };
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step + 1);
    ApplySgd(Sgd(0.0f, 0.0f), kGrads[step], 3, w.data(), nullptr);
    CheckNear(w, want[step]);
  }
}

TEST_CASE("ApplySgd: momentum 0.9, three steps by hand", "[optimizer]") {
  const std::vector<double> want_w[3] = {
      {0.95, -1.9, 0.475},
      {0.88, -1.86, 0.5025},
      {0.917, -1.824, 0.42725},
  };
  const std::vector<double> want_v[3] = {
      {0.5, -1.0, 0.25},
      {0.7, -0.4, -0.275},
      {-0.37, -0.36, 0.7525},
  };
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> v(3, 0.0f);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step + 1);
    ApplySgd(Sgd(0.9f, 0.0f), kGrads[step], 3, w.data(), v.data());
    CheckNear(w, want_w[step]);
    CheckNear(v, want_v[step]);
  }
}

TEST_CASE("ApplySgd: weight decay 0.01 without momentum, three steps by hand",
          "[optimizer]") {
  // g' = g + 0.01 w; w <- w - 0.1 g'. Step 1: g' = [0.51, -1.02, 0.255],
  // w1 = [0.949, -1.898, 0.4745]; step 2: g' = [0.25949, 0.48102, -0.495255],
  // w2 = [0.923051, -1.946102, 0.5240255]; step 3:
  // g' = [-0.99076949, -0.01946102, 1.005240255].
  const std::vector<double> want[3] = {
      {0.949, -1.898, 0.4745},
      {0.923051, -1.946102, 0.5240255},
      {1.022127949, -1.944155898, 0.4235014745},
  };
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step + 1);
    ApplySgd(Sgd(0.0f, 0.01f), kGrads[step], 3, w.data(), nullptr);
    CheckNear(w, want[step]);
  }
}

TEST_CASE("ApplySgd: weight decay 0.01 with momentum 0.9, three steps by hand",
          "[optimizer]") {
  // v1 = g1 + 0.01 w0 = [0.51, -1.02, 0.255];
  // v2 = 0.9 v1 + g2 + 0.01 w1 = [0.71849, -0.43698, -0.265755];
  // v3 = 0.9 v2 + g3 + 0.01 w2 = [-0.34458749, -0.41182502, 0.765831255].
  const std::vector<double> want_w[3] = {
      {0.949, -1.898, 0.4745},
      {0.877151, -1.854302, 0.5010755},
      {0.911609749, -1.813119498, 0.4244923745},
  };
  const std::vector<double> want_v[3] = {
      {0.51, -1.02, 0.255},
      {0.71849, -0.43698, -0.265755},
      {-0.34458749, -0.41182502, 0.765831255},
  };
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> v(3, 0.0f);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step + 1);
    ApplySgd(Sgd(0.9f, 0.01f), kGrads[step], 3, w.data(), v.data());
    CheckNear(w, want_w[step]);
    CheckNear(v, want_v[step]);
  }
}

TEST_CASE("ApplySgd: velocity is untouched when momentum is 0", "[optimizer]") {
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> v = {7.0f, 8.0f, 9.0f};
  ApplySgd(Sgd(0.0f, 0.01f), kGrads[0], 3, w.data(), v.data());
  CHECK(v == std::vector<float>{7.0f, 8.0f, 9.0f});
  CheckNear(w, {0.949, -1.898, 0.4745});
  // And it may be null.
  ApplySgd(Sgd(0.0f, 0.0f), kGrads[1], 3, w.data(), nullptr);
  CheckNear(w, {0.949 - 0.025, -1.898 - 0.05, 0.4745 + 0.05});
}

TEST_CASE("ApplySgd: n == 0 touches nothing", "[optimizer]") {
  float w = 3.0f;
  float v = 4.0f;
  ApplySgd(Sgd(0.9f, 0.01f), kGrads[0], 0, &w, &v);
  CHECK(w == 3.0f);
  CHECK(v == 4.0f);
}

}  // namespace
}  // namespace psd
