// Reading and editing an Assignment's replica sets (shard -> primary and
// backups, by server id). Private to the coordinator.
#ifndef PSD_SERVER_COORDINATOR_REPLICA_SETS_H_
#define PSD_SERVER_COORDINATOR_REPLICA_SETS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/proto.h"

namespace psd {

// The shards `server_id` holds in the assignment, as primary or backup.
std::vector<int32_t> ShardsOf(const Assignment& assignment,
                              const std::string& server_id);

// "shard 2 (its primary)": which replicas of which shards `server_id`
// holds, for messages.
std::string ShardsHeldBy(const Assignment& assignment,
                         const std::string& server_id);

// Takes the servers in `gone` (ids) out of the assignment's replica sets
// and server list; a shard whose primary goes gets its first remaining
// backup as primary, or, with `orphaned`, no primary and an entry there
// (shard -> the old primary) for RunFailovers to choose.
void RemoveServers(const std::set<std::string>& gone, Assignment* assignment,
                   std::map<int32_t, std::string>* orphaned);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REPLICA_SETS_H_
