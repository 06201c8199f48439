// Example data of sparse models (issue 25): click-like examples with
// categorical fields and dense features, either GENERATED from a planted
// logistic model ("planted-clicks") or read from the Criteo Kaggle/Terabyte
// TSV format ("criteo"); the hashing of a field's value to a table row; and
// the binary-classification metrics (log-loss, AUC, accuracy).
//
// Pure functions and plain structs: thread-compatible (distinct objects may
// be used from distinct threads).
#ifndef PSD_WORKER_CLICK_DATA_H_
#define PSD_WORKER_CLICK_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace psd {

// A set of examples, row-major.
struct ClickData {
  // F: categorical fields per example.
  int32_t num_fields = 0;
  // D: dense features per example (0 = none).
  int32_t num_dense = 0;
  // N: examples.
  int64_t size = 0;
  // [N, F] raw categorical values, local to their field (field f's value v
  // and field g's value v are different features). 0 means "missing" in
  // data read from Criteo files (and is an ordinary value in generated
  // data). Every value is < 2^40 (FeatureRow).
  std::vector<uint64_t> values;
  // [N, D] dense features, already transformed (Criteo: log(1 + max(x, 0))).
  std::vector<float> dense;
  // [N] labels, 0 or 1.
  std::vector<float> labels;
};

// Largest categorical value + 1 (values are < 2^40).
inline constexpr uint64_t kMaxFeatureValue = uint64_t{1} << 40;

// The hashing trick (Weinberger et al., "Feature hashing for large scale
// multitask learning", ICML 2009): the row of field `field`'s value `value`
// in a table of `num_rows` rows is
//   SplitMix64Mix((field + 1) * 2^40 + value) mod num_rows
// (SplitMix64Mix: common/embedding_rows.h). The field is in the key, so
// fields sharing one table do not share rows for equal values (up to hash
// collisions). REQUIRES: 0 <= field < 2^23, value < 2^40, num_rows >= 1.
uint64_t FeatureRow(int32_t field, uint64_t value, uint64_t num_rows);

// Options of GeneratePlantedClicks.
struct PlantedClicksOptions {
  // F: categorical fields, in [1, 4096].
  int32_t fields = 8;
  // D: dense features, in [0, 4096].
  int32_t dense = 0;
  // Training and test examples, each in [0, 10^9].
  int64_t train = 0;
  int64_t test = 0;
  // Standard deviation of the planted weights; finite, in [0, 100]; 0:
  // no signal (every planted weight 0, labels fair coin flips).
  // Default: 0.8.
  float planted_scale = 0.8f;
  // Seed of everything (values, planted weights, labels).
  uint64_t seed = 1;
};

// A generated data set and the reference levels of its test set.
struct PlantedClicks {
  ClickData train, test;
  // On the test set, predicting with the planted model's true
  // probabilities: LogLoss, Auc, Accuracy (the Bayes levels, the best any
  // model can expect), and the majority class's rate (chance).
  double bayes_log_loss = 0;
  double bayes_auc = 0;
  double bayes_accuracy = 0;
  double majority_rate = 0;
};

// Generates click-like data with a known ground truth, a pure function of
// `options` (any worker regenerates the same data). Example i (train:
// i in [0, train), test: i in [train, train + test)), with
// Bits(s, i, c) = SplitMix64Mix(SplitMix64Mix(s ^ SplitMix64Mix(i)) + c)
// and Uniform(b) = (b >> 11) * 2^-53:
//   * categorical field f: value v = floor(vocab_f * u^2),
//     u = Uniform(Bits(seed, i, f)), a head-heavy (power-law-like)
//     distribution; vocab_f cycles through 20, 100, 500, 2000, 10000,
//     50000, 200, 5000;
//   * dense feature k: an integer count c = floor(exp(4 u) - 1),
//     u = Uniform(Bits(seed ^ 0xd1b54a32d192ed03, i, k)), c in [0, 53], and
//     the feature is log(1 + c) (float), the Criteo transform, so that
//     WriteCriteoTsv writes c and ReadCriteoTsv reads the same floats back;
//   * planted logit z = sum_f w(f, v_f) + sum_k u_k (x_k - 1.5), where
//     w(f, v) = InitialRowValue(NORMAL, scale planted_scale, seed seed + 1;
//     row SplitMix64Mix((f + 1) * 2^40 + v), column 0) and u_k =
//     InitialRowValue(NORMAL, scale planted_scale, seed seed + 2; row k,
//     column 0) (common/embedding_rows.h); 1.5 roughly centres x_k;
//   * label 1 with probability sigmoid(z): 1 iff
//     Uniform(SplitMix64Mix(seed * 31 + 7 + SplitMix64Mix(i))) < sigmoid(z).
// Errors: INVALID_ARGUMENT naming the option out of range, and for
// (train + test) * (fields + dense) > 10^9 (the data are held in memory).
absl::StatusOr<PlantedClicks> GeneratePlantedClicks(
    const PlantedClicksOptions& options);

// The planted model's logit of example i (as above) from its values and
// dense features; exposed for tests and tools.
double PlantedLogit(const PlantedClicksOptions& options,
                    absl::Span<const uint64_t> values,
                    absl::Span<const float> dense);

// Reads the Criteo Kaggle/Terabyte TSV format: one example per line,
//   label \t I1 .. I_num_dense \t C1 .. C_num_fields
// (Criteo: 13 integer and 26 categorical columns). label is 0 or 1; an
// integer column is a decimal int64 or empty (missing); a categorical
// column is 1 to 10 hexadecimal digits (Criteo: 8) or empty (missing).
// Transforms, as the DLRM reference code (facebookresearch/dlrm,
// data_utils.py): dense = log(1 + max(x, 0)), missing = 0; categorical
// value = the hex parsed as an unsigned integer, plus 1, missing = 0.
// A trailing '\r' and empty lines are skipped. max_examples > 0 reads only
// the first max_examples examples; 0 reads all.
// Errors: NOT_FOUND when the file cannot be opened; INVALID_ARGUMENT
// "PATH:LINE: column C (NAME): ..." for a malformed line (NAME: label,
// I1.., C1..; a line with too few columns names the first one missing, too
// many "extra"; bad label, integer or hex), and for num_dense or num_fields
// outside [0, 4096] (num_fields >= 1).
absl::StatusOr<ClickData> ReadCriteoTsv(const std::string& path,
                                        int64_t max_examples,
                                        int32_t num_dense = 13,
                                        int32_t num_fields = 26);

// Writes `data` in the layout ReadCriteoTsv reads (label, data.num_dense
// integer columns, data.num_fields categorical columns). A dense feature x
// is written as the integer round(exp(x) - 1) (0 for x <= 0), which reads
// back as exactly x when x came from ReadCriteoTsv or GeneratePlantedClicks
// (log(1 + c) of an integer c < 2^24); other floats read back rounded to
// the nearest log(1 + integer). A categorical value v is written as the
// lower-case hex of v - 1, at least 8 digits (empty for v = 0), so it reads
// back as v. Labels are written as 1 when > 0.5, else 0.
// Errors: INVALID_ARGUMENT for inconsistent sizes or a value >= 2^40,
// INTERNAL (naming the path) when the file cannot be written.
absl::Status WriteCriteoTsv(const std::string& path, const ClickData& data);

// Mean logistic loss -(y log p + (1 - y) log(1 - p)), p clamped to
// [1e-7, 1 - 1e-7]. 0 for no examples. REQUIRES: equal sizes.
double LogLoss(absl::Span<const float> probabilities,
               absl::Span<const float> labels);

// Area under the ROC curve, as the Mann-Whitney U statistic over the
// positives (label > 0.5) and negatives: U / (P * N), with tied scores
// given their average rank (so a constant scorer gets 0.5; NaN scores rank
// lowest, tied with each other). 0.5 when there
// are no positives or no negatives. REQUIRES: equal sizes.
double Auc(absl::Span<const float> scores, absl::Span<const float> labels);

// Fraction of examples where (probability > 0.5) == (label > 0.5). 0 for no
// examples. REQUIRES: equal sizes.
double Accuracy(absl::Span<const float> probabilities,
                absl::Span<const float> labels);

}  // namespace psd

#endif  // PSD_WORKER_CLICK_DATA_H_
