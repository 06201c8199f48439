// ExportShardRows, and EmbeddingService::ExportRows (declared in
// embedding_service.h) which streams its result.
#include "server/embedding/embedding_export.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/authorization.h"
#include "common/embedding_rows.h"
#include "common/status.h"
#include "server/embedding/embedding_service.h"

namespace psd {

absl::StatusOr<EmbeddingShardRows> ExportShardRows(const EmbeddingStore& store,
                                                   const std::string& job_id,
                                                   const std::string& table,
                                                   int32_t shard) {
  // The status first: NOT_FOUND and the shard checks without a copy.
  auto status = store.Status(job_id, table);
  if (!status.ok()) return status.status();
  const int32_t num_shards = status->spec().num_shards();
  if (shard < 0 || shard >= num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard: must be in [0, ", num_shards, ") for table \"",
                     table, "\" of job ", job_id, ", got ", shard));
  }
  if (std::find(status->shards().begin(), status->shards().end(), shard) ==
      status->shards().end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard: shard ", shard, " of table \"", table, "\" of job ", job_id,
        " is not held by this server (it holds shards [",
        absl::StrJoin(status->shards(), ", "), "])"));
  }
  auto capture = store.Capture(job_id, table);
  if (!capture.ok()) return capture.status();
  EmbeddingShardRows out;
  out.spec = capture->spec;
  const int64_t dim = capture->spec.dim();
  const int64_t record = capture->record_floats;
  // A record is [int64 update count as 2 floats][dim weights][slots].
  std::vector<size_t> order;
  for (size_t i = 0; i < capture->ids.size(); ++i) {
    if (ShardOfRow(capture->ids[i], num_shards) == shard) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return capture->ids[a] < capture->ids[b];
  });
  out.ids.reserve(order.size());
  out.weights.resize(order.size() * dim);
  for (size_t k = 0; k < order.size(); ++k) {
    out.ids.push_back(capture->ids[order[k]]);
    std::memcpy(out.weights.data() + k * dim,
                capture->records.data() + order[k] * record + 2,
                dim * sizeof(float));
  }
  return out;
}

int64_t ExportRowsPerChunk(int32_t dim, int64_t max_chunk_bytes) {
  if (max_chunk_bytes <= 0) max_chunk_bytes = kDefaultExportChunkBytes;
  const int64_t row_bytes = 8 + 4 * static_cast<int64_t>(dim);
  return std::max<int64_t>(1, max_chunk_bytes / row_bytes);
}

grpc::Status EmbeddingService::ExportRows(
    grpc::ServerContext* context, const ExportRowsRequest* request,
    grpc::ServerWriter<ExportRowsResponse>* writer) {
  // A person's export (psd_ctl export): only of a job they submitted, or
  // as an admin, as ParameterServer.Pull. Workers and psd_serve read any.
  if (std::optional<SpiffeId> caller = CallerOf(*context);
      caller.has_value() && caller->role != Role::kWorker &&
      caller->role != Role::kServe && caller->role != Role::kAdmin) {
    absl::StatusOr<std::string> submitted_by =
        options_.submitted_by
            ? options_.submitted_by(request->job_id())
            : absl::StatusOr<std::string>(absl::PermissionDeniedError(
                  "ExportRows: this server cannot tell who submitted a job"));
    absl::Status allowed = submitted_by.ok()
                               ? AuthorizeJobAction(caller, *submitted_by,
                                                    "export", request->job_id())
                               : submitted_by.status();
    if (!allowed.ok()) return ToGrpcStatus(allowed);
  }
  if (request->max_chunk_bytes() < 0 ||
      request->max_chunk_bytes() > kMaxExportChunkBytes) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("max_chunk_bytes: must be in [0, ", kMaxExportChunkBytes,
                     "] (0 = 1 MiB), got ", request->max_chunk_bytes())));
  }
  auto rows = ExportShardRows(*store_, request->job_id(), request->table(),
                              request->shard());
  if (!rows.ok()) return ToGrpcStatus(rows.status());
  const int32_t dim = rows->spec.dim();
  const int64_t n = static_cast<int64_t>(rows->ids.size());
  const int64_t per_chunk = ExportRowsPerChunk(dim, request->max_chunk_bytes());
  int64_t begin = 0;
  do {
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "ExportRows: cancelled");
    }
    const int64_t end = std::min(n, begin + per_chunk);
    ExportRowsResponse chunk;
    if (begin == 0) {
      *chunk.mutable_spec() = rows->spec;
      chunk.set_total_rows(n);
    }
    chunk.mutable_row_ids()->Add(rows->ids.begin() + begin,
                                 rows->ids.begin() + end);
    Tensor* t = chunk.mutable_rows();
    t->set_dtype(FLOAT32);
    t->add_shape(end - begin);
    t->add_shape(dim);
    t->set_data(
        reinterpret_cast<const char*>(rows->weights.data() + begin * dim),
        (end - begin) * dim * sizeof(float));
    if (!writer->Write(chunk)) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "ExportRows: the client went away");
    }
    begin = end;
  } while (begin < n);
  return grpc::Status::OK;
}

}  // namespace psd
