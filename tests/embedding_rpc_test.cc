// Sparse embedding tables over real gRPC on 127.0.0.1 (in-process servers
// on OS-chosen ports): EmbeddingService + EmbeddingStore, EmbeddingClient.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <memory>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "common/metrics.h"
#include "common/rpc.h"
#include "common/embedding_rows.h"
#include "server/embedding/embedding_service.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"
#include "worker/embedding_client.h"

namespace psd {
namespace {

// One server process's worth: a store, its service, a gRPC server.
struct Server {
  explicit Server(EmbeddingSnapshotStore* snapshots = nullptr)
      : service(&store, nullptr, {}, snapshots) {
    auto started = StartRpcServer(RpcServerOptions(), {&service});
    REQUIRE(started.ok());
    rpc = *std::move(started);
    address = "127.0.0.1:" + std::to_string(rpc.port);
  }
  ~Server() { rpc.server->Shutdown(); }
  EmbeddingStore store;
  EmbeddingService service;
  RpcServer rpc;
  std::string address;
};

EmbeddingTableSpec Spec(OptimizerSpec::Kind kind, float lr,
                        EmbeddingInitializer::Kind init) {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(100000000);
  spec.set_dim(4);
  spec.mutable_initializer()->set_kind(init);
  spec.mutable_initializer()->set_seed(99);
  spec.mutable_optimizer()->set_kind(kind);
  spec.mutable_optimizer()->set_learning_rate(lr);
  return spec;
}

std::unique_ptr<EmbeddingClient> Client(const std::vector<std::string>& servers,
                                        int64_t max_call_bytes = 1 << 20) {
  EmbeddingClientOptions options;
  options.max_call_bytes = max_call_bytes;
  auto client = EmbeddingClient::Create("job", servers, options);
  REQUIRE(client.ok());
  return *std::move(client);
}

TEST_CASE("EmbeddingServer: untouched rows are the seeded values on 1 and "
          "2 servers",
          "[embedding][rpc]") {
  Server a, b, c;
  auto one = Client({a.address});
  auto two = Client({b.address, c.address}, /*max_call_bytes=*/64);
  const EmbeddingTableSpec spec =
      Spec(OptimizerSpec::ADAGRAD, 0.1f, EmbeddingInitializer::NORMAL);
  REQUIRE(one->CreateTable(spec).ok());
  REQUIRE(two->CreateTable(spec).ok());
  REQUIRE(two->CreateTable(spec).ok());  // idempotent
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 500; ++i) ids.push_back(i * 200003 % 100000000);
  ids.push_back(ids[3]);  // a duplicate
  std::vector<float> r1, r2;
  REQUIRE(one->Pull("emb", ids, &r1).ok());
  REQUIRE(two->Pull("emb", ids, &r2).ok());
  CHECK(r1 == r2);
  const EmbeddingTableSpec full = WithTableDefaults(spec);
  std::vector<float> want(4);
  for (size_t i = 0; i < ids.size(); ++i) {
    InitialRow(full.initializer(), 4, ids[i], want.data());
    REQUIRE(std::vector<float>(r1.begin() + 4 * i, r1.begin() + 4 * i + 4) ==
            want);
  }
  // Both shards got rows, and nothing was stored by the pulls.
  auto status = two->Status("emb");
  REQUIRE(status.ok());
  CHECK((*status)[0].pulls() > 0);
  CHECK((*status)[1].pulls() > 0);
  CHECK((*status)[0].rows() + (*status)[1].rows() == 0);
}

TEST_CASE("EmbeddingServer: pushes to disjoint rows from two clients both "
          "land",
          "[embedding][rpc]") {
  Server a, b;
  auto c1 = Client({a.address, b.address});
  auto c2 = Client({a.address, b.address}, /*max_call_bytes=*/48);
  REQUIRE(c1->CreateTable(
                Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO))
              .ok());
  std::vector<uint64_t> even, odd;
  for (uint64_t i = 0; i < 300; ++i) (i % 2 ? odd : even).push_back(i * 7919);
  std::vector<float> g_even(even.size() * 4, 1.0f), g_odd(odd.size() * 4, 2.0f);
  for (int round = 0; round < 3; ++round) {
    REQUIRE(c1->Push("emb", even, g_even).ok());
    REQUIRE(c2->Push("emb", odd, g_odd).ok());
  }
  std::vector<float> rows;
  REQUIRE(c1->Pull("emb", even, &rows).ok());
  for (float v : rows) REQUIRE(v == -3.0f);
  REQUIRE(c2->Pull("emb", odd, &rows).ok());
  for (float v : rows) REQUIRE(v == -6.0f);
  auto status = c1->Status("emb");
  REQUIRE(status.ok());
  CHECK((*status)[0].rows() + (*status)[1].rows() == 300);
  CHECK((*status)[0].rows() > 100);
  CHECK((*status)[1].rows() > 100);
  // Duplicates in one push are summed (client and server alike): one step
  // of the summed gradient.
  REQUIRE(c1->Push("emb", {even[0], even[0]}, std::vector<float>(8, 0.5f)).ok());
  REQUIRE(c1->Pull("emb", {even[0]}, &rows).ok());
  CHECK(rows[0] == -4.0f);
}

TEST_CASE("EmbeddingServer: a retried PushRows with the same client_id and "
          "sequence is acknowledged and applied once",
          "[embedding][rpc][dedup]") {
  Server a;
  auto client = Client({a.address});
  REQUIRE(client->CreateTable(
                    Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO))
              .ok());
  auto stub = EmbeddingServer::NewStub(MakeChannel(a.address));
  PushRowsRequest request;
  request.set_job_id("job");
  request.set_table("emb");
  request.add_row_ids(42);
  request.mutable_gradients()->set_dtype(FLOAT32);
  request.mutable_gradients()->add_shape(1);
  request.mutable_gradients()->add_shape(4);
  const std::vector<float> ones(4, 1.0f);
  request.mutable_gradients()->set_data(ones.data(), 16);
  request.set_client_id("worker-7");
  request.set_sequence(5);
  for (bool duplicate : {false, true, true}) {
    PushRowsResponse response;
    grpc::ClientContext context;
    REQUIRE(stub->PushRows(&context, request, &response).ok());
    CHECK(response.duplicate() == duplicate);
  }
  std::vector<float> rows;
  REQUIRE(client->Pull("emb", {42}, &rows).ok());
  CHECK(rows == std::vector<float>(4, -1.0f));
  // The client numbers its own calls: its pushes are never taken for
  // another's, and each applies.
  CHECK(client->client_id().size() == 32);
  REQUIRE(client->Push("emb", {42}, ones).ok());
  REQUIRE(client->Push("emb", {42}, ones).ok());
  REQUIRE(client->Pull("emb", {42}, &rows).ok());
  CHECK(rows == std::vector<float>(4, -3.0f));
  request.set_client_id(std::string(129, 'x'));
  PushRowsResponse response;
  grpc::ClientContext context;
  grpc::Status g = stub->PushRows(&context, request, &response);
  CHECK(g.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(g.error_message() == "client_id: at most 128 bytes");
}

TEST_CASE("EmbeddingServer: bad input gets clear gRPC errors",
          "[embedding][rpc]") {
  Server a, b;
  auto client = Client({a.address, b.address});
  REQUIRE(client
              ->CreateTable(Spec(OptimizerSpec::ADAM, 0.01f,
                                 EmbeddingInitializer::UNIFORM))
              .ok());
  std::vector<float> rows;
  absl::Status s = client->Pull("emb", {100000000}, &rows);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("row_ids[0]: 100000000 is out of range") !=
        std::string::npos);
  s = client->Push("emb", {5}, {1.0f, NAN, 0.0f, 0.0f});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("gradients.data: element 1") != std::string::npos);
  s = client->Pull("nope", {5}, &rows);
  CHECK(s.code() == absl::StatusCode::kNotFound);
  auto other_job = EmbeddingClient::Create("other", {a.address});
  REQUIRE(other_job.ok());
  s = (*other_job)->Pull("emb", {5}, &rows);
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(s.message().find("job_id") != std::string::npos);
  // A bad spec names the field.
  EmbeddingTableSpec bad =
      Spec(OptimizerSpec::ADAM, 0.01f, EmbeddingInitializer::UNIFORM);
  bad.set_name("bad");
  bad.set_dim(0);
  s = client->CreateTable(bad);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("spec.dim:") != std::string::npos);
  // A raw request for a row of the other shard, to shard 0's server.
  uint64_t row = 0;
  while (ShardOfRow(row, 2) != 1) ++row;
  auto stub = EmbeddingServer::NewStub(MakeChannel(a.address));
  PushRowsRequest request;
  request.set_job_id("job");
  request.set_table("emb");
  request.add_row_ids(row);
  request.mutable_gradients()->set_dtype(FLOAT32);
  request.mutable_gradients()->add_shape(1);
  request.mutable_gradients()->add_shape(4);
  request.mutable_gradients()->set_data(std::string(16, '\0'));
  PushRowsResponse response;
  grpc::ClientContext context;
  grpc::Status g = stub->PushRows(&context, request, &response);
  CHECK(g.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(g.error_message().find("is on shard 1 of 2") != std::string::npos);
  // Nothing of the refused pushes was applied.
  auto status = client->Status("emb");
  REQUIRE(status.ok());
  CHECK((*status)[0].rows() + (*status)[1].rows() == 0);
}

std::unique_ptr<EmbeddingClient> ReplicatedClient(
    const std::vector<std::vector<std::string>>& replicas,
    const std::string& client_id = "") {
  EmbeddingClientOptions options;
  options.retries = 1;
  options.client_id = client_id;
  auto client = EmbeddingClient::Create("job", replicas, options);
  REQUIRE(client.ok());
  return *std::move(client);
}

std::vector<float> StoreRows(const EmbeddingStore& store,
                             const std::vector<uint64_t>& ids) {
  std::string out;
  REQUIRE(store.Pull("job", "emb", ids, &out).ok());
  std::vector<float> rows(out.size() / 4);
  std::memcpy(rows.data(), out.data(), out.size());
  return rows;
}

TEST_CASE("EmbeddingServer: a replicated push is on every backup when it is "
          "acknowledged (2 shards x 2 replicas, crossed)",
          "[embedding][rpc][replication]") {
  Server a, b;
  // Shard 0 on [a, b], shard 1 on [b, a]: each server a primary and a
  // backup.
  auto client = ReplicatedClient({{a.address, b.address},
                                  {b.address, a.address}});
  REQUIRE(client->CreateTable(
                    Spec(OptimizerSpec::ADAGRAD, 0.1f,
                         EmbeddingInitializer::UNIFORM))
              .ok());
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 400; ++i) ids.push_back(i * 7919);
  std::vector<float> grads(ids.size() * 4, 0.25f);
  for (int round = 0; round < 3; ++round) {
    REQUIRE(client->Push("emb", ids, grads).ok());
    // Acknowledged: both servers hold every row (each holds both shards).
    REQUIRE(StoreRows(a.store, ids) == StoreRows(b.store, ids));
  }
  auto all = client->ReplicaStatus("emb", /*checksum=*/true);
  REQUIRE(all.size() == 2);
  for (int s = 0; s < 2; ++s) {
    REQUIRE(all[s].size() == 2);
    REQUIRE(all[s][0].ok());
    REQUIRE(all[s][1].ok());
    const TableShardStatus& primary = all[s][0]->shard_status(s);
    const TableShardStatus& backup = all[s][1]->shard_status(s);
    CHECK(primary.role() == TableShardStatus::PRIMARY);
    CHECK(backup.role() == TableShardStatus::BACKUP);
    CHECK(primary.updates() == 3 * primary.rows());
    CHECK(primary.rows() > 100);
    CHECK(primary.checksum() == backup.checksum());
    CHECK(primary.dropped_size() == 0);
  }
  CHECK(all[0][0]->replicated() > 0);  // a is shard 1's backup
  CHECK(client->failovers() == 0);
}

TEST_CASE("EmbeddingServer: after its primary dies, a client re-sends to the "
          "backup: a push already forwarded is a duplicate, the next one "
          "promotes it",
          "[embedding][rpc][replication][failover]") {
  auto a = std::make_unique<Server>();
  Server b;
  const std::string a_address = a->address;
  auto client = ReplicatedClient({{a_address, b.address}}, "client-1");
  REQUIRE(client->CreateTable(
                    Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO))
              .ok());
  const std::vector<float> ones(4, 1.0f);
  // The client's first push (sequence 0) as the primary would have
  // forwarded it just before dying, unacknowledged to the client.
  PushRowsRequest request;
  request.set_job_id("job");
  request.set_table("emb");
  request.add_row_ids(42);
  request.mutable_gradients()->set_dtype(FLOAT32);
  request.mutable_gradients()->add_shape(1);
  request.mutable_gradients()->add_shape(4);
  request.mutable_gradients()->set_data(ones.data(), 16);
  request.set_client_id("client-1");
  request.set_sequence(0);
  {
    auto stub = EmbeddingServer::NewStub(MakeChannel(b.address));
    PushRowsResponse response;
    grpc::ClientContext context;
    REQUIRE(stub->ReplicateRows(&context, request, &response).ok());
    CHECK_FALSE(response.duplicate());
  }
  a.reset();  // the primary dies
  REQUIRE(client->Push("emb", {42}, ones).ok());  // sequence 0: duplicate
  CHECK(client->failovers() == 1);
  CHECK(client->current_replica(0) == b.address);
  CHECK(StoreRows(b.store, {42}) == std::vector<float>(4, -1.0f));
  REQUIRE(client->Push("emb", {42}, ones).ok());  // sequence 1: applied
  std::vector<float> rows;
  REQUIRE(client->Pull("emb", {42}, &rows).ok());
  CHECK(rows == std::vector<float>(4, -2.0f));
  auto status = b.store.Status("job", "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  const TableShardStatus& shard = status->shard_status(0);
  CHECK(shard.role() == TableShardStatus::PRIMARY);
  CHECK(shard.updates() == 2);
  // Promoted, it forwarded to the dead old primary, failed, and dropped it.
  REQUIRE(shard.dropped_size() == 1);
  CHECK(shard.dropped(0).rfind(a_address + ": UNAVAILABLE", 0) == 0);
  CHECK(shard.forward_to_size() == 0);
}

TEST_CASE("EmbeddingServer: a primary drops a backup that is down, reports "
          "it, and goes on acknowledging pushes",
          "[embedding][rpc][replication]") {
  Server a;
  auto b = std::make_unique<Server>();
  const std::string b_address = b->address;
  auto client = ReplicatedClient({{a.address, b_address}});
  REQUIRE(client->CreateTable(
                    Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO))
              .ok());
  const std::vector<float> ones(4, 1.0f);
  REQUIRE(client->Push("emb", {5}, ones).ok());
  b.reset();  // the backup dies
  REQUIRE(client->Push("emb", {5}, ones).ok());
  REQUIRE(client->Push("emb", {5}, ones).ok());
  CHECK(client->failovers() == 0);
  CHECK(StoreRows(a.store, {5}) == std::vector<float>(4, -3.0f));
  auto status = client->Status("emb");
  REQUIRE(status.ok());
  const TableShardStatus& shard = (*status)[0].shard_status(0);
  CHECK(shard.role() == TableShardStatus::PRIMARY);
  CHECK(shard.forward_to_size() == 0);
  REQUIRE(shard.dropped_size() == 1);
  CHECK(shard.dropped(0).rfind(b_address + ": UNAVAILABLE", 0) == 0);
  // A push without a client_id to a replicated shard is refused.
  auto stub = EmbeddingServer::NewStub(MakeChannel(a.address));
  PushRowsRequest request;
  request.set_job_id("job");
  request.set_table("emb");
  request.add_row_ids(5);
  request.mutable_gradients()->set_dtype(FLOAT32);
  request.mutable_gradients()->add_shape(1);
  request.mutable_gradients()->add_shape(4);
  request.mutable_gradients()->set_data(ones.data(), 16);
  PushRowsResponse response;
  grpc::ClientContext context;
  grpc::Status g = stub->PushRows(&context, request, &response);
  CHECK(g.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(g.error_message().rfind("client_id: required", 0) == 0);
}

TEST_CASE("EmbeddingClient: bad replica lists are INVALID_ARGUMENT naming "
          "the entry",
          "[embedding][replication]") {
  auto empty = EmbeddingClient::Create(
      "job", std::vector<std::vector<std::string>>{{"a:1"}, {}});
  CHECK(empty.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(empty.status().message().rfind("replicas[1]:", 0) == 0);
  auto twice = EmbeddingClient::Create(
      "job", std::vector<std::vector<std::string>>{{"a:1", "a:1"}});
  CHECK(twice.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(twice.status().message().rfind("replicas[0][1]: a:1 is listed twice",
                                       0) == 0);
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

grpc::Status RawPush(const std::string& address, const std::string& client_id,
                     uint64_t sequence, PushRowsResponse* response) {
  auto stub = EmbeddingServer::NewStub(MakeChannel(address));
  PushRowsRequest request;
  request.set_job_id("job");
  request.set_table("emb");
  request.add_row_ids(12345);
  Tensor* g = request.mutable_gradients();
  g->set_dtype(FLOAT32);
  g->add_shape(1);
  g->add_shape(4);
  const float values[4] = {0.5f, -0.25f, 1.0f, 2.0f};
  g->set_data(values, sizeof(values));
  request.set_client_id(client_id);
  request.set_sequence(sequence);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::milliseconds(10000)));
  return stub->PushRows(&context, request, response);
}

TEST_CASE("EmbeddingServer: SnapshotTable and restore over gRPC keep rows "
          "and exactly-once",
          "[embedding][rpc][snapshot]") {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/embedding_rpc_snapshots";
  std::filesystem::remove_all(dir);
  auto opened = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(opened.ok());
  std::unique_ptr<EmbeddingSnapshotStore> snapshots = *std::move(opened);
  const EmbeddingTableSpec spec =
      Spec(OptimizerSpec::ADAM, 0.01f, EmbeddingInitializer::UNIFORM);
  std::vector<uint64_t> ids = {1, 2, 3, 12345, 99999999};
  std::vector<float> before;
  {
    Server a(snapshots.get());
    auto client = Client({a.address});
    REQUIRE(client->CreateTable(spec).ok());
    std::vector<float> grads(ids.size() * 4, 0.125f);
    REQUIRE(client->Push("emb", ids, grads).ok());
    PushRowsResponse r;
    REQUIRE(RawPush(a.address, "x", 7, &r).ok());
    REQUIRE(client->Pull("emb", ids, &before).ok());
    auto written = client->Snapshot("emb", {{"epoch", "4"}});
    REQUIRE(written.ok());
    REQUIRE(written->size() == 1);
    CHECK(written->begin()->second.generation() == 1);
    CHECK(written->begin()->second.rows() == 5);
    CHECK(written->begin()->second.dedup_entries() == 2);
    // Unknown table: NOT_FOUND naming it.
    auto unknown = client->Snapshot("nope");
    CHECK(unknown.status().code() == absl::StatusCode::kNotFound);
    CHECK(std::string(unknown.status().message()).find("\"nope\"") !=
          std::string::npos);
    // Restoring a table that exists: ALREADY_EXISTS.
    CHECK(client->Restore(spec).status().code() ==
          absl::StatusCode::kAlreadyExists);
  }
  // "Restarted": a fresh server on the same snapshots.
  Server b(snapshots.get());
  auto client = Client({b.address});
  EmbeddingTableSpec bad = spec;
  bad.set_dim(0);
  auto invalid = client->Restore(bad);
  CHECK(invalid.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(invalid.status().message()).find("spec.dim") !=
        std::string::npos);
  EmbeddingTableSpec other = spec;
  other.set_name("other");
  auto missing = client->Restore(other);
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK(std::string(missing.status().message()).find("\"other\"") !=
        std::string::npos);
  EmbeddingTableSpec changed = spec;
  changed.mutable_optimizer()->set_learning_rate(0.5f);
  auto differs = client->Restore(changed);
  CHECK(differs.status().code() == absl::StatusCode::kFailedPrecondition);
  auto restored = client->Restore(spec);
  REQUIRE(restored.ok());
  CHECK(restored->at("epoch") == "4");
  std::vector<float> after;
  REQUIRE(client->Pull("emb", ids, &after).ok());
  CHECK(after == before);
  PushRowsResponse r;
  REQUIRE(RawPush(b.address, "x", 7, &r).ok());
  CHECK(r.duplicate());  // in the snapshot: not applied again
  std::vector<float> same;
  REQUIRE(client->Pull("emb", ids, &same).ok());
  CHECK(same == before);
  REQUIRE(RawPush(b.address, "x", 8, &r).ok());
  CHECK_FALSE(r.duplicate());  // not in it: applied
  REQUIRE(client->Pull("emb", ids, &same).ok());
  CHECK(same != before);
}

TEST_CASE("EmbeddingServer: without a data dir, SnapshotTable and restore "
          "are FAILED_PRECONDITION saying so",
          "[embedding][rpc][snapshot]") {
  Server a;
  auto client = Client({a.address});
  const EmbeddingTableSpec spec =
      Spec(OptimizerSpec::SGD, 0.1f, EmbeddingInitializer::ZERO);
  REQUIRE(client->CreateTable(spec).ok());
  auto written = client->Snapshot("emb");
  CHECK(written.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(written.status().message()).find("--data_dir") !=
        std::string::npos);
  REQUIRE(client->DropTable("emb").ok());
  auto restored = client->Restore(spec);
  CHECK(restored.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(restored.status().message()).find("--data_dir") !=
        std::string::npos);
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

// R ranks push step `step` at once (each from its own client and thread);
// rank `late` starts `delay_ms` later.
void BspStep(std::vector<std::unique_ptr<EmbeddingClient>>& ranks,
             int64_t step, int late = -1, int delay_ms = 0,
             const std::function<void()>& meanwhile = nullptr) {
  const int32_t n = static_cast<int32_t>(ranks.size());
  std::vector<absl::Status> results(n);
  std::vector<std::thread> threads;
  auto push = [&](int32_t r) {
    std::vector<uint64_t> ids;
    std::vector<float> grads;
    for (uint64_t k = 0; k < 40; ++k) {
      const uint64_t id = (k * 7919 + step * 13 + r * 101) % 300;
      ids.push_back(id);
      for (int c = 0; c < 4; ++c) {
        grads.push_back(std::sin(static_cast<float>(id + c + step)) * (r + 1));
      }
    }
    BspTag tag{step, r, n};
    results[r] = ranks[r]->Push("emb", ids, grads, &tag);
  };
  for (int32_t r = 0; r < n; ++r) {
    if (r != late) threads.emplace_back(push, r);
  }
  if (late >= 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (meanwhile) meanwhile();
    threads.emplace_back(push, late);
  }
  for (std::thread& t : threads) t.join();
  for (int32_t r = 0; r < n; ++r) {
    INFO("rank " << r << " step " << step << ": " << results[r].ToString());
    REQUIRE(results[r].ok());
  }
}

std::vector<std::unique_ptr<EmbeddingClient>> BspRanks(
    const std::vector<std::vector<std::string>>& replicas, int n) {
  std::vector<std::unique_ptr<EmbeddingClient>> ranks;
  for (int r = 0; r < n; ++r) {
    EmbeddingClientOptions options;
    options.retries = 2;
    options.timeout_ms = 800;
    auto client = EmbeddingClient::Create("job", replicas, options);
    REQUIRE(client.ok());
    ranks.push_back(*std::move(client));
  }
  return ranks;
}

std::vector<uint64_t> FirstRows() {
  std::vector<uint64_t> ids(300);
  for (uint64_t i = 0; i < 300; ++i) ids[i] = i;
  return ids;
}

TEST_CASE("EmbeddingServer BSP: R=2 over gRPC, a slow rank past the call "
          "deadline and a primary killed mid-step give the rows of an "
          "undisturbed run, bitwise",
          "[embedding][rpc][bsp]") {
  const int kSteps = 6, kKillAt = 3;
  const EmbeddingTableSpec spec =
      Spec(OptimizerSpec::ADAM, 0.01f, EmbeddingInitializer::UNIFORM);
  std::vector<float> reference;
  {
    Server c, d;
    auto ranks = BspRanks({{c.address, d.address}, {d.address, c.address}}, 2);
    REQUIRE(ranks[0]->CreateTable(spec).ok());
    for (int64_t s = 0; s < kSteps; ++s) BspStep(ranks, s);
    REQUIRE(ranks[0]->Pull("emb", FirstRows(), &reference).ok());
    CHECK(StoreRows(c.store, FirstRows()) == StoreRows(d.store, FirstRows()));
    auto status = d.store.Status("job", "emb");
    REQUIRE(status.ok());
    for (const TableShardStatus& shard : status->shard_status()) {
      CHECK(shard.bsp_clock() == kSteps);
      CHECK(shard.bsp_num_ranks() == 2);
    }
  }
  auto a = std::make_unique<Server>();
  Server b;
  auto ranks = BspRanks({{a->address, b.address}, {b.address, a->address}}, 2);
  REQUIRE(ranks[0]->CreateTable(spec).ok());
  for (int64_t s = 0; s < kSteps; ++s) {
    if (s == 0) {
      // Rank 1 comes 2 s late: rank 0's calls pass their 0.8 s deadline,
      // find their servers alive and join their buffered pushes again.
      BspStep(ranks, s, /*late=*/1, /*delay_ms=*/2000);
      CHECK(ranks[0]->failovers() == 0);
    } else if (s == kKillAt) {
      // Rank 0's push of this step is buffered on a (shard 0) when a
      // dies; rank 1 pushes after.
      BspStep(ranks, s, /*late=*/1, /*delay_ms=*/300, [&a] {
        a->rpc.server->Shutdown(std::chrono::system_clock::now());
        a.reset();
      });
    } else {
      BspStep(ranks, s);
    }
  }
  CHECK(ranks[0]->failovers() == 1);
  CHECK(ranks[1]->failovers() == 1);
  std::vector<float> rows;
  REQUIRE(ranks[1]->Pull("emb", FirstRows(), &rows).ok());
  CHECK(rows == reference);
  CHECK(StoreRows(b.store, FirstRows()) == reference);
  auto status = b.store.Status("job", "emb");
  REQUIRE(status.ok());
  for (const TableShardStatus& shard : status->shard_status()) {
    CHECK(shard.bsp_clock() == kSteps);
    CHECK(shard.role() == TableShardStatus::PRIMARY);
  }
}

TEST_CASE("EmbeddingServer BSP: bad tags are INVALID_ARGUMENT naming the "
          "field, over gRPC",
          "[embedding][rpc][bsp]") {
  Server a;
  auto client = Client({a.address});
  REQUIRE(client->CreateTable(
                    Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO))
              .ok());
  const std::vector<float> g(4, 1.0f);
  BspTag bad_rank{0, 2, 2};
  absl::Status s = client->Push("emb", {1}, g, &bad_rank);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("rank:") != absl::string_view::npos);
  BspTag bad_step{-1, 0, 2};
  s = client->Push("emb", {1}, g, &bad_step);
  CHECK(s.message().find("step:") != absl::string_view::npos);
  BspTag ahead{5, 0, 1};
  s = client->Push("emb", {1}, g, &ahead);
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  // One rank: each push applies at once.
  BspTag one{0, 0, 1};
  REQUIRE(client->Push("emb", {1}, g, &one).ok());
  REQUIRE(client->Push("emb", {1}, g, &one).ok());  // step 0 again: duplicate
  std::vector<float> rows;
  REQUIRE(client->Pull("emb", {1}, &rows).ok());
  CHECK(rows == std::vector<float>(4, -1.0f));
  BspTag other{1, 0, 3};
  s = client->Push("emb", {1}, g, &other);
  CHECK(s.message().find("num_ranks:") != absl::string_view::npos);
  // ASP push with the worker's step; PullAt through a cache.
  REQUIRE(client->Push("emb", {1}, g, nullptr, 7).ok());
  REQUIRE(client->EnableCache("emb", 2, 0).ok());
  REQUIRE(client->PullAt("emb", {1, 2}, 10, &rows).ok());
  REQUIRE(client->PullAt("emb", {1, 2}, 12, &rows).ok());
  CHECK(rows[0] == -2.0f);
  CHECK(client->cache("emb")->hits() == 2);
  CHECK(client->cache("emb")->misses() == 2);
  CHECK(client->EnableCache("emb", 1, -1).message().find("cache_rows") !=
        absl::string_view::npos);
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

TEST_CASE("EmbeddingService: per-table live rows and bytes gauges",
          "[embedding][metrics]") {
  MetricsRegistry registry;
  EmbeddingStore store;
  EmbeddingService service(&store, &registry);
  EmbeddingTableSpec spec =
      Spec(OptimizerSpec::SGD, 1.0f, EmbeddingInitializer::ZERO);
  spec.set_num_shards(1);
  REQUIRE(*store.CreateTable("job-7", spec, {0}));
  std::vector<float> g(3 * 4, 1.0f);
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(3);
  t.add_shape(4);
  t.set_data(g.data(), g.size() * 4);
  REQUIRE(store.Push("job-7", "emb", {1, 2, 3}, t).ok());
  const std::string text = registry.RenderPrometheusText();
  // For `promtool check metrics` by hand: bazel-testlogs/.../outputs.
  if (const char* out = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR")) {
    std::ofstream(std::string(out) + "/embedding_metrics.txt") << text;
  }
  CHECK(text.find("# TYPE psd_server_embedding_table_live_rows gauge") !=
        std::string::npos);
  CHECK(text.find("psd_server_embedding_table_live_rows{table=\"job-7/emb\"} 3") !=
        std::string::npos);
  const auto usage = store.Usage();
  REQUIRE(usage.size() == 1u);
  CHECK(text.find("psd_server_embedding_table_bytes{table=\"job-7/emb\"} " +
                  std::to_string(usage[0].bytes)) != std::string::npos);
}

}  // namespace
}  // namespace psd
