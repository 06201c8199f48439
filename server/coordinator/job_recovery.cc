// CoordinatorState, recovery after a restart: bringing RECOVERING jobs back
// once their servers register again, from the servers' memory or from
// their newest common snapshot.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/rpc.h"
#include "common/sparse_config.h"
#include "common/status.h"
#include "server/coordinator/replica_sets.h"
#include "server/coordinator/server_calls.h"
#include "server/coordinator/sparse_tables.h"

namespace psd {

void CoordinatorState::RecoverJobs() {
  std::string job_id;
  Assignment assignment;
  {
    absl::MutexLock lock(&mu_);
    std::map<std::string, const std::pair<const std::string, Member>*> by_uid;
    for (const auto& entry : members_.servers()) {
      if (!entry.second.uid.empty()) by_uid[entry.second.uid] = &entry;
    }
    const absl::Time now = absl::Now();
    for (auto& [id, job] : jobs_) {
      if (job.status.state() != RECOVERING || job.starting) continue;
      if (job.recovering_since == absl::Time()) job.recovering_since = now;
      // The servers that held its shards and have not registered again.
      std::set<std::string> missing;
      bool all_live = true;
      for (const ServerInfo& server : job.assignment.servers()) {
        auto it = by_uid.find(server.uid());
        if (server.uid().empty() || it == by_uid.end()) {
          missing.insert(server.id());
          continue;
        }
        const Member& member = it->second->second;
        all_live &= std::count(member.live_jobs.begin(), member.live_jobs.end(),
                               id) > 0;
      }
      if (!missing.empty()) {
        const bool timed_out =
            now - job.recovering_since >=
            absl::Milliseconds(options_.recovery_timeout_ms);
        std::vector<std::string> described;  // the missing servers
        for (const ServerInfo& server : job.assignment.servers()) {
          if (!missing.count(server.id())) continue;
          described.push_back(absl::StrCat(
              "uid ", server.uid().empty() ? "(none)" : server.uid(),
              " (was ", server.id(), " at ", server.address(), ", ",
              ShardsHeldBy(job.assignment, server.id()), ")"));
        }
        // Shards none of whose replicas is back.
        std::vector<std::string> lost;
        for (const ShardReplicas& r : job.assignment.shards()) {
          bool any_back = !r.primary().empty() && !missing.count(r.primary());
          for (const std::string& b : r.backups()) any_back |= !missing.count(b);
          if (!any_back) lost.push_back(absl::StrCat(r.shard()));
        }
        if (!lost.empty() && timed_out) {
          FinishJob(
              &job, FAILED,
              absl::StrCat(
                  "recovery failed: ", lost.size() == 1 ? "shard " : "shards ",
                  absl::StrJoin(lost, ", "),
                  lost.size() == 1 ? " has" : " have",
                  " no replica left with its snapshots: the servers that "
                  "held it did not register again within ",
                  options_.recovery_timeout_ms,
                  " ms (--recovery_timeout_ms): missing server ",
                  absl::StrJoin(described, "; "),
                  ". A server started on an empty or replaced --data_dir has "
                  "a new uid and none of the job's snapshots"));
          job.status.clear_pending_reason();
          continue;
        }
        const bool replaced =
            members_.servers().size() >=
            static_cast<size_t>(job.assignment.servers_size());
        if (!lost.empty() || (!timed_out && !replaced)) {
          SetPendingReasonLocked(
              &job,
              absl::StrCat(
                  "waiting for the servers that held its shards to register "
                  "again: ",
                  absl::StrJoin(described, "; "),
                  lost.empty()
                      ? absl::StrCat("; every shard has a replica back, so it "
                                     "resumes without them once ",
                                     job.assignment.servers_size(),
                                     " servers are registered (",
                                     members_.servers().size(),
                                     " now) or after ",
                                     options_.recovery_timeout_ms, " ms")
                      : absl::StrCat("; shard(s) ", absl::StrJoin(lost, ", "),
                                     " have no replica back: the job fails "
                                     "if none comes back within ",
                                     options_.recovery_timeout_ms, " ms")));
          continue;
        }
        // Every shard has a replica back: resume without the missing
        // servers; RepairReplicas brings their shards back to R replicas by
        // state transfer once the job runs.
        Log()->warn("job {}: recovering without server {}: {}", id,
                    absl::StrJoin(described, "; "),
                    timed_out ? "not back within --recovery_timeout_ms"
                              : "replaced (as many servers are registered as "
                                "the job had); its shards keep their other "
                                "replicas and get new backups by state "
                                "transfer");
        RemoveServers(missing, &job.assignment,
                      all_live ? &job.orphaned : nullptr);
      }
      // Every shard's server is back: point the assignment at them.
      for (ServerInfo& server : *job.assignment.mutable_servers()) {
        const auto& [member_id, member] = *by_uid[server.uid()];
        for (ShardReplicas& shard : *job.assignment.mutable_shards()) {
          if (shard.primary() == server.id()) shard.set_primary(member_id);
          for (std::string& backup : *shard.mutable_backups()) {
            if (backup == server.id()) backup = member_id;
          }
        }
        server.set_id(member_id);
        server.set_address(member.address);
        server.set_identity(member.identity);
      }
      *job.status.mutable_servers() = job.assignment.servers();
      *job.status.mutable_shards() = job.assignment.shards();
      job.status.clear_pending_reason();
      if (all_live) {
        // Only the coordinator restarted: the servers still hold the job and
        // its workers come back to their ranks as they register again.
        job.status.set_state(RUNNING);
        job.started = absl::Now();
        ++job.version;
        MarkDirty(job);
        // The servers' ids changed; a shard whose primary is missing waits
        // for RunFailovers, which sends the view once it has chosen.
        if (job.orphaned.empty()) {
          if (missing.empty()) {
            views_to_send_.insert(id);
          } else {
            NewViewLocked(&job);
          }
        }
        Log()->info("job {}: RUNNING again (its servers still hold it)", id);
        continue;
      }
      if (!missing.empty()) job.assignment.set_view_epoch(++view_epoch_);
      job.starting = true;
      job_id = id;
      assignment = job.assignment;
      break;
    }
  }
  if (job_id.empty()) return;

  absl::StatusOr<int64_t> step = RestoreFromSnapshots(&assignment);
  if (step.ok()) step = RestoreSparseTables(&assignment, *step);
  if (step.ok()) {
    const std::string error = SendViewTo(
        assignment, std::chrono::milliseconds(options_.control_call_budget_ms));
    if (!error.empty()) step = absl::UnavailableError(error);
  }
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  Job& job = it->second;
  job.starting = false;
  if (job.status.state() != RECOVERING) return;  // cancelled meanwhile
  if (!step.ok()) {
    FinishJob(&job, FAILED,
              absl::StrCat("recovery failed: ", step.status().message()));
    return;
  }
  // The view restored (without the replicas that had no snapshot).
  *job.assignment.mutable_shards() = assignment.shards();
  *job.assignment.mutable_servers() = assignment.servers();
  job.assignment.set_view_epoch(assignment.view_epoch());
  *job.assignment.mutable_table_replicas() = assignment.table_replicas();
  *job.status.mutable_shards() = assignment.shards();
  *job.status.mutable_servers() = assignment.servers();
  job.status.set_view_epoch(assignment.view_epoch());
  job.start_step = *step;
  job.assignment.set_start_step(*step);
  job.status.add_resumed_from_steps(*step);
  // Epoch results after the resumed step will be measured again.
  const int64_t per_epoch = job.status.steps_per_epoch();
  auto* epochs = job.status.mutable_epochs();
  while (!epochs->empty() &&
         (epochs->rbegin()->epoch() + 1) * per_epoch > *step) {
    epochs->RemoveLast();
  }
  job.worker_ids.assign(job.status.config().workers(), "");
  job.ranks_free = true;
  job.ranks.assign(job.status.config().workers(), RankProgress());
  for (RankProgress& rank : job.ranks) rank.step = *step;
  job.status.set_state(RUNNING);
  job.started = absl::Now();
  ++job.version;
  MarkDirty(job);
  Log()->info("job {}: resumes at step {} from its servers' snapshots", job_id,
              *step);
}

absl::StatusOr<int64_t> CoordinatorState::RestoreSparseTables(
    Assignment* assignment, int64_t step) {
  if (!IsSparseModel(assignment->config().model())) return step;
  const std::string job_id = assignment->job_id();
  auto call_timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  auto budget = std::chrono::milliseconds(options_.control_call_budget_ms);
  for (int attempt = 0; attempt < 10; ++attempt) {
    // The table shards follow the job's shards' (new) replica sets: the
    // servers' addresses changed with the restart.
    assignment->clear_table_replicas();
    auto tables = TableReplicas(*assignment);
    if (!tables.ok()) return tables.status();
    for (size_t shard = 0; shard < tables->size(); ++shard) {
      TableShardAddresses* t = assignment->add_table_replicas();
      t->set_shard(static_cast<int32_t>(shard));
      t->mutable_replicas()->Assign((*tables)[shard].begin(),
                                    (*tables)[shard].end());
    }
    if (step == 0) {
      // Starting again from step 0 (no snapshot anywhere): empty tables.
      bool retryable = true;
      const std::string error =
          CreateJobTables(*assignment, call_timeout, budget, &retryable);
      if (!error.empty()) return absl::UnavailableError(error);
      return step;
    }
    if (assignment->config().consistency() != BSP) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", Quote(job_id), " is a sparse job under ",
          Consistency_Name(assignment->config().consistency()),
          ": its embedding tables have no step snapshots (only BSP table "
          "shards have a step boundary), so it cannot resume at step ", step,
          "; resume is built for BSP sparse jobs"));
    }
    bool step_missing = false;
    const std::string error =
        RestoreJobTables(*assignment, step, call_timeout, budget, &step_missing);
    if (error.empty()) return step;
    if (!step_missing) return absl::UnavailableError(error);
    // A table shard lacks this step (its snapshot was not written, or is
    // damaged): every part restores again at an older common step.
    Log()->warn("job {}: {}; restoring at an older step", job_id, error);
    auto older = RestoreFromSnapshots(assignment, step - 1);
    if (!older.ok()) {
      return absl::Status(
          older.status().code(),
          absl::StrCat(error, "; and no older common step: ",
                       older.status().message()));
    }
    step = *older;
  }
  return absl::InternalError(absl::StrCat(
      "job ", Quote(job_id), ": its tables and dense part never agreed on a "
      "snapshot step"));
}

absl::StatusOr<int64_t> CoordinatorState::RestoreFromSnapshots(
    Assignment* assignment, int64_t max_step) {
  const bool again = max_step != INT64_MAX;
  const std::string job_id = assignment->job_id();
  auto call_timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  // Which servers have snapshots of the job. NOT_FOUND: none there (a
  // server on a new data directory, or one that never wrote any).
  std::set<std::string> without;
  for (const ServerInfo& server : assignment->servers()) {
    auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
    ListSnapshotsRequest request;
    request.set_job_id(job_id);
    ListSnapshotsResponse response;
    grpc::Status status =
        CallServer(stub.get(), &ParameterServer::Stub::ListSnapshots, request,
                   &response, call_timeout);
    if (!status.ok() && status.error_code() != grpc::StatusCode::NOT_FOUND) {
      return absl::Status(
          static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat("listing the snapshots on server ", server.id(), " (",
                       server.address(), "): ", status.error_message()));
    }
    if (response.snapshots_size() == 0) without.insert(server.id());
  }
  // No shard has any snapshot: the job starts again from step 0, which
  // gives the same parameters as a run never stopped (BSP is deterministic).
  if (without.size() == static_cast<size_t>(assignment->servers_size())) {
    for (const ServerInfo& server : assignment->servers()) {
      auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
      CreateJobRequest create;
      create.set_job_id(job_id);
      *create.mutable_config() = assignment->config();
      *create.mutable_placement() = assignment->placement();
      for (int32_t shard : ShardsOf(*assignment, server.id())) {
        create.add_shards(shard);
      }
      create.set_view_epoch(assignment->view_epoch());
      create.set_submitted_by(assignment->submitted_by());
      *create.mutable_servers() = assignment->servers();
      CreateJobResponse response;
      PSD_RETURN_IF_ERROR(FromGrpcStatus(
          CallServer(stub.get(), &ParameterServer::Stub::CreateJob, create,
                     &response, call_timeout)));
    }
    Log()->info("job {}: no snapshots anywhere; starting again from step 0",
                job_id);
    return 0;
  }
  if (!without.empty()) {
    // Snapshots exist, but not on these servers: they leave the view, and
    // each shard resumes from its other replicas; a shard with none fails.
    std::vector<std::string> lost;
    for (const ShardReplicas& r : assignment->shards()) {
      std::vector<std::string> replicas = {r.primary()};
      replicas.insert(replicas.end(), r.backups().begin(), r.backups().end());
      bool covered = false;
      std::vector<std::string> none;
      for (const std::string& s : replicas) {
        if (s.empty()) continue;
        if (!without.count(s)) covered = true;
        for (const ServerInfo& info : assignment->servers()) {
          if (info.id() == s) {
            none.push_back(absl::StrCat("server ", s, " (uid ", info.uid(),
                                        ") has none"));
          }
        }
      }
      if (!covered) {
        lost.push_back(absl::StrCat("shard ", r.shard(), ": ",
                                    absl::StrJoin(none, ", ")));
      }
    }
    if (!lost.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no replica has a snapshot of job ", Quote(job_id), " while other "
          "shards have: ", absl::StrJoin(lost, "; "),
          " (restarted on an empty or moved --data_dir?)"));
    }
    for (const std::string& s : without) {
      Log()->warn("job {}: server {} has no snapshot of it: left out of the "
                  "view ({}); those shards resume from their other replicas "
                  "and get it back by state transfer",
                  job_id, s, ShardsHeldBy(*assignment, s));
    }
    RemoveServers(without, assignment, /*orphaned=*/nullptr);
  }
  std::vector<std::unique_ptr<ParameterServer::Stub>> stubs;
  for (const ServerInfo& server : assignment->servers()) {
    stubs.push_back(ParameterServer::NewStub(MakeChannel(server.address())));
  }
  // Each server restores its newest valid snapshot at or before max_step;
  // until they agree, the ones ahead restore again at the lowest step.
  // Again: every server holds what an earlier call restored, so each
  // drops it before it restores.
  std::vector<int64_t> restored(stubs.size(), again ? INT64_MAX : -1);
  for (int round = 0; round < 100; ++round) {
    for (size_t i = 0; i < stubs.size(); ++i) {
      if (restored[i] == max_step) continue;
      if (restored[i] >= 0) {  // ahead: drop and restore again
        DropJobRequest drop;
        drop.set_job_id(job_id);
        DropJobResponse dropped;
        grpc::Status status =
            CallServer(stubs[i].get(), &ParameterServer::Stub::DropJob, drop,
                       &dropped, call_timeout);
        if (status.error_code() != grpc::StatusCode::NOT_FOUND) {
          PSD_RETURN_IF_ERROR(FromGrpcStatus(status));
        }
      }
      RestoreJobRequest request;
      request.set_job_id(job_id);
      request.set_max_step(max_step);
      request.set_view_epoch(assignment->view_epoch());
      request.set_submitted_by(assignment->submitted_by());
      *request.mutable_servers() = assignment->servers();
      RestoreJobResponse response;
      grpc::Status status =
          CallServer(stubs[i].get(), &ParameterServer::Stub::RestoreJob,
                     request, &response, call_timeout);
      const ServerInfo& server = assignment->servers(i);
      if (!status.ok()) {
        return absl::Status(
            static_cast<absl::StatusCode>(status.error_code()),
            absl::StrCat(ShardsHeldBy(*assignment, server.id()), " on server ",
                         server.id(), " (uid ", server.uid(), "): ",
                         status.error_message()));
      }
      for (const std::string& skipped : response.skipped()) {
        Log()->warn("job {}: server {}: skipped a snapshot: {}", job_id,
                    server.id(), skipped);
      }
      restored[i] = response.step();
    }
    const int64_t lowest = *std::min_element(restored.begin(), restored.end());
    if (lowest == *std::max_element(restored.begin(), restored.end())) {
      return lowest;
    }
    max_step = lowest;
  }
  return absl::InternalError("the shards' snapshots never agreed on a step");
}

}  // namespace psd
