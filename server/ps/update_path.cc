// ParameterStore's update path: a push is validated and taken (Push), its
// partition's rule (consistency_rule.h) says when an update is ready, the
// update is started (StartUpdate: replicated to the shard's backups, or
// applied at once without them), applied (ApplyStep) and followed by the
// queued one (StartQueued); Settle runs what a call left to do after the
// job's lock.
#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/consistency_rule.h"
#include "server/ps/optimizer.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"

namespace psd {

absl::StatusOr<PushResponse> ParameterStore::Push(const PushRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  const int32_t rank = request.worker_rank();
  if (rank < 0 || rank >= job->config.workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_rank: ", rank, " outside [0, ",
                     job->config.workers(), ")"));
  }
  if (request.step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0, got ", request.step()));
  }
  // Finite values: checked before taking the lock (CPU work on request data).
  for (int i = 0; i < request.gradients_size(); ++i) {
    const Tensor& t = request.gradients(i).tensor();
    if (t.dtype() != FLOAT32 || t.data().size() % sizeof(float) != 0) continue;
    const int64_t bad = FindNonFinite(Float32Data(t), t.data().size() / 4);
    if (bad >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradients[", i, "] (partition ", request.gradients(i).partition_id(),
          "): element ", bad, " is ", Float32Data(t)[bad],
          "; non-finite gradients are never applied"));
    }
  }

  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  PushResponse response;
  {
  absl::MutexLock lock(&job->mu);
  if (job->dropped) {
    return absl::NotFoundError(
        absl::StrCat("job_id: job \"", job->id, "\" was dropped"));
  }
  if (job->finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job_id: job \"", job->id, "\" has finished; it takes no more pushes"));
  }
  PSD_RETURN_IF_ERROR(CheckEpoch(*job, request.view_epoch(), "push"));
  // Validate the whole request before taking any of it.
  std::set<int32_t> seen;
  bool all_duplicate = true;
  int64_t applied_step = INT64_MAX;
  for (int i = 0; i < request.gradients_size(); ++i) {
    const PartitionTensor& g = request.gradients(i);
    PSD_ASSIGN_OR_RETURN(const PartitionState* held,
                         HeldPartition(*job, g, i));
    if (!seen.insert(g.partition_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("gradients[", i, "].partition_id: partition ",
                       g.partition_id(), " appears twice"));
    }
    const PartitionState& state = *held;
    PSD_RETURN_IF_ERROR(CheckPrimary(*job, state, g.partition_id()));
    PSD_RETURN_IF_ERROR(CheckFloat32(
        g.tensor(), state.num_elements,
        absl::StrCat("gradients[", i, "] (partition ", g.partition_id(), ")")));
    bool duplicate = false;
    PSD_RETURN_IF_ERROR(RuleOf(state).CheckPush(
        g.partition_id(), state, rank, request.step(), &duplicate));
    all_duplicate = all_duplicate && duplicate;
  }
  bool advanced = false;
  for (int i = 0; i < request.gradients_size(); ++i) {
    const PartitionTensor& g = request.gradients(i);
    PartitionState& state = job->partitions[g.partition_id()];
    if (RuleOf(state).TakePush(rank, request.step(), Float32Data(g.tensor()),
                               job->config.workers(), &state)) {
      advanced |= StartUpdate(job.get(), g.partition_id(), &state, &snapshots,
                              &tasks);
    }
    applied_step = std::min(applied_step, state.step);
  }
  if (advanced) AnswerWaiters(job.get(), &completions);
  response.set_duplicate(all_duplicate && request.gradients_size() > 0);
  response.set_applied_step(applied_step == INT64_MAX ? 0 : applied_step);
  }
  Settle(&completions, &snapshots, &tasks);
  return response;
}

void ParameterStore::Settle(std::vector<std::pair<PullDone, absl::Status>>* completions,
                            std::vector<ShardSnapshot>* snapshots,
                            std::vector<ReplicationTask>* tasks) {
  RunCompletions(completions);
  for (ShardSnapshot& snapshot : *snapshots) {
    options_.snapshot_sink(std::move(snapshot));
  }
  snapshots->clear();
  if (options_.replicate) {
    for (ReplicationTask& task : *tasks) options_.replicate(std::move(task));
  }
  tasks->clear();
}

void ParameterStore::ApplyStep(Job* job, int32_t partition_id,
                               PartitionState* state,
                               std::vector<ShardSnapshot>* snapshots) {
  const ConsistencyRule& rule = RuleOf(*state);
  // Where the partition is on the snapshot scale before this update (BSP:
  // its step; ASP/SSP: the slowest rank's clock): snapshot steps in (that,
  // the one after] are due now.
  const int64_t before = rule.SnapshotPoint(*state);
  rule.BeforeApply(state);
  ApplyOptimizer(job->config.optimizer(), state->step, state->sum.data(),
                 state->num_elements, state->weights.data(),
                 state->slots.data());
  state->step++;
  state->received.assign(state->received.size(), false);
  state->received_count = 0;
  state->replicating = false;
  state->awaiting.clear();
  CaptureReached(job, partition_id, *state, before, snapshots);
}

bool ParameterStore::StartUpdate(Job* job, int32_t partition_id,
                                 PartitionState* state,
                                 std::vector<ShardSnapshot>* snapshots,
                                 std::vector<ReplicationTask>* tasks) {
  // Every push taken so far is in the update in flight or applied.
  state->update_clocks = state->accepted;
  const ShardRole& role = job->roles[state->shard];
  std::set<std::string> targets(role.backups.begin(), role.backups.end());
  targets.insert(role.joiners.begin(), role.joiners.end());
  if (targets.empty()) {
    ApplyStep(job, partition_id, state, snapshots);
    return true;
  }
  // Applied once every backup has it (OnReplicated).
  state->replicating = true;
  state->replicating_since = absl::Now();
  state->awaiting = targets;
  // BSP updates that one call started (the last rank's push of a shard's
  // partitions) for the same step and the same backups go in one
  // Replicate call per backup: the request of the tasks added last takes
  // this partition too. Those tasks are not sent yet (Settle sends them,
  // after the job's lock), so their request may still grow.
  const size_t n = targets.size();
  if (!state->async && tasks->size() >= n) {
    const std::shared_ptr<const ReplicateRequest>& last = tasks->back().request;
    bool joinable = last->job_id() == job->id &&
                    last->view_epoch() == job->view_epoch &&
                    last->step() == state->step && last->clocks_size() == 0;
    // Exactly the last n tasks carry it, to exactly these backups (a
    // request also sent to another backup must not get this partition).
    const size_t first = tasks->size() - n;
    joinable = joinable && (first == 0 || (*tasks)[first - 1].request != last);
    auto target = targets.begin();
    for (size_t i = first; joinable && i < tasks->size(); ++i) {
      joinable = (*tasks)[i].request == last && (*tasks)[i].address == *target++;
    }
    if (joinable) {
      AppendReplicate(*job, partition_id, *state,
                      options_.replica_check_every_steps,
                      std::const_pointer_cast<ReplicateRequest>(last).get());
      return false;
    }
  }
  std::shared_ptr<ReplicateRequest> replicate =
      MakeReplicate(*job, partition_id, *state,
                    options_.replica_check_every_steps);
  for (const std::string& target : targets) {
    tasks->push_back(ReplicationTask{target, replicate});
  }
  return false;
}

bool ParameterStore::StartQueued(Job* job, int32_t partition_id,
                                 PartitionState* state,
                                 std::vector<ShardSnapshot>* snapshots,
                                 std::vector<ReplicationTask>* tasks) {
  if (state->replicating || job->roles[state->shard].role != ReplicaRole::kPrimary ||
      !RuleOf(*state).TakeQueued(state)) {
    return false;
  }
  return StartUpdate(job, partition_id, state, snapshots, tasks);
}

}  // namespace psd
