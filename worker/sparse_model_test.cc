#include "worker/sparse_model.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/placement.h"
#include "common/sparse_model_spec.h"
#include "worker/click_data.h"

namespace psd {
namespace {

ModelSpec SparseLrSpec(int fields) {
  ModelSpec m;
  m.set_kind(ModelSpec::SPARSE_LR);
  EmbeddingTableSpec* t = m.add_tables();
  t->set_name("w");
  t->set_num_rows(1000);
  t->set_dim(1);
  for (int f = 0; f < fields; ++f) {
    SparseField* field = m.add_fields();
    field->set_name("f" + std::to_string(f));
    field->set_table("w");
  }
  return m;
}

ModelSpec DlrmSpec(int fields, int dense, std::vector<int> bottom,
                   std::vector<int> top) {
  ModelSpec m;
  m.set_kind(ModelSpec::DLRM);
  m.set_num_dense_features(dense);
  for (int w : bottom) m.add_bottom_mlp(w);
  for (int w : top) m.add_top_mlp(w);
  // Two tables, fields alternating between them.
  for (const char* name : {"a", "b"}) {
    EmbeddingTableSpec* t = m.add_tables();
    t->set_name(name);
    t->set_num_rows(1000);
    t->set_dim(bottom.back());
  }
  for (int f = 0; f < fields; ++f) {
    SparseField* field = m.add_fields();
    field->set_name("f" + std::to_string(f));
    field->set_table(f % 2 == 0 ? "a" : "b");
  }
  return m;
}

std::vector<float> Random(std::mt19937* rng, size_t n, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = u(*rng);
  return v;
}

template <typename T>
std::vector<const T*> ConstPointers(std::vector<std::vector<T>>& v) {
  std::vector<const T*> out;
  for (auto& x : v) out.push_back(x.data());
  return out;
}
template <typename T>
std::vector<T*> Pointers(std::vector<std::vector<T>>& v) {
  std::vector<T*> out;
  for (auto& x : v) out.push_back(x.data());
  return out;
}

// Central finite differences of the mean loss (float32 model: epsilon
// 1e-3, and a tolerance of 3e-4 + 2% for the cancellation error of about
// 1e-7 * loss / epsilon and the curvature) against the analytic gradients,
// for every dense parameter element and every field row element.
void CheckGradients(const ModelSpec& spec, int batch, uint64_t seed) {
  auto model = SparseModel::Create(spec, batch);
  REQUIRE(model.ok());
  SparseModel& m = **model;
  std::mt19937 rng(seed);
  std::vector<std::vector<float>> params, grads;
  for (const ParameterSpec& p : m.DenseParameters()) {
    // Random biases too, so that no ReLU input sits at 0.
    params.push_back(Random(&rng, NumElements(p), 0.8f));
    grads.emplace_back(NumElements(p));
  }
  std::vector<float> dense =
      Random(&rng, static_cast<size_t>(batch) * m.num_dense(), 1.0f);
  std::vector<std::vector<float>> rows, row_grads;
  for (int f = 0; f < m.num_fields(); ++f) {
    rows.push_back(Random(&rng, static_cast<size_t>(batch) * m.field_dim(), 1.0f));
    row_grads.emplace_back(rows.back().size());
  }
  std::vector<float> labels(batch);
  for (int b = 0; b < batch; ++b) labels[b] = b % 3 == 0 ? 1.0f : 0.0f;

  const float loss = m.ForwardBackward(
      ConstPointers(params), dense.empty() ? nullptr : dense.data(),
      ConstPointers(rows), labels.data(), batch, Pointers(grads),
      Pointers(row_grads));
  REQUIRE(std::isfinite(loss));
  // The loss is the mean logistic loss of the probabilities Predict gives.
  std::vector<float> p(batch);
  m.Predict(ConstPointers(params), dense.empty() ? nullptr : dense.data(),
            ConstPointers(rows), batch, p.data());
  CHECK(loss == Approx(LogLoss(p, labels)).epsilon(1e-4));

  std::vector<std::vector<float>> scratch = grads, scratch_rows = row_grads;
  auto loss_now = [&] {
    return double{m.ForwardBackward(
        ConstPointers(params), dense.empty() ? nullptr : dense.data(),
        ConstPointers(rows), labels.data(), batch, Pointers(scratch),
        Pointers(scratch_rows))};
  };
  const float eps = 1e-3f;
  int checked = 0;
  auto check = [&](float* x, float analytic, const std::string& what) {
    const float saved = *x;
    *x = saved + eps;
    const double up = loss_now();
    *x = saved - eps;
    const double down = loss_now();
    *x = saved;
    const double numeric = (up - down) / (2.0 * eps);
    INFO(what << ": numeric " << numeric << ", analytic " << analytic);
    CHECK(std::abs(numeric - analytic) <= 3e-4 + 0.02 * std::abs(analytic));
    ++checked;
  };
  const std::vector<ParameterSpec> specs = m.DenseParameters();
  for (size_t i = 0; i < params.size(); ++i) {
    for (size_t j = 0; j < params[i].size(); ++j) {
      check(&params[i][j], grads[i][j],
            specs[i].name() + "[" + std::to_string(j) + "]");
    }
  }
  for (size_t f = 0; f < rows.size(); ++f) {
    for (size_t j = 0; j < rows[f].size(); ++j) {
      check(&rows[f][j], row_grads[f][j],
            "field " + std::to_string(f) + " row element " + std::to_string(j));
    }
  }
  CHECK(checked > 0);
}

TEST_CASE("SparseModelParameters: names and shapes of both kinds",
          "[sparse_model]") {
  const std::vector<ParameterSpec> lr = SparseModelParameters(SparseLrSpec(3));
  REQUIRE(lr.size() == 1);
  CHECK(lr[0].name() == "bias");
  CHECK(lr[0].shape().size() == 1);
  CHECK(lr[0].shape(0) == 1);

  // F = 3 fields: (F + 1) F / 2 = 6 dots; top input 4 + 6 = 10.
  const ModelSpec spec = DlrmSpec(3, 13, {8, 4}, {5});
  const std::vector<ParameterSpec> p = SparseModelParameters(spec);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"bottom0.weight", {13, 8}}, {"bottom0.bias", {8}},
      {"bottom1.weight", {8, 4}},  {"bottom1.bias", {4}},
      {"top0.weight", {10, 5}},    {"top0.bias", {5}},
      {"top1.weight", {5, 1}},     {"top1.bias", {1}}};
  REQUIRE(p.size() == want.size());
  for (size_t i = 0; i < p.size(); ++i) {
    CHECK(p[i].name() == want[i].first);
    CHECK(std::vector<int64_t>(p[i].shape().begin(), p[i].shape().end()) ==
          want[i].second);
  }
  auto model = SparseModel::Create(spec, 8);
  REQUIRE(model.ok());
  CHECK((*model)->DenseParameters().size() == p.size());
  CHECK((*model)->field_dim() == 4);
  CHECK((*model)->num_dense() == 13);
  CHECK((*model)->num_fields() == 3);
  CHECK(SparseModelParameters(ModelSpec()).empty());
}

TEST_CASE("SparseModel::Create: a bad spec names the field",
          "[sparse_model]") {
  struct Case {
    ModelSpec spec;
    std::string field;
  };
  std::vector<Case> cases;
  {
    ModelSpec m = SparseLrSpec(2);
    m.set_kind(ModelSpec::MLP);
    cases.push_back({m, "model.kind"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    m.mutable_tables(0)->set_dim(4);
    cases.push_back({m, "model.tables[0].dim"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    m.mutable_fields(1)->set_table("nope");
    cases.push_back({m, "model.fields[1].table"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    m.clear_fields();
    cases.push_back({m, "model.fields"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    m.clear_tables();
    cases.push_back({m, "model.tables"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    m.set_num_dense_features(3);
    cases.push_back({m, "model.num_dense_features"});
  }
  {
    ModelSpec m = SparseLrSpec(2);
    *m.add_tables() = m.tables(0);
    cases.push_back({m, "model.tables[1].name"});
  }
  {
    ModelSpec m = DlrmSpec(2, 3, {4, 2}, {});
    m.mutable_tables(1)->set_dim(3);
    cases.push_back({m, "model.tables[1].dim"});
  }
  {
    ModelSpec m = DlrmSpec(2, 3, {4, 2}, {});
    m.set_num_dense_features(0);
    cases.push_back({m, "model.num_dense_features"});
  }
  {
    ModelSpec m = DlrmSpec(2, 3, {4, 2}, {0});
    cases.push_back({m, "model.top_mlp[0]"});
  }
  {
    ModelSpec m = DlrmSpec(2, 3, {4, 2}, {});
    m.clear_bottom_mlp();
    cases.push_back({m, "model.bottom_mlp"});
  }
  for (const Case& c : cases) {
    auto model = SparseModel::Create(c.spec, 16);
    INFO(c.field << ": " << model.status().ToString());
    REQUIRE(model.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(model.status().message().find(c.field + ":") == 0);
  }
  CHECK(SparseModel::Create(SparseLrSpec(2), 0).status().code() ==
        absl::StatusCode::kInvalidArgument);
  // 256 fields: 32896 dots per example; 2^20 examples need far over 1 GiB.
  auto huge = SparseModel::Create(DlrmSpec(256, 4, {4}, {}), 1 << 20);
  CHECK(huge.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(huge.status().message().find("max_batch:") == 0);
}

TEST_CASE("SparseModel: SPARSE_LR gradients match finite differences",
          "[sparse_model]") {
  CheckGradients(SparseLrSpec(4), 5, 1);
  // Exact: logit = bias + sum of the rows.
  auto model = SparseModel::Create(SparseLrSpec(2), 2);
  REQUIRE(model.ok());
  const float bias = 0.5f;
  const std::vector<float> r0 = {1.0f, -2.0f}, r1 = {0.25f, 0.0f};
  std::vector<float> p(2);
  (*model)->Predict({&bias}, nullptr, {r0.data(), r1.data()}, 2, p.data());
  CHECK(p[0] == Approx(1 / (1 + std::exp(-1.75))));
  CHECK(p[1] == Approx(1 / (1 + std::exp(1.5))));
}

TEST_CASE("SparseModel: DLRM gradients match finite differences",
          "[sparse_model]") {
  CheckGradients(DlrmSpec(3, 4, {5, 3}, {6, 4}), 6, 2);
  CheckGradients(DlrmSpec(1, 2, {2}, {}), 3, 3);
  // A batch bigger than max_batch grows the buffers.
  CheckGradients(DlrmSpec(4, 3, {3}, {2}), 9, 4);
}

TEST_CASE("SparseModel: DLRM forward by hand (pins the dot order)",
          "[sparse_model]") {
  // D = 1, bottom [2], no top hidden layer, F = 2 fields of d = 2.
  auto model = SparseModel::Create(DlrmSpec(2, 1, {2}, {}), 1);
  REQUIRE(model.ok());
  const std::vector<float> w0 = {1.0f, -1.0f}, b0 = {0.5f, 0.5f};
  // Top input [z0 (2), dots (3)] -> logit.
  const std::vector<float> w1 = {0.1f, 0.2f, -0.3f, 0.1f, 0.5f};
  const float b1 = 0.25f;
  const float x = 2.0f;
  const std::vector<float> e1 = {1.0f, 2.0f}, e2 = {3.0f, -1.0f};
  // z0 = ReLU([2.5, -1.5]) = [2.5, 0]; dots (1,0) e1.z0 = 2.5,
  // (2,0) e2.z0 = 7.5, (2,1) e2.e1 = 1; logit = 0.25 + 0.25 + 0
  // - 0.75 + 0.75 + 0.5 = 1.
  float p = 0;
  (*model)->Predict({w0.data(), b0.data(), w1.data(), &b1}, &x,
                    {e1.data(), e2.data()}, 1, &p);
  CHECK(p == Approx(1 / (1 + std::exp(-1.0))));
}

TEST_CASE("SparseModel: the loss is stable for large logits",
          "[sparse_model]") {
  auto model = SparseModel::Create(SparseLrSpec(1), 2);
  REQUIRE(model.ok());
  const float bias = 0;
  const std::vector<float> rows = {200.0f, -200.0f};
  const std::vector<float> labels = {0.0f, 0.0f};
  float bias_grad = 0;
  std::vector<float> row_grads(2);
  const float loss = (*model)->ForwardBackward(
      {&bias}, nullptr, {rows.data()}, labels.data(), 2, {&bias_grad},
      {row_grads.data()});
  CHECK(loss == Approx(100.0f));
  CHECK(row_grads[0] == Approx(0.5f));
  CHECK(row_grads[1] == Approx(0.0f).margin(1e-30));
}

// Plain SGD on generated data, rows of one hashed table per model held
// here: the test log-loss goes down.
double TrainAndEvaluate(const ModelSpec& spec, const PlantedClicks& data,
                        int epochs, float lr, double* untrained) {
  const int batch = 64;
  auto created = SparseModel::Create(spec, batch);
  REQUIRE(created.ok());
  SparseModel& m = **created;
  const uint64_t num_rows = 4096;
  const int d = m.field_dim();
  const int nf = m.num_fields();
  std::vector<std::vector<float>> params, grads;
  const std::vector<ParameterSpec> specs = m.DenseParameters();
  for (size_t i = 0; i < specs.size(); ++i) {
    params.push_back(InitialValues(specs[i], static_cast<int32_t>(i), 5));
    grads.emplace_back(params.back().size());
  }
  // One table for all fields (the fields are in the hash key).
  std::vector<float> table(num_rows * d);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  for (float& x : table) x = spec.kind() == ModelSpec::DLRM ? u(rng) : 0.0f;

  std::vector<std::vector<float>> rows(nf), row_grads(nf);
  std::vector<uint64_t> ids;
  auto gather = [&](const ClickData& set, int64_t first, int n) {
    ids.resize(static_cast<size_t>(n) * nf);
    for (int f = 0; f < nf; ++f) {
      rows[f].resize(static_cast<size_t>(n) * d);
      row_grads[f].resize(rows[f].size());
      for (int b = 0; b < n; ++b) {
        const uint64_t id =
            FeatureRow(f, set.values[(first + b) * nf + f], num_rows);
        ids[b * nf + f] = id;
        std::copy(table.begin() + id * d, table.begin() + (id + 1) * d,
                  rows[f].begin() + b * d);
      }
    }
  };
  auto evaluate = [&] {
    std::vector<float> p(data.test.size);
    for (int64_t first = 0; first < data.test.size; first += batch) {
      const int n = static_cast<int>(std::min<int64_t>(batch, data.test.size - first));
      gather(data.test, first, n);
      m.Predict(ConstPointers(params),
                m.num_dense() > 0 ? data.test.dense.data() + first * m.num_dense()
                                  : nullptr,
                ConstPointers(rows), n, p.data() + first);
    }
    return LogLoss(p, data.test.labels);
  };
  *untrained = evaluate();
  for (int epoch = 0; epoch < epochs; ++epoch) {
    for (int64_t first = 0; first + batch <= data.train.size; first += batch) {
      gather(data.train, first, batch);
      const float loss = m.ForwardBackward(
          ConstPointers(params),
          m.num_dense() > 0 ? data.train.dense.data() + first * m.num_dense()
                            : nullptr,
          ConstPointers(rows), data.train.labels.data() + first, batch,
          Pointers(grads), Pointers(row_grads));
      REQUIRE(std::isfinite(loss));
      for (size_t i = 0; i < params.size(); ++i) {
        for (size_t j = 0; j < params[i].size(); ++j) {
          params[i][j] -= lr * grads[i][j];
        }
      }
      // Row gradients are of the mean loss; scale by the batch, as a
      // per-example rate suits rarely seen rows.
      for (int f = 0; f < nf; ++f) {
        for (int b = 0; b < batch; ++b) {
          float* row = table.data() + ids[b * nf + f] * d;
          for (int c = 0; c < d; ++c) {
            row[c] -= lr * batch * 0.1f * row_grads[f][b * d + c];
          }
        }
      }
    }
  }
  return evaluate();
}

TEST_CASE("SparseModel: SGD on planted clicks lowers the test log-loss",
          "[sparse_model]") {
  PlantedClicksOptions o;
  o.fields = 4;
  o.dense = 3;
  o.train = 8000;
  o.test = 2000;
  o.seed = 21;
  auto data = GeneratePlantedClicks(o);
  REQUIRE(data.ok());
  double untrained = 0;
  const double lr_loss =
      TrainAndEvaluate(SparseLrSpec(4), *data, 3, 0.5f, &untrained);
  INFO("SPARSE_LR: " << untrained << " -> " << lr_loss << " (Bayes "
                     << data->bayes_log_loss << ")");
  CHECK(lr_loss < untrained - 0.02);
  const double dlrm_loss = TrainAndEvaluate(DlrmSpec(4, 3, {8, 4}, {8}),
                                            *data, 3, 0.5f, &untrained);
  INFO("DLRM: " << untrained << " -> " << dlrm_loss);
  CHECK(dlrm_loss < untrained - 0.02);
}

}  // namespace
}  // namespace psd
