#include "server/ps/optimizer.h"

#include <cmath>
#include <cstring>
#include <limits>
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

// ---------------------------------------------------------------------------
// ApplyOptimizer: every kind, schedule and clipping. Same w0, gradients and
// learning rate 0.1 as above. Expected values are from a float64 reference of
// the formulas in proto/job.proto (python3, /tmp script not kept), written to
// 9 significant digits; the first steps are derived by hand in the comments.

OptimizerSpec Spec(OptimizerSpec::Kind kind) {
  OptimizerSpec spec;
  spec.set_kind(kind);
  spec.set_learning_rate(0.1f);
  return spec;
}

OptimizerSpec Adam(OptimizerSpec::Kind kind, float weight_decay) {
  OptimizerSpec spec = Spec(kind);
  spec.set_beta1(0.9f);
  spec.set_beta2(0.999f);
  spec.set_epsilon(1e-8f);
  spec.set_weight_decay(weight_decay);
  return spec;
}

// Expected weights and slots after each of the three steps.
struct Trajectory {
  std::vector<double> w[3];
  std::vector<std::vector<double>> slots[3];  // slot j after step s
};

// Runs ApplyOptimizer over kGrads from w0 and checks every step.
void CheckTrajectory(const OptimizerSpec& spec, const Trajectory& want) {
  const int k = OptimizerSlots(spec);
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> slots(3 * k, 0.0f);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step + 1);
    ApplyOptimizer(spec, step, kGrads[step], 3, w.data(),
                   k == 0 ? nullptr : slots.data());
    CheckNear(w, want.w[step]);
    REQUIRE(want.slots[step].size() == static_cast<size_t>(k));
    for (int j = 0; j < k; ++j) {
      INFO("slot " << j);
      CheckNear(std::vector<float>(slots.begin() + 3 * j,
                                   slots.begin() + 3 * (j + 1)),
                want.slots[step][j]);
    }
  }
}

TEST_CASE("OptimizerSlots: slots per element for each kind", "[optimizer]") {
  CHECK(OptimizerSlots(Sgd(0.0f, 0.01f)) == 0);
  CHECK(OptimizerSlots(Sgd(0.9f, 0.0f)) == 1);
  OptimizerSpec nesterov = Sgd(0.9f, 0.0f);
  nesterov.set_nesterov(true);
  CHECK(OptimizerSlots(nesterov) == 1);
  CHECK(OptimizerSlots(Spec(OptimizerSpec::KIND_UNSPECIFIED)) == 0);
  CHECK(OptimizerSlots(Spec(OptimizerSpec::ADAGRAD)) == 1);
  CHECK(OptimizerSlots(Spec(OptimizerSpec::ADAM)) == 2);
  CHECK(OptimizerSlots(Spec(OptimizerSpec::ADAMW)) == 2);
}

TEST_CASE("ApplyOptimizer: Nesterov momentum 0.9, three steps by hand",
          "[optimizer]") {
  // v as heavy-ball (see above); w <- w - 0.1 (g + 0.9 v).
  // Step 1: v1 = g1, w1 = w0 - 0.19 g1 = [0.905, -1.81, 0.4525].
  // Step 2: v2 = [0.7, -0.4, -0.275], g2 + 0.9 v2 = [0.88, 0.14, -0.7475],
  //         w2 = [0.817, -1.824, 0.52725].
  OptimizerSpec spec = Sgd(0.9f, 0.0f);
  spec.set_nesterov(true);
  CheckTrajectory(
      spec,
      {{{0.905, -1.81, 0.4525},
        {0.817, -1.824, 0.52725},
        {0.9503, -1.7916, 0.359525}},
       {{{0.5, -1, 0.25}}, {{0.7, -0.4, -0.275}}, {{-0.37, -0.36, 0.7525}}}});
}

TEST_CASE("ApplyOptimizer: Nesterov momentum 0.9 with weight decay 0.01",
          "[optimizer]") {
  // Step 1: g = [0.51, -1.02, 0.255] = v1; w1 = w0 - 0.19 g.
  OptimizerSpec spec = Sgd(0.9f, 0.01f);
  spec.set_nesterov(true);
  CheckTrajectory(spec, {{{0.9031, -1.8062, 0.45155},
                          {0.81257411, -1.81514822, 0.525037055},
                          {0.942869708, -1.77637842, 0.355584229}},
                         {{{0.51, -1.02, 0.255}},
                          {{0.718031, -0.436062, -0.2659845}},
                          {{-0.345646359, -0.410607282, 0.765864321}}}});
}

TEST_CASE("ApplyOptimizer: Adagrad, three steps by hand", "[optimizer]") {
  // s starts at 0. Step 1: s = g^2, w -= 0.1 g / |g| = 0.1 sign(g):
  // [0.9, -1.9, 0.4]. Step 2: s = [0.3125, 1.25, 0.3125],
  // w -= 0.1 g2 / sqrt(s) = 0.1 [0.4472136, 0.4472136, -0.8944272].
  // Step 3: g3[1] = 0 leaves w[1] where it was.
  OptimizerSpec spec = Spec(OptimizerSpec::ADAGRAD);
  spec.set_epsilon(1e-10f);
  CheckTrajectory(spec, {{{0.9, -1.9, 0.4},
                          {0.85527864, -1.94472136, 0.489442719},
                          {0.942565797, -1.94472136, 0.402155563}},
                         {{{0.25, 1, 0.0625}},
                          {{0.3125, 1.25, 0.3125}},
                          {{1.3125, 1.25, 1.3125}}}});
}

TEST_CASE(
    "ApplyOptimizer: Adagrad with initial accumulator 0.1 and weight "
    "decay 0.01",
    "[optimizer]") {
  // Step 1: g = [0.51, -1.02, 0.255], s = 0.1 + g^2 = [0.3601, 1.1404,
  // 0.165025], w1 = w0 - 0.1 g / sqrt(s).
  OptimizerSpec spec = Spec(OptimizerSpec::ADAGRAD);
  spec.set_epsilon(1e-10f);
  spec.set_initial_accumulator_value(0.1f);
  spec.set_weight_decay(0.01f);
  CheckTrajectory(spec, {{{0.915011803, -1.904485, 0.437228095},
                          {0.875365207, -1.94555004, 0.5145688},
                          {0.958848297, -1.94388911, 0.430248227}},
                         {{{0.3601, 1.1404, 0.165025}},
                          {{0.427258784, 1.37171786, 0.410671836}},
                          {{1.40982811, 1.37209637, 1.42098969}}}});
}

TEST_CASE("ApplyOptimizer: Adagrad sets the accumulator only at step 0",
          "[optimizer]") {
  // A restored partition (step > 0) keeps its accumulator.
  OptimizerSpec spec = Spec(OptimizerSpec::ADAGRAD);
  spec.set_epsilon(1e-10f);
  spec.set_initial_accumulator_value(0.1f);
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> s = {0.75f, 0.0f, 3.0f};
  ApplyOptimizer(spec, 5, kGrads[0], 3, w.data(), s.data());
  CheckNear(s, {1.0, 1.0, 3.0625});
  CheckNear(w, {1.0 - 0.05, -2.0 + 0.1, 0.5 - 0.025 / 1.75});
}

TEST_CASE("ApplyOptimizer: Adam, three steps; the first in closed form",
          "[optimizer]") {
  // Step 1 (k = 1): m-hat = g, u-hat = g^2, so
  // w1 = w0 - 0.1 g / (|g| + 1e-8) = w0 - 0.1 sign(g) (+ 2e-9 and 4e-9).
  // m1 = 0.1 g, u1 = 0.001 g^2. Step 2: m2 = 0.09 g1 + 0.1 g2 =
  // [0.07, -0.04, -0.0275], u2 = 0.000999 g1^2 + 0.001 g2^2, and
  // w2 = w1 - (0.1 / 0.19) m2 / (sqrt(u2 / 0.001999) + 1e-8).
  CheckTrajectory(
      Adam(OptimizerSpec::ADAM, 0.0f),
      {{{0.900000002, -1.9, 0.400000004},
        {0.80678204, -1.8733663, 0.436610356},
        {0.827417743, -1.85277837, 0.394644795}},
       {{{0.05, -0.1, 0.025}, {0.00025, 0.001, 6.25e-05}},
        {{0.07, -0.04, -0.0275}, {0.00031225, 0.001249, 0.0003124375}},
        {{-0.037, -0.036, 0.07525},
         {0.00131193775, 0.001247751, 0.00131212506}}}});
}

TEST_CASE("ApplyOptimizer: Adam's weight decay is L2 added to the gradient",
          "[optimizer]") {
  // g1 = g + 0.01 w0 = [0.51, -1.02, 0.255]; m1 = 0.1 g1; the first step is
  // still -0.1 sign(g1).
  CheckTrajectory(
      Adam(OptimizerSpec::ADAM, 0.01f),
      {{{0.900000002, -1.9, 0.400000004},
        {0.806555041, -1.87115243, 0.435562037},
        {0.82584777, -1.8477955, 0.39304457}},
       {{{0.051, -0.102, 0.0255}, {0.0002601, 0.0010404, 6.5025e-05}},
        {{0.0718, -0.0437, -0.02665},
         {0.0003269209, 0.0012707206, 0.000310975975}},
        {{-0.034573445, -0.0412011524, 0.076450562},
         {0.00131052793, 0.0012698, 0.00131939521}}}});
}

TEST_CASE(
    "ApplyOptimizer: AdamW decays the weights, decoupled from the "
    "moments",
    "[optimizer]") {
  // Step 1: w <- w0 (1 - 0.1 * 0.01) = 0.999 w0, then -0.1 sign(g):
  // [0.899, -1.898, 0.3995]. The moments are Adam's without decay.
  CheckTrajectory(
      Adam(OptimizerSpec::ADAMW, 0.01f),
      {{{0.899000002, -1.898, 0.399500004},
        {0.80488304, -1.8694683, 0.435710856},
        {0.82471386, -1.8470109, 0.393309584}},
       {{{0.05, -0.1, 0.025}, {0.00025, 0.001, 6.25e-05}},
        {{0.07, -0.04, -0.0275}, {0.00031225, 0.001249, 0.0003124375}},
        {{-0.037, -0.036, 0.07525},
         {0.00131193775, 0.001247751, 0.00131212506}}}});
}

TEST_CASE("ApplyOptimizer: AdamW without weight decay is Adam, bit for bit",
          "[optimizer]") {
  std::vector<float> w1 = {1.0f, -2.0f, 0.5f}, w2 = w1;
  std::vector<float> s1(6, 0.0f), s2(6, 0.0f);
  for (int step = 0; step < 3; ++step) {
    ApplyOptimizer(Adam(OptimizerSpec::ADAM, 0.0f), step, kGrads[step], 3,
                   w1.data(), s1.data());
    ApplyOptimizer(Adam(OptimizerSpec::ADAMW, 0.0f), step, kGrads[step], 3,
                   w2.data(), s2.data());
  }
  CHECK(std::memcmp(w1.data(), w2.data(), 3 * sizeof(float)) == 0);
  CHECK(std::memcmp(s1.data(), s2.data(), 6 * sizeof(float)) == 0);
}

TEST_CASE("ApplyOptimizer: Adam with beta1 0, beta2 0.5 and epsilon 0.1",
          "[optimizer]") {
  // beta1 0: m = g and no first-moment bias correction. Step 1:
  // u-hat = g^2, w1 = w0 - 0.1 g / (|g| + 0.1) = [1 - 0.05/0.6, -2 + 0.1/1.1,
  // 0.5 - 0.025/0.35].
  OptimizerSpec spec = Spec(OptimizerSpec::ADAM);
  spec.set_beta1(0.0f);
  spec.set_beta2(0.5f);
  spec.set_epsilon(0.1f);
  CheckTrajectory(spec, {{{0.916666667, -1.90909091, 0.428571429},
                          {0.861546364, -1.97104058, 0.522377823},
                          {0.973834074, -1.97104058, 0.41216464}},
                         {{{0.5, -1, 0.25}, {0.125, 0.5, 0.03125}},
                          {{0.25, 0.5, -0.5}, {0.09375, 0.375, 0.140625}},
                          {{-1, 0, 1}, {0.546875, 0.1875, 0.5703125}}}});
}

TEST_CASE("ScheduledLearningRate: constant, step and cosine", "[optimizer]") {
  OptimizerSpec spec = Spec(OptimizerSpec::SGD);
  // Unset and CONSTANT: the base rate, exactly.
  for (int64_t step : {0, 1, 1000000}) {
    CHECK(ScheduledLearningRate(spec, step) == 0.1f);
  }
  spec.mutable_schedule()->set_kind(LearningRateSchedule::CONSTANT);
  CHECK(ScheduledLearningRate(spec, 7) == 0.1f);

  // STEP, step_size 2, gamma 0.5: 0.1 0.1 0.05 0.05 0.025 0.025 ...
  spec.mutable_schedule()->set_kind(LearningRateSchedule::STEP);
  spec.mutable_schedule()->set_step_size(2);
  spec.mutable_schedule()->set_gamma(0.5f);
  const double want_step[] = {0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125};
  for (int step = 0; step < 7; ++step) {
    INFO("step " << step);
    CHECK(ScheduledLearningRate(spec, step) ==
          Approx(want_step[step]).epsilon(1e-7));
  }
  CHECK(ScheduledLearningRate(spec, 0) == 0.1f);

  // COSINE, T = 4, min 0.01: 0.01 + 0.09 (1 + cos(pi t / 4)) / 2, then 0.01.
  spec.mutable_schedule()->Clear();
  spec.mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
  spec.mutable_schedule()->set_decay_steps(4);
  spec.mutable_schedule()->set_min_learning_rate(0.01f);
  const double want_cos[] = {0.1,  0.0868198052, 0.055, 0.0231801948,
                             0.01, 0.01,         0.01};
  for (int step = 0; step < 7; ++step) {
    INFO("step " << step);
    CHECK(ScheduledLearningRate(spec, step) ==
          Approx(want_cos[step]).epsilon(1e-6));
  }
  CHECK(ScheduledLearningRate(spec, 0) == 0.1f);   // exactly the base rate
  CHECK(ScheduledLearningRate(spec, 4) == 0.01f);  // exactly the minimum
  CHECK(ScheduledLearningRate(spec, 1 << 30) == 0.01f);

  // Without a minimum it ends at 0.
  spec.mutable_schedule()->set_min_learning_rate(0.0f);
  CHECK(ScheduledLearningRate(spec, 2) == Approx(0.05).epsilon(1e-6));
  CHECK(ScheduledLearningRate(spec, 4) == 0.0f);
}

TEST_CASE("ApplyOptimizer: SGD follows the step schedule", "[optimizer]") {
  // lr = 0.1, 0.1, 0.05: w3 = w0 - 0.1 g1 - 0.1 g2 - 0.05 g3.
  OptimizerSpec spec = Sgd(0.0f, 0.0f);
  spec.mutable_schedule()->set_kind(LearningRateSchedule::STEP);
  spec.mutable_schedule()->set_step_size(2);
  spec.mutable_schedule()->set_gamma(0.5f);
  CheckTrajectory(
      spec,
      {{{0.95, -1.9, 0.475}, {0.925, -1.95, 0.525}, {0.975, -1.95, 0.475}},
       {{}, {}, {}}});
}

TEST_CASE(
    "ApplyOptimizer: AdamW follows the cosine schedule, in the step and "
    "in the decay",
    "[optimizer]") {
  // lr_t = 0.1, 0.0868198, 0.055 (T = 4, min 0.01). Step 1:
  // w = w0 (1 - 0.1 * 0.1) - 0.1 sign(g) = [0.89, -1.88, 0.395].
  OptimizerSpec spec = Adam(OptimizerSpec::ADAMW, 0.1f);
  spec.mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
  spec.mutable_schedule()->set_decay_steps(4);
  spec.mutable_schedule()->set_min_learning_rate(0.01f);
  CheckTrajectory(
      spec, {{{0.890000002, -1.88, 0.395000004},
              {0.801341387, -1.84055455, 0.423355658},
              {0.808283645, -1.81910814, 0.397946143}},
             {{{0.05, -0.1, 0.025}, {0.00025, 0.001, 6.25e-05}},
              {{0.07, -0.04, -0.0275}, {0.00031225, 0.001249, 0.0003124375}},
              {{-0.037, -0.036, 0.07525},
               {0.00131193775, 0.001247751, 0.00131212506}}}});
}

TEST_CASE(
    "ApplyOptimizer: clip_value clamps the gradient before weight "
    "decay",
    "[optimizer]") {
  // clip 0.3: g1 -> [0.3, -0.3, 0.25], plus 0.01 w0 (not clipped):
  // v1 = [0.31, -0.32, 0.255], w1 = w0 - 0.1 v1 = [0.969, -1.968, 0.4745].
  OptimizerSpec spec = Sgd(0.9f, 0.01f);
  spec.set_clip_value(0.3f);
  CheckTrajectory(spec, {{{0.969, -1.968, 0.4745},
                          {0.915131, -1.967232, 0.4810755},
                          {0.895733769, -1.96457357, 0.456512374}},
                         {{{0.31, -0.32, 0.255}},
                          {{0.53869, -0.00768, -0.065755}},
                          {{0.19397231, -0.02658432, 0.245631255}}}});

  // Adam, clip 0.3: the first step is -0.1 sign(clipped g), and the moments
  // see the clipped gradient: m1 = 0.1 [0.3, -0.3, 0.25].
  OptimizerSpec adam = Adam(OptimizerSpec::ADAM, 0.0f);
  adam.set_clip_value(0.3f);
  std::vector<float> w = {1.0f, -2.0f, 0.5f};
  std::vector<float> slots(6, 0.0f);
  ApplyOptimizer(adam, 0, kGrads[0], 3, w.data(), slots.data());
  CheckNear(w, {0.9, -1.9, 0.4});
  CheckNear({slots.begin(), slots.begin() + 3}, {0.03, -0.03, 0.025});
  CheckNear({slots.begin() + 3, slots.end()}, {0.00009, 0.00009, 0.0000625});

  // A bound above every |g| changes nothing, bit for bit.
  OptimizerSpec loose = Sgd(0.9f, 0.01f);
  loose.set_clip_value(100.0f);
  std::vector<float> a = {1.0f, -2.0f, 0.5f}, b = a, va(3, 0.0f), vb(3, 0.0f);
  for (int step = 0; step < 3; ++step) {
    ApplyOptimizer(loose, step, kGrads[step], 3, a.data(), va.data());
    ApplyOptimizer(Sgd(0.9f, 0.01f), step, kGrads[step], 3, b.data(),
                   vb.data());
  }
  CHECK(std::memcmp(a.data(), b.data(), 3 * sizeof(float)) == 0);
}

// The SGD update as it was before the other optimizers were added (commit
// 9e53a75, server/ps/optimizer.cc), kept verbatim as the oracle of the
// bit-identity test below.
void PreviousSgd(const OptimizerSpec& spec, const float* grad, int64_t n,
                 float* weights, float* velocity) {
  const float lr = spec.learning_rate();
  const float mu = spec.momentum();
  const float wd = spec.weight_decay();
  if (mu == 0.0f) {
    for (int64_t i = 0; i < n; ++i) {
      weights[i] -= lr * (grad[i] + wd * weights[i]);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] + wd * weights[i];
    velocity[i] = mu * velocity[i] + g;
    weights[i] -= lr * velocity[i];
  }
}

TEST_CASE(
    "ApplyOptimizer: SGD and momentum are bit-identical to the "
    "previous formulas",
    "[optimizer]") {
  // Awkward values: a deterministic spread over many magnitudes and signs,
  // with -0, +0 and denormals among them.
  const int64_t n = 4099;
  std::vector<float> w0(n), grads(5 * n);
  uint32_t x = 12345;
  auto next = [&x] {
    x = x * 1664525u + 1013904223u;
    const float unit = static_cast<float>(x >> 8) / 16777216.0f - 0.5f;
    return std::ldexp(unit, static_cast<int>((x >> 3) % 24) - 12);
  };
  for (float& v : w0) v = next();
  for (float& v : grads) v = next();
  w0[0] = -0.0f;
  w0[1] = 0.0f;
  grads[2] = -0.0f;
  grads[3] = std::numeric_limits<float>::denorm_min();
  grads[n + 4] = -std::numeric_limits<float>::denorm_min();
  const float kMomenta[] = {0.0f, 0.5f, 0.9f};
  const float kDecays[] = {0.0f, 5e-4f, 0.01f};
  const float kRates[] = {0.02f, 0.1f, 0.3f};
  for (float mu : kMomenta) {
    for (float wd : kDecays) {
      for (float lr : kRates) {
        INFO("momentum " << mu << " weight decay " << wd << " lr " << lr);
        OptimizerSpec spec = Sgd(mu, wd);
        spec.set_learning_rate(lr);
        OptimizerSpec constant = spec;
        constant.mutable_schedule()->set_kind(LearningRateSchedule::CONSTANT);
        OptimizerSpec unspecified = spec;
        unspecified.set_kind(OptimizerSpec::KIND_UNSPECIFIED);
        std::vector<float> w_old = w0, v_old(n, 0.0f);
        std::vector<float> w_sgd = w0, v_sgd(n, 0.0f);
        std::vector<float> w_new = w0, v_new(n, 0.0f);
        std::vector<float> w_con = w0, v_con(n, 0.0f);
        std::vector<float> w_uns = w0, v_uns(n, 0.0f);
        for (int step = 0; step < 5; ++step) {
          const float* g = grads.data() + step * n;
          PreviousSgd(spec, g, n, w_old.data(), v_old.data());
          ApplySgd(spec, g, n, w_sgd.data(), v_sgd.data());
          ApplyOptimizer(spec, step, g, n, w_new.data(), v_new.data());
          ApplyOptimizer(constant, step, g, n, w_con.data(), v_con.data());
          ApplyOptimizer(unspecified, step, g, n, w_uns.data(), v_uns.data());
        }
        const size_t bytes = n * sizeof(float);
        CHECK(std::memcmp(w_old.data(), w_sgd.data(), bytes) == 0);
        CHECK(std::memcmp(w_old.data(), w_new.data(), bytes) == 0);
        CHECK(std::memcmp(w_old.data(), w_con.data(), bytes) == 0);
        CHECK(std::memcmp(w_old.data(), w_uns.data(), bytes) == 0);
        CHECK(std::memcmp(v_old.data(), v_sgd.data(), bytes) == 0);
        CHECK(std::memcmp(v_old.data(), v_new.data(), bytes) == 0);
        CHECK(std::memcmp(v_old.data(), v_con.data(), bytes) == 0);
        CHECK(std::memcmp(v_old.data(), v_uns.data(), bytes) == 0);
      }
    }
  }
}

}  // namespace
}  // namespace psd
