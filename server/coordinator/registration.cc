// CoordinatorState, membership: registration, heartbeats (and what they
// carry for jobs), expiry, pause compensation, and what a member leaving
// does to the jobs it served. The table itself is MemberTable.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/process.h"

namespace psd {

absl::StatusOr<RegisterResponse> CoordinatorState::Register(
    const RegisterRequest& request, bool server, const std::string& identity) {
  if (request.protocol_version() != PROTOCOL_VERSION_1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "protocol_version: this coordinator speaks ",
        ProtocolVersion_Name(PROTOCOL_VERSION_1), ", the peer ",
        ProtocolVersion_Name(request.protocol_version()),
        " (mismatched psd binaries?)"));
  }
  if (request.address().empty()) {
    return absl::InvalidArgumentError("address: required (host:port)");
  }
  absl::MutexLock lock(&mu_);
  if (server && !request.server_uid().empty()) {
    // The same data directory registering again (the server restarted
    // within the heartbeat timeout, or the coordinator restarted): the old
    // member failed. It is removed as an expired one is, so its shards fail
    // over to their backups first; the new member then comes back as a
    // backup by state transfer (RepairReplicas), never as the old one.
    for (const std::string& id :
         members_.ServersWithUid(request.server_uid())) {
      RemoveMemberLocked(/*server=*/true, id,
                         "registered again from the same data directory");
    }
  }
  const std::string id = members_.Add(server, request.address());
  Member& member = *members_.Find(server, id);
  member.uid = request.server_uid();
  member.table_memory_bytes = std::max<int64_t>(request.table_memory_bytes(), 0);
  member.identity = identity;
  member.live_jobs.assign(request.live_jobs().begin(), request.live_jobs().end());
  member.model_kinds.insert(request.model_kinds().begin(),
                            request.model_kinds().end());
  if (!server && member.model_kinds.empty()) member.model_kinds.insert(ModelSpec::MLP);
  ++view_epoch_;
  Log()->info("{} {} joined at {} (view epoch {}){}", server ? "server" : "worker",
              id, request.address(), view_epoch_,
              member.uid.empty() ? "" : absl::StrCat(", uid ", member.uid));
  if (server) {
    // A server that holds a running job it has no part in (it was paused or
    // cut off, and its shards failed over): it drops the job, and may come
    // back as a backup through a state transfer.
    for (const std::string& live : member.live_jobs) {
      auto job = jobs_.find(live);
      if (job == jobs_.end() || job->second.status.state() != RUNNING) continue;
      bool in_view = false;
      for (const ServerInfo& s : job->second.assignment.servers()) {
        in_view |= !member.uid.empty() && s.uid() == member.uid;
      }
      if (in_view) continue;
      Log()->warn("server {} holds job {}, whose view no longer has it "
                  "(epoch {}): dropping its copy", id, live,
                  job->second.assignment.view_epoch());
      PendingDrop drop;
      drop.assignment.set_job_id(live);
      ServerInfo* info = drop.assignment.add_servers();
      info->set_id(id);
      info->set_address(member.address);
      drops_.push_back(std::move(drop));
    }
  }
  if (!server && !request.job_id().empty()) {
    // A worker still training a rank (the coordinator restarted): give the
    // rank back to it if nobody else holds it.
    auto job = jobs_.find(request.job_id());
    const int32_t rank = request.rank();
    if (job != jobs_.end() &&
        (job->second.status.state() == RUNNING ||
         job->second.status.state() == RECOVERING) &&
        rank >= 0 && rank < static_cast<int32_t>(job->second.worker_ids.size()) &&
        (job->second.worker_ids[rank].empty() ||
         !members_.workers().count(job->second.worker_ids[rank]))) {
      job->second.worker_ids[rank] = id;
      member.job_id = request.job_id();
      member.rank = rank;
      Log()->info("job {}: rank {} is {} again", request.job_id(), rank, id);
    } else {
      // A job this coordinator does not run (it restarted without its
      // --data_dir, or the job ended): the next heartbeat tells the worker
      // to stop it.
      member.job_id = request.job_id();
      member.rank = -1;
      Log()->warn("worker {} trains job {}, which is not running here: "
                  "telling it to stop", id, request.job_id());
    }
  }
  RegisterResponse response;
  response.set_member_id(id);
  response.set_view_epoch(view_epoch_);
  return response;
}

absl::StatusOr<RegisterResponse> CoordinatorState::RegisterServer(
    const RegisterRequest& request, const std::string& identity) {
  return Register(request, /*server=*/true, identity);
}

absl::StatusOr<RegisterResponse> CoordinatorState::RegisterWorker(
    const RegisterRequest& request) {
  return Register(request, /*server=*/false, "");
}

absl::StatusOr<HeartbeatResponse> CoordinatorState::Heartbeat(
    const HeartbeatRequest& request) {
  absl::MutexLock lock(&mu_);
  HeartbeatResponse response;
  response.set_view_epoch(view_epoch_);
  if (members_.Touch(/*server=*/true, request.member_id()) != nullptr) {
    for (const BackupFailure& failure : request.backup_failures()) {
      auto job = jobs_.find(failure.job_id());
      if (job == jobs_.end() || job->second.status.state() != RUNNING) continue;
      std::string backup_id;
      for (const ServerInfo& s : job->second.assignment.servers()) {
        if (s.address() == failure.address()) backup_id = s.id();
      }
      for (ShardReplicas& r : *job->second.assignment.mutable_shards()) {
        if (r.shard() != failure.shard() || r.primary() != request.member_id()) {
          continue;
        }
        auto* backups = r.mutable_backups();
        const auto end = std::remove(backups->begin(), backups->end(), backup_id);
        if (end == backups->end()) continue;
        backups->erase(end, backups->end());
        if (failure.stalled_ms() > 0) {
          // A stall, not a refusal: the job status names the backup and for
          // how long it held the step (as WatchProgress does for a rank).
          AddStall(&job->second.status,
                   absl::StrCat("shard ", failure.shard(), ": backup ",
                                backup_id, " (", failure.address(), ") ",
                                failure.error(),
                                "; out of the view until a state transfer"));
        }
        NewViewLocked(&job->second);  // a new version: saved, stalls too
        Log()->warn("job {}: shard {}: backup {} refuses replication ({}): "
                    "out of the view (epoch {}) until a state transfer",
                    failure.job_id(), failure.shard(), backup_id,
                    failure.error(), job->second.assignment.view_epoch());
      }
    }
    for (const JobClocks& clocks : request.job_clocks()) {
      auto job = jobs_.find(clocks.job_id());
      if (job == jobs_.end() || job->second.status.state() != RUNNING) continue;
      job->second.clocks[request.member_id()] = {clocks, absl::Now()};
      UpdateClocks(&job->second);
      UpdateVerifiedStep(&job->second);
    }
    for (const SnapshotFailure& failure : request.snapshot_failures()) {
      auto job = jobs_.find(failure.job_id());
      if (job == jobs_.end()) continue;
      JobStatus& status = job->second.status;
      status.add_snapshot_errors(absl::StrCat(
          "server ", request.member_id(), ", step ", failure.step(), ": ",
          failure.error()));
      if (status.snapshot_errors_size() > 10) {  // keep the newest 10
        status.mutable_snapshot_errors()->DeleteSubrange(0, 1);
      }
      ++job->second.version;
      MarkDirty(job->second);
    }
    return response;
  }
  Member* worker = members_.Touch(/*server=*/false, request.member_id());
  if (worker == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "member_id: \"", request.member_id(), "\" is not registered"));
  }
  Member& member = *worker;
  if (member.job_id.empty()) return response;
  if (member.rank < 0) {  // a claim Register could not honour
    response.set_cancelled(true);
    member.job_id.clear();
    member.rank = 0;
    return response;
  }
  auto job = jobs_.find(member.job_id);
  if (job != jobs_.end() && (job->second.status.state() == PENDING ||
                             job->second.status.state() == RECOVERING)) {
    return response;  // reserved while the servers set the job up
  }
  if (job == jobs_.end() || job->second.status.state() != RUNNING) {
    response.set_cancelled(true);
    member.job_id.clear();
    return response;
  }
  if (request.held_job_id() == member.job_id &&
      request.held_view_epoch() == job->second.assignment.view_epoch() &&
      request.held_membership_epoch() ==
          job->second.status.membership_epoch()) {
    response.set_assignment_held(true);  // nothing new to send
    return response;
  }
  *response.mutable_assignment() = job->second.assignment;
  FillRanksLocked(job->second, request.member_id(), member.rank,
                  response.mutable_assignment());
  return response;
}

void CoordinatorState::ExpireMembers() {
  absl::MutexLock lock(&mu_);
  const absl::Time cutoff =
      absl::Now() - absl::Milliseconds(options_.heartbeat_timeout_ms);
  for (bool server : {true, false}) {
    for (const std::string& id : members_.Silent(server, cutoff)) {
      RemoveMemberLocked(
          server, id,
          absl::StrCat("missed heartbeats for ", options_.heartbeat_timeout_ms,
                       " ms"));
    }
  }
}

void CoordinatorState::PauseMonitorLoop() {
  const absl::Duration tick = absl::Milliseconds(options_.pause_tick_ms);
  absl::Time before = absl::Now();
  while (!stop_.WaitForNotificationWithTimeout(tick)) {
    const absl::Time now = absl::Now();
    const absl::Duration stalled = now - before - tick;
    before = now;
    if (stalled <= absl::Milliseconds(options_.pause_threshold_ms)) continue;
    // This thread did not run for `stalled`: neither did the heartbeat
    // handlers, most likely, so the members' silence over that time is the
    // coordinator's, not theirs (as Cassandra's failure detector ignores a
    // local pause).
    absl::MutexLock lock(&mu_);
    members_.CompensateStall(now, stalled);
    Log()->warn("coordinator stalled for {} ms (busy or paused host): not "
                "counted against members' heartbeats",
                absl::ToInt64Milliseconds(stalled));
  }
}

void CoordinatorState::RemoveMemberLocked(bool server, const std::string& id,
                                          const std::string& why) {
  const Member* member = members_.Find(server, id);
  if (member == nullptr) return;
  ++view_epoch_;
  Log()->warn("{} {} at {} {}: removed (view epoch {})",
              server ? "server" : "worker", id, member->address, why,
              view_epoch_);
  for (auto& [job_id, job] : jobs_) {
    if (job.status.state() != RUNNING) continue;
    if (!server) {
      bool held = member->job_id == job_id;
      for (size_t r = 0; r < job.worker_ids.size(); ++r) {
        if (job.worker_ids[r] != id) continue;
        // Under BSP the step waits for this rank; an idle worker (or, in
        // an elastic job, one of its workers) takes it (AssignFreeRanks)
        // and resumes where the servers are.
        const int32_t rank = static_cast<int32_t>(r);
        job.worker_ids[r].clear();
        job.ranks_free = true;
        job.resume_ranks.insert(rank);
        job.rank_start.erase(rank);
        job.releasing.erase(rank);
        held = true;
        Log()->warn("job {}: rank {} lost its worker {}; waiting for a "
                    "worker to take it", job_id, r, id);
      }
      for (auto& [rank, to] : job.releasing) {
        if (to == id) to.clear();  // moving to it: to whoever needs it
      }
      if (held) {
        MembershipChangedLocked(&job, {{MembershipChange::DIED, id}});
      }
      continue;
    }
    bool changed = false;
    auto* servers = job.assignment.mutable_servers();
    servers->erase(std::remove_if(servers->begin(), servers->end(),
                                  [&](const ServerInfo& s) { return s.id() == id; }),
                   servers->end());
    for (ShardReplicas& shard : *job.assignment.mutable_shards()) {
      auto* backups = shard.mutable_backups();
      const auto end = std::remove(backups->begin(), backups->end(), id);
      changed |= end != backups->end();
      backups->erase(end, backups->end());
      if (shard.primary() == id) {
        shard.clear_primary();
        job.orphaned[shard.shard()] = id;
        changed = true;
      }
    }
    if (!changed) continue;
    if (job.orphaned.empty()) {
      NewViewLocked(&job);  // only backups lost
      Log()->warn("job {}: server {} left its shards' backups; view epoch "
                  "{}", job_id, id, job.assignment.view_epoch());
    } else {
      Log()->warn("job {}: server {} was the primary of {} shard(s); "
                  "promoting backups", job_id, id, job.orphaned.size());
    }
  }
  members_.Erase(server, id);
}

}  // namespace psd
