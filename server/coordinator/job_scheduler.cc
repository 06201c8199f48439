// CoordinatorState, the scheduler: submitting jobs, choosing the next one
// to start (order, backfill, pending reasons), starting it on the servers,
// and giving free ranks of running jobs to idle workers.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/sparse_config.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/rpc.h"
#include "common/status.h"
#include "server/coordinator/replica_sets.h"
#include "server/coordinator/server_calls.h"
#include "server/coordinator/sparse_tables.h"

namespace psd {

int64_t CoordinatorState::TableMemoryLocked(
    const std::vector<std::string>& server_ids) const {
  int64_t total = 0;
  for (const std::string& id : server_ids) {
    auto it = members_.servers().find(id);
    if (it == members_.servers().end() ||
        it->second.table_memory_bytes <= 0) {
      return 0;  // a server without a bound: none for the cluster
    }
    total += it->second.table_memory_bytes;
  }
  return total;
}

absl::StatusOr<std::string> CoordinatorState::SubmitJob(
    const JobConfig& input, const std::string& submitted_by) {
  JobConfig config = input;
  ApplyJobConfigDefaults(&config);
  PSD_RETURN_IF_ERROR(ValidateJobConfig(config));
  {
    // Against the servers registered now (checked again at the start, on
    // the job's servers).
    absl::MutexLock lock(&mu_);
    std::vector<std::string> servers;
    for (const auto& [id, member] : members_.servers()) servers.push_back(id);
    PSD_RETURN_IF_ERROR(CheckTablesFit(config, TableMemoryLocked(servers),
                                       options_.replication_factor));
  }
  Job job;
  job.status.set_state(PENDING);
  job.status.set_submitted_by(submitted_by);
  *job.status.mutable_config() = config;
  job.status.set_steps_per_epoch(StepsPerEpoch(config, TrainExamples(config)));
  job.status.set_total_steps(job.status.steps_per_epoch() * config.epochs());
  if (job.status.steps_per_epoch() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size: ", config.batch_size(), " x workers ", config.workers(),
        " is larger than the ", TrainExamples(config), " training examples"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int64_t>(jobs_.size()) >= options_.max_jobs) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this coordinator holds ", jobs_.size(), " jobs, its limit "
          "(--max_jobs ", options_.max_jobs, "); delete finished ones "
          "(JobService/DeleteJob) first"));
    }
    job.status.set_job_id(absl::StrCat(config.name(), "-", next_job_++));
  }
  const std::string id = job.status.job_id();
  // Saved before it is acknowledged, so a submitted job survives a crash.
  if (options_.db != nullptr) {
    JobRecord record;
    *record.mutable_status() = job.status;
    PSD_RETURN_IF_ERROR(options_.db->Put(record));
  }
  absl::MutexLock lock(&mu_);
  jobs_[id] = std::move(job);
  job_order_.push_back(id);
  Log()->info("job {}: submitted ({} workers, {} steps)", id, config.workers(),
              jobs_[id].status.total_steps());
  return id;
}

void CoordinatorState::SetPendingReasonLocked(Job* job,
                                              const std::string& reason) {
  if (job->status.pending_reason() == reason) return;
  job->status.set_pending_reason(reason);
  ++job->version;
}

void CoordinatorState::AssignFreeRanks() {
  for (auto& [id, job] : jobs_) {
    // Ranks freed by a restore from snapshots, or by a worker that died or
    // stalled (never given back to the worker that stalled).
    if (job.status.state() == RUNNING && IsElastic(job.status.config())) {
      RebalanceLocked(&job);
      continue;
    }
    if (job.status.state() != RUNNING || !job.ranks_free) continue;
    std::vector<std::string> idle;
    for (const auto& [worker_id, member] : members_.workers()) {
      if (member.job_id.empty() && !member.leaving &&
          member.stalled_in != id && member.Trains(job.status.config().model())) {
        idle.push_back(worker_id);
      }
    }
    std::vector<int32_t> free;
    for (int32_t r = 0; r < static_cast<int32_t>(job.worker_ids.size()); ++r) {
      if (job.worker_ids[r].empty()) free.push_back(r);
    }
    if (free.empty()) job.ranks_free = false;
    if (free.empty() || idle.size() < free.size()) continue;
    std::vector<std::pair<MembershipChange::Kind, std::string>> joined;
    for (int32_t rank : free) {
      const std::string worker = idle.back();
      idle.pop_back();
      joined.emplace_back(MembershipChange::JOINED, worker);
      job.worker_ids[rank] = worker;
      members_.workers()[worker].job_id = id;
      members_.workers()[worker].rank = rank;
      if (job.resume_ranks.count(rank)) {
        Log()->info("job {}: rank {} goes to {}, at the step its servers are at",
                    id, rank, worker);
      } else {
        Log()->info("job {}: rank {} goes to {} at step {}", id, rank, worker,
                    job.start_step);
      }
    }
    MembershipChangedLocked(&job, joined);
  }
}

std::vector<std::string> CoordinatorState::WorkersFor(
    const ModelSpec& model, const std::vector<std::string>& ids) {
  std::vector<std::string> fit;
  for (const std::string& id : ids) {
    auto it = members_.workers().find(id);
    if (it != members_.workers().end() && it->second.Trains(model)) {
      fit.push_back(id);
    }
  }
  return fit;
}

std::string CoordinatorState::NextJobToStartLocked(
    const std::vector<std::string>& all_idle) {
  const int32_t servers_needed = std::max(1, options_.replication_factor);
  const absl::Time now = absl::Now();
  // Registered servers not cooling down after a failed start.
  int32_t eligible = 0;
  for (const auto& [server_id, member] : members_.servers()) {
    auto cooling = start_cooldown_.find(server_id);
    eligible += cooling == start_cooldown_.end() || cooling->second <= now;
  }
  std::string blocker;  // fits the cluster, waits for busy workers
  std::string blocker_reason;
  for (const std::string& id : job_order_) {
    Job& job = jobs_[id];
    if (job.status.state() != PENDING || job.starting) continue;
    // What a failed start attempt adds to the reason, if any.
    auto with_start = [&job](const std::string& reason) {
      if (job.start_reason.empty()) return reason;
      return absl::StrCat(reason, "; ", job.start_reason);
    };
    // An elastic job starts with min_workers. Only workers that train the
    // job's model kind count (RegisterRequest.model_kinds).
    const int32_t needed = MinWorkers(job.status.config());
    const std::vector<std::string> idle =
        WorkersFor(job.status.config().model(), all_idle);
    int32_t registered = 0;
    for (const auto& [worker_id, member] : members_.workers()) {
      registered += member.Trains(job.status.config().model());
    }
    const int32_t others =
        static_cast<int32_t>(members_.workers().size()) - registered;
    const std::string kind_note =
        others == 0 ? ""
                    : absl::StrFormat(" that train %s models (%d others do not)",
                                      ModelSpec::Kind_Name(
                                          job.status.config().model().kind()),
                                      others);
    if (static_cast<int32_t>(members_.servers().size()) < servers_needed) {
      SetPendingReasonLocked(
          &job, with_start(absl::StrFormat(
                    "waiting for %d server(s) (replication factor %d); %d "
                    "registered",
                    servers_needed, options_.replication_factor,
                    members_.servers().size())));
    } else if (registered < needed) {
      // Cannot start until more workers register: later jobs that fit go
      // first (backfill).
      SetPendingReasonLocked(
          &job, with_start(absl::StrFormat(
                    "waiting for %d workers; %d registered%s (jobs behind it "
                    "that fit start first)",
                    needed, registered, kind_note)));
    } else if (!blocker.empty()) {
      // The registered workers could run the blocker: it keeps its turn,
      // so it is never starved by smaller jobs.
      SetPendingReasonLocked(
          &job, with_start(absl::StrCat("behind job ", Quote(blocker),
                                        ", which ", blocker_reason)));
    } else if (now < job.start_not_before && eligible < servers_needed) {
      // A failed start with too few other servers: it waits out its
      // backoff (or until enough others register), keeping its turn as a
      // job waiting for busy workers does.
      blocker = id;
      blocker_reason =
          absl::StrCat("waits to be tried again (", job.start_reason, ")");
      SetPendingReasonLocked(&job, job.start_reason);
    } else if (static_cast<int32_t>(idle.size()) >= needed) {
      // A retried start keeps saying why it was retried until it runs.
      SetPendingReasonLocked(&job, job.start_reason);
      return id;
    } else {
      blocker = id;
      blocker_reason = absl::StrFormat(
          "waits for %d idle workers; %d of the %d registered are idle (the "
          "others run other jobs)",
          needed, idle.size(), registered);
      SetPendingReasonLocked(&job, with_start(blocker_reason));
    }
  }
  return "";
}

void CoordinatorState::StartPendingJobs() {
  std::string job_id;
  CreateJobRequest create;
  std::vector<ServerInfo> servers;
  JobRecord attempt_record;  // persisted before the servers are called
  {
    absl::MutexLock lock(&mu_);
    AssignFreeRanks();
    std::vector<std::string> all_idle;
    for (const auto& [id, member] : members_.workers()) {
      if (member.job_id.empty() && !member.leaving) all_idle.push_back(id);
    }
    const std::string next = NextJobToStartLocked(all_idle);
    if (next.empty()) return;
    for (const std::string& id : job_order_) {
      if (id != next) continue;
      Job& job = jobs_[id];
      const std::vector<std::string> idle =
          WorkersFor(job.status.config().model(), all_idle);
      // Reserve the workers and build the placement over every server. An
      // elastic job takes up to max_workers idle workers, rank r going to
      // worker r mod their number.
      const JobConfig& sizes = job.status.config();
      const int32_t ranks = sizes.workers();
      const int32_t taking =
          IsElastic(sizes) ? std::min<int32_t>(static_cast<int32_t>(idle.size()),
                                               MaxWorkers(sizes))
                           : ranks;
      job.starting = true;
      job.worker_ids.resize(ranks);
      for (int32_t rank = 0; rank < ranks; ++rank) {
        job.worker_ids[rank] = idle[rank % taking];
        Member& worker = members_.workers()[job.worker_ids[rank]];
        worker.job_id = id;
        if (rank < taking) worker.rank = rank;
      }
      // The servers: every registered one, less those cooling down after a
      // failed start while enough others remain.
      const absl::Time now = absl::Now();
      for (auto it = start_cooldown_.begin(); it != start_cooldown_.end();) {
        it = it->second <= now ? start_cooldown_.erase(it) : std::next(it);
      }
      int32_t eligible = 0;
      for (const auto& [server_id, member] : members_.servers()) {
        eligible += start_cooldown_.count(server_id) == 0;
      }
      const bool skip_cooling =
          eligible >= std::max(1, options_.replication_factor);
      std::vector<std::string> chosen;
      for (const auto& [server_id, member] : members_.servers()) {
        if (skip_cooling && start_cooldown_.count(server_id)) continue;
        chosen.push_back(server_id);
      }
      const JobConfig& config = job.status.config();
      auto placement = BuildPlacement(
          ModelParameters(config.model()), config.partition_bytes(),
          static_cast<int32_t>(chosen.size()));
      if (placement.ok()) {
        // A sparse job's tables must fit the memory its servers state.
        if (absl::Status fit = CheckTablesFit(config, TableMemoryLocked(chosen),
                                              options_.replication_factor);
            !fit.ok()) {
          placement = fit;
        }
      }
      if (!placement.ok()) {
        FinishJob(&job, FAILED, placement.status().ToString());
        for (const std::string& w : job.worker_ids) {
          members_.workers()[w].job_id.clear();
        }
        return;
      }
      // Each attempt has a view epoch of its own, which fences what a
      // failed one left on the servers (DropJobRequest.view_epoch).
      const int64_t epoch = ++view_epoch_;
      Assignment& a = job.assignment;
      a.Clear();
      a.set_job_id(id);
      *a.mutable_config() = config;
      *a.mutable_placement() = *placement;
      a.set_view_epoch(epoch);
      for (const std::string& server_id : chosen) {
        *a.add_servers() =
            ServerInfoOf(server_id, members_.servers().at(server_id));
        servers.push_back(a.servers(a.servers_size() - 1));
      }
      // Shard k: primary server k, backups the next R-1 servers.
      const int32_t n = static_cast<int32_t>(servers.size());
      for (int32_t shard = 0; shard < n; ++shard) {
        ShardReplicas* replicas = a.add_shards();
        replicas->set_shard(shard);
        replicas->set_primary(servers[shard].id());
        for (int32_t b = 1; b < options_.replication_factor; ++b) {
          replicas->add_backups(servers[(shard + b) % n].id());
        }
      }
      if (IsSparseModel(config.model())) {
        // Fixed for the job's life (Assignment.table_replicas).
        auto tables = TableReplicas(a);
        for (size_t shard = 0; tables.ok() && shard < tables->size(); ++shard) {
          TableShardAddresses* t = a.add_table_replicas();
          t->set_shard(static_cast<int32_t>(shard));
          t->mutable_replicas()->Assign((*tables)[shard].begin(),
                                        (*tables)[shard].end());
        }
      }
      *job.status.mutable_placement() = *placement;
      *job.status.mutable_shards() = a.shards();
      *job.status.mutable_servers() = a.servers();
      job.status.set_view_epoch(epoch);
      job_id = id;
      create.set_job_id(id);
      *create.mutable_config() = config;
      *create.mutable_placement() = *placement;
      create.set_view_epoch(epoch);
      a.set_submitted_by(job.status.submitted_by());
      create.set_submitted_by(a.submitted_by());
      *create.mutable_servers() = a.servers();
      attempt_record = Record(job);
      Log()->info("job {}: start attempt {} on {} server(s), view epoch {}{}",
                  id, job.start_errors.size() + 1, chosen.size(), epoch,
                  skip_cooling || start_cooldown_.empty()
                      ? ""
                      : " (servers cooling down after a failed start "
                        "included: too few others)");
      break;
    }
  }
  if (job_id.empty()) return;
  // The attempt's epoch and servers are on disk before any server hears of
  // it: a restarted coordinator undoes it (Start) and never reuses its
  // epoch.
  if (options_.db != nullptr) {
    absl::Status saved = options_.db->Put(attempt_record);
    if (!saved.ok()) Log()->error("{}", saved.ToString());
  }

  // Create the partitions on the servers, with no lock held.
  std::string error;
  std::string failed_server;
  bool retryable = true;
  Assignment created;
  {
    absl::MutexLock lock(&mu_);
    created = jobs_[job_id].assignment;
  }
  for (size_t i = 0; i < servers.size() && error.empty(); ++i) {
    CreateJobRequest request = create;
    for (int32_t shard : ShardsOf(created, servers[i].id())) {
      request.add_shards(shard);
    }
    auto stub = ParameterServer::NewStub(MakeChannel(servers[i].address()));
    CreateJobResponse response;
    grpc::Status status = CallIdempotent(
        stub.get(), &ParameterServer::Stub::CreateJob, request, &response,
        std::chrono::milliseconds(options_.server_call_timeout_ms),
        std::chrono::milliseconds(options_.control_call_budget_ms));
    if (!status.ok()) {
      error = absl::StrCat("creating shards on server ", servers[i].id(), " (",
                           servers[i].address(),
                           ") failed: ", status.error_message());
      failed_server = servers[i].id();
      // A config the server refuses as such, every server refuses.
      retryable = status.error_code() != grpc::StatusCode::INVALID_ARGUMENT;
    }
  }

  // The servers learn their roles before any worker can push.
  if (error.empty()) {
    error = SendViewTo(created,
                       std::chrono::milliseconds(options_.control_call_budget_ms),
                       &failed_server);
  }
  // A sparse job's tables, on the replicas of its shards.
  if (error.empty()) {
    bool tables_retryable = true;
    error = CreateJobTables(
        created, std::chrono::milliseconds(options_.server_call_timeout_ms),
        std::chrono::milliseconds(options_.control_call_budget_ms),
        &tables_retryable);
    retryable = tables_retryable;
  }

  bool deleted = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {  // cancelled and deleted meanwhile
      PendingDrop drop;
      drop.assignment.set_job_id(job_id);
      for (const ServerInfo& server : servers) *drop.assignment.add_servers() = server;
      drops_.push_back(std::move(drop));
      deleted = true;
    } else if (it->second.status.state() == PENDING) {
      it->second.starting = false;
      StartJobLocked(&it->second, error, failed_server, retryable);
      return;
    } else {
      // Cancelled while the servers were setting it up: CancelJob's DropJob
      // may have run before CreateJob, so drop again now.
      it->second.starting = false;
      drops_.push_back(PendingDrop{it->second.assignment, false, true});
    }
  }
  // The attempt's record may have been saved after DeleteJob removed it.
  if (deleted && options_.db != nullptr) {
    absl::Status removed = options_.db->Delete(job_id);
    if (!removed.ok()) Log()->error("{}", removed.ToString());
  }
  RunDrops();
}

void CoordinatorState::StartJobLocked(Job* job_ptr, const std::string& error,
                                      const std::string& failed_server,
                                      bool retryable) {
  Job& job = *job_ptr;
  const std::string& job_id = job.status.job_id();
  if (!error.empty()) {
    // Undo the attempt: its workers go back to idle, the servers drop what
    // it created (fenced by its epoch: a later attempt's copy on the same
    // server is kept, and its own CreateJob arriving late is refused).
    const int64_t epoch = job.assignment.view_epoch();
    drops_.push_back(PendingDrop{job.assignment, false, false, epoch});
    for (const std::string& w : job.worker_ids) {
      auto worker = members_.workers().find(w);
      if (worker != members_.workers().end() && worker->second.job_id == job_id) {
        worker->second.job_id.clear();
      }
    }
    job.worker_ids.clear();
    ClearStartAttempt(&job);  // the epoch stays: epochs grow across restarts
    job.start_errors.push_back(error);
    const int attempt = static_cast<int>(job.start_errors.size());
    if (!retryable || attempt >= options_.job_start_attempts) {
      std::string all;
      for (int i = 0; i < attempt; ++i) {
        absl::StrAppend(&all, i == 0 ? "" : "; ", "attempt ", i + 1, ": ",
                        job.start_errors[i]);
      }
      job.start_reason.clear();
      job.status.clear_pending_reason();
      FinishJob(&job, FAILED,
                retryable
                    ? absl::StrCat("could not start in ", attempt,
                                   " attempts (--job_start_attempts): ", all)
                    : absl::StrCat("could not start: ", error));
      return;
    }
    const absl::Time now = absl::Now();
    if (!failed_server.empty()) {
      start_cooldown_[failed_server] =
          now + absl::Milliseconds(options_.start_failure_cooldown_ms);
    }
    int32_t others = 0;  // registered servers not cooling down
    for (const auto& [server_id, member] : members_.servers()) {
      auto cooling = start_cooldown_.find(server_id);
      others += cooling == start_cooldown_.end() || cooling->second <= now;
    }
    const int32_t needed = std::max(1, options_.replication_factor);
    if (others >= needed) {
      job.start_not_before = absl::InfinitePast();
      job.start_reason = absl::StrCat("start attempt ", attempt, " failed: ",
                                      error, "; retrying without it");
    } else {
      const int64_t backoff = std::min<int64_t>(
          int64_t{options_.job_start_backoff_ms} << std::min(attempt - 1, 20),
          30000);
      job.start_not_before = now + absl::Milliseconds(backoff);
      job.start_reason = absl::StrCat(
          "start attempt ", attempt, " failed: ", error, "; ", others,
          " other server(s) registered, fewer than the ", needed,
          " it needs (replication factor): trying again on every server in ",
          backoff, " ms");
    }
    Log()->warn("job {}: {} (attempt {} of {}, --job_start_attempts)", job_id,
                job.start_reason, attempt, options_.job_start_attempts);
    SetPendingReasonLocked(&job, job.start_reason);
    MarkDirty(job);
    return;
  }
  job.status.set_state(RUNNING);
  job.status.clear_pending_reason();
  job.start_reason.clear();
  job.start_not_before = absl::Time();
  ++job.version;
  MarkDirty(job);
  job.started = absl::Now();
  job.ranks.assign(job.worker_ids.size(), RankProgress());
  std::vector<std::pair<MembershipChange::Kind, std::string>> joined;
  for (const std::string& w : job.worker_ids) {
    if (std::none_of(joined.begin(), joined.end(),
                     [&w](const auto& e) { return e.second == w; })) {
      joined.emplace_back(MembershipChange::JOINED, w);
    }
  }
  MembershipChangedLocked(&job, joined);
  Log()->info("job {}: RUNNING on {} servers and {} workers ({} ranks)",
              job_id, job.assignment.servers_size(), joined.size(),
              job.worker_ids.size());
}

void CoordinatorState::ClearStartAttempt(Job* job) {
  const int64_t epoch = job->assignment.view_epoch();
  job->assignment.Clear();
  job->assignment.set_job_id(job->status.job_id());
  job->assignment.set_view_epoch(epoch);
  job->status.clear_placement();
  job->status.clear_shards();
  job->status.clear_servers();
}

}  // namespace psd
