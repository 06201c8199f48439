// The CPU kernels' share of a training step (issue 14): one forward and
// backward pass of the quick start's MLP (784-256-128-10, batch 64, float32,
// OpenBLAS on 1 thread: psd_worker's defaults) through worker/mlp.h, timed
// alone, without the parameter servers. Compare with PyTorch's on one thread
// in the same run: tests/bench/torch_baseline.py --mode step (the same
// shapes; nn.Linear + ReLU + cross-entropy, loss.backward()).
//
// Prints one line: "psd_mlp_step batch B: median M us (min m us) over N
// passes, U us per sample". Usage: mlp_step_bench [--passes N] [--batch B]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "worker/mlp.h"

int main(int argc, char** argv) {
  int passes = 2000, batch = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--passes") == 0) passes = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batch = std::atoi(argv[i + 1]);
  }
  if (passes < 1 || batch < 1) {
    std::fprintf(stderr, "usage: mlp_step_bench [--passes N] [--batch B]\n");
    return 2;
  }
  auto backend = psd::kernels::CreateCpuBackend(1);
  auto model = psd::Mlp::Create({784, 256, 128, 10}, batch, backend.get());
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<std::vector<float>> params, grads;
  std::vector<const float*> in;
  std::vector<float*> out;
  for (int64_t n : (*model)->ParameterSizes()) {
    params.emplace_back(n);
    for (float& v : params.back()) v = normal(rng);
    grads.emplace_back(n);
  }
  for (auto& p : params) in.push_back(p.data());
  for (auto& g : grads) out.push_back(g.data());
  std::vector<float> x(static_cast<size_t>(batch) * 784);
  for (float& v : x) v = normal(rng) * 20;
  std::vector<int32_t> y(batch);
  for (int i = 0; i < batch; ++i) y[i] = i % 10;

  std::vector<double> us;
  float loss = 0;
  for (int i = 0; i < passes + 50; ++i) {
    const auto start = std::chrono::steady_clock::now();
    loss += (*model)->ForwardBackward(in, x.data(), y.data(), batch, out);
    const auto end = std::chrono::steady_clock::now();
    if (i >= 50) {  // after warm-up
      us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
    }
  }
  std::sort(us.begin(), us.end());
  const double median = us[us.size() / 2];
  std::printf("psd_mlp_step batch %d: median %.1f us (min %.1f us) over %d "
              "passes, %.2f us per sample (loss sum %.3g)\n",
              batch, median, us.front(), passes, median / batch, loss);
  return 0;
}
