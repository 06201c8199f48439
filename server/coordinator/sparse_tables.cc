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

std::string CreateJobTables(const Assignment& assignment,
                            std::chrono::milliseconds timeout,
                            std::chrono::milliseconds budget, bool* retryable) {
  *retryable = true;
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
      CreateTableResponse response;
      grpc::Status status =
          CallIdempotent(stub.get(), &EmbeddingServer::Stub::CreateTable,
                         request, &response, timeout, budget);
      if (!status.ok()) {
        *retryable = status.error_code() != grpc::StatusCode::INVALID_ARGUMENT;
        return absl::StrCat("creating table \"", request.spec().name(),
                            "\" on server ", address, " failed: ",
                            status.error_message());
      }
    }
  }
  return "";
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
