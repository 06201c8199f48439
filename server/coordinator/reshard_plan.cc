#include "server/coordinator/reshard_plan.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace psd {

std::map<int32_t, int64_t> ShardWeightBytes(const Placement& placement) {
  std::map<int32_t, int64_t> bytes;
  for (const Partition& p : placement.partitions()) {
    bytes[p.shard()] += p.num_elements() * int64_t{4};
  }
  return bytes;
}

namespace {

// Checks the lists: no empty id, none twice, none in both.
absl::Status CheckLists(const ReshardJobRequest& request) {
  if (request.add_servers().empty() && request.drain_servers().empty()) {
    return absl::InvalidArgumentError(
        "add_servers, drain_servers: both empty; name a server to add or "
        "to drain");
  }
  std::set<std::string> seen;
  for (const auto* list : {&request.add_servers(), &request.drain_servers()}) {
    const char* field =
        list == &request.add_servers() ? "add_servers" : "drain_servers";
    for (const std::string& id : *list) {
      if (id.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": an empty server id"));
      }
      if (!seen.insert(id).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": server ", id, " is named twice (in add_servers and ",
            "drain_servers together)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ReplicaMove>> PlanReshard(
    const Assignment& assignment, const std::set<std::string>& registered,
    const ReshardJobRequest& request) {
  if (absl::Status lists = CheckLists(request); !lists.ok()) return lists;
  const std::map<int32_t, int64_t> shard_bytes =
      ShardWeightBytes(assignment.placement());
  auto bytes_of = [&](int32_t shard) {
    auto it = shard_bytes.find(shard);
    return it == shard_bytes.end() ? int64_t{0} : it->second;
  };

  // Who holds what now; the bytes each server holds.
  std::map<int32_t, std::vector<std::string>> holders;  // primary first
  std::map<std::string, int64_t> load;
  for (const ShardReplicas& r : assignment.shards()) {
    std::vector<std::string>& h = holders[r.shard()];
    if (!r.primary().empty()) h.push_back(r.primary());
    h.insert(h.end(), r.backups().begin(), r.backups().end());
    for (const std::string& id : h) load[id] += bytes_of(r.shard());
  }
  for (const std::string& id : request.add_servers()) {
    if (!registered.count(id)) {
      return absl::NotFoundError(absl::StrCat(
          "add_servers: server ", id,
          " is not registered (psd_ctl view lists the servers)"));
    }
    load.emplace(id, 0);
  }
  const std::set<std::string> drained(request.drain_servers().begin(),
                                      request.drain_servers().end());
  for (const std::string& id : drained) {
    if (!load.count(id)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "drain_servers: server ", id, " holds no replica of job ",
          assignment.job_id()));
    }
  }
  std::map<std::string, int64_t> targets;  // the job's servers afterwards
  for (const auto& [id, bytes] : load) {
    if (!drained.count(id)) targets[id] = bytes;
  }

  std::vector<ReplicaMove> moves;
  auto move = [&](int32_t shard, const std::string& from,
                  const std::string& to) {
    std::vector<std::string>& h = holders[shard];
    std::replace(h.begin(), h.end(), from, to);
    const int64_t b = bytes_of(shard);
    if (targets.count(from)) targets[from] -= b;
    targets[to] += b;
    ReplicaMove m;
    m.set_shard(shard);
    m.set_from_server(from);
    m.set_to_server(to);
    m.set_bytes(b);
    moves.push_back(std::move(m));
  };
  auto holds = [&](int32_t shard, const std::string& id) {
    const std::vector<std::string>& h = holders[shard];
    return std::find(h.begin(), h.end(), id) != h.end();
  };

  // 1. Every replica on a drained server goes to the lightest server that
  // holds none of its shard.
  for (auto& [shard, h] : holders) {
    const std::vector<std::string> before = h;
    for (const std::string& from : before) {
      if (!drained.count(from)) continue;
      std::string best;
      for (const auto& [id, bytes] : targets) {
        if (holds(shard, id)) continue;
        if (best.empty() || bytes < targets[best]) best = id;
      }
      if (best.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "drain_servers: draining would leave shard ", shard, " with ",
            "fewer than its ", before.size(), " replicas: only ",
            targets.size(), " of the job's servers would remain"));
      }
      move(shard, from, best);
    }
  }

  // 2. Balance: from the heaviest server to the lightest while that lowers
  // the spread. Each move strictly lowers the sum of squared loads, so this
  // ends; the bound is a guard.
  for (int guard = 0; guard < 10000 && targets.size() > 1; ++guard) {
    auto [lo, hi] = std::minmax_element(
        targets.begin(), targets.end(),
        [](const auto& a, const auto& b) { return a.second < b.second; });
    const std::string heavy = hi->first, light = lo->first;
    const int64_t gap = hi->second - lo->second;
    int32_t pick = -1;
    for (const auto& [shard, h] : holders) {
      const int64_t b = bytes_of(shard);
      if (b <= 0 || b >= gap || !holds(shard, heavy) || holds(shard, light)) {
        continue;
      }
      if (pick < 0 || b > bytes_of(pick)) pick = shard;
    }
    if (pick < 0) break;
    move(pick, heavy, light);
  }
  return moves;
}

}  // namespace psd
