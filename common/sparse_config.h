// Job configs of sparse models (issue 25: ModelSpec kinds SPARSE_LR and
// DLRM, proto/job.proto) and the embedding table specs they hold: defaults,
// validation, the dense part's parameters, and the memory their tables ask
// of the cluster. Part of the job_config library.
#ifndef PSD_COMMON_SPARSE_CONFIG_H_
#define PSD_COMMON_SPARSE_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

// Bounds of a sparse model (ValidateJobConfig refuses past them, naming the
// field): tables, fields, dense features and MLP layers.
inline constexpr int kMaxSparseTables = 64;
inline constexpr int kMaxSparseFields = 256;
inline constexpr int32_t kMaxDenseFeatures = 4096;
inline constexpr int kMaxSparseMlpLayers = 16;
inline constexpr int32_t kMaxSparseMlpWidth = 4096;
// Criteo's TSV layout (dataset "criteo"): 13 integer and 26 categorical
// fields per line.
inline constexpr int32_t kCriteoDenseFeatures = 13;
inline constexpr int32_t kCriteoFields = 26;

// Largest dim and num_shards accepted, and the largest num_rows (2^62).
inline constexpr int32_t kMaxEmbeddingDim = 65536;
inline constexpr int32_t kMaxEmbeddingShards = 65536;
inline constexpr uint64_t kMaxEmbeddingRows = uint64_t{1} << 62;

// Checks a table spec. INVALID_ARGUMENT whose message starts with the
// field's path under `prefix`, e.g. "spec.dim: must be in [1, 65536], got 0".
absl::Status ValidateTableSpec(const EmbeddingTableSpec& spec,
                               const std::string& prefix);

// The spec with defaults filled: initializer kind UNIFORM and scale
// 1/sqrt(dim) when unset, and the optimizer's per-kind defaults
// (ApplyJobConfigDefaults). Idempotent.
EmbeddingTableSpec WithTableDefaults(EmbeddingTableSpec spec);

// ModelSpec.kind SPARSE_LR or DLRM.
bool IsSparseModel(const ModelSpec& model);

// ApplyJobConfigDefaults' part for a sparse model: a table without an
// optimizer gets the job's (kind, learning rate, weight decay, epsilon,
// betas; never its schedule or momentum, which rows do not have), then
// WithTableDefaults. No-op for other kinds.
void ApplySparseDefaults(JobConfig* config);

// ValidateJobConfig's part for a sparse model: model.* (tables, fields,
// dense features, MLP widths, and none of the MLP's or EXTERNAL's fields)
// and dataset.* ("planted-clicks" or "criteo"), consistency (BSP or ASP),
// no parameter groups, no elastic workers. INVALID_ARGUMENT naming the
// field, e.g. "model.fields[2].table: no table \"ads\" (tables: users,
// items)"; RESOURCE_EXHAUSTED past kMaxModelParameters for the dense part.
// REQUIRES: IsSparseModel(config.model()).
absl::Status ValidateSparseJob(const JobConfig& config);

// The dense part's parameters: SparseModelParameters
// (common/sparse_model_spec.h).

// Bytes a server holds for one touched row of the table: its update count
// (8), weights and optimizer slots (4 d (1 + OptimizerSlots)); the
// EmbeddingStore's record (server/embedding/embedding_store.h), map
// overhead not counted.
int64_t TableRowBytes(const EmbeddingTableSpec& spec);

// Checks that the job's tables fit the memory the servers state
// (RegisterRequest.table_memory_bytes, summed over the job's servers) with
// `replicas` copies of each row, counting every row of every table
// (num_rows x TableRowBytes x replicas). Servers stating 0 (no bound) make
// the cluster unbounded. INVALID_ARGUMENT naming model.tables[i].num_rows
// of the table that passes the bound. No-op for other kinds.
absl::Status CheckTablesFit(const JobConfig& config, int64_t cluster_bytes,
                            int32_t replicas);

// Where a sparse job's tables live (see "Sparse jobs" in
// docs/ARCHITECTURE.md): every table has as many shards as the job, and
// table shard s lives on the replicas of the job's shard s, the primary
// first, as the job started. Returns, by shard, the replicas' host:port:
// assignment.table_replicas when set (the coordinator fixes them at the
// start), else computed from assignment.shards and servers. Errors:
// INVALID_ARGUMENT when a shard is missing or twice, or names a server not
// in assignment.servers.
absl::StatusOr<std::vector<std::vector<std::string>>> TableReplicas(
    const Assignment& assignment);

// Table `index` of the assignment's model as the job's servers hold it:
// with WithTableDefaults and num_shards = the job's shard count.
EmbeddingTableSpec PlacedTable(const Assignment& assignment, int index);

}  // namespace psd

#endif  // PSD_COMMON_SPARSE_CONFIG_H_
