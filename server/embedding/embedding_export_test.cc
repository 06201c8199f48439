// EmbeddingServer.ExportRows over real gRPC on 127.0.0.1 (an in-process
// server on an OS-chosen port): one shard's weights in ascending id, in
// bounded chunks, equal to what PullRows returns; errors name the field.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "common/embedding_rows.h"
#include "common/rpc.h"
#include "server/embedding/embedding_export.h"
#include "server/embedding/embedding_service.h"
#include "server/embedding/embedding_store.h"

namespace psd {
namespace {

EmbeddingTableSpec Spec() {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(1000000);
  spec.set_dim(3);
  spec.set_num_shards(2);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::NORMAL);
  spec.mutable_initializer()->set_seed(5);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  spec.mutable_optimizer()->set_learning_rate(0.1f);
  return spec;
}

// Pushes a gradient of ones to every id of `ids` held here.
void PushOnes(EmbeddingStore& store, const std::vector<uint64_t>& ids) {
  Tensor g;
  g.set_dtype(FLOAT32);
  g.add_shape(static_cast<int64_t>(ids.size()));
  g.add_shape(3);
  std::vector<float> ones(ids.size() * 3, 1.0f);
  g.set_data(reinterpret_cast<const char*>(ones.data()), ones.size() * 4);
  REQUIRE(store.Push("job", "emb", ids, g).ok());
}

struct Stream {
  grpc::Status status;
  std::vector<ExportRowsResponse> chunks;
};

Stream Export(const std::string& address, const std::string& table,
              int32_t shard, int64_t max_chunk_bytes = 0) {
  auto stub = EmbeddingServer::NewStub(MakeChannel(address));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  ExportRowsRequest request;
  request.set_job_id("job");
  request.set_table(table);
  request.set_shard(shard);
  request.set_max_chunk_bytes(max_chunk_bytes);
  auto reader = stub->ExportRows(&context, request);
  Stream out;
  ExportRowsResponse chunk;
  while (reader->Read(&chunk)) out.chunks.push_back(chunk);
  out.status = reader->Finish();
  return out;
}

TEST_CASE("ExportRows: a held shard's pushed rows, ascending, in bounded "
          "chunks, as PullRows gives them",
          "[embedding][export]") {
  EmbeddingStore store;
  EmbeddingService service(&store);
  auto rpc = StartRpcServer(RpcServerOptions(), {&service});
  REQUIRE(rpc.ok());
  const std::string address = "127.0.0.1:" + std::to_string(rpc->port);
  REQUIRE(store.CreateTable("job", Spec(), {0}).ok());
  std::vector<uint64_t> shard0;
  for (uint64_t id = 0; shard0.size() < 300; id += 7919) {
    if (ShardOfRow(id, 2) == 0) shard0.push_back((id * 104729) % 1000000);
  }
  // Only rows of shard 0 (the mixing above may have moved some off it).
  std::vector<uint64_t> held;
  for (uint64_t id : shard0) {
    if (ShardOfRow(id, 2) == 0) held.push_back(id);
  }
  std::sort(held.begin(), held.end());
  held.erase(std::unique(held.begin(), held.end()), held.end());
  REQUIRE(held.size() > 50);
  PushOnes(store, held);

  // 8 + 12 bytes a row: 200 bytes hold 10 rows.
  Stream s = Export(address, "emb", 0, 200);
  REQUIRE(s.status.ok());
  REQUIRE(s.chunks.size() == (held.size() + 9) / 10);
  CHECK(s.chunks[0].spec().dim() == 3);
  CHECK(s.chunks[0].total_rows() == static_cast<int64_t>(held.size()));
  std::vector<uint64_t> ids;
  std::string rows;
  for (const ExportRowsResponse& c : s.chunks) {
    CHECK(c.row_ids_size() <= 10);
    CHECK(c.rows().dtype() == FLOAT32);
    CHECK(c.rows().shape(0) == c.row_ids_size());
    CHECK(c.rows().shape(1) == 3);
    ids.insert(ids.end(), c.row_ids().begin(), c.row_ids().end());
    rows += c.rows().data();
  }
  CHECK(ids == held);
  std::string pulled;
  REQUIRE(store.Pull("job", "emb", held, &pulled).ok());
  CHECK(rows == pulled);
  // Not the initial values: they were pushed.
  std::vector<float> initial(3);
  InitialRow(Spec().initializer(), 3, held[0], initial.data());
  CHECK(std::memcmp(initial.data(), rows.data(), 12) != 0);

  // The default chunk: one.
  Stream whole = Export(address, "emb", 0);
  REQUIRE(whole.status.ok());
  CHECK(whole.chunks.size() == 1);
  CHECK(whole.chunks[0].row_ids_size() == static_cast<int>(held.size()));
}

TEST_CASE("ExportRows: an empty shard is one empty chunk; errors name the "
          "field",
          "[embedding][export]") {
  EmbeddingStore store;
  EmbeddingService service(&store);
  auto rpc = StartRpcServer(RpcServerOptions(), {&service});
  REQUIRE(rpc.ok());
  const std::string address = "127.0.0.1:" + std::to_string(rpc->port);
  REQUIRE(store.CreateTable("job", Spec(), {1}).ok());

  Stream empty = Export(address, "emb", 1);
  REQUIRE(empty.status.ok());
  REQUIRE(empty.chunks.size() == 1);
  CHECK(empty.chunks[0].row_ids_size() == 0);
  CHECK(empty.chunks[0].total_rows() == 0);
  CHECK(empty.chunks[0].spec().name() == "emb");

  Stream not_held = Export(address, "emb", 0);
  CHECK(not_held.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(not_held.status.error_message().rfind("shard:", 0) == 0);
  CHECK(not_held.status.error_message().find("holds shards [1]") !=
        std::string::npos);
  Stream out_of_range = Export(address, "emb", 2);
  CHECK(out_of_range.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(out_of_range.status.error_message().rfind("shard:", 0) == 0);
  Stream unknown = Export(address, "nope", 0);
  CHECK(unknown.status.error_code() == grpc::StatusCode::NOT_FOUND);
  Stream bad_chunk = Export(address, "emb", 1, -1);
  CHECK(bad_chunk.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(bad_chunk.status.error_message().rfind("max_chunk_bytes", 0) == 0);
  CHECK(bad_chunk.chunks.empty());
}

TEST_CASE("ExportRowsPerChunk: the rows whose ids and weights fit, at least "
          "one",
          "[embedding][export]") {
  CHECK(ExportRowsPerChunk(1, 0) == (1 << 20) / 12);
  CHECK(ExportRowsPerChunk(8, 400) == 10);
  CHECK(ExportRowsPerChunk(65536, 1024) == 1);
}

}  // namespace
}  // namespace psd
