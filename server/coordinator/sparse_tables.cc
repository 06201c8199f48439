#include "server/coordinator/sparse_tables.h"

#include <map>
#include <memory>
#include <set>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/sparse_config.h"
#include "proto/embedding.grpc.pb.h"
#include "server/coordinator/server_calls.h"

namespace psd {

namespace {

// The job's table snapshot schedule on the servers: every
// snapshot.every_steps BSP steps, as the dense part, keeping one more
// than the job's keep_last (0 = 3): a table shard's clock may be one
// interval ahead of its dense partitions (rows are pushed first), so the
// newest dense step is then the tables' second newest.
void SetSchedule(const JobConfig& config, CreateTableRequest* request) {
  if (config.snapshot().every_steps() <= 0) return;
  request->set_snapshot_every_steps(config.snapshot().every_steps());
  const int32_t keep =
      config.snapshot().keep_last() > 0 ? config.snapshot().keep_last() : 3;
  request->set_snapshot_keep_last(keep + 1);
}

// CreateJobTables (restore_step < 0) or RestoreJobTables.
std::string PlaceJobTables(const Assignment& assignment, int64_t restore_step,
                           std::chrono::milliseconds timeout,
                           std::chrono::milliseconds budget, bool* retryable,
                           bool* step_missing) {
  *retryable = true;
  if (step_missing != nullptr) *step_missing = false;
  if (!IsSparseModel(assignment.config().model())) return "";
  auto replicas = TableReplicas(assignment);
  if (!replicas.ok()) {
    *retryable = false;
    return replicas.status().ToString();
  }
  // address -> the table shards it holds, with its index in each's list.
  std::map<std::string, std::vector<TableShardReplicas>> held;
  for (size_t shard = 0; shard < replicas->size(); ++shard) {
    const std::vector<std::string>& list = (*replicas)[shard];
    for (size_t i = 0; i < list.size(); ++i) {
      TableShardReplicas r;
      r.set_shard(static_cast<int32_t>(shard));
      r.mutable_replicas()->Assign(list.begin(), list.end());
      r.set_self(static_cast<int32_t>(i));
      held[list[i]].push_back(std::move(r));
    }
  }
  for (const auto& [address, shards] : held) {
    auto stub = EmbeddingServer::NewStub(MakeChannel(address));
    for (int t = 0; t < assignment.config().model().tables_size(); ++t) {
      CreateTableRequest request;
      request.set_job_id(assignment.job_id());
      *request.mutable_spec() = PlacedTable(assignment, t);
      for (const TableShardReplicas& r : shards) {
        request.add_shards(r.shard());
        // One replica: unreplicated (no forwarding), no entry.
        if (r.replicas_size() > 1) *request.add_replicas() = r;
      }
      SetSchedule(assignment.config(), &request);
      CreateTableResponse response;
      grpc::Status status;
      if (restore_step < 0) {
        status = CallIdempotent(stub.get(), &EmbeddingServer::Stub::CreateTable,
                                request, &response, timeout, budget);
      } else {
        // Whatever a previous attempt left goes first (a restore of a
        // table that is there is ALREADY_EXISTS).
        DropTableRequest drop;
        drop.set_job_id(assignment.job_id());
        drop.set_table(request.spec().name());
        DropTableResponse dropped;
        status = CallIdempotent(stub.get(), &EmbeddingServer::Stub::DropTable,
                                drop, &dropped, timeout, budget);
        if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
          status = grpc::Status::OK;
        }
        if (status.ok()) {
          request.set_restore(true);
          request.set_restore_step(restore_step);
          status = CallServer(stub.get(), &EmbeddingServer::Stub::CreateTable,
                              request, &response, timeout);
        }
        if (status.ok()) {
          Log()->info("job {}: table {} restored at step {} on {} ({} rows, "
                      "generation {})",
                      assignment.job_id(), request.spec().name(), restore_step,
                      address, response.restored_rows(),
                      response.restored_generation());
        }
      }
      if (!status.ok()) {
        *retryable = status.error_code() != grpc::StatusCode::INVALID_ARGUMENT;
        if (step_missing != nullptr) {
          *step_missing = status.error_code() == grpc::StatusCode::NOT_FOUND ||
                          status.error_code() == grpc::StatusCode::DATA_LOSS;
        }
        return absl::StrCat(restore_step < 0 ? "creating" : "restoring",
                            " table \"", request.spec().name(), "\" on server ",
                            address,
                            restore_step < 0
                                ? std::string()
                                : absl::StrCat(" at step ", restore_step),
                            " failed: ", status.error_message());
      }
    }
  }
  return "";
}

}  // namespace

std::string CreateJobTables(const Assignment& assignment,
                            std::chrono::milliseconds timeout,
                            std::chrono::milliseconds budget, bool* retryable) {
  return PlaceJobTables(assignment, -1, timeout, budget, retryable, nullptr);
}

std::string RestoreJobTables(const Assignment& assignment, int64_t step,
                             std::chrono::milliseconds timeout,
                             std::chrono::milliseconds budget,
                             bool* step_missing) {
  bool retryable = true;
  return PlaceJobTables(assignment, step, timeout, budget, &retryable,
                        step_missing);
}

void DropJobTables(const Assignment& assignment,
                   std::chrono::milliseconds timeout) {
  if (!IsSparseModel(assignment.config().model())) return;
  // The servers listed now, and those that held table shards at the start.
  std::set<std::string> addresses;
  for (const ServerInfo& server : assignment.servers()) {
    addresses.insert(server.address());
  }
  for (const TableShardAddresses& shard : assignment.table_replicas()) {
    addresses.insert(shard.replicas().begin(), shard.replicas().end());
  }
  for (const std::string& address : addresses) {
    auto stub = EmbeddingServer::NewStub(MakeChannel(address));
    for (const EmbeddingTableSpec& table : assignment.config().model().tables()) {
      DropTableRequest request;
      request.set_job_id(assignment.job_id());
      request.set_table(table.name());
      DropTableResponse response;
      grpc::Status status = CallServer(
          stub.get(), &EmbeddingServer::Stub::DropTable, request, &response,
          timeout);
      if (!status.ok() && status.error_code() != grpc::StatusCode::NOT_FOUND) {
        Log()->warn("job {}: DropTable {} on {} failed: {}", assignment.job_id(),
                    table.name(), address, status.error_message());
      }
    }
  }
}

}  // namespace psd
