#include "server/coordinator/replica_sets.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {

std::vector<int32_t> ShardsOf(const Assignment& assignment,
                              const std::string& server_id) {
  std::vector<int32_t> shards;
  for (const ShardReplicas& r : assignment.shards()) {
    if (r.primary() == server_id ||
        std::count(r.backups().begin(), r.backups().end(), server_id) > 0) {
      shards.push_back(r.shard());
    }
  }
  return shards;
}

std::string ShardsHeldBy(const Assignment& assignment,
                         const std::string& server_id) {
  std::vector<std::string> held;
  for (const ShardReplicas& r : assignment.shards()) {
    if (r.primary() == server_id) {
      held.push_back(absl::StrCat(r.shard(), " (primary)"));
    } else if (std::count(r.backups().begin(), r.backups().end(), server_id)) {
      held.push_back(absl::StrCat(r.shard(), " (backup)"));
    }
  }
  return held.empty() ? "no shard"
                      : absl::StrCat(held.size() == 1 ? "shard " : "shards ",
                                     absl::StrJoin(held, ", "));
}

void RemoveServers(const std::set<std::string>& gone, Assignment* assignment,
                   std::map<int32_t, std::string>* orphaned) {
  for (ShardReplicas& r : *assignment->mutable_shards()) {
    auto* backups = r.mutable_backups();
    backups->erase(std::remove_if(backups->begin(), backups->end(),
                                  [&](const std::string& b) {
                                    return gone.count(b) > 0;
                                  }),
                   backups->end());
    if (!gone.count(r.primary())) continue;
    if (orphaned != nullptr) {
      (*orphaned)[r.shard()] = r.primary();
      r.clear_primary();
    } else if (backups->empty()) {
      r.clear_primary();
    } else {
      r.set_primary(backups->Get(0));
      backups->erase(backups->begin());
    }
  }
  auto* servers = assignment->mutable_servers();
  servers->erase(std::remove_if(servers->begin(), servers->end(),
                                [&](const ServerInfo& s) {
                                  return gone.count(s.id()) > 0;
                                }),
                 servers->end());
}

}  // namespace psd
