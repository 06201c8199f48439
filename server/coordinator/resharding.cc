// CoordinatorState: live resharding (JobService.ReshardJob, issue 16), and
// the state transfer it shares with replica repair (views.cc). The plan is
// reshard_plan.h's; here it is checked against the job and carried out,
// one move at a time, by the scheduler thread (RunMoves).
#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"
#include "server/coordinator/coordinator_state.h"
#include "server/coordinator/replica_sets.h"
#include "server/coordinator/reshard_plan.h"
#include "server/coordinator/server_calls.h"

namespace psd {

grpc::Status CoordinatorState::TransferShard(const Assignment& assignment,
                                             int32_t shard,
                                             const std::string& joiner_address,
                                             const std::string& primary_address,
                                             SyncBackupResponse* synced) {
  const auto timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  CreateJobRequest create;
  create.set_job_id(assignment.job_id());
  *create.mutable_config() = assignment.config();
  *create.mutable_placement() = assignment.placement();
  create.add_shards(shard);
  create.set_view_epoch(assignment.view_epoch());
  create.set_joining(true);
  create.set_submitted_by(assignment.submitted_by());
  *create.mutable_servers() = assignment.servers();
  CreateJobResponse created;
  auto joiner = Channels().Stub(joiner_address);
  grpc::Status status = CallServer(joiner.get(), &ParameterServer::Stub::CreateJob,
                                   create, &created, timeout);
  Channels().Done(joiner_address, status);
  if (!status.ok()) return status;
  SyncBackupRequest sync;
  sync.set_job_id(assignment.job_id());
  sync.set_shard(shard);
  sync.set_backup_address(joiner_address);
  auto primary = Channels().Stub(primary_address);
  status = CallServer(primary.get(), &ParameterServer::Stub::SyncBackup, sync,
                      synced, std::chrono::milliseconds(120000));
  Channels().Done(primary_address, status);
  return status;
}

absl::StatusOr<ReshardJobResponse> CoordinatorState::ReshardJob(
    const ReshardJobRequest& request) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(request.job_id());
  if (it == jobs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("job_id: no job \"", request.job_id(), "\""));
  }
  Job& job = it->second;
  if (job.status.state() != RUNNING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", request.job_id(), " is ", JobState_Name(job.status.state()),
        "; only a RUNNING job can be resharded"));
  }
  if (!job.status.pending_moves().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", request.job_id(), " still has ",
        job.status.pending_moves_size(),
        " replica moves pending from an earlier ReshardJob (see "
        "JobStatus.pending_moves)"));
  }
  std::set<std::string> registered;
  for (const auto& [id, member] : members_.servers()) registered.insert(id);
  PSD_ASSIGN_OR_RETURN(std::vector<ReplicaMove> moves,
                       PlanReshard(job.assignment, registered, request));
  for (const std::string& id : request.add_servers()) job.drained.erase(id);
  job.drained.insert(request.drain_servers().begin(),
                     request.drain_servers().end());
  ReshardJobResponse response;
  for (ReplicaMove& m : moves) {
    *job.status.add_pending_moves() = m;
    *response.add_moves() = std::move(m);
  }
  ++job.version;
  MarkDirty(job);
  Log()->info("job {}: resharding: {} replica moves planned", request.job_id(),
              response.moves_size());
  return response;
}

void CoordinatorState::RunMoves() {
  std::string job_id, joiner_address, primary_address;
  ReplicaMove move;
  Assignment assignment;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) {
      if (job.repairing) return;  // one state transfer at a time
    }
    for (auto& [id, job] : jobs_) {
      if (job.status.pending_moves().empty()) continue;
      if (job.status.state() != RUNNING) {
        // Ended (or recovering) before its moves: they no longer apply.
        job.status.clear_pending_moves();
        ++job.version;
        MarkDirty(job);
        continue;
      }
      if (!job.orphaned.empty()) continue;  // failover first
      const ReplicaMove& next = job.status.pending_moves(0);
      const ShardReplicas* r = nullptr;
      for (const ShardReplicas& s : job.assignment.shards()) {
        if (s.shard() == next.shard()) r = &s;
      }
      auto holds = [r](const std::string& id) {
        return r->primary() == id ||
               std::count(r->backups().begin(), r->backups().end(), id) > 0;
      };
      auto to = members_.servers().find(next.to_server());
      std::string skip;
      if (r == nullptr || !holds(next.from_server()) ||
          holds(next.to_server())) {
        skip = "the shard's replicas changed meanwhile (a failover?)";
      } else if (to == members_.servers().end()) {
        skip = absl::StrCat("server ", next.to_server(), " left");
      } else if (!members_.servers().count(r->primary())) {
        continue;  // failover first
      }
      if (!skip.empty()) {
        Log()->warn("job {}: resharding: move of shard {} from {} to {} "
                    "dropped: {}", id, next.shard(), next.from_server(),
                    next.to_server(), skip);
        job.status.mutable_pending_moves()->erase(
            job.status.mutable_pending_moves()->begin());
        ++job.version;
        MarkDirty(job);
        continue;
      }
      job.repairing = true;
      job_id = id;
      move = next;
      joiner_address = to->second.address;
      primary_address = members_.servers()[r->primary()].address;
      assignment = job.assignment;
      break;
    }
  }
  if (job_id.empty()) return;
  Log()->info("job {}: resharding: moving shard {} from {} to {} ({} bytes of "
              "weights; state transfer)", job_id, move.shard(),
              move.from_server(), move.to_server(), move.bytes());
  SyncBackupResponse synced;
  grpc::Status status = TransferShard(assignment, move.shard(), joiner_address,
                                      primary_address, &synced);
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return;
    Job& job = it->second;
    job.repairing = false;
    if (!status.ok()) {
      // Tried again on the next round (the joiner's CreateJob and the
      // primary's SyncBackup are both safe to repeat).
      Log()->warn("job {}: resharding: moving shard {} to {} failed: {}; "
                  "trying again", job_id, move.shard(), move.to_server(),
                  status.error_message());
      return;
    }
    if (job.status.state() != RUNNING || job.status.pending_moves().empty() ||
        !members_.servers().count(move.to_server())) {
      return;
    }
    ShardReplicas* r = nullptr;
    for (ShardReplicas& s : *job.assignment.mutable_shards()) {
      if (s.shard() == move.shard()) r = &s;
    }
    if (r == nullptr || r->primary() != assignment.shards(move.shard()).primary()) {
      return;  // failed over meanwhile: the move is checked again next round
    }
    // The joiner is in sync (SyncBackup returns once it is): it becomes a
    // backup, and the old server leaves the shard; a leaving primary hands
    // over to its first other backup (in sync too: replication is
    // synchronous).
    r->add_backups(move.to_server());
    auto* backups = r->mutable_backups();
    backups->erase(std::remove(backups->begin(), backups->end(),
                               move.from_server()),
                   backups->end());
    if (r->primary() == move.from_server()) {
      r->set_primary(r->backups(0));
      backups->erase(backups->begin());
    }
    job.status.mutable_pending_moves()->erase(
        job.status.mutable_pending_moves()->begin());
    ServerInfo from_info;
    for (const ServerInfo& s : job.assignment.servers()) {
      if (s.id() == move.from_server()) from_info = s;
    }
    NewViewLocked(&job);
    Log()->info("job {}: resharding: shard {} moved from {} to {} ({} "
                "partitions, {} bytes transferred); view epoch {}; {} moves "
                "left", job_id, move.shard(), move.from_server(),
                move.to_server(), synced.partitions(), synced.bytes(),
                job.assignment.view_epoch(), job.status.pending_moves_size());
    if (ShardsOf(job.assignment, move.from_server()).empty() &&
        !from_info.id().empty()) {
      // Drained from the job: the server frees it (fenced: the new view no
      // longer lists it, so its backups refuse its replication).
      PendingDrop drop;
      drop.assignment.set_job_id(job_id);
      *drop.assignment.add_servers() = from_info;
      drops_.push_back(std::move(drop));
      Log()->info("job {}: resharding: server {} holds no shard of the job "
                  "any more; dropping its copy", job_id, move.from_server());
    }
  }
  SendViews();
  RunDrops();
}

}  // namespace psd
