#include "worker/click_data.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/embedding_rows.h"

namespace psd {
namespace {

constexpr int kVocab[8] = {20, 100, 500, 2000, 10000, 50000, 200, 5000};
constexpr int32_t kMaxColumns = 4096;

uint64_t Bits(uint64_t seed, int64_t i, int64_t c) {
  return SplitMix64Mix(SplitMix64Mix(seed ^ SplitMix64Mix(i)) +
                       static_cast<uint64_t>(c));
}

double Uniform(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

EmbeddingInitializer Normal(float scale, uint64_t seed) {
  EmbeddingInitializer init;
  init.set_kind(EmbeddingInitializer::NORMAL);
  init.set_scale(scale);
  init.set_seed(seed);
  return init;
}

// Fills example i (global index) of the planted data into row r of *data.
void GenerateExample(const PlantedClicksOptions& o, int64_t i, int64_t r,
                     ClickData* data, double* probability) {
  uint64_t* values = data->values.data() + r * o.fields;
  float* dense = data->dense.data() + r * o.dense;
  for (int32_t f = 0; f < o.fields; ++f) {
    const double u = Uniform(Bits(o.seed, i, f));
    values[f] = static_cast<uint64_t>(kVocab[f % 8] * u * u);
  }
  for (int32_t k = 0; k < o.dense; ++k) {
    const double u = Uniform(Bits(o.seed ^ 0xd1b54a32d192ed03ULL, i, k));
    const double c = std::floor(std::exp(4.0 * u) - 1.0);
    dense[k] = static_cast<float>(std::log1p(std::max(c, 0.0)));
  }
  const double z = PlantedLogit(o, absl::MakeConstSpan(values, o.fields),
                                absl::MakeConstSpan(dense, o.dense));
  const double p = 1.0 / (1.0 + std::exp(-z));
  const double u = Uniform(SplitMix64Mix(o.seed * 31 + 7 + SplitMix64Mix(i)));
  data->labels[r] = u < p ? 1.0f : 0.0f;
  *probability = p;
}

// The name of 1-based column c of a line of D integer columns.
std::string ColumnName(int c, int32_t num_dense) {
  if (c == 1) return "label";
  if (c <= 1 + num_dense) return absl::StrCat("I", c - 1);
  return absl::StrCat("C", c - 1 - num_dense);
}

absl::Status Malformed(const std::string& path, int64_t line, int column,
                       absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      path, ":", line, ": column ", column, " (", name, "): ", what));
}

}  // namespace

uint64_t FeatureRow(int32_t field, uint64_t value, uint64_t num_rows) {
  return SplitMix64Mix((static_cast<uint64_t>(field) + 1) * kMaxFeatureValue +
                       value) %
         num_rows;
}

double PlantedLogit(const PlantedClicksOptions& options,
                    absl::Span<const uint64_t> values,
                    absl::Span<const float> dense) {
  if (options.planted_scale == 0) return 0;  // (scale 0 means 1/sqrt(dim))
  const EmbeddingInitializer categorical =
      Normal(options.planted_scale, options.seed + 1);
  const EmbeddingInitializer numeric =
      Normal(options.planted_scale, options.seed + 2);
  double z = 0;
  for (size_t f = 0; f < values.size(); ++f) {
    const uint64_t key = SplitMix64Mix((static_cast<uint64_t>(f) + 1) *
                                           kMaxFeatureValue +
                                       values[f]);
    z += InitialRowValue(categorical, 1, key, 0);
  }
  for (size_t k = 0; k < dense.size(); ++k) {
    z += InitialRowValue(numeric, 1, k, 0) * (dense[k] - 1.5);
  }
  return z;
}

absl::StatusOr<PlantedClicks> GeneratePlantedClicks(
    const PlantedClicksOptions& o) {
  if (o.fields < 1 || o.fields > kMaxColumns) {
    return absl::InvalidArgumentError(
        absl::StrCat("fields: must be in [1, 4096], got ", o.fields));
  }
  if (o.dense < 0 || o.dense > kMaxColumns) {
    return absl::InvalidArgumentError(
        absl::StrCat("dense: must be in [0, 4096], got ", o.dense));
  }
  if (o.train < 0 || o.train > 1000000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("train: must be in [0, 10^9], got ", o.train));
  }
  if (o.test < 0 || o.test > 1000000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("test: must be in [0, 10^9], got ", o.test));
  }
  if (!std::isfinite(o.planted_scale) || o.planted_scale < 0 ||
      o.planted_scale > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "planted_scale: must be finite and in [0, 100], got ", o.planted_scale));
  }
  // (train + test) * (fields + dense) values are held in memory.
  if (static_cast<double>(o.train + o.test) * (o.fields + o.dense) > 1e9) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train, test: (train + test) * (fields + dense) must be at most 10^9 "
        "(values held in memory), got (",
        o.train, " + ", o.test, ") * (", o.fields, " + ", o.dense, ")"));
  }
  PlantedClicks out;
  std::vector<float> test_p(o.test);
  for (ClickData* d : {&out.train, &out.test}) {
    d->num_fields = o.fields;
    d->num_dense = o.dense;
    d->size = d == &out.train ? o.train : o.test;
    d->values.resize(d->size * o.fields);
    d->dense.resize(d->size * o.dense);
    d->labels.resize(d->size);
  }
  double p = 0;
  for (int64_t i = 0; i < o.train; ++i) {
    GenerateExample(o, i, i, &out.train, &p);
  }
  for (int64_t r = 0; r < o.test; ++r) {
    GenerateExample(o, o.train + r, r, &out.test, &p);
    test_p[r] = static_cast<float>(p);
  }
  out.bayes_log_loss = LogLoss(test_p, out.test.labels);
  out.bayes_auc = Auc(test_p, out.test.labels);
  out.bayes_accuracy = Accuracy(test_p, out.test.labels);
  const double positives =
      std::accumulate(out.test.labels.begin(), out.test.labels.end(), 0.0);
  out.majority_rate =
      o.test > 0 ? std::max(positives, o.test - positives) / o.test : 0.0;
  return out;
}

absl::StatusOr<ClickData> ReadCriteoTsv(const std::string& path,
                                        int64_t max_examples,
                                        int32_t num_dense,
                                        int32_t num_fields) {
  if (num_dense < 0 || num_dense > kMaxColumns) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_dense: must be in [0, 4096], got ", num_dense));
  }
  if (num_fields < 1 || num_fields > kMaxColumns) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_fields: must be in [1, 4096], got ", num_fields));
  }
  if (max_examples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_examples: must be >= 0, got ", max_examples));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  ClickData data;
  data.num_dense = num_dense;
  data.num_fields = num_fields;
  const size_t columns = 1 + num_dense + num_fields;
  std::string line;
  std::vector<absl::string_view> cells;
  int64_t line_number = 0;
  while ((max_examples == 0 || data.size < max_examples) &&
         std::getline(in, line)) {
    ++line_number;
    absl::string_view text = line;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.empty()) continue;
    cells = absl::StrSplit(text, '\t');
    if (cells.size() != columns) {
      const bool few = cells.size() < columns;
      const int column =
          static_cast<int>(few ? cells.size() + 1 : columns + 1);
      return Malformed(path, line_number, column,
                       few ? ColumnName(column, num_dense) : "extra",
                       absl::StrCat(few ? "missing" : "unexpected",
                                    ": expected ", columns,
                                    " tab-separated columns (label, ",
                                    num_dense, " integer, ", num_fields,
                                    " categorical), got ", cells.size()));
    }
    if (cells[0] != "0" && cells[0] != "1") {
      return Malformed(path, line_number, 1, "label",
                       absl::StrCat("must be 0 or 1, got \"",
                                    cells[0].substr(0, 32), "\""));
    }
    data.labels.push_back(cells[0] == "1" ? 1.0f : 0.0f);
    for (int32_t k = 0; k < num_dense; ++k) {
      const absl::string_view cell = cells[1 + k];
      int64_t x = 0;
      if (!cell.empty() && !absl::SimpleAtoi(cell, &x)) {
        return Malformed(path, line_number, 2 + k, absl::StrCat("I", k + 1),
                         absl::StrCat("not an integer: \"", cell.substr(0, 32),
                                      "\""));
      }
      data.dense.push_back(
          static_cast<float>(std::log1p(static_cast<double>(std::max<int64_t>(x, 0)))));
    }
    for (int32_t f = 0; f < num_fields; ++f) {
      const absl::string_view cell = cells[1 + num_dense + f];
      uint64_t v = 0;
      if (!cell.empty()) {
        bool ok = cell.size() <= 10;
        for (char c : cell) ok = ok && std::isxdigit(static_cast<unsigned char>(c));
        if (ok) ok = absl::SimpleHexAtoi(cell, &v);
        if (!ok || v + 1 >= kMaxFeatureValue) {
          return Malformed(
              path, line_number, 2 + num_dense + f, absl::StrCat("C", f + 1),
              absl::StrCat("not 1 to 10 hex digits below ffffffffff: \"",
                           cell.substr(0, 32), "\""));
        }
        ++v;
      }
      data.values.push_back(v);
    }
    ++data.size;
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": read error after line ",
                                            line_number));
  }
  return data;
}

absl::Status WriteCriteoTsv(const std::string& path, const ClickData& data) {
  if (data.num_fields < 0 || data.num_dense < 0 || data.size < 0 ||
      data.values.size() != static_cast<size_t>(data.size) * data.num_fields ||
      data.dense.size() != static_cast<size_t>(data.size) * data.num_dense ||
      data.labels.size() != static_cast<size_t>(data.size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data: inconsistent sizes (size ", data.size, ", num_fields ",
        data.num_fields, ", num_dense ", data.num_dense, "; values ",
        data.values.size(), ", dense ", data.dense.size(), ", labels ",
        data.labels.size(), ")"));
  }
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) {
    return absl::InternalError(
        absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  std::string line;
  absl::Status status;
  for (int64_t i = 0; i < data.size && status.ok(); ++i) {
    line.clear();
    line += data.labels[i] > 0.5f ? '1' : '0';
    for (int32_t k = 0; k < data.num_dense; ++k) {
      const float x = data.dense[i * data.num_dense + k];
      const double c = x > 0 ? std::round(std::expm1(static_cast<double>(x)))
                             : 0.0;
      absl::StrAppend(&line, "\t",
                      static_cast<int64_t>(std::min(c, 9.0e18)));
    }
    for (int32_t f = 0; f < data.num_fields; ++f) {
      const uint64_t v = data.values[i * data.num_fields + f];
      if (v >= kMaxFeatureValue) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "data.values[", i, ", ", f, "]: must be < 2^40, got ", v));
        break;
      }
      line += '\t';
      if (v > 0) absl::StrAppendFormat(&line, "%08x", v - 1);
    }
    line += '\n';
    if (std::fwrite(line.data(), 1, line.size(), out) != line.size()) {
      status = absl::InternalError(
          absl::StrCat(path, ": write failed: ", std::strerror(errno)));
    }
  }
  if (std::fclose(out) != 0 && status.ok()) {
    status = absl::InternalError(
        absl::StrCat(path, ": close failed: ", std::strerror(errno)));
  }
  return status;
}

double LogLoss(absl::Span<const float> probabilities,
               absl::Span<const float> labels) {
  if (probabilities.empty()) return 0;
  constexpr double kEps = 1e-7;
  double sum = 0;
  for (size_t i = 0; i < probabilities.size(); ++i) {
    const double p = std::clamp<double>(probabilities[i], kEps, 1 - kEps);
    sum -= labels[i] > 0.5f ? std::log(p) : std::log1p(-p);
  }
  return sum / static_cast<double>(probabilities.size());
}

double Auc(absl::Span<const float> scores, absl::Span<const float> labels) {
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // NaN scores rank lowest (and tie with each other), so the order is a
  // strict weak ordering.
  auto key = [&](size_t i) {
    return std::isnan(scores[i]) ? -std::numeric_limits<float>::infinity()
                                 : scores[i];
  };
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return key(a) < key(b); });
  double positive_rank_sum = 0;
  double positives = 0;
  for (size_t start = 0; start < n;) {
    size_t end = start + 1;
    while (end < n && key(order[end]) == key(order[start])) ++end;
    // Ranks start + 1 .. end (1-based) share their average.
    const double rank = 0.5 * (static_cast<double>(start + 1) + end);
    for (size_t j = start; j < end; ++j) {
      if (labels[order[j]] > 0.5f) {
        positive_rank_sum += rank;
        positives += 1;
      }
    }
    start = end;
  }
  const double negatives = static_cast<double>(n) - positives;
  if (positives == 0 || negatives == 0) return 0.5;
  return (positive_rank_sum - positives * (positives + 1) / 2) /
         (positives * negatives);
}

double Accuracy(absl::Span<const float> probabilities,
                absl::Span<const float> labels) {
  if (probabilities.empty()) return 0;
  double correct = 0;
  for (size_t i = 0; i < probabilities.size(); ++i) {
    correct += (probabilities[i] > 0.5f) == (labels[i] > 0.5f) ? 1 : 0;
  }
  return correct / static_cast<double>(probabilities.size());
}

}  // namespace psd
