// Tests of the MLP's forward and backward passes on the CPU backend.
#include "worker/mlp.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/kernels.h"
#include "worker/dataset.h"

namespace psd {
namespace {

// Parameters and gradients for an Mlp, with pointer views.
struct Params {
  explicit Params(const Mlp& mlp) {
    for (int64_t n : mlp.ParameterSizes()) {
      values.emplace_back(n);
      grads.emplace_back(n);
    }
  }
  // He-style initialisation: weights ~ U(-a, a), a = sqrt(6 / fan_in).
  void Init(const Mlp& mlp, uint32_t seed) {
    std::mt19937 rng(seed);
    for (int32_t i = 0; i < mlp.num_layers(); ++i) {
      const float a = std::sqrt(6.0f / mlp.layer_sizes()[i]);
      std::uniform_real_distribution<float> dist(-a, a);
      for (float& w : values[2 * i]) w = dist(rng);
      for (float& b : values[2 * i + 1]) b = 0.1f * dist(rng);
    }
  }
  std::vector<const float*> View() const {
    std::vector<const float*> out;
    for (const auto& v : values) out.push_back(v.data());
    return out;
  }
  std::vector<float*> GradView() {
    std::vector<float*> out;
    for (auto& g : grads) out.push_back(g.data());
    return out;
  }
  std::vector<std::vector<float>> values, grads;
};

TEST_CASE("Mlp: parameter sizes and names in layer order", "[mlp]") {
  auto backend = kernels::CreateCpuBackend();
  Mlp mlp({784, 256, 10}, 32, backend.get());
  CHECK(mlp.ParameterSizes() == std::vector<int64_t>{784 * 256, 256,
                                                     256 * 10, 10});
  CHECK(mlp.ParameterNames() ==
        std::vector<std::string>{"layer0.weight", "layer0.bias",
                                 "layer1.weight", "layer1.bias"});
  CHECK(mlp.num_classes() == 10);
}

TEST_CASE("Mlp::Create: rejects bad shapes", "[mlp]") {
  auto backend = kernels::CreateCpuBackend();
  CHECK(Mlp::Create({784}, 8, backend.get()).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Mlp::Create({784, 0, 10}, 8, backend.get()).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Mlp::Create({784, 10}, 0, backend.get()).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Mlp::Create({784, 10}, 8, nullptr).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Mlp::Create({784, 10}, 8, backend.get()).ok());
}

TEST_CASE("Mlp: uniform logits give loss log(num_classes)", "[mlp]") {
  auto backend = kernels::CreateCpuBackend();
  Mlp mlp({6, 5, 7}, 4, backend.get());
  Params p(mlp);
  p.Init(mlp, 1);
  // Last layer all zero: logits are all zero whatever the input.
  for (float& w : p.values[2]) w = 0.0f;
  for (float& b : p.values[3]) b = 0.0f;
  std::vector<float> x(3 * 6, 0.5f);
  const int32_t labels[] = {0, 6, 3};
  const float loss =
      mlp.ForwardBackward(p.View(), x.data(), labels, 3, p.GradView());
  CHECK(loss == Approx(std::log(7.0)));
}

TEST_CASE("Mlp: gradients match finite differences (5-4-3-3, batch 4)",
          "[mlp]") {
  auto backend = kernels::CreateCpuBackend();
  Mlp mlp({5, 4, 3, 3}, 4, backend.get());
  Params p(mlp);
  p.Init(mlp, 7);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(4 * 5);
  for (float& v : x) v = normal(rng);
  const int32_t labels[] = {2, 0, 1, 2};
  mlp.ForwardBackward(p.View(), x.data(), labels, 4, p.GradView());
  const auto analytic = p.grads;

  const double h = 1e-3;
  double max_abs_err = 0.0, max_grad = 0.0;
  for (size_t t = 0; t < p.values.size(); ++t) {
    for (size_t i = 0; i < p.values[t].size(); ++i) {
      const float saved = p.values[t][i];
      p.values[t][i] = saved + h;
      const double plus =
          mlp.ForwardBackward(p.View(), x.data(), labels, 4, p.GradView());
      p.values[t][i] = saved - h;
      const double minus =
          mlp.ForwardBackward(p.View(), x.data(), labels, 4, p.GradView());
      p.values[t][i] = saved;
      const double numeric = (plus - minus) / (2 * h);
      const double err = std::abs(numeric - analytic[t][i]);
      INFO("tensor " << mlp.ParameterNames()[t] << " element " << i
                     << ": analytic " << analytic[t][i] << " numeric "
                     << numeric);
      CHECK(err <= 1e-2 * std::max(std::abs(numeric), 0.1));
      max_abs_err = std::max(max_abs_err, err);
      max_grad = std::max(max_grad, std::abs(numeric));
    }
  }
  WARN("gradient check: max abs error " << max_abs_err << ", max |grad| "
                                        << max_grad);
  CHECK(max_abs_err < 1e-2 * max_grad);
  CHECK(max_grad > 1e-2);  // The check is not vacuous.
}

TEST_CASE("Mlp: CountCorrect chunks by max_batch", "[mlp]") {
  auto backend = kernels::CreateCpuBackend();
  // One linear layer 2 -> 2 with W = I: the prediction is argmax of x.
  Mlp mlp({2, 2}, 3, backend.get());
  const std::vector<float> w = {1, 0, 0, 1}, b = {0, 0};
  const std::vector<const float*> params = {w.data(), b.data()};
  const std::vector<float> x = {1, 0, 0, 1, 2, 1, 1, 2, 5, 4, 0, 3, 9, 8};
  const int32_t labels[] = {0, 1, 1, 1, 0, 1, 1};  // 3rd and 7th wrong
  CHECK(mlp.CountCorrect(params, x.data(), labels, 7) == 5);
  CHECK(mlp.CountCorrect(params, x.data(), labels, 0) == 0);
}

TEST_CASE("Mlp: SGD on 1000 Fashion-MNIST examples reduces the loss",
          "[mlp][real]") {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    WARN("skipped: " << dir << " is absent (dataset-fashion-mnist)");
    return;
  }
  auto data = LoadDataset(dir + "/train-images-idx3-ubyte.gz",
                          dir + "/train-labels-idx1-ubyte.gz", 1000, 10,
                          {0.2860f, 0.3530f});
  REQUIRE(data.ok());
  auto backend = kernels::CreateCpuBackend(1);
  const int32_t batch = 50;
  Mlp mlp({784, 64, 10}, batch, backend.get());
  Params p(mlp);
  p.Init(mlp, 5);

  const auto all = ShardIndices(data->size, 0, 1);
  auto mean_loss = [&] {
    // Mean loss over all 1000 examples, batch by batch (grads discarded).
    std::vector<float> x(batch * 784);
    std::vector<int32_t> y(batch);
    double total = 0.0;
    for (int32_t s = 0; s < data->size; s += batch) {
      GatherBatch(*data, all.data() + s, batch, x.data(), y.data());
      total += mlp.ForwardBackward(p.View(), x.data(), y.data(), batch,
                                   p.GradView());
    }
    return total / (data->size / batch);
  };
  const double initial = mean_loss();
  const int64_t initial_correct =
      mlp.CountCorrect(p.View(), data->features.data(), data->labels.data(),
                       data->size);

  std::vector<float> x(batch * 784);
  std::vector<int32_t> y(batch);
  int steps = 0;
  for (int32_t epoch = 0; steps < 300; ++epoch) {
    const auto order = EpochOrder(all, 1, epoch, 0);
    for (int32_t s = 0; s + batch <= data->size && steps < 300; s += batch) {
      GatherBatch(*data, order.data() + s, batch, x.data(), y.data());
      mlp.ForwardBackward(p.View(), x.data(), y.data(), batch, p.GradView());
      for (size_t t = 0; t < p.values.size(); ++t) {
        for (size_t i = 0; i < p.values[t].size(); ++i) {
          p.values[t][i] -= 0.1f * p.grads[t][i];
        }
      }
      ++steps;
    }
  }
  const double final_loss = mean_loss();
  const int64_t correct =
      mlp.CountCorrect(p.View(), data->features.data(), data->labels.data(),
                       data->size);
  WARN("SGD, 300 steps: loss " << initial << " -> " << final_loss
                                << ", correct " << initial_correct << " -> "
                                << correct << " of 1000");
  CHECK(final_loss < 0.5 * initial);
  CHECK(correct > 800);
}

}  // namespace
}  // namespace psd
