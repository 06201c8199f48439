#include "server/coordinator/reshard_plan.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"

namespace psd {
namespace {

// Shards 0..n-1 of 100 float32 elements (400 bytes) each; shard k's
// replicas are replicas[k], primary first.
Assignment MakeAssignment(const std::vector<std::vector<std::string>>& replicas) {
  Assignment a;
  a.set_job_id("job-1");
  for (size_t k = 0; k < replicas.size(); ++k) {
    Partition* p = a.mutable_placement()->add_partitions();
    p->set_id(static_cast<int32_t>(k));
    p->set_num_elements(100);
    p->set_shard(static_cast<int32_t>(k));
    ShardReplicas* r = a.add_shards();
    r->set_shard(static_cast<int32_t>(k));
    r->set_primary(replicas[k][0]);
    for (size_t i = 1; i < replicas[k].size(); ++i) r->add_backups(replicas[k][i]);
  }
  return a;
}

ReshardJobRequest Request(std::vector<std::string> add,
                          std::vector<std::string> drain) {
  ReshardJobRequest r;
  r.set_job_id("job-1");
  for (auto& id : add) r.add_add_servers(id);
  for (auto& id : drain) r.add_drain_servers(id);
  return r;
}

// Applies the moves in order, checking each is possible; returns shard ->
// holders.
std::map<int32_t, std::vector<std::string>> Apply(
    const Assignment& a, const std::vector<ReplicaMove>& moves) {
  std::map<int32_t, std::vector<std::string>> holders;
  for (const ShardReplicas& r : a.shards()) {
    holders[r.shard()].push_back(r.primary());
    for (const auto& b : r.backups()) holders[r.shard()].push_back(b);
  }
  for (const ReplicaMove& m : moves) {
    auto& h = holders[m.shard()];
    auto from = std::find(h.begin(), h.end(), m.from_server());
    REQUIRE(from != h.end());
    REQUIRE(std::find(h.begin(), h.end(), m.to_server()) == h.end());
    CHECK(m.bytes() == 400);
    *from = m.to_server();
  }
  return holders;
}

std::map<std::string, int> Load(
    const std::map<int32_t, std::vector<std::string>>& holders) {
  std::map<std::string, int> load;
  for (const auto& [shard, h] : holders) {
    for (const auto& id : h) ++load[id];
  }
  return load;
}

const std::set<std::string> kRegistered = {"a", "b", "c", "d", "e"};

TEST_CASE("PlanReshard: adding a server moves replicas onto it, balanced",
          "[reshard]") {
  Assignment a = MakeAssignment({{"a", "b"}, {"b", "c"}, {"c", "a"}});
  auto moves = PlanReshard(a, kRegistered, Request({"d"}, {}));
  REQUIRE(moves.ok());
  REQUIRE(moves->size() == 1);
  CHECK(moves->at(0).to_server() == "d");
  auto load = Load(Apply(a, *moves));
  CHECK(load["d"] == 1);
  int most = 0, least = 100;
  for (auto& [id, n] : load) most = std::max(most, n), least = std::min(least, n);
  CHECK(most - least <= 1);
}

TEST_CASE("PlanReshard: a drained server's replicas go to the others",
          "[reshard]") {
  Assignment a = MakeAssignment({{"a", "b"}, {"b", "c"}, {"c", "a"}});
  auto moves = PlanReshard(a, kRegistered, Request({}, {"c"}));
  REQUIRE(moves.ok());
  auto holders = Apply(a, *moves);
  for (const auto& [shard, h] : holders) {
    INFO("shard " << shard);
    CHECK(h.size() == 2);
    CHECK(std::set<std::string>(h.begin(), h.end()).size() == 2);
    CHECK(std::count(h.begin(), h.end(), "c") == 0);
  }
  auto load = Load(holders);
  CHECK(load["a"] == 3);
  CHECK(load["b"] == 3);
}

TEST_CASE("PlanReshard: add one and drain another at once", "[reshard]") {
  Assignment a = MakeAssignment({{"a", "b"}, {"b", "c"}, {"c", "a"}});
  auto moves = PlanReshard(a, kRegistered, Request({"d"}, {"c"}));
  REQUIRE(moves.ok());
  auto load = Load(Apply(a, *moves));
  CHECK(load.count("c") == 0);
  CHECK(load["a"] == 2);
  CHECK(load["b"] == 2);
  CHECK(load["d"] == 2);
}

TEST_CASE("PlanReshard: bad requests are refused, naming the field",
          "[reshard]") {
  Assignment a = MakeAssignment({{"a", "b"}, {"b", "a"}});
  auto none = PlanReshard(a, kRegistered, Request({}, {}));
  CHECK(none.status().code() == absl::StatusCode::kInvalidArgument);
  auto twice = PlanReshard(a, kRegistered, Request({"c"}, {"c"}));
  CHECK(twice.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(twice.status().message(), "named twice"));
  auto empty = PlanReshard(a, kRegistered, Request({""}, {}));
  CHECK(empty.status().code() == absl::StatusCode::kInvalidArgument);
  auto unknown = PlanReshard(a, kRegistered, Request({"zz"}, {}));
  CHECK(unknown.status().code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(unknown.status().message(), "add_servers: server zz"));
  auto stranger = PlanReshard(a, kRegistered, Request({}, {"e"}));
  CHECK(stranger.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(stranger.status().message(),
                          "drain_servers: server e holds no replica"));
  // R=2 on two servers: draining one leaves each shard one server short.
  auto short_of = PlanReshard(a, kRegistered, Request({}, {"a"}));
  CHECK(short_of.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(short_of.status().message(), "shard 0"));
}

TEST_CASE("PlanReshard: a balanced job with nothing to gain plans nothing",
          "[reshard]") {
  Assignment a = MakeAssignment({{"a"}, {"b"}});
  auto moves = PlanReshard(a, kRegistered, Request({"b"}, {}));
  REQUIRE(moves.ok());
  CHECK(moves->empty());
}

}  // namespace
}  // namespace psd
