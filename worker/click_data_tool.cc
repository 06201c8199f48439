// click_data_tool: writes a planted-clicks data set (worker/click_data.h,
// GeneratePlantedClicks) as Criteo-format TSV files, OUT_DIR/train.tsv and
// OUT_DIR/test.tsv (label, --dense integer columns, --fields categorical
// columns; WriteCriteoTsv), for tests and for baselines outside psd (e.g.
// tests/bench/sparse_torch_baseline.py). Prints one JSON line with the
// sizes and the test set's Bayes levels (the planted model's log-loss,
// AUC and accuracy) and the majority class's rate.
//
// Exit status: 0 on success, 1 when a file cannot be written, 2 for bad
// flags.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "worker/click_data.h"

ABSL_FLAG(int, fields, 8, "Categorical fields per example, in [1, 4096].");
ABSL_FLAG(int, dense, 0, "Dense (integer) features per example, [0, 4096].");
ABSL_FLAG(int64_t, train, 100000, "Training examples.");
ABSL_FLAG(int64_t, test, 10000, "Test examples.");
ABSL_FLAG(double, planted_scale, 0.8,
          "Standard deviation of the planted weights (0: no signal).");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the data.");
ABSL_FLAG(std::string, out_dir, "",
          "Directory to write train.tsv and test.tsv to (required; must "
          "exist).");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes generated click data (a planted logistic model) as Criteo TSV.\n"
      "  click_data_tool --out_dir=DIR [--fields=8] [--dense=0]\n"
      "    [--train=100000] [--test=10000] [--planted_scale=0.8] [--seed=1]");
  absl::ParseCommandLine(argc, argv);
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (out_dir.empty()) {
    std::fprintf(stderr, "click_data_tool: --out_dir is required\n");
    return 2;
  }
  psd::PlantedClicksOptions options;
  options.fields = absl::GetFlag(FLAGS_fields);
  options.dense = absl::GetFlag(FLAGS_dense);
  options.train = absl::GetFlag(FLAGS_train);
  options.test = absl::GetFlag(FLAGS_test);
  options.planted_scale = static_cast<float>(absl::GetFlag(FLAGS_planted_scale));
  options.seed = absl::GetFlag(FLAGS_seed);
  auto data = psd::GeneratePlantedClicks(options);
  if (!data.ok()) {
    std::fprintf(stderr, "click_data_tool: --%s\n",
                 std::string(data.status().message()).c_str());
    return 2;
  }
  for (const auto& [name, set] :
       {std::pair<const char*, const psd::ClickData*>{"train.tsv", &data->train},
        {"test.tsv", &data->test}}) {
    const absl::Status s = psd::WriteCriteoTsv(out_dir + "/" + name, *set);
    if (!s.ok()) {
      std::fprintf(stderr, "click_data_tool: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  std::printf(
      "{\"train\": %lld, \"test\": %lld, \"fields\": %d, \"dense\": %d, "
      "\"bayes_log_loss\": %.6f, \"bayes_auc\": %.6f, "
      "\"bayes_accuracy\": %.6f, \"majority_rate\": %.6f}\n",
      static_cast<long long>(options.train),
      static_cast<long long>(options.test), options.fields, options.dense,
      data->bayes_log_loss, data->bayes_auc, data->bayes_accuracy,
      data->majority_rate);
  return 0;
}
