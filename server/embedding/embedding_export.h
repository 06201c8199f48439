// Reading out the weights of one shard of an embedding table held by a
// server (issue 25: export of a sparse job's tables): what
// psd.v1.EmbeddingServer.ExportRows (proto/embedding.proto) streams and
// psd_ctl export writes beside the dense part's safetensors.
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_EXPORT_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"
#include "server/embedding/embedding_store.h"

namespace psd {

// The rows of one shard of a table, weights only.
struct EmbeddingShardRows {
  EmbeddingTableSpec spec;  // with defaults
  // Row ids, ascending and distinct: every row of the shard created on this
  // server (pushed at least once, not evicted).
  std::vector<uint64_t> ids;
  // [ids.size(), spec.dim()] float32, row-major: weights[i * dim, ...) are
  // ids[i]'s weights.
  std::vector<float> weights;
};

// Copies shard `shard` of table `table` of job `job_id` out of `store`:
// from one EmbeddingStore::Capture (a cut between pushes; the table's
// pushes wait while it is copied, pulls do not), so it costs O(rows held
// by this server) time and memory (row_bytes + 8 per row, all held shards)
// for the copy, plus 8 + 4 dim bytes per row of the shard.
// Errors: NOT_FOUND (job or table); INVALID_ARGUMENT "shard: ..." for a
// shard outside [0, num_shards); FAILED_PRECONDITION "shard: ..." for a
// shard this server does not hold.
absl::StatusOr<EmbeddingShardRows> ExportShardRows(const EmbeddingStore& store,
                                                   const std::string& job_id,
                                                   const std::string& table,
                                                   int32_t shard);

// Default and largest ExportRowsRequest.max_chunk_bytes.
inline constexpr int64_t kDefaultExportChunkBytes = int64_t{1} << 20;
inline constexpr int64_t kMaxExportChunkBytes = int64_t{4} << 20;

// Rows per ExportRowsResponse chunk for a table of width `dim` under a
// limit of `max_chunk_bytes` (0 = kDefaultExportChunkBytes): the most rows
// whose ids and weights (8 + 4 dim bytes each) fit, at least 1.
int64_t ExportRowsPerChunk(int32_t dim, int64_t max_chunk_bytes);

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_EXPORT_H_
