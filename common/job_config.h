// Loading, defaulting and validating a job config (proto/job.proto).
#ifndef PSD_COMMON_JOB_CONFIG_H_
#define PSD_COMMON_JOB_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

// Bounds of a job, so that one submission cannot take the cluster (or the
// coordinator's memory and logs) for itself. ValidateJobConfig refuses a
// config past any of them with INVALID_ARGUMENT naming the field.
// JobConfig.name: 1 to 128 characters of [A-Za-z0-9_-].
inline constexpr size_t kMaxJobNameLength = 128;
// A job id is "<name>-<n>" with n a decimal int64: at most 148 characters.
inline constexpr size_t kMaxJobIdLength = kMaxJobNameLength + 20;
// JobConfig.epochs: 1 to 10000.
inline constexpr int32_t kMaxEpochs = 10000;
// Training steps of each rank, epochs x StepsPerEpoch: at most 10 million.
inline constexpr int64_t kMaxTotalSteps = 10'000'000;
// ModelSpec.hidden_sizes: at most 64 layers, each 1 to 65536 wide.
inline constexpr int kMaxHiddenLayers = 64;
inline constexpr int32_t kMaxLayerWidth = 1 << 16;
// Parameters of the model (weights and biases of every layer): at most 100
// million (400 MB of float32, before optimizer slots and replicas).
inline constexpr int64_t kMaxModelParameters = 100'000'000;
// ModelSpec.parameters (EXTERNAL models): at most 4096 tensors, each name
// at most 256 characters, each shape at most 8 dimensions.
inline constexpr int kMaxExternalParameters = 4096;
inline constexpr size_t kMaxParameterNameLength = 256;
inline constexpr int kMaxParameterDims = 8;

// Largest JobConfig.staleness (SSP).
inline constexpr int32_t kMaxStaleness = 1000;

// Default of JobConfig.partition_bytes: 1 MiB.
inline constexpr int64_t kDefaultPartitionBytes = 1 << 20;

// Optimizer defaults (OptimizerSpec in proto/job.proto; PyTorch's).
inline constexpr float kDefaultBeta1 = 0.9f;
inline constexpr float kDefaultBeta2 = 0.999f;
inline constexpr float kDefaultAdamEpsilon = 1e-8f;
inline constexpr float kDefaultAdagradEpsilon = 1e-10f;
inline constexpr float kDefaultStepGamma = 0.1f;

// The number of optimizer slots (arrays of float32 the size of the
// partition) the optimizer of `spec` keeps per partition
// (or per embedding row):
//   SGD: 0 without momentum, 1 with (velocity v);
//   ADAGRAD: 1 (accumulator s);  ADAM, ADAMW: 2 (first moment m, then
//   second moment u).
// REQUIRES: spec is valid (ValidateJobConfig).
int OptimizerSlots(const OptimizerSpec& spec);

// Parses a job config from a file: protobuf text format, or JSON when the
// file's first non-blank character is '{'. Errors: NOT_FOUND (no file),
// INVALID_ARGUMENT with the parser's line, column and field name.
absl::StatusOr<JobConfig> LoadJobConfigFile(const std::string& path);

// The same, from a string; `source` names it in error messages.
absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text,
                                         const std::string& source);

// Fills the defaults of fields left unset: consistency BSP, optimizer SGD,
// model MLP, dataset "fashion-mnist", partition_bytes 1 MiB. For the
// optimizer, only the fields its kind uses: ADAM/ADAMW beta1 0.9, beta2
// 0.999, epsilon 1e-8; ADAGRAD epsilon 1e-10; schedule STEP gamma 0.1;
// schedule COSINE decay_steps = the job's total updates (epochs x
// StepsPerEpoch, times workers under ASP/SSP, where each push is one
// update), when workers, batch_size and epochs are >= 1 and the parameter
// groups do not mix BSP with ASP/SSP (UpdatesPerStep); workers =
// max_workers when workers is 0 and max_workers is set (an elastic job's
// ranks). An SGD config without the new fields is left as it was.
// Idempotent.
void ApplyJobConfigDefaults(JobConfig* config);

// Checks every field. Returns INVALID_ARGUMENT whose message starts with the
// field's path, e.g. "model.hidden_sizes[1]: must be at least 1, got 0";
// RESOURCE_EXHAUSTED, also naming the field and the limit, for a model too
// big (a layer wider than kMaxLayerWidth, more than kMaxModelParameters). Optimizer
// fields that the kind does not use are refused (e.g. optimizer.momentum
// with ADAM), so that a misplaced setting is not silently ignored; so is
// staleness unless consistency is SSP (job or group), a parameter group
// naming a parameter the model lacks or one already grouped. A snapshot
// policy is valid with any consistency model (see SnapshotPolicy).
absl::Status ValidateJobConfig(const JobConfig& config);

// Checks a job id sent in a request (`field` names it, e.g. "job_id"):
// empty (left to the caller, which answers NOT_FOUND), or at most
// kMaxJobIdLength characters of [A-Za-z0-9_-]. Errors: INVALID_ARGUMENT
// "<field>: ...", quoting at most the start of the id.
absl::Status CheckJobId(const std::string& field, const std::string& id);

// The consistency model of one parameter, by name: its parameter group's
// (JobConfig.parameter_groups), else the job's (consistency, staleness).
// Staleness is the SSP bound in steps (0 for BSP and ASP).
struct ParameterConsistency {
  Consistency consistency = BSP;
  int32_t staleness = 0;
};
ParameterConsistency ConsistencyOf(const JobConfig& config,
                                   const std::string& parameter);

// True when some parameter of the model is trained under ASP or SSP.
bool HasAsyncParameters(const JobConfig& config);

// Optimizer updates each partition makes per training step: 1 when every
// parameter is under BSP, `workers` when every one is under ASP/SSP (each
// push is an update); nullopt when the parameter groups mix them.
std::optional<int64_t> UpdatesPerStep(const JobConfig& config);

// The parameter tensors of the config's model, in order (see
// ModelSpec in proto/job.proto for names and shapes): the MLP's layers, or
// an EXTERNAL model's `parameters` as listed.
std::vector<ParameterSpec> ModelParameters(const ModelSpec& model);

// Training examples of Fashion-MNIST.
inline constexpr int64_t kFashionMnistTrainExamples = 60000;

// Training examples the job uses: dataset.train_limit when set (and smaller),
// otherwise the whole training set; for dataset "external" (EXTERNAL
// models), train_limit.
int64_t TrainExamples(const JobConfig& config);

// Examples per rank and steps per epoch for a training set of
// `train_examples` examples: every rank runs the same number of steps,
// floor(smallest shard / batch_size).
int64_t StepsPerEpoch(const JobConfig& config, int64_t train_examples);

// Elastic jobs (JobConfig.min_workers/max_workers): the fewest workers the
// job runs with and the most it takes; both `workers` for a config that
// sets neither (a fixed-size job).
int32_t MinWorkers(const JobConfig& config);
int32_t MaxWorkers(const JobConfig& config);
// min_workers < max_workers: workers join and leave while it runs, each
// holding some of its max_workers ranks.
bool IsElastic(const JobConfig& config);

}  // namespace psd

#endif  // PSD_COMMON_JOB_CONFIG_H_
