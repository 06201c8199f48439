// CoordinatorState, cluster views: the view clients read, new views of a
// job and sending them to its servers, failover (promoting a backup) and
// replica repair (a new backup by state transfer).
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/rpc.h"
#include "server/coordinator/server_calls.h"

namespace psd {

ClusterView CoordinatorState::GetClusterView() {
  absl::MutexLock lock(&mu_);
  ClusterView view;
  view.set_epoch(view_epoch_);
  for (const auto& [id, member] : members_.servers()) {
    ServerInfo* info = view.add_servers();
    info->set_id(id);
    info->set_address(member.address);
  }
  for (const auto& [id, member] : members_.workers()) {
    WorkerInfo* info = view.add_workers();
    info->set_id(id);
    info->set_address(member.address);
    info->set_job_id(member.job_id);
    // A rank only while the worker holds it: an idle worker's member.rank
    // is its last job's, and a refused claim's is -1.
    auto job = jobs_.find(member.job_id);
    if (!member.job_id.empty() && member.rank >= 0 && job != jobs_.end() &&
        member.rank < static_cast<int32_t>(job->second.worker_ids.size()) &&
        job->second.worker_ids[member.rank] == id) {
      info->set_rank(member.rank);
    }
  }
  return view;
}

std::string CoordinatorState::SendViewTo(const Assignment& assignment,
                                         std::chrono::milliseconds budget,
                                         std::string* failed_server) {
  SetViewRequest request;
  request.set_job_id(assignment.job_id());
  JobView* view = request.mutable_view();
  view->set_epoch(assignment.view_epoch());
  *view->mutable_shards() = assignment.shards();
  *view->mutable_servers() = assignment.servers();
  std::string error;
  for (const ServerInfo& server : assignment.servers()) {
    request.set_server_id(server.id());
    auto stub = Channels().Stub(server.address());
    SetViewResponse response;
    grpc::Status status =
        CallIdempotent(stub.get(), &ParameterServer::Stub::SetView, request,
                       &response, std::chrono::milliseconds(2000), budget);
    Channels().Done(server.address(), status);
    if (!status.ok() && error.empty()) {
      error = absl::StrCat("sending view epoch ", assignment.view_epoch(),
                           " to server ", server.id(), " (", server.address(),
                           "): ", status.error_message());
      if (failed_server != nullptr) *failed_server = server.id();
    }
  }
  return error;
}

void CoordinatorState::SendViews() {
  std::vector<Assignment> views;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : views_to_send_) {
      auto it = jobs_.find(id);
      if (it != jobs_.end() && it->second.status.state() == RUNNING) {
        views.push_back(it->second.assignment);
      }
    }
    views_to_send_.clear();
  }
  for (const Assignment& view : views) {
    const std::string error = SendViewTo(view, std::chrono::milliseconds(0));
    // A server that missed it is behind: the workers' pushes tell it
    // (UNAVAILABLE, retried), and a dead one is expired.
    if (!error.empty()) Log()->warn("job {}: {}", view.job_id(), error);
  }
}

void CoordinatorState::NewViewLocked(Job* job) {
  Assignment& a = job->assignment;
  a.set_view_epoch(++view_epoch_);
  std::map<std::string, ServerInfo> known;
  for (const ServerInfo& s : a.servers()) known[s.id()] = s;
  for (const auto& [id, member] : members_.servers()) {
    if (known.count(id)) continue;
    known[id] = ServerInfoOf(id, member);
  }
  std::set<std::string> used;
  for (const ShardReplicas& r : a.shards()) {
    if (!r.primary().empty()) used.insert(r.primary());
    used.insert(r.backups().begin(), r.backups().end());
  }
  a.clear_servers();
  for (const std::string& id : used) {
    if (known.count(id)) *a.add_servers() = known[id];
  }
  *job->status.mutable_shards() = a.shards();
  *job->status.mutable_servers() = a.servers();
  job->status.set_view_epoch(a.view_epoch());
  ++job->version;
  MarkDirty(*job);
  views_to_send_.insert(job->status.job_id());
}

void CoordinatorState::RunFailovers() {
  struct Orphan {
    std::string job_id;
    Assignment assignment;
    std::map<int32_t, std::string> shards;  // shard -> the dead primary
  };
  std::vector<Orphan> orphans;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) {
      if (job.status.state() == RUNNING && !job.orphaned.empty()) {
        orphans.push_back(Orphan{id, job.assignment, job.orphaned});
      }
    }
  }
  for (const Orphan& orphan : orphans) {
    // Ask each backup of an orphaned shard how far it is.
    std::map<std::string, std::string> address;
    for (const ServerInfo& s : orphan.assignment.servers()) {
      address[s.id()] = s.address();
    }
    std::map<int32_t, std::pair<std::string, std::vector<std::string>>> chosen;
    std::string lost;
    for (const ShardReplicas& r : orphan.assignment.shards()) {
      if (!orphan.shards.count(r.shard())) continue;
      std::map<std::string, std::pair<int64_t, int64_t>> steps;
      for (const std::string& backup : r.backups()) {
        auto stub = Channels().Stub(address[backup]);
        ServerStatus status;
        grpc::Status called =
            CallServer(stub.get(), &ParameterServer::Stub::GetServerStatus,
                       GetServerStatusRequest(), &status,
                       std::chrono::milliseconds(1000));
        Channels().Done(address[backup], called);
        if (!called.ok()) continue;
        for (const ServerJobStatus& job : status.jobs()) {
          if (job.job_id() != orphan.job_id) continue;
          for (const ShardStatus& shard : job.shards()) {
            if (shard.shard() == r.shard() && shard.role() == "BACKUP") {
              steps[backup] = {shard.min_step(), shard.max_step()};
            }
          }
        }
      }
      if (steps.empty()) {
        lost = absl::StrCat(
            "shard ", r.shard(), " lost every replica: its primary, server ",
            orphan.shards.at(r.shard()), ", stopped sending heartbeats and ",
            r.backups_size() == 0 ? "it has no backup (replication_factor 1)"
                                  : "no backup answered",
            "; restart the cluster to resume from the newest snapshot");
        break;
      }
      auto best = std::max_element(
          steps.begin(), steps.end(),
          [](const auto& a, const auto& b) { return a.second < b.second; });
      std::vector<std::string> kept;
      for (const auto& [backup, step] : steps) {
        // Backups exactly as far as the new primary stay; the others are
        // brought back by a state transfer.
        if (backup != best->first && step == best->second &&
            step.first == step.second) {
          kept.push_back(backup);
        }
      }
      chosen[r.shard()] = {best->first, kept};
    }
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(orphan.job_id);
    if (it == jobs_.end() || it->second.status.state() != RUNNING) continue;
    Job& job = it->second;
    if (!lost.empty()) {
      FinishJob(&job, FAILED, lost);
      continue;
    }
    for (ShardReplicas& r : *job.assignment.mutable_shards()) {
      auto c = chosen.find(r.shard());
      if (c == chosen.end() || !job.orphaned.count(r.shard())) continue;
      // The chosen backup must still be in the view (not expired meanwhile).
      if (std::count(r.backups().begin(), r.backups().end(), c->second.first) ==
          0) {
        continue;  // retried at the next round
      }
      r.set_primary(c->second.first);
      r.clear_backups();
      for (const std::string& b : c->second.second) r.add_backups(b);
      job.orphaned.erase(r.shard());
      Log()->warn("job {}: shard {}: backup {} promoted to primary", orphan.job_id,
                  r.shard(), c->second.first);
    }
    if (job.orphaned.empty()) {
      NewViewLocked(&job);
      Log()->warn("job {}: failover done, view epoch {}", orphan.job_id,
                  job.assignment.view_epoch());
    }
  }
  SendViews();
}

void CoordinatorState::RepairReplicas() {
  std::string job_id, joiner_id, joiner_address, primary_address;
  int32_t shard = -1;
  Assignment assignment;
  {
    absl::MutexLock lock(&mu_);
    if (options_.replication_factor < 2) return;
    for (auto& [id, job] : jobs_) {
      if (job.repairing) return;  // one state transfer at a time
    }
    for (auto& [id, job] : jobs_) {
      if (job.status.state() != RUNNING || !job.orphaned.empty()) continue;
      std::map<std::string, int> load;  // shards held in this job
      for (const auto& [sid, member] : members_.servers()) load[sid] = 0;
      for (const ShardReplicas& r : job.assignment.shards()) {
        if (load.count(r.primary())) ++load[r.primary()];
        for (const std::string& b : r.backups()) {
          if (load.count(b)) ++load[b];
        }
      }
      for (const ShardReplicas& r : job.assignment.shards()) {
        if (1 + r.backups_size() >= options_.replication_factor) continue;
        if (!members_.servers().count(r.primary())) continue;  // failover first
        std::string best;
        for (const auto& [sid, n] : load) {
          if (sid == r.primary() ||
              std::count(r.backups().begin(), r.backups().end(), sid) > 0 ||
              job.drained.count(sid) > 0) {
            continue;
          }
          bool dropping = false;  // a DropJob of this job is queued for it
          for (const PendingDrop& drop : drops_) {
            if (drop.assignment.job_id() != id) continue;
            for (const ServerInfo& s : drop.assignment.servers()) {
              dropping |= s.id() == sid;
            }
          }
          if (dropping) continue;
          if (best.empty() || n < load[best]) best = sid;
        }
        if (best.empty()) continue;  // no server to spare
        job.repairing = true;
        job_id = id;
        shard = r.shard();
        joiner_id = best;
        joiner_address = members_.servers()[best].address;
        primary_address = members_.servers()[r.primary()].address;
        assignment = job.assignment;
        break;
      }
      if (!job_id.empty()) break;
    }
  }
  if (job_id.empty()) return;
  Log()->info("job {}: shard {} has fewer than {} replicas: bringing in server "
              "{} as a backup (state transfer)", job_id, shard,
              options_.replication_factor, joiner_id);
  SyncBackupResponse synced;
  grpc::Status status =
      TransferShard(assignment, shard, joiner_address, primary_address, &synced);
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return;
    Job& job = it->second;
    job.repairing = false;
    if (!status.ok()) {
      Log()->warn("job {}: bringing in {} for shard {} failed: {}", job_id,
                  joiner_id, shard, status.error_message());
      return;
    }
    if (job.status.state() != RUNNING ||
        !members_.servers().count(joiner_id)) {
      return;
    }
    for (ShardReplicas& r : *job.assignment.mutable_shards()) {
      if (r.shard() != shard) continue;
      if (r.primary() != assignment.shards(shard).primary()) return;  // moved
      r.add_backups(joiner_id);
    }
    NewViewLocked(&job);
    Log()->info("job {}: server {} is a backup of shard {} ({} partitions, "
                "{} bytes transferred); view epoch {}", job_id, joiner_id,
                shard, synced.partitions(), synced.bytes(),
                job.assignment.view_epoch());
  }
  SendViews();
}

}  // namespace psd
