// ParameterStore's replication (DESIGN invariants 2 and 3): the roles the
// coordinator's view gives this server (SetView, FenceAll), a primary's
// replication of each update to its backups (MakeReplicate, OnReplicated,
// the backups it reports as failed), and a backup's application of it
// (Replicate), with the test hook that stalls it (ReplicateHeldUntilForTest).
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"

namespace psd {

std::shared_ptr<ReplicateRequest> MakeReplicate(
    const ParameterStore::Job& job, int32_t partition_id,
    const PartitionState& state, int64_t check_every) {
  auto replicate = std::make_shared<ReplicateRequest>();
  replicate->set_job_id(job.id);
  replicate->set_view_epoch(job.view_epoch);
  replicate->set_step(state.step);
  if (state.async) {
    for (int64_t c : state.update_clocks) replicate->add_clocks(c);
  }
  AppendReplicate(job, partition_id, state, check_every, replicate.get());
  return replicate;
}

void AppendReplicate(const ParameterStore::Job& job, int32_t partition_id,
                     const PartitionState& state, int64_t check_every,
                     ReplicateRequest* replicate) {
  PartitionTensor* out = replicate->add_gradients();
  out->set_partition_id(partition_id);
  EncodeFloat32(state.sum.data(), state.num_elements, out->mutable_tensor());
  if (ReplicaCheckDue(job, state.step, check_every)) {
    replicate->add_checksums(StateChecksum(state));
  }
}

absl::Status ParameterStore::SetView(const SetViewRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  const JobView& view = request.view();
  std::map<std::string, std::string> address;  // server id -> address
  for (const ServerInfo& server : view.servers()) {
    address[server.id()] = server.address();
  }
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  {
    absl::MutexLock lock(&job->mu);
    if (view.epoch() < job->view_epoch) {
      return absl::AbortedError(absl::StrCat(
          "view.epoch: ", view.epoch(), " is older than this server's ",
          job->view_epoch));
    }
    // Validate first: every shard the view gives this server must be held.
    // A shard the view gives this server no role in: NONE, except one still
    // joining (its state transfer runs before the view takes it in).
    std::map<int32_t, ShardRole> roles;
    for (int32_t shard : job->shards) {
      roles[shard].role = job->roles[shard].role == ReplicaRole::kJoining
                              ? ReplicaRole::kJoining
                              : ReplicaRole::kNone;
    }
    for (const ShardReplicas& replicas : view.shards()) {
      const bool primary = replicas.primary() == request.server_id();
      const bool backup =
          std::count(replicas.backups().begin(), replicas.backups().end(),
                     request.server_id()) > 0;
      if (!primary && !backup) continue;
      auto it = roles.find(replicas.shard());
      if (it == roles.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "view.shards: shard ", replicas.shard(), " of job \"", job->id,
            "\" is not held by this server (", request.server_id(), ")"));
      }
      ShardRole& role = it->second;
      if (primary) {
        role.role = ReplicaRole::kPrimary;
        for (const std::string& id : replicas.backups()) {
          auto a = address.find(id);
          if (a == address.end()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "view.servers: no address for backup ", id, " of shard ",
                replicas.shard()));
          }
          role.backups.push_back(a->second);
        }
        // Backups still joining stay targets until the view has them.
        const ShardRole& old = job->roles[replicas.shard()];
        if (old.role == ReplicaRole::kPrimary) {
          for (const std::string& joiner : old.joiners) {
            if (std::count(role.backups.begin(), role.backups.end(), joiner) == 0) {
              role.joiners.insert(joiner);
            }
          }
        }
      } else {
        role.role = job->roles[replicas.shard()].role == ReplicaRole::kJoining &&
                            !AllInstalled(*job, replicas.shard())
                        ? ReplicaRole::kJoining
                        : ReplicaRole::kBackup;
      }
    }
    job->view_epoch = view.epoch();
    job->peer_identities = PeerIdentities(view.servers());
    job->roles = std::move(roles);
    bool advanced = false;
    for (auto& [id, state] : job->partitions) {
      const ShardRole& role = job->roles[state.shard];
      if (role.role != ReplicaRole::kPrimary) {
        DiscardPending(&state);
        continue;
      }
      if (!state.replicating) continue;
      std::set<std::string> targets(role.backups.begin(), role.backups.end());
      targets.insert(role.joiners.begin(), role.joiners.end());
      for (auto it = state.awaiting.begin(); it != state.awaiting.end();) {
        it = targets.count(*it) ? std::next(it) : state.awaiting.erase(it);
      }
      if (state.awaiting.empty()) {
        ApplyStep(job.get(), id, &state, &snapshots);
        StartQueued(job.get(), id, &state, &snapshots, &tasks);
        advanced = true;
      }
    }
    if (advanced) AnswerWaiters(job.get(), &completions);
    // Pulls waiting on a partition this server no longer leads end, so their
    // workers find the new primary.
    for (auto it = job->waiters.begin(); it != job->waiters.end();) {
      bool lost = false;
      for (int32_t id : it->second.request.partition_ids()) {
        auto part = job->partitions.find(id);
        lost |= part != job->partitions.end() &&
                job->roles[part->second.shard].role != ReplicaRole::kPrimary;
      }
      if (!lost) {
        ++it;
        continue;
      }
      completions.emplace_back(
          std::move(it->second.done),
          absl::AbortedError(absl::StrCat(
              "view_epoch: the view changed to epoch ", job->view_epoch,
              " while the pull waited; this server is no longer the primary")));
      it = job->waiters.erase(it);
    }
  }
  Settle(&completions, &snapshots, &tasks);
  return absl::OkStatus();
}

bool ParameterStore::AllInstalled(const Job& job, int32_t shard) {
  for (const auto& [id, state] : job.partitions) {
    if (state.shard == shard && state.installing) return false;
  }
  return true;
}

absl::StatusOr<ReplicateResponse> ParameterStore::Replicate(
    const ReplicateRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  ReplicateResponse response;
  {
    absl::MutexLock lock(&job->mu);
    if (job->dropped || job->finished) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job_id: job \"", job->id, "\" has finished on this server"));
    }
    if (request.view_epoch() < job->view_epoch) {
      return absl::AbortedError(absl::StrCat(
          "view_epoch: replication from epoch ", request.view_epoch(),
          ", this backup is in epoch ", job->view_epoch,
          ": the sender is no longer the primary (fenced)"));
    }
    bool all_duplicate = true;
    for (int i = 0; i < request.gradients_size(); ++i) {
      const PartitionTensor& g = request.gradients(i);
      PSD_ASSIGN_OR_RETURN(const PartitionState* held,
                           HeldPartition(*job, g, i));
      const PartitionState& state = *held;
      const ReplicaRole role = job->roles[state.shard].role;
      if (role == ReplicaRole::kPrimary && request.view_epoch() == job->view_epoch) {
        return absl::FailedPreconditionError(absl::StrCat(
            "partition ", g.partition_id(), ": this server is its primary in "
            "epoch ", job->view_epoch, "; it takes no replication"));
      }
      if (role == ReplicaRole::kNone) {
        return absl::AbortedError(absl::StrCat(
            "partition ", g.partition_id(), ": this server has no role for "
            "shard ", state.shard, " in epoch ", job->view_epoch));
      }
      if (state.installing) {
        return absl::UnavailableError(absl::StrCat(
            "partition ", g.partition_id(),
            ": its state transfer has not arrived yet; retry"));
      }
      PSD_RETURN_IF_ERROR(CheckFloat32(
          g.tensor(), state.num_elements,
          absl::StrCat("gradients[", i, "] (partition ", g.partition_id(), ")")));
      if (request.step() > state.step) {
        return absl::FailedPreconditionError(absl::StrCat(
            "step: replication of step ", request.step(), " to partition ",
            g.partition_id(), ", which is at step ", state.step,
            " (a gap: the backup needs a state transfer)"));
      }
      all_duplicate &= request.step() < state.step;
    }
    for (const PartitionTensor& g : request.gradients()) {
      if (job->partitions[g.partition_id()].async &&
          request.clocks_size() != job->config.workers()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "clocks: ", request.clocks_size(), " given, the job has ",
            job->config.workers(), " worker ranks (partition ",
            g.partition_id(), " is under ASP/SSP)"));
      }
    }
    PSD_RETURN_IF_ERROR(CheckReplica(job.get(), request));
    // A view newer than ours: its SetView is on its way.
    job->view_epoch = std::max(job->view_epoch, request.view_epoch());
    bool advanced = false;
    for (const PartitionTensor& g : request.gradients()) {
      PartitionState& state = job->partitions[g.partition_id()];
      if (request.step() != state.step) continue;
      const float* data = Float32Data(g.tensor());
      std::copy(data, data + state.num_elements, state.sum.begin());
      if (state.async) {
        state.update_clocks.assign(request.clocks().begin(),
                                   request.clocks().end());
      }
      ApplyStep(job.get(), g.partition_id(), &state, &snapshots);
      MaybeCorruptForTest(*job, g.partition_id(), &state);
      advanced = true;
    }
    if (advanced) AnswerWaiters(job.get(), &completions);
    response.set_duplicate(all_duplicate && request.gradients_size() > 0);
  }
  Settle(&completions, &snapshots, &tasks);
  return response;
}

std::optional<int64_t> ParameterStore::OnReplicated(
    const ReplicationTask& task, const absl::Status& status) {
  const ReplicateRequest& request = *task.request;
  absl::StatusOr<std::shared_ptr<Job>> found = FindJob(request.job_id());
  if (!found.ok()) return std::nullopt;
  Job* job = found->get();
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  {
    absl::MutexLock lock(&job->mu);
    bool retry = false;
    bool advanced = false;
    for (const PartitionTensor& g : request.gradients()) {
      auto it = job->partitions.find(g.partition_id());
      if (it == job->partitions.end()) continue;
      PartitionState& state = it->second;
      if (!state.replicating || state.step != request.step() ||
          !state.awaiting.count(task.address)) {
        continue;  // settled: applied, or the view dropped the backup
      }
      if (!status.ok()) {
        retry = true;
        // A backup that lost the shard's state, or one that has not applied
        // this step for longer than backup_stall_ms (alive to the
        // coordinator, but not answering this primary): it must not hold
        // the step, so the coordinator takes it out of the view, and a
        // state transfer brings it back later.
        const absl::Duration waited = absl::Now() - state.replicating_since;
        const bool stalled =
            options_.backup_stall_ms > 0 &&
            waited > absl::Milliseconds(options_.backup_stall_ms);
        const bool refused =
            status.code() == absl::StatusCode::kFailedPrecondition ||
            status.code() == absl::StatusCode::kDataLoss;
        if (refused || stalled) {
          BackupFailure failure;
          failure.set_job_id(job->id);
          failure.set_shard(state.shard);
          failure.set_address(task.address);
          failure.set_step(state.step);
          if (refused) {
            failure.set_error(std::string(status.message()));
          } else {
            failure.set_stalled_ms(absl::ToInt64Milliseconds(waited));
            failure.set_error(absl::StrCat(
                "has not applied step ", state.step, " for ",
                failure.stalled_ms(), " ms (", status.ToString(), ")"));
          }
          absl::MutexLock failures_lock(&mu_);
          const bool reported = std::any_of(
              backup_failures_.begin(), backup_failures_.end(),
              [&](const BackupFailure& f) {
                return f.job_id() == failure.job_id() &&
                       f.shard() == failure.shard() &&
                       f.address() == failure.address();
              });
          if (!reported && backup_failures_.size() < 100) {
            backup_failures_.push_back(failure);
          }
        }
        continue;
      }
      state.awaiting.erase(task.address);
      if (state.awaiting.empty()) {
        // Every backup's checksum matched (the replica check).
        if (request.checksums_size() > 0) {
          state.verified_step = std::max(state.verified_step, request.step());
        }
        ApplyStep(job, g.partition_id(), &state, &snapshots);
        StartQueued(job, g.partition_id(), &state, &snapshots, &tasks);
        advanced = true;
      }
    }
    if (advanced) AnswerWaiters(job, &completions);
    if (retry) return job->view_epoch;
  }
  Settle(&completions, &snapshots, &tasks);
  return std::nullopt;
}

void ParameterStore::FenceAll() {
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) jobs.push_back(job);
  }
  for (const std::shared_ptr<Job>& job : jobs) {
    Completions completions;
    {
      absl::MutexLock lock(&job->mu);
      for (auto& [shard, role] : job->roles) {
        role.role = ReplicaRole::kNone;
        role.backups.clear();
        role.joiners.clear();
      }
      for (auto& [id, state] : job->partitions) DiscardPending(&state);
      for (auto& [id, waiter] : job->waiters) {
        completions.emplace_back(
            std::move(waiter.done),
            absl::AbortedError("this server registered again with the "
                               "coordinator: it waits for a new view"));
      }
      job->waiters.clear();
    }
    RunCompletions(&completions);
  }
}

absl::Time ParameterStore::ReplicateHeldUntilForTest(
    const ReplicateRequest& request) {
  if (!options_.test_stall_replicate_at_step.has_value() ||
      request.step() != *options_.test_stall_replicate_at_step) {
    return absl::InfinitePast();
  }
  absl::MutexLock lock(&mu_);
  if (!test_stall_until_.has_value()) {
    test_stall_until_ =
        options_.test_stall_replicate_ms > 0
            ? absl::Now() + absl::Milliseconds(options_.test_stall_replicate_ms)
            : absl::InfiniteFuture();
    Log()->warn("job {}: TEST HOOK --test_stall_replicate_at_step: this "
                "server holds every replication of step {} unanswered for {}",
                Quote(request.job_id()), request.step(),
                options_.test_stall_replicate_ms > 0
                    ? absl::StrCat(options_.test_stall_replicate_ms, " ms")
                    : std::string("as long as it runs"));
  }
  return *test_stall_until_;
}

std::vector<BackupFailure> ParameterStore::TakeBackupFailures() {
  absl::MutexLock lock(&mu_);
  std::vector<BackupFailure> failures;
  failures.swap(backup_failures_);
  return failures;
}

}  // namespace psd
