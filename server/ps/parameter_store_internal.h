// What the files of the parameter_store library share and nothing else may
// use: one job's state (ParameterStore::Job), the roles of its shards, the
// pulls waiting on it, and the checks and helpers several files need.
#ifndef PSD_SERVER_PS_PARAMETER_STORE_INTERNAL_H_
#define PSD_SERVER_PS_PARAMETER_STORE_INTERNAL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/proto.h"
#include "server/ps/parameter_store.h"
#include "server/ps/partition_state.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {

// The role of a server for one shard of a job, from the coordinator's view
// (not psd::Role, the role of a peer's certificate).
enum class ReplicaRole { kPrimary, kBackup, kJoining, kNone };

inline const char* ReplicaRoleName(ReplicaRole role) {
  switch (role) {
    case ReplicaRole::kPrimary: return "PRIMARY";
    case ReplicaRole::kBackup: return "BACKUP";
    case ReplicaRole::kJoining: return "JOINING";
    case ReplicaRole::kNone: return "NONE";
  }
  return "?";
}

struct ShardRole {
  ReplicaRole role = ReplicaRole::kPrimary;
  // Primary: addresses of the view's backups, and of backups still joining
  // (state transfer under way or done, not yet in the view).
  std::vector<std::string> backups;
  std::set<std::string> joiners;
};

// A pull waiting for its step.
struct Waiter {
  PullRequest request;
  PullResponse* response;
  ParameterStore::PullDone done;
};

// Buckets of ServerJobStatus.staleness_counts.
constexpr int kStalenessBuckets = 16;

// Callbacks to run once the job's lock is released.
using Completions = std::vector<std::pair<ParameterStore::PullDone, absl::Status>>;

inline void RunCompletions(Completions* completions) {
  for (auto& [done, status] : *completions) done(std::move(status));
  completions->clear();
}

struct ParameterStore::Job {
  // Constant after construction.
  std::string id;
  JobConfig config;
  std::string config_bytes;  // serialized config, to compare re-creates
  Placement placement;
  // Some parameter is under ASP or SSP (HasAsyncParameters).
  bool any_async = false;
  // CreateJobRequest.submitted_by.
  std::string submitted_by;

  absl::Mutex mu;
  // ASP/SSP: the largest staleness seen by an answered pull, and pulls
  // answered by staleness (the last bucket: that or more).
  int64_t max_staleness ABSL_GUARDED_BY(mu) = 0;
  std::vector<int64_t> staleness_counts ABSL_GUARDED_BY(mu) =
      std::vector<int64_t>(kStalenessBuckets);
  int64_t view_epoch ABSL_GUARDED_BY(mu) = 0;
  // ServerInfo.identity of the view's servers (CheckReplicaPeer); empty
  // when the view carries none.
  std::set<std::string> peer_identities ABSL_GUARDED_BY(mu);
  // Shards held, ascending, and this server's role for each.
  std::vector<int32_t> shards ABSL_GUARDED_BY(mu);
  std::map<int32_t, ShardRole> roles ABSL_GUARDED_BY(mu);
  // Snapshots being captured, by step: filled partition by partition as
  // each reaches the step, handed to the sink when complete.
  std::map<int64_t, ShardSnapshot> captures ABSL_GUARDED_BY(mu);
  // Steps asked for by RequestSnapshot, besides the policy's.
  std::set<int64_t> requested_snapshots ABSL_GUARDED_BY(mu);
  bool dropped ABSL_GUARDED_BY(mu) = false;
  // Training is over: parameters kept for export, training state freed.
  bool finished ABSL_GUARDED_BY(mu) = false;
  std::map<int32_t, PartitionState> partitions ABSL_GUARDED_BY(mu);
  // Pulls waiting for a step, by pull id.
  std::map<uint64_t, Waiter> waiters ABSL_GUARDED_BY(mu);
};

// The non-empty ServerInfo.identity of `servers` (Job::peer_identities).
std::set<std::string> PeerIdentities(
    const google::protobuf::RepeatedPtrField<ServerInfo>& servers);

// A push's or pull's view epoch against the server's.
inline absl::Status CheckEpoch(const ParameterStore::Job& job, int64_t epoch,
                               const char* what)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (epoch < job.view_epoch) {
    return absl::AbortedError(absl::StrCat(
        "view_epoch: ", what, " is for epoch ", epoch,
        ", this server is in epoch ", job.view_epoch,
        " (the view changed: refresh it)"));
  }
  if (epoch > job.view_epoch) {
    return absl::UnavailableError(absl::StrCat(
        "view_epoch: ", what, " is for epoch ", epoch,
        ", this server is still in epoch ", job.view_epoch, "; retry"));
  }
  return absl::OkStatus();
}

// The partition of gradients[i] of a push or a replication message.
// Errors: FAILED_PRECONDITION "gradients[i].partition_id: ..." when this
// server does not hold it.
inline absl::StatusOr<const PartitionState*> HeldPartition(
    const ParameterStore::Job& job, const PartitionTensor& gradient, int i)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  auto it = job.partitions.find(gradient.partition_id());
  if (it == job.partitions.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("gradients[", i, "].partition_id: partition ",
                     gradient.partition_id(), " is not held by this server"));
  }
  return &it->second;
}

// Pushes and pulls go to a shard's primary only.
inline absl::Status CheckPrimary(const ParameterStore::Job& job,
                                 const PartitionState& state,
                                 int32_t partition_id)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  const ReplicaRole role = job.roles.at(state.shard).role;
  if (role == ReplicaRole::kPrimary) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat(
      "partition ", partition_id, " (shard ", state.shard,
      "): this server is its ", ReplicaRoleName(role), " in view epoch ",
      job.view_epoch, ", not its primary (refresh the view)"));
}

// replication.cc: the replication of the update in state.sum (the
// partition's next update), with the replica check when it is due (every
// `check_every` steps).
std::shared_ptr<ReplicateRequest> MakeReplicate(
    const ParameterStore::Job& job, int32_t partition_id,
    const PartitionState& state, int64_t check_every)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu);
// The same for one more partition of a BSP request made by MakeReplicate
// for the same step (its gradient and, when due, its checksum).
void AppendReplicate(const ParameterStore::Job& job, int32_t partition_id,
                     const PartitionState& state, int64_t check_every,
                     ReplicateRequest* replicate)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu);

// replica_check.cc: the replica check's checksum of a partition's state:
// CRC-32 (zlib) of its weights, its optimizer slots and (ASP/SSP) its
// clocks, as their bytes in memory (little-endian on every platform psd
// builds for).
uint32_t StateChecksum(const PartitionState& state);

// replica_check.cc: whether the replication of update `step` carries the
// replica check: every `every` steps (0: never) and at the snapshot steps
// of the job's policy.
bool ReplicaCheckDue(const ParameterStore::Job& job, int64_t step,
                     int64_t every);

// replica_check.cc: the replica check: the oldest verified step over the
// partitions the server leads (all it holds when it leads none).
int64_t VerifiedStep(const ParameterStore::Job& job)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu);

}  // namespace psd

#endif  // PSD_SERVER_PS_PARAMETER_STORE_INTERNAL_H_
