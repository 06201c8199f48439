#include "worker/click_data.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/embedding_rows.h"

namespace psd {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/click_data_test_" +
         std::to_string(getpid()) + "_" + name;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

TEST_CASE("FeatureRow: SplitMix64Mix((field + 1) * 2^40 + value) mod rows",
          "[click_data]") {
  CHECK(FeatureRow(0, 5, 1000) ==
        SplitMix64Mix((uint64_t{1} << 40) + 5) % 1000);
  CHECK(FeatureRow(3, 0, 7) == SplitMix64Mix(uint64_t{4} << 40) % 7);
  CHECK(FeatureRow(2, 9, 1) == 0);
  // Pinned values, also checked by tests/bench/sparse_torch_baseline.py
  // --self_test (its Python hashing must agree).
  CHECK(FeatureRow(0, 5, 1000) == 922);
  CHECK(FeatureRow(3, 0, 7) == 1);
  CHECK(FeatureRow(25, 0x68fd1e65, 100000) == 35170);
  CHECK(FeatureRow(12, kMaxFeatureValue - 1, uint64_t{1} << 62) ==
        4412857768438550321ULL);
  CHECK(SplitMix64Mix(0) == 0xe220a8397b1dcdafULL);
  // Fields are in the key: the same value of two fields differs.
  CHECK(FeatureRow(0, 9, uint64_t{1} << 62) !=
        FeatureRow(1, 9, uint64_t{1} << 62));
}

TEST_CASE("GeneratePlantedClicks: a pure function of its options",
          "[click_data]") {
  PlantedClicksOptions o;
  o.fields = 5;
  o.dense = 3;
  o.train = 300;
  o.test = 200;
  o.seed = 7;
  auto a = GeneratePlantedClicks(o);
  auto b = GeneratePlantedClicks(o);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->train.values == b->train.values);
  CHECK(a->train.dense == b->train.dense);
  CHECK(a->test.labels == b->test.labels);
  CHECK(a->train.size == 300);
  CHECK(a->test.size == 200);
  CHECK(a->train.values.size() == 300 * 5);
  CHECK(a->train.dense.size() == 300 * 3);
  for (int64_t i = 0; i < 300; ++i) {
    for (int f = 0; f < 5; ++f) {
      const int vocab[5] = {20, 100, 500, 2000, 10000};
      CHECK(a->train.values[i * 5 + f] < static_cast<uint64_t>(vocab[f]));
    }
    for (int k = 0; k < 3; ++k) {
      const float x = a->train.dense[i * 3 + k];
      CHECK(x >= 0.0f);
      CHECK(x < 4.0f);
    }
  }
  // The test set is examples [train, train + test): a bigger training set
  // starts the test set later, and the first generated examples agree.
  o.train = 310;
  auto c = GeneratePlantedClicks(o);
  REQUIRE(c.ok());
  CHECK(std::equal(a->train.values.begin(), a->train.values.end(),
                   c->train.values.begin()));
  CHECK(std::equal(a->test.labels.begin() + 10, a->test.labels.end(),
                   c->test.labels.begin()));
  // Another seed, other data.
  o.seed = 8;
  auto d = GeneratePlantedClicks(o);
  REQUIRE(d.ok());
  CHECK(d->train.values != c->train.values);
}

TEST_CASE("GeneratePlantedClicks: labels follow the planted model",
          "[click_data]") {
  PlantedClicksOptions o;
  o.fields = 8;
  o.dense = 4;
  o.train = 0;
  o.test = 20000;
  o.seed = 3;
  auto data = GeneratePlantedClicks(o);
  REQUIRE(data.ok());
  // Calibration: the mean of sigmoid(planted logit) matches the label rate.
  double mean_p = 0, rate = 0;
  for (int64_t i = 0; i < o.test; ++i) {
    const double z = PlantedLogit(
        o, absl::MakeConstSpan(data->test.values.data() + i * 8, 8),
        absl::MakeConstSpan(data->test.dense.data() + i * 4, 4));
    mean_p += 1 / (1 + std::exp(-z));
    rate += data->test.labels[i];
  }
  CHECK(std::abs(mean_p - rate) / o.test < 0.015);
  // The planted model beats chance clearly.
  CHECK(data->bayes_auc > 0.7);
  CHECK(data->bayes_accuracy > data->majority_rate + 0.05);
  CHECK(data->bayes_log_loss < 0.6);
  // No signal: AUC near 0.5 and accuracy near the majority rate.
  o.planted_scale = 0;
  auto flat = GeneratePlantedClicks(o);
  REQUIRE(flat.ok());
  CHECK(std::abs(flat->bayes_auc - 0.5) < 1e-9);
  CHECK(std::abs(flat->bayes_log_loss - std::log(2.0)) < 1e-6);
}

TEST_CASE("GeneratePlantedClicks: bad options name the option",
          "[click_data]") {
  PlantedClicksOptions o;
  o.fields = 0;
  auto r = GeneratePlantedClicks(o);
  REQUIRE(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(r.status().message().find("fields") != absl::string_view::npos);
  o.fields = 2;
  o.dense = -1;
  CHECK(GeneratePlantedClicks(o).status().message().find("dense") == 0);
  o.dense = 0;
  o.train = -5;
  CHECK(GeneratePlantedClicks(o).status().message().find("train") == 0);
  o.train = 1000000000;
  o.test = 1000000000;
  CHECK(GeneratePlantedClicks(o).status().message().find("train, test") ==
        0);
  o.test = 0;
  o.train = 5;
  o.planted_scale = std::nanf("");
  CHECK(GeneratePlantedClicks(o).status().message().find("planted_scale") ==
        0);
}

TEST_CASE("ReadCriteoTsv: transforms, missing values and max_examples",
          "[click_data]") {
  const std::string path = TempPath("small.tsv");
  // 2 integer and 3 categorical columns.
  WriteFile(path,
            "1\t0\t7\t68fd1e64\t\t0a\n"
            "0\t-3\t\tffffffff\t80e26c9b\t\r\n"
            "\n"
            "1\t\t1\t\t\t1\n");
  auto data = ReadCriteoTsv(path, 0, 2, 3);
  REQUIRE(data.ok());
  REQUIRE(data->size == 3);
  CHECK(data->num_dense == 2);
  CHECK(data->num_fields == 3);
  CHECK(data->labels == std::vector<float>{1, 0, 1});
  CHECK(data->dense == std::vector<float>{0.0f, static_cast<float>(std::log1p(7.0)),
                                          0.0f, 0.0f, 0.0f,
                                          static_cast<float>(std::log1p(1.0))});
  CHECK(data->values == std::vector<uint64_t>{0x68fd1e65, 0, 11, 0x100000000,
                                              0x80e26c9c, 0, 0, 0, 2});
  auto first = ReadCriteoTsv(path, 2, 2, 3);
  REQUIRE(first.ok());
  CHECK(first->size == 2);
  CHECK(first->labels.size() == 2);
  std::remove(path.c_str());
}

TEST_CASE("ReadCriteoTsv: the default layout is 13 integer, 26 categorical",
          "[click_data]") {
  const std::string path = TempPath("criteo.tsv");
  std::string line = "0";
  for (int k = 0; k < 13; ++k) line += "\t" + std::to_string(k);
  for (int f = 0; f < 26; ++f) line += "\t05db9164";
  WriteFile(path, line + "\n" + line + "\n");
  auto data = ReadCriteoTsv(path, 0);
  REQUIRE(data.ok());
  CHECK(data->size == 2);
  CHECK(data->num_dense == 13);
  CHECK(data->num_fields == 26);
  CHECK(data->values[25] == 0x05db9165);
  CHECK(data->dense[12] == static_cast<float>(std::log1p(12.0)));
  std::remove(path.c_str());
}

TEST_CASE("ReadCriteoTsv: malformed lines name the file, line and column",
          "[click_data]") {
  const std::string path = TempPath("bad.tsv");
  struct Case {
    std::string second_line;
    std::string want;
  };
  const std::vector<Case> cases = {
      {"1\t2\t3\taa\tbb\n", ":2: column 6 (C3): missing: expected 6"},
      {"1\t2\t3\taa\tbb\tcc\tdd\n", ":2: column 7 (extra): unexpected"},
      {"2\t2\t3\taa\tbb\tcc\n", ":2: column 1 (label): must be 0 or 1"},
      {"yes\t2\t3\taa\tbb\tcc\n", ":2: column 1 (label)"},
      {"1\t2x\t3\taa\tbb\tcc\n", ":2: column 2 (I1): not an integer"},
      {"1\t2\t3\taa\tzz\tcc\n", ":2: column 5 (C2): not 1 to 10 hex"},
      {"1\t2\t3\taa\tbb\t0x1f\n", ":2: column 6 (C3)"},
      {"1\t2\t3\taa\tbb\t12345678901\n", ":2: column 6 (C3)"},
      {"1\t2\t3\taa\tbb\t-1\n", ":2: column 6 (C3)"},
  };
  for (const Case& c : cases) {
    WriteFile(path, "0\t1\t1\t1\t1\t1\n" + c.second_line);
    auto data = ReadCriteoTsv(path, 0, 2, 3);
    INFO(c.second_line);
    REQUIRE(data.status().code() == absl::StatusCode::kInvalidArgument);
    const std::string message(data.status().message());
    INFO(message);
    CHECK(message.find(path + c.want) == 0);
  }
  std::remove(path.c_str());
  auto missing = ReadCriteoTsv(path + ".missing", 0);
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK(missing.status().message().find(path + ".missing") == 0);
  CHECK(ReadCriteoTsv(path, 0, -1, 3).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(ReadCriteoTsv(path, 0, 2, 0).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("WriteCriteoTsv: generated data reads back the same",
          "[click_data]") {
  PlantedClicksOptions o;
  o.fields = 6;
  o.dense = 4;
  o.train = 500;
  o.test = 0;
  o.seed = 11;
  auto data = GeneratePlantedClicks(o);
  REQUIRE(data.ok());
  // Value 0 would read back as 0 ("missing") as well; shift them to show
  // the round trip of the hex encoding too.
  ClickData written = data->train;
  written.values[0] = 0;
  written.values[1] = kMaxFeatureValue - 1;
  const std::string path = TempPath("roundtrip.tsv");
  REQUIRE(WriteCriteoTsv(path, written).ok());
  auto read = ReadCriteoTsv(path, 0, 4, 6);
  REQUIRE(read.ok());
  CHECK(read->size == written.size);
  CHECK(read->values == written.values);
  CHECK(read->dense == written.dense);
  CHECK(read->labels == written.labels);
  std::remove(path.c_str());

  written.values[2] = kMaxFeatureValue;
  CHECK(WriteCriteoTsv(path, written).code() ==
        absl::StatusCode::kInvalidArgument);
  written.values.pop_back();
  CHECK(WriteCriteoTsv(path, written).code() ==
        absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
  CHECK(WriteCriteoTsv("/nonexistent-dir/x.tsv", data->train).code() ==
        absl::StatusCode::kInternal);
}

TEST_CASE("Metrics: log-loss, AUC with ties, accuracy", "[click_data]") {
  const std::vector<float> labels = {1, 0, 1, 0};
  CHECK(Auc(std::vector<float>{0.9f, 0.1f, 0.8f, 0.2f}, labels) == 1.0);
  CHECK(Auc(std::vector<float>{0.1f, 0.9f, 0.2f, 0.8f}, labels) == 0.0);
  CHECK(Auc(std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}, labels) == 0.5);
  // One tie between a positive and a negative: counts half.
  CHECK(Auc(std::vector<float>{0.9f, 0.3f, 0.3f, 0.2f}, labels) == 0.875);
  CHECK(Auc(std::vector<float>{0.9f, 0.3f}, std::vector<float>{1, 1}) == 0.5);
  CHECK(Auc(std::vector<float>{0.9f, std::nanf(""), 0.8f, std::nanf("")},
            labels) == 1.0);
  CHECK(LogLoss(std::vector<float>{0.5f, 0.5f}, std::vector<float>{1, 0}) ==
        Approx(std::log(2.0)));
  CHECK(LogLoss(std::vector<float>{1.0f}, std::vector<float>{0}) ==
        Approx(-std::log(1e-7)).epsilon(1e-6));
  CHECK(std::isfinite(LogLoss(std::vector<float>{0.0f}, std::vector<float>{1})));
  CHECK(Accuracy(std::vector<float>{0.9f, 0.6f, 0.4f, 0.5f}, labels) == 0.5);
  CHECK(LogLoss({}, {}) == 0);
  CHECK(Accuracy({}, {}) == 0);
}

}  // namespace
}  // namespace psd
