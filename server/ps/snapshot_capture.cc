// ParameterStore's snapshots: capturing the partitions at a snapshot step
// (CaptureReached, CaptureIfDue; the policy's steps and RequestSnapshot's)
// for the snapshot sink, and holding a job again as a snapshot recorded it
// (Restore).
#include <algorithm>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "server/ps/consistency_rule.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {

void ParameterStore::CaptureReached(Job* job, int32_t partition_id,
                                    const PartitionState& state,
                                    int64_t before,
                                    std::vector<ShardSnapshot>* snapshots) {
  // Snapshot step k of a BSP partition: captured by the update that
  // completes step k - 1 (its point moves by exactly one, to k). Snapshot
  // step k of an ASP/SSP partition: captured by the update that
  // makes its slowest rank's clock reach k (on primaries and backups alike,
  // which apply the same updates in the same order). An update moves each
  // rank's clock by at most one (read-my-writes), so normally there is at
  // most one such k; a larger jump (a peer's bad clocks) captures only the
  // newest due step in it.
  const int64_t after = RuleOf(state).SnapshotPoint(state);
  if (after <= before) return;
  int64_t due = -1;
  const int64_t every = job->config.snapshot().every_steps();
  if (every > 0) {
    const int64_t k = after - after % every;
    if (k > before) due = k;
  }
  auto req = job->requested_snapshots.upper_bound(after);
  if (req != job->requested_snapshots.begin() && *std::prev(req) > before) {
    due = std::max(due, *std::prev(req));
  }
  if (due > 0) CaptureIfDue(job, partition_id, state, due, snapshots);
}

void ParameterStore::CaptureIfDue(Job* job, int32_t partition_id,
                                  const PartitionState& state, int64_t step,
                                  std::vector<ShardSnapshot>* complete) {
  const int64_t every = job->config.snapshot().every_steps();
  const bool by_policy = every > 0 && step % every == 0;
  if (!options_.snapshot_sink ||
      !(by_policy || job->requested_snapshots.count(step))) {
    return;
  }
  ShardSnapshot& capture = job->captures[step];
  if (capture.partitions.empty()) {
    SnapshotManifest& m = capture.manifest;
    m.set_job_id(job->id);
    m.set_step(step);
    m.set_view_epoch(job->view_epoch);
    *m.mutable_config() = job->config;
    *m.mutable_placement() = job->placement;
    for (int32_t shard : job->shards) m.add_shards(shard);
  }
  PartitionSnapshot part;
  part.id = partition_id;
  part.weights = state.weights;
  part.slots = state.slots;
  if (state.async) {
    part.clocks = state.clocks;
    part.updates = state.step;
  }
  capture.partitions.push_back(std::move(part));
  if (capture.partitions.size() == job->partitions.size()) {
    std::sort(capture.partitions.begin(), capture.partitions.end(),
              [](const PartitionSnapshot& a, const PartitionSnapshot& b) {
                return a.id < b.id;
              });
    complete->push_back(std::move(capture));
    job->captures.erase(step);
    job->requested_snapshots.erase(step);
  }
}

absl::Status ParameterStore::RequestSnapshot(const std::string& job_id,
                                             int64_t step) {
  if (!options_.snapshot_sink) {
    return absl::FailedPreconditionError(
        "this server has no --data_dir, so no snapshots");
  }
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  absl::MutexLock lock(&job->mu);
  if (job->finished || job->dropped) {
    return absl::FailedPreconditionError(
        absl::StrCat("job_id: job \"", job_id, "\" has finished"));
  }
  for (const auto& [id, state] : job->partitions) {
    // An ASP/SSP partition reaches snapshot step k when its slowest rank's
    // clock does (see SnapshotManifest.step).
    const int64_t at = RuleOf(state).SnapshotPoint(state);
    if (at >= step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: partition ", id, " is at step ", at,
          state.async ? " (its slowest rank's clock)" : "",
          " already; a snapshot at step ", step, " cannot be taken"));
    }
  }
  job->requested_snapshots.insert(step);
  return absl::OkStatus();
}

absl::Status ParameterStore::Restore(
    const ShardSnapshot& snapshot, int64_t view_epoch,
    const std::string& submitted_by,
    const google::protobuf::RepeatedPtrField<ServerInfo>& servers) {
  const SnapshotManifest& m = snapshot.manifest;
  {
    absl::MutexLock lock(&mu_);
    if (jobs_.count(m.job_id())) {
      return absl::AlreadyExistsError(absl::StrCat(
          "job_id: job \"", m.job_id(), "\" is held already; not restoring"));
    }
  }
  CreateJobRequest create;
  create.set_job_id(m.job_id());
  *create.mutable_config() = m.config();
  *create.mutable_placement() = m.placement();
  *create.mutable_shards() = m.shards();
  create.set_view_epoch(view_epoch);
  create.set_submitted_by(submitted_by);
  *create.mutable_servers() = servers;
  auto job = BuildJob(create);
  if (!job.ok()) return job.status();
  {
    absl::MutexLock lock(&(*job)->mu);
    if ((*job)->partitions.size() != snapshot.partitions.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "snapshot of ", m.job_id(), " at step ", m.step(), " has ",
          snapshot.partitions.size(), " partitions; its placement gives ",
          (*job)->partitions.size()));
    }
    for (const PartitionSnapshot& part : snapshot.partitions) {
      auto it = (*job)->partitions.find(part.id);
      if (it == (*job)->partitions.end() ||
          part.weights.size() != it->second.weights.size() ||
          part.slots.size() != it->second.slots.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot of ", m.job_id(), " at step ", m.step(), ": partition ",
            part.id, " does not match the placement"));
      }
      PartitionState& state = it->second;
      if (state.async != !part.clocks.empty() ||
          (state.async &&
           static_cast<int64_t>(part.clocks.size()) !=
               (*job)->config.workers())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot of ", m.job_id(), " at step ", m.step(), ": partition ",
            part.id, state.async ? " is under ASP/SSP but has "
                                 : " is under BSP but has ",
            part.clocks.size(), " worker clocks"));
      }
      state.weights = part.weights;
      state.slots = part.slots;
      if (state.async) {
        // Its update count and dedup table: a rank's pushes of steps it
        // holds already are acknowledged as duplicates when sent again.
        state.step = part.updates;
        state.clocks = part.clocks;
        state.accepted = part.clocks;
        state.update_clocks = part.clocks;
      } else {
        state.step = m.step();
      }
    }
  }
  absl::MutexLock lock(&mu_);
  if (jobs_.count(m.job_id())) {
    return absl::AlreadyExistsError(absl::StrCat(
        "job_id: job \"", m.job_id(), "\" is held already; not restoring"));
  }
  jobs_[m.job_id()] = *std::move(job);
  return absl::OkStatus();
}

}  // namespace psd
