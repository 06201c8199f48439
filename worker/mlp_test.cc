// Tests of the MLP's forward and backward passes on the CPU backend.
#include "worker/mlp.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
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

// A "device" backend that runs on the CPU: it reports device memory, keeps
// its allocations apart from the caller's, and records any math call given a
// pointer it did not allocate (a host pointer leaking to the device). It
// checks the Mlp's staging logic on machines without a GPU.
//
// With async_uploads, CopyFromHostAsync behaves like a copy queued on a
// stream: it returns at once and the bytes move only when a later call runs
// (as the GPU would run the copy before the work queued after it); at that
// moment it checks that the host source still holds what it held at the
// call (the reuse rule). An upload counts as unsynchronized until a call
// that waits for the queue (Synchronize, CopyToHost, SoftmaxCrossEntropy)
// follows it. Without async_uploads the base class's synchronous default
// runs.
class FakeDeviceBackend : public kernels::Backend {
 public:
  void CopyFromHostAsync(const void* src, void* dst, size_t bytes) override {
    if (!async_uploads) return Backend::CopyFromHostAsync(src, dst, bytes);
    Check(dst);
    Land();  // Earlier uploads first, in order.
    const char* from = static_cast<const char*>(src);
    pending_.push_back({from, static_cast<char*>(dst),
                        std::string(from, from + bytes)});
    ++async_uploads_started;
    ++unsynchronized_uploads;
  }

  std::string Name() const override { return "fake-device"; }
  bool UsesHostMemory() const override { return false; }
  void* Allocate(size_t bytes) override {
    if (fail_allocations) {
      status_ = absl::ResourceExhaustedError("fake device out of memory");
      return nullptr;
    }
    char* p = static_cast<char*>(cpu_->Allocate(bytes));
    std::memset(p, 0xff, bytes);  // NaN floats: unwritten data shows.
    allocations_[p] = bytes;
    return p;
  }
  void Free(void* p) override {
    Land();
    allocations_.erase(static_cast<char*>(p));
    cpu_->Free(p);
  }
  void CopyFromHost(const void* src, void* dst, size_t bytes) override {
    Wait();
    Check(dst);
    std::memcpy(dst, src, bytes);
  }
  void CopyToHost(const void* src, void* dst, size_t bytes) override {
    Wait();
    Check(src);
    std::memcpy(dst, src, bytes);
  }
  absl::Status Synchronize() override {
    Wait();
    return status_;
  }
  absl::Status status() const override { return status_; }
  void Gemm(bool ta, bool tb, int m, int n, int k, float alpha,
            const float* a, const float* b, float beta, float* c) override {
    Land();
    Check(a), Check(b), Check(c);
    cpu_->Gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
    if (fail_math) status_ = absl::InternalError("fake device fault");
  }
  void AddBias(int rows, int cols, const float* bias, float* y) override {
    Land();
    Check(bias), Check(y);
    cpu_->AddBias(rows, cols, bias, y);
  }
  void BiasGrad(int rows, int cols, const float* dy, float* g) override {
    Land();
    Check(dy), Check(g);
    cpu_->BiasGrad(rows, cols, dy, g);
  }
  void ReluForward(int n, float* x) override {
    Land();
    Check(x);
    cpu_->ReluForward(n, x);
  }
  void ReluBackward(int n, const float* y, float* dy) override {
    Land();
    Check(y), Check(dy);
    cpu_->ReluBackward(n, y, dy);
  }
  float SoftmaxCrossEntropy(int rows, int cols, const float* z,
                            const int32_t* labels, float* dz) override {
    Wait();  // Returns the loss: waits for the queue.
    Check(z), Check(labels), Check(dz);
    return cpu_->SoftmaxCrossEntropy(rows, cols, z, labels, dz);
  }
  void ArgmaxRows(int rows, int cols, const float* x, int32_t* out) override {
    Land();
    Check(x), Check(out);
    cpu_->ArgmaxRows(rows, cols, x, out);
  }

  int foreign_pointers = 0;  // Math/copy calls given a non-device pointer.
  bool fail_allocations = false;
  bool fail_math = false;
  bool async_uploads = false;
  int async_uploads_started = 0;
  // Uploads not yet followed by a call that waits for the queue.
  int unsynchronized_uploads = 0;
  // Uploads whose host source changed between the call and the copy.
  int sources_changed = 0;

 private:
  struct Upload {
    const char* src;
    char* dst;
    std::string at_call;  // The source's bytes when the upload was queued.
  };
  // Runs the queued uploads (the "stream" reached them).
  void Land() {
    for (const Upload& u : pending_) {
      if (std::memcmp(u.src, u.at_call.data(), u.at_call.size()) != 0) {
        ++sources_changed;
      }
      std::memcpy(u.dst, u.src, u.at_call.size());
    }
    pending_.clear();
  }
  // A call that waits for everything queued.
  void Wait() {
    Land();
    unsynchronized_uploads = 0;
  }

  void Check(const void* p) {
    const char* c = static_cast<const char*>(p);
    auto it = allocations_.upper_bound(const_cast<char*>(c));
    if (it == allocations_.begin() || c >= std::prev(it)->first +
                                                std::prev(it)->second) {
      ++foreign_pointers;
    }
  }
  std::unique_ptr<kernels::Backend> cpu_ = kernels::CreateCpuBackend(1);
  std::map<char*, size_t> allocations_;
  absl::Status status_;
  std::vector<Upload> pending_;
};

TEST_CASE("Mlp: a device backend sees only device buffers, same results",
          "[mlp]") {
  auto cpu = kernels::CreateCpuBackend(1);
  FakeDeviceBackend device;
  const std::vector<int32_t> layers = {13, 9, 5, 4};
  Mlp on_cpu(layers, 8, cpu.get());
  auto on_device_or = Mlp::Create(layers, 8, &device);
  REQUIRE(on_device_or.ok());
  Mlp& on_device = **on_device_or;
  Params p(on_cpu), q(on_cpu);
  p.Init(on_cpu, 3);
  q.values = p.values;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  std::vector<float> x(20 * 13);
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> labels(20);
  for (int32_t r = 0; r < 20; ++r) labels[r] = r % 4;
  // Same kernels on the same values: bitwise the same loss and gradients.
  const float want =
      on_cpu.ForwardBackward(p.View(), x.data(), labels.data(), 7, p.GradView());
  const float got = on_device.ForwardBackward(q.View(), x.data(),
                                              labels.data(), 7, q.GradView());
  CHECK(got == want);
  CHECK(q.grads == p.grads);
  // 20 rows: chunks of 8, 8 and 4.
  CHECK(on_device.CountCorrect(q.View(), x.data(), labels.data(), 20) ==
        on_cpu.CountCorrect(p.View(), x.data(), labels.data(), 20));
  CHECK(device.foreign_pointers == 0);
}

TEST_CASE("Mlp: asynchronous parameter uploads from host buffers give the "
          "CPU's gradients, and are complete when a call returns",
          "[mlp]") {
  auto cpu = kernels::CreateCpuBackend(1);
  FakeDeviceBackend device;
  device.async_uploads = true;
  const std::vector<int32_t> layers = {13, 9, 5, 4};
  Mlp on_cpu(layers, 8, cpu.get());
  Mlp on_device(layers, 8, &device);
  const size_t tensors = on_cpu.ParameterSizes().size();
  // The trainer's layout: parameters in the backend's AllocateHost memory.
  std::vector<kernels::HostBuffer<float>> host;
  std::vector<const float*> host_view;
  for (int64_t n : on_device.ParameterSizes()) {
    host.emplace_back(&device, n);
    REQUIRE(host.back().data() != nullptr);
    host_view.push_back(host.back().data());
  }
  std::mt19937 rng(21);
  std::normal_distribution<float> normal;
  std::vector<float> x(8 * 13);
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> labels(8);
  for (int32_t r = 0; r < 8; ++r) labels[r] = (5 * r + 1) % 4;
  // Two steps, the second's parameters written ("pulled") into the same
  // buffers once the first call returned, as the trainer does.
  for (uint32_t step = 0; step < 2; ++step) {
    Params want(on_cpu), got(on_cpu);
    want.Init(on_cpu, 30 + step);
    for (size_t t = 0; t < tensors; ++t) {
      std::memcpy(host[t].data(), want.values[t].data(),
                  want.values[t].size() * sizeof(float));
    }
    const float want_loss = on_cpu.ForwardBackward(
        want.View(), x.data(), labels.data(), 8, want.GradView());
    std::vector<int32_t> order;
    const float got_loss = on_device.ForwardBackward(
        host_view, x.data(), labels.data(), 8, got.GradView(),
        [&](int32_t t) { order.push_back(t); });
    CHECK(device.unsynchronized_uploads == 0);
    CHECK(got_loss == want_loss);  // Bitwise: the same kernels and values.
    CHECK(got.grads == want.grads);
    CHECK(order == std::vector<int32_t>{4, 5, 2, 3, 0, 1});
    CHECK(device.async_uploads_started ==
          static_cast<int>((step + 1) * tensors));
  }
  // An evaluation with no rows still waits for its uploads before it
  // returns (nothing else would).
  CHECK(on_device.CountCorrect(host_view, x.data(), labels.data(), 0) == 0);
  CHECK(device.async_uploads_started == static_cast<int>(3 * tensors));
  CHECK(device.unsynchronized_uploads == 0);
  CHECK(device.sources_changed == 0);
  CHECK(device.foreign_pointers == 0);
  CHECK(device.status().ok());
}

TEST_CASE("Mlp: a failed device gives NaN gradients, never stale ones",
          "[mlp]") {
  {
    FakeDeviceBackend device;
    device.fail_allocations = true;
    auto mlp = Mlp::Create({4, 3}, 2, &device);
    CHECK(mlp.status().code() == absl::StatusCode::kResourceExhausted);
  }
  FakeDeviceBackend device;
  Mlp mlp({4, 3, 2}, 2, &device);
  Params p(mlp);
  p.Init(mlp, 1);
  const std::vector<float> x(8, 0.5f);
  const int32_t labels[] = {0, 1};
  device.fail_math = true;
  CHECK(std::isnan(
      mlp.ForwardBackward(p.View(), x.data(), labels, 2, p.GradView())));
  for (const auto& g : p.grads) {
    for (float v : g) CHECK(std::isnan(v));
  }
  CHECK(mlp.CountCorrect(p.View(), x.data(), labels, 2) == -1);
}

// Runs one step with a GradientReady callback that snapshots each tensor's
// gradient when announced; returns the announcement order.
std::vector<int32_t> StepWithCallback(Mlp* mlp, Params* p,
                                      const std::vector<float>& x,
                                      const std::vector<int32_t>& labels,
                                      int32_t batch, float* loss,
                                      std::vector<std::vector<float>>* seen) {
  std::vector<int32_t> order;
  seen->assign(p->grads.size(), {});
  *loss = mlp->ForwardBackward(p->View(), x.data(), labels.data(), batch,
                               p->GradView(), [&](int32_t t) {
                                 order.push_back(t);
                                 (*seen)[t] = p->grads[t];
                               });
  return order;
}

TEST_CASE("Mlp: GradientReady announces each tensor once, last layer first, "
          "with its final gradient",
          "[mlp]") {
  auto cpu = kernels::CreateCpuBackend(1);
  FakeDeviceBackend device;
  const std::vector<int32_t> layers = {13, 9, 5, 4};  // 3 layers, 6 tensors
  Mlp plain(layers, 8, cpu.get());
  Params want(plain);
  want.Init(plain, 11);
  std::mt19937 rng(12);
  std::normal_distribution<float> normal;
  std::vector<float> x(8 * 13);
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> labels(8);
  for (int32_t r = 0; r < 8; ++r) labels[r] = (3 * r) % 4;
  const float want_loss = plain.ForwardBackward(
      want.View(), x.data(), labels.data(), 8, want.GradView());

  Mlp on_cpu(layers, 8, cpu.get());
  Mlp on_device(layers, 8, &device);  // The staged (device) path.
  for (Mlp* mlp : {&on_cpu, &on_device}) {
    Params p(*mlp);
    p.values = want.values;
    float loss = 0;
    std::vector<std::vector<float>> seen;
    const std::vector<int32_t> order =
        StepWithCallback(mlp, &p, x, labels, 8, &loss, &seen);
    CHECK(order == std::vector<int32_t>{4, 5, 2, 3, 0, 1});
    // Bitwise what ForwardBackward without a callback gives, both when
    // announced and on return.
    CHECK(loss == want_loss);
    CHECK(seen == want.grads);
    CHECK(p.grads == want.grads);
  }
  CHECK(device.foreign_pointers == 0);
}

TEST_CASE("Mlp: after a device failure every announced gradient is NaN",
          "[mlp]") {
  FakeDeviceBackend device;
  Mlp mlp({4, 3, 2}, 2, &device);
  Params p(mlp);
  p.Init(mlp, 1);
  const std::vector<float> x(8, 0.5f);
  const std::vector<int32_t> labels = {0, 1};
  device.fail_math = true;  // Fails at the first Gemm (forward).
  float loss = 0;
  std::vector<std::vector<float>> seen;
  const std::vector<int32_t> order =
      StepWithCallback(&mlp, &p, x, labels, 2, &loss, &seen);
  CHECK(std::isnan(loss));
  CHECK(order == std::vector<int32_t>{2, 3, 0, 1});
  for (const auto& g : seen) {
    REQUIRE(!g.empty());
    for (float v : g) CHECK(std::isnan(v));
  }
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
