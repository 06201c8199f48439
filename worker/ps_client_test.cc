// ParameterClient's push and pull paths against in-process fake parameter
// servers on 127.0.0.1:0 that record every PushRequest and answer pulls:
// the overlapped push (BeginPush / PushTensor / FinishPush) sends byte for
// byte the requests of a plain Push, whatever order the tensors come in,
// and a pull into caller buffers gives exactly the vector pull's values.
#include "worker/ps_client.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/synchronization/mutex.h"
#include "common/placement.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "common/tensor.h"

namespace psd {
namespace {

// Records each push's serialized request by partition id (a request of
// several partitions as one request per partition); can refuse the first
// call of each first partition with UNAVAILABLE. Answers a pull of a
// partition p of n floats (SetPartitionSizes) with the values
// PullValue(p, 0..n), at step kPullStep and clock kPullClock + p.
// Thread-safe.
constexpr int64_t kPullStep = 41;
constexpr int64_t kPullClock = 17;

// Distinct, non-round values (sign, fraction and exponent all vary), so a
// slice copied to the wrong place or truncated shows.
float PullValue(int32_t partition, int64_t j) {
  return static_cast<float>(std::sin(0.37 * partition + 0.011 * j) *
                            std::pow(2.0, j % 7 - 3));
}

class RecordingServer : public ParameterServer::Service {
 public:
  grpc::Status Pull(grpc::ServerContext*, const PullRequest* request,
                    PullResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++pulls_;
    response->set_step(kPullStep);
    response->set_clock(kPullClock + request->partition_ids(0));
    for (int32_t id : request->partition_ids()) {
      auto size = sizes_.find(id);
      if (size == sizes_.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such partition");
      }
      std::vector<float> values(size->second);
      for (int64_t j = 0; j < size->second; ++j) values[j] = PullValue(id, j);
      PartitionTensor* out = response->add_parameters();
      out->set_partition_id(id);
      if (request->dtype() == BFLOAT16) {
        EncodeBfloat16(values.data(), size->second, out->mutable_tensor());
      } else {
        EncodeFloat32(values.data(), size->second, out->mutable_tensor());
      }
    }
    return grpc::Status::OK;
  }
  void SetPartitionSizes(std::map<int32_t, int64_t> sizes) {
    absl::MutexLock lock(&mu_);
    sizes_ = std::move(sizes);
  }
  int pulls() {
    absl::MutexLock lock(&mu_);
    return pulls_;
  }

  grpc::Status Push(grpc::ServerContext*, const PushRequest* request,
                    PushResponse*) override {
    absl::MutexLock lock(&mu_);
    const int32_t first = request->gradients(0).partition_id();
    if (fail_first_ && !refused_[first]++) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try again");
    }
    // Per partition: the request less the other partitions' gradients.
    for (const PartitionTensor& g : request->gradients()) {
      PushRequest one = *request;
      one.clear_gradients();
      *one.add_gradients() = g;
      pushes_[g.partition_id()] = one.SerializeAsString();
    }
    ++calls_;
    return grpc::Status::OK;
  }

  // Partition id -> the last request taken; clears them.
  std::map<int32_t, std::string> Take() {
    absl::MutexLock lock(&mu_);
    calls_ = 0;
    return std::move(pushes_);
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  void FailFirstPushes() {
    absl::MutexLock lock(&mu_);
    fail_first_ = true;
  }

 private:
  absl::Mutex mu_;
  std::map<int32_t, std::string> pushes_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, int> refused_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool fail_first_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int32_t, int64_t> sizes_ ABSL_GUARDED_BY(mu_);
  int pulls_ ABSL_GUARDED_BY(mu_) = 0;
};

// Two recording servers, each the primary of one shard of a job with three
// tensors cut into 64-float partitions, and a client of rank 1 (one call
// per shard, or per partition).
struct Cluster {
  explicit Cluster(DType dtype = FLOAT32, DType parameter_dtype = FLOAT32,
                   bool call_per_shard = true) {
    std::vector<ParameterSpec> specs(3);
    specs[0].set_name("layer0.weight");
    specs[0].add_shape(20);
    specs[0].add_shape(30);  // 600 floats: 10 partitions
    specs[1].set_name("layer0.bias");
    specs[1].add_shape(30);
    specs[2].set_name("layer1.weight");
    specs[2].add_shape(130);
    auto placement = BuildPlacement(specs, 64 * sizeof(float), 2);
    REQUIRE(placement.ok());
    num_partitions = placement->partitions_size();
    partitions.assign(placement->partitions().begin(),
                      placement->partitions().end());
    std::map<int32_t, int64_t> partition_sizes;
    for (const Partition& part : placement->partitions()) {
      partition_sizes[part.id()] = part.num_elements();
    }
    for (RecordingServer& server : servers) {
      server.SetPartitionSizes(partition_sizes);
    }
    Assignment assignment;
    assignment.set_job_id("j");
    assignment.set_rank(1);
    assignment.mutable_config()->set_gradient_dtype(dtype);
    assignment.mutable_config()->set_parameter_dtype(parameter_dtype);
    *assignment.mutable_placement() = *placement;
    assignment.set_view_epoch(3);
    for (int s = 0; s < 2; ++s) {
      auto rpc = StartRpcServer(RpcServerOptions(), {&servers[s]});
      REQUIRE(rpc.ok());
      rpcs.push_back(std::move(rpc->server));
      ShardReplicas* shard = assignment.add_shards();
      shard->set_shard(s);
      shard->set_primary("ps" + std::to_string(s));
      ServerInfo* server = assignment.add_servers();
      server->set_id("ps" + std::to_string(s));
      server->set_address("127.0.0.1:" + std::to_string(rpc->port));
    }
    ParameterClientOptions options;
    options.retries = 2;
    options.call_per_shard = call_per_shard;
    auto c = ParameterClient::Create(assignment, options);
    REQUIRE(c.ok());
    client = std::move(*c);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    for (int64_t n : client->parameter_sizes()) {
      grads.emplace_back(n);
      for (float& g : grads.back()) g = normal(rng);
    }
  }
  ~Cluster() {
    for (auto& rpc : rpcs) rpc->Shutdown();
  }

  // Every request taken by both servers, by partition id.
  // Calls taken since the last Take.
  int Calls() { return servers[0].calls() + servers[1].calls(); }

  std::map<int32_t, std::string> Take() {
    std::map<int32_t, std::string> all = servers[0].Take();
    for (auto& [id, bytes] : servers[1].Take()) all[id] = bytes;
    return all;
  }

  absl::Status PushOverlapped(int64_t step, const std::vector<int32_t>& order) {
    if (absl::Status s = client->BeginPush(step); !s.ok()) return s;
    for (int32_t t : order) {
      // An error is also returned by FinishPush.
      client->PushTensor(t, grads[t].data(), grads[t].size()).IgnoreError();
    }
    return client->FinishPush();
  }

  RecordingServer servers[2];
  std::vector<std::unique_ptr<grpc::Server>> rpcs;
  std::unique_ptr<ParameterClient> client;
  std::vector<std::vector<float>> grads;
  int num_partitions = 0;
  std::vector<Partition> partitions;
};

TEST_CASE("ParameterClient: an overlapped push sends a plain push's bytes",
          "[ps_client]") {
  std::map<int32_t, std::string> per_shard;
  for (bool call_per_shard : {true, false}) {
    for (DType dtype : {FLOAT32, BFLOAT16}) {
      Cluster cluster(dtype, FLOAT32, call_per_shard);
      REQUIRE(cluster.client->Push(5, cluster.grads).ok());
      // One call per shard (2), or per partition.
      CHECK(cluster.Calls() == (call_per_shard ? 2 : cluster.num_partitions));
      const std::map<int32_t, std::string> plain = cluster.Take();
      REQUIRE(static_cast<int>(plain.size()) == cluster.num_partitions);
      // Backward order (last tensor first), then another order.
      for (const std::vector<int32_t>& order :
           {std::vector<int32_t>{2, 0, 1}, std::vector<int32_t>{1, 2, 0}}) {
        REQUIRE(cluster.PushOverlapped(5, order).ok());
        CHECK(cluster.Take() == plain);
      }
      // Each partition's bytes are the same either way.
      if (dtype == FLOAT32 && call_per_shard) per_shard = plain;
      if (dtype == FLOAT32 && !call_per_shard) CHECK(plain == per_shard);
    }
  }
}

TEST_CASE("ParameterClient: an overlapped push retries UNAVAILABLE calls",
          "[ps_client]") {
  Cluster cluster;
  REQUIRE(cluster.client->Push(2, cluster.grads).ok());
  const std::map<int32_t, std::string> plain = cluster.Take();
  Cluster refusing;
  refusing.servers[0].FailFirstPushes();
  refusing.servers[1].FailFirstPushes();
  REQUIRE(refusing.PushOverlapped(2, {2, 1, 0}).ok());
  // Every partition was refused once, then taken: the same bytes.
  CHECK(refusing.Take() == plain);
}

TEST_CASE("ParameterClient: misuse of the overlapped push is refused",
          "[ps_client]") {
  Cluster cluster;
  ParameterClient& client = *cluster.client;
  const std::vector<float>& g0 = cluster.grads[0];
  CHECK(client.PushTensor(0, g0.data(), g0.size()).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(client.FinishPush().code() == absl::StatusCode::kFailedPrecondition);

  REQUIRE(client.BeginPush(1).ok());
  CHECK(client.BeginPush(1).code() == absl::StatusCode::kFailedPrecondition);
  CHECK(client.PushTensor(3, g0.data(), g0.size()).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(client.FinishPush().code() == absl::StatusCode::kInvalidArgument);

  // A tensor missing: nothing is re-sent, and the push is closed.
  REQUIRE(client.BeginPush(1).ok());
  REQUIRE(client.PushTensor(0, g0.data(), g0.size()).ok());
  CHECK(client.PushTensor(0, g0.data(), g0.size()).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(client.FinishPush().code() == absl::StatusCode::kFailedPrecondition);

  REQUIRE(client.BeginPush(1).ok());
  CHECK(client.PushTensor(1, g0.data(), g0.size()).code() ==
        absl::StatusCode::kInvalidArgument);  // 600 floats for a 30-float bias
  CHECK(client.FinishPush().code() == absl::StatusCode::kInvalidArgument);

  cluster.Take();
  REQUIRE(cluster.PushOverlapped(1, {2, 1, 0}).ok());
  CHECK(static_cast<int>(cluster.Take().size()) == cluster.num_partitions);
}

TEST_CASE("ParameterClient: a pull into caller buffers gives the vector "
          "pull's values",
          "[ps_client]") {
  Cluster cluster;
  ParameterClient& client = *cluster.client;
  std::vector<std::vector<float>> want;
  int64_t want_step = -1, want_clock = -1;
  REQUIRE(client.Pull(3, /*latest=*/false, &want, &want_step, &want_clock)
              .ok());
  REQUIRE(want.size() == client.parameter_sizes().size());
  CHECK(want_step == kPullStep);
  CHECK(want_clock == kPullClock);  // The lowest partition's: id 0.
  // The vector pull put each partition's values at its offset.
  for (const Partition& part : cluster.partitions) {
    for (int64_t j = 0; j < part.num_elements(); ++j) {
      REQUIRE(want[part.parameter()][part.offset() + j] ==
              PullValue(part.id(), j));
    }
  }

  // Caller buffers: one allocation cut into the tensors, each with a guard
  // element after it; everything starts as NaN, so any float left
  // unwritten or written past its tensor shows.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  size_t total = 0;
  for (int64_t n : client.parameter_sizes()) total += n + 1;
  std::vector<float> storage(total, nan);
  std::vector<float*> out;
  size_t at = 0;
  for (int64_t n : client.parameter_sizes()) {
    out.push_back(storage.data() + at);
    at += n + 1;
  }
  for (bool latest : {false, true}) {
    int64_t step = -1, clock = -1;
    REQUIRE(client.Pull(3, latest, out, &step, &clock).ok());
    CHECK(step == want_step);
    CHECK(clock == want_clock);
    for (size_t t = 0; t < want.size(); ++t) {
      INFO("tensor " << t);
      const size_t n = want[t].size();
      CHECK(std::memcmp(out[t], want[t].data(), n * sizeof(float)) == 0);
      CHECK(std::isnan(out[t][n]));  // The guard is untouched.
    }
  }
  // The vector pull is unchanged by the pointer pull and vice versa: pull
  // into vectors again (resized from empty) and compare.
  std::vector<std::vector<float>> again;
  REQUIRE(client.Pull(3, false, &again).ok());
  CHECK(again == want);
}

TEST_CASE("ParameterClient: parameter_dtype BFLOAT16 pulls each value "
          "rounded to bfloat16",
          "[ps_client][bfloat16]") {
  Cluster cluster(FLOAT32, BFLOAT16);
  std::vector<std::vector<float>> pulled;
  REQUIRE(cluster.client->Pull(3, /*latest=*/false, &pulled).ok());
  for (const Partition& part : cluster.partitions) {
    std::vector<float> values(part.num_elements());
    for (int64_t j = 0; j < part.num_elements(); ++j) {
      values[j] = PullValue(part.id(), j);
    }
    Tensor rounded;
    EncodeBfloat16(values.data(), part.num_elements(), &rounded);
    std::vector<float> want(part.num_elements());
    REQUIRE(DecodeToFloat32(rounded, part.num_elements(), want.data(), "w")
                .ok());
    INFO("partition " << part.id());
    CHECK(std::memcmp(pulled[part.parameter()].data() + part.offset(),
                      want.data(), want.size() * sizeof(float)) == 0);
    // Rounded, not the float32 values (PullValue has low mantissa bits).
    CHECK(std::memcmp(want.data(), values.data(),
                      want.size() * sizeof(float)) != 0);
  }
}

TEST_CASE("ParameterClient: a pull into caller buffers refuses a wrong "
          "buffer count or a null buffer before calling",
          "[ps_client]") {
  Cluster cluster;
  ParameterClient& client = *cluster.client;
  std::vector<std::vector<float>> vectors;
  REQUIRE(client.Pull(0, false, &vectors).ok());
  const int pulls = cluster.servers[0].pulls() + cluster.servers[1].pulls();
  std::vector<float*> out;
  for (auto& v : vectors) out.push_back(v.data());

  std::vector<float*> too_few(out.begin(), out.end() - 1);
  CHECK(client.Pull(0, false, too_few).code() ==
        absl::StatusCode::kInvalidArgument);
  std::vector<float*> with_null = out;
  with_null[1] = nullptr;
  const absl::Status s = client.Pull(0, false, with_null);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("layer0.bias") != std::string::npos);
  // Refused before any RPC.
  CHECK(cluster.servers[0].pulls() + cluster.servers[1].pulls() == pulls);
}

}  // namespace
}  // namespace psd
