// Live resharding's plan (JobService.ReshardJob, issue 16): which replicas
// of a running job's shards move to which servers when servers are added
// to the job or drained from it. A pure function of the job's view, so it
// is tested alone (reshard_plan_test.cc); CoordinatorState carries the
// moves out (resharding.cc).
#ifndef PSD_SERVER_COORDINATOR_RESHARD_PLAN_H_
#define PSD_SERVER_COORDINATOR_RESHARD_PLAN_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

// Bytes of each shard's weights (float32: 4 bytes per element of its
// partitions, from the placement), by shard. A shard's optimizer slots
// scale with its weights, so these balance the full state too.
std::map<int32_t, int64_t> ShardWeightBytes(const Placement& placement);

// Plans the moves for `request` over the job's view `assignment`, given the
// ids of the registered servers.
//
// The job's servers afterwards are its current ones (those holding a
// replica) plus add_servers, less drain_servers. First every replica on a
// drained server moves to the server that holds no replica of that shard
// and the fewest bytes (ties: the smaller id); then, while it lowers the
// spread, a replica moves from the server with the most bytes to the one
// with the fewest (the largest shard that fits: a move that leaves the
// receiver below the sender). Every shard keeps its replica count, on
// distinct servers.
//
// Errors (nothing is planned): INVALID_ARGUMENT naming the field (both
// lists empty; an empty id; an id named twice, or in both lists);
// NOT_FOUND (add_servers: a server that is not registered);
// FAILED_PRECONDITION (drain_servers: a server that holds no replica of
// the job; a drain that would leave a shard without enough servers for its
// replicas, naming the shard).
absl::StatusOr<std::vector<ReplicaMove>> PlanReshard(
    const Assignment& assignment, const std::set<std::string>& registered,
    const ReshardJobRequest& request);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_RESHARD_PLAN_H_
