// ParameterStore's state transfer to a joining backup: the primary's side
// (AddJoiner, CopyPartition, RemoveJoiner; run by SyncBackup in
// server/ps/parameter_service.h) and the joiner's (InstallPartition).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"

namespace psd {

absl::Status ParameterStore::InstallPartition(
    const InstallPartitionRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  absl::MutexLock lock(&job->mu);
  if (request.view_epoch() < job->view_epoch) {
    return absl::AbortedError(absl::StrCat(
        "view_epoch: state transfer from epoch ", request.view_epoch(),
        ", this server is in epoch ", job->view_epoch, " (fenced)"));
  }
  auto it = job->partitions.find(request.partition_id());
  if (it == job->partitions.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("partition_id: partition ", request.partition_id(),
                     " is not held by this server"));
  }
  PartitionState& state = it->second;
  const ReplicaRole role = job->roles[state.shard].role;
  if (role == ReplicaRole::kPrimary) {
    return absl::FailedPreconditionError(absl::StrCat(
        "partition_id: this server is the primary of partition ",
        request.partition_id(), "; its state is not replaced"));
  }
  PSD_RETURN_IF_ERROR(CheckFloat32(request.weights(), state.num_elements,
                                   "weights"));
  PSD_RETURN_IF_ERROR(CheckFloat32(
      request.slots(), static_cast<int64_t>(state.slots.size()), "slots"));
  if (request.step() < 0) {
    return absl::InvalidArgumentError("step: must be >= 0");
  }
  if (state.async && request.clocks_size() != job->config.workers()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "clocks: ", request.clocks_size(), " given, the job has ",
        job->config.workers(), " worker ranks"));
  }
  if (state.async) {
    state.clocks.assign(request.clocks().begin(), request.clocks().end());
    state.accepted = state.clocks;
    state.queued_count = 0;
  }
  const float* w = Float32Data(request.weights());
  state.weights.assign(w, w + state.num_elements);
  const float* v = Float32Data(request.slots());
  state.slots.assign(v, v + state.slots.size());
  state.step = request.step();
  state.previous_step.reset();
  state.replicating = false;
  state.awaiting.clear();
  state.received.assign(state.received.size(), false);
  state.received_count = 0;
  state.installing = false;
  state.diverged.clear();
  job->view_epoch = std::max(job->view_epoch, request.view_epoch());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ParameterStore::AddJoiner(
    const std::string& job_id, int32_t shard, const std::string& address) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  std::vector<ReplicationTask> tasks;
  std::vector<int32_t> ids;
  {
    absl::MutexLock lock(&job->mu);
    auto role = job->roles.find(shard);
    if (role == job->roles.end() || role->second.role != ReplicaRole::kPrimary) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard: this server is not the primary of shard ", shard, " of job \"",
          job_id, "\" in epoch ", job->view_epoch));
    }
    role->second.joiners.insert(address);
    for (auto& [id, state] : job->partitions) {
      if (state.shard != shard) continue;
      ids.push_back(id);
      if (!state.replicating || state.awaiting.count(address)) continue;
      // The step in flight goes to the joiner too, after its state (at this
      // step) is installed there.
      state.awaiting.insert(address);
      tasks.push_back(
          ReplicationTask{address, MakeReplicate(*job, id, state,
                                                 options_.replica_check_every_steps)});
    }
  }
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  Settle(&completions, &snapshots, &tasks);
  return ids;
}

absl::StatusOr<InstallPartitionRequest> ParameterStore::CopyPartition(
    const std::string& job_id, int32_t partition_id) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  absl::MutexLock lock(&job->mu);
  auto it = job->partitions.find(partition_id);
  if (it == job->partitions.end()) {
    return absl::NotFoundError(absl::StrCat("partition ", partition_id,
                                            " is not held by this server"));
  }
  const PartitionState& state = it->second;
  InstallPartitionRequest request;
  request.set_job_id(job_id);
  request.set_view_epoch(job->view_epoch);
  request.set_partition_id(partition_id);
  // While a step is replicated the state is the one before it; the joiner
  // gets that step by replication after this.
  request.set_step(state.step);
  EncodeFloat32(state.weights.data(), state.num_elements,
                request.mutable_weights());
  EncodeFloat32(state.slots.data(), static_cast<int64_t>(state.slots.size()),
                request.mutable_slots());
  for (int64_t c : state.clocks) request.add_clocks(c);  // ASP/SSP only
  return request;
}

void ParameterStore::RemoveJoiner(const std::string& job_id, int32_t shard,
                                  const std::string& address) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(job_id);
  if (!job.ok()) return;
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  {
    absl::MutexLock lock(&(*job)->mu);
    auto role = (*job)->roles.find(shard);
    if (role == (*job)->roles.end()) return;
    role->second.joiners.erase(address);
    bool advanced = false;
    for (auto& [id, state] : (*job)->partitions) {
      if (state.shard != shard || !state.replicating) continue;
      if (state.awaiting.erase(address) && state.awaiting.empty()) {
        ApplyStep(job->get(), id, &state, &snapshots);
        StartQueued(job->get(), id, &state, &snapshots, &tasks);
        advanced = true;
      }
    }
    if (advanced) AnswerWaiters(job->get(), &completions);
  }
  Settle(&completions, &snapshots, &tasks);
}

}  // namespace psd
