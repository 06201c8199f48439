#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/rpc.h"
#include "common/status.h"

namespace psd {

namespace {

bool IsFinished(JobState state) {
  return state == SUCCEEDED || state == FAILED || state == CANCELLED;
}

// Calls one RPC of a parameter server, with a deadline `timeout` from now.
template <typename Request, typename Response>
grpc::Status CallServer(ParameterServer::Stub* stub,
                        grpc::Status (ParameterServer::Stub::*method)(
                            grpc::ClientContext*, const Request&, Response*),
                        const Request& request, Response* response,
                        std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(timeout));
  return (stub->*method)(&context, request, response);
}

// CallServer for an idempotent control call (CreateJob with the same
// config, SetView, GetServerStatus, ListSnapshots: a repeat changes
// nothing): an attempt that fails UNAVAILABLE (unreachable, a DNS error) or
// DEADLINE_EXCEEDED (one slow answer) is made again after a backoff that
// doubles from 100 ms up to 2 s, until `budget` has passed since the first.
// The last failure's message says how many attempts were made.
template <typename Request, typename Response>
grpc::Status CallIdempotent(ParameterServer::Stub* stub,
                            grpc::Status (ParameterServer::Stub::*method)(
                                grpc::ClientContext*, const Request&, Response*),
                            const Request& request, Response* response,
                            std::chrono::milliseconds timeout,
                            std::chrono::milliseconds budget) {
  const auto give_up = std::chrono::steady_clock::now() + budget;
  auto backoff = std::chrono::milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    grpc::Status status = CallServer(stub, method, request, response, timeout);
    const bool transient =
        status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!transient) return status;
    if (std::chrono::steady_clock::now() + backoff >= give_up) {
      return grpc::Status(
          status.error_code(),
          absl::StrCat(status.error_message(), " (", attempt,
                       " attempts over ", budget.count(), " ms)"));
    }
    Log()->warn("control call failed ({}: {}); attempt {} in {} ms",
                static_cast<int>(status.error_code()), status.error_message(),
                attempt + 1, backoff.count());
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

// The shards `server_id` holds in the assignment, as primary or backup.
std::vector<int32_t> ShardsOf(const Assignment& assignment,
                              const std::string& server_id) {
  std::vector<int32_t> shards;
  for (const ShardReplicas& r : assignment.shards()) {
    if (r.primary() == server_id ||
        std::count(r.backups().begin(), r.backups().end(), server_id) > 0) {
      shards.push_back(r.shard());
    }
  }
  return shards;
}

}  // namespace

CoordinatorState::CoordinatorState(CoordinatorOptions options)
    : options_(std::move(options)),
      incarnation_(absl::StrFormat("%04x", std::random_device()() & 0xffff)) {}

CoordinatorState::~CoordinatorState() {
  stop_.Notify();
  if (scheduler_.joinable()) scheduler_.join();
  if (pause_monitor_.joinable()) pause_monitor_.join();
}

absl::Status CoordinatorState::Start() {
  if (options_.db != nullptr) {
    PSD_ASSIGN_OR_RETURN(std::vector<JobRecord> records, options_.db->LoadAll());
    absl::MutexLock lock(&mu_);
    for (JobRecord& record : records) {
      const std::string id = record.status().job_id();
      Job& job = jobs_[id];
      job.status = std::move(*record.mutable_status());
      job.assignment = std::move(*record.mutable_assignment());
      job_order_.push_back(id);
      int64_t n = 0;
      const size_t dash = id.rfind('-');
      if (dash != std::string::npos && absl::SimpleAtoi(id.substr(dash + 1), &n)) {
        next_job_ = std::max(next_job_, n + 1);
      }
      // Epochs grow across the coordinator's restarts too.
      view_epoch_ = std::max(view_epoch_, job.assignment.view_epoch());
      if (job.status.state() == RUNNING) {
        job.status.set_state(RECOVERING);
        job.recovering_since = absl::Now();
        job.worker_ids.assign(job.status.config().workers(), "");
        job.ranks.assign(job.status.config().workers(), RankProgress());
        MarkDirty(job);
      }
      Log()->info("job {}: loaded, {}", id, JobState_Name(job.status.state()));
    }
    // Submission order is the order of the numbers in the ids.
    std::sort(job_order_.begin(), job_order_.end(),
              [](const std::string& a, const std::string& b) {
                int64_t x = 0, y = 0;
                (void)absl::SimpleAtoi(a.substr(a.rfind('-') + 1), &x);
                (void)absl::SimpleAtoi(b.substr(b.rfind('-') + 1), &y);
                return x < y;
              });
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  pause_monitor_ = std::thread([this] { PauseMonitorLoop(); });
  return absl::OkStatus();
}

JobRecord CoordinatorState::Record(const Job& job) {
  JobRecord record;
  *record.mutable_status() = job.status;
  *record.mutable_assignment() = job.assignment;
  return record;
}

void CoordinatorState::MarkDirty(const Job& job) {
  if (options_.db != nullptr) dirty_.insert(job.status.job_id());
}

void CoordinatorState::SaveDirty() {
  if (options_.db == nullptr) return;
  std::vector<JobRecord> records;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : dirty_) {
      auto it = jobs_.find(id);
      if (it != jobs_.end()) records.push_back(Record(it->second));
    }
    dirty_.clear();
  }
  for (const JobRecord& record : records) {
    absl::Status saved = options_.db->Put(record);
    if (!saved.ok()) Log()->error("{}", saved.ToString());
  }
}

absl::StatusOr<RegisterResponse> CoordinatorState::Register(
    const RegisterRequest& request, bool server) {
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
    std::vector<std::string> old;
    for (const auto& [id, member] : servers_) {
      if (member.uid == request.server_uid()) old.push_back(id);
    }
    for (const std::string& id : old) {
      RemoveMemberLocked(/*server=*/true, id,
                         "registered again from the same data directory");
    }
  }
  const std::string id = absl::StrFormat(
      "%s-%04d.%s", server ? "server" : "worker", next_member_++, incarnation_);
  Member& member = (server ? servers_ : workers_)[id];
  member.address = request.address();
  member.last_seen = absl::Now();
  member.uid = request.server_uid();
  member.live_jobs.assign(request.live_jobs().begin(), request.live_jobs().end());
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
         !workers_.count(job->second.worker_ids[rank]))) {
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
    const RegisterRequest& request) {
  return Register(request, /*server=*/true);
}

absl::StatusOr<RegisterResponse> CoordinatorState::RegisterWorker(
    const RegisterRequest& request) {
  return Register(request, /*server=*/false);
}

absl::StatusOr<HeartbeatResponse> CoordinatorState::Heartbeat(
    const HeartbeatRequest& request) {
  absl::MutexLock lock(&mu_);
  HeartbeatResponse response;
  response.set_view_epoch(view_epoch_);
  auto server = servers_.find(request.member_id());
  if (server != servers_.end()) {
    server->second.last_seen = absl::Now();
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
        NewViewLocked(&job->second);
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
  auto worker = workers_.find(request.member_id());
  if (worker == workers_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "member_id: \"", request.member_id(), "\" is not registered"));
  }
  Member& member = worker->second;
  member.last_seen = absl::Now();
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
  *response.mutable_assignment() = job->second.assignment;
  response.mutable_assignment()->set_rank(member.rank);
  response.mutable_assignment()->set_resume_from_servers(
      job->second.resume_ranks.count(member.rank) > 0);
  return response;
}

void CoordinatorState::UpdateClocks(Job* job) {
  const absl::Time fresh =
      absl::Now() - absl::Milliseconds(options_.heartbeat_timeout_ms);
  const int32_t workers = job->status.config().workers();
  std::vector<int64_t> clocks(workers, INT64_MAX);
  std::vector<int64_t> counts;
  int64_t max_staleness = job->status.max_staleness();
  for (auto it = job->clocks.begin(); it != job->clocks.end();) {
    const auto& [report, at] = it->second;
    // A server that stopped reporting (dead, or no longer a primary).
    if (at < fresh || report.worker_clocks_size() != workers) {
      it = job->clocks.erase(it);
      continue;
    }
    for (int32_t r = 0; r < workers; ++r) {
      clocks[r] = std::min(clocks[r], report.worker_clocks(r));
    }
    max_staleness = std::max(max_staleness, report.max_staleness());
    counts.resize(std::max<size_t>(counts.size(), report.staleness_counts_size()));
    for (int k = 0; k < report.staleness_counts_size(); ++k) {
      counts[k] += report.staleness_counts(k);
    }
    ++it;
  }
  JobStatus& status = job->status;
  status.clear_worker_clocks();
  if (!job->clocks.empty()) {
    for (int64_t c : clocks) status.add_worker_clocks(c);
  }
  status.set_max_staleness(max_staleness);
  status.clear_staleness_counts();
  for (int64_t n : counts) status.add_staleness_counts(n);
}

void CoordinatorState::UpdateVerifiedStep(Job* job) {
  int64_t verified = INT64_MAX;
  for (const ShardReplicas& r : job->assignment.shards()) {
    auto report = job->clocks.find(r.primary());
    if (report == job->clocks.end()) return;  // not heard from yet
    verified =
        std::min(verified, report->second.first.replicas_verified_step());
  }
  if (verified == INT64_MAX ||
      verified <= job->status.replicas_verified_step()) {
    return;
  }
  job->status.set_replicas_verified_step(verified);
}

absl::StatusOr<ReportProgressResponse> CoordinatorState::ReportProgress(
    const ReportProgressRequest& request) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(request.job_id());
  if (it == jobs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("job_id: no job \"", request.job_id(), "\""));
  }
  Job& job = it->second;
  ReportProgressResponse response;
  if (!workers_.count(request.member_id())) {
    // Not registered (yet): the coordinator restarted, and the worker's
    // heartbeat will register it again. Transient.
    return absl::AbortedError(absl::StrCat(
        "member_id: \"", request.member_id(),
        "\" is not registered (the coordinator restarted?); registering again"));
  }
  if (job.status.state() == RECOVERING) {
    // Not recorded now: the worker sends it again (a rank's last report is
    // retried until it is taken).
    return absl::AbortedError(absl::StrCat(
        "job_id: job \"", request.job_id(), "\" is RECOVERING; report again"));
  }
  const int32_t rank = request.rank();
  if (rank < 0 || rank >= static_cast<int32_t>(job.worker_ids.size()) ||
      job.worker_ids[rank] != request.member_id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank: member \"", request.member_id(),
                     "\" does not hold rank ", rank, " of ", request.job_id()));
  }
  if (job.status.state() != RUNNING) {
    response.set_cancelled(true);
    return response;
  }
  if (!request.error().empty()) {
    FinishJob(&job, FAILED,
              absl::StrCat("rank ", rank, " (", request.member_id(),
                           ") failed: ", request.error()));
    response.set_cancelled(true);
    return response;
  }
  RankProgress& progress = job.ranks[rank];
  progress.epoch = request.epoch();
  progress.step = request.step();
  progress.loss = request.loss();
  progress.samples_per_sec = request.samples_per_sec();
  progress.done = request.done();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - job.started);
  if (request.has_test_accuracy()) {
    EpochResult* result = job.status.add_epochs();
    result->set_epoch(request.epoch());
    result->set_train_loss(request.loss());
    result->set_test_accuracy(request.test_accuracy());
    result->set_elapsed_seconds(elapsed);
    job.status.set_test_accuracy(request.test_accuracy());
    MarkDirty(job);
    Log()->info("job {}: epoch {} test accuracy {:.4f}", request.job_id(),
                request.epoch(), request.test_accuracy());
  }
  UpdateAggregates(&job);
  ++job.version;
  if (std::all_of(job.ranks.begin(), job.ranks.end(),
                  [](const RankProgress& p) { return p.done; })) {
    FinishJob(&job, SUCCEEDED, "");
  }
  return response;
}

void CoordinatorState::UpdateAggregates(Job* job) {
  int64_t step = INT64_MAX;
  int32_t epoch = INT32_MAX;
  float loss = 0, samples_per_sec = 0;
  for (const RankProgress& p : job->ranks) {
    step = std::min(step, p.step);
    epoch = std::min(epoch, p.epoch);
    loss += p.loss;
    samples_per_sec += p.samples_per_sec;
  }
  JobStatus& status = job->status;
  status.set_step(step);
  status.set_epoch(epoch);
  status.set_loss(loss / static_cast<float>(job->ranks.size()));
  status.set_samples_per_sec(samples_per_sec);
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - job->started);
  status.set_elapsed_seconds(elapsed);
  if (step > 0) {
    status.set_eta_seconds(elapsed / static_cast<double>(step) *
                           static_cast<double>(status.total_steps() - step));
  }
}

void CoordinatorState::FinishJob(Job* job, JobState state,
                                 const std::string& reason) {
  if (IsFinished(job->status.state())) return;
  job->status.set_state(state);
  job->status.set_error(reason);
  if (job->started != absl::Time()) {
    job->status.set_elapsed_seconds(
        absl::ToDoubleSeconds(absl::Now() - job->started));
  }
  job->status.set_eta_seconds(0);
  for (const std::string& id : job->worker_ids) {
    auto worker = workers_.find(id);
    // A cancelled worker learns it from its next heartbeat, which also
    // frees it; a finished one is free now.
    if (worker != workers_.end() && state == SUCCEEDED) {
      worker->second.job_id.clear();
    }
  }
  ++job->version;
  MarkDirty(*job);
  // Servers free the training state; a finished job keeps its parameters
  // for export until DeleteJob, a cancelled one keeps nothing.
  if (job->assignment.servers_size() > 0) {
    drops_.push_back(PendingDrop{job->assignment, state != CANCELLED,
                                 /*delete_snapshots=*/state == CANCELLED});
  }
  Log()->info("job {}: {}{}{}", job->status.job_id(), JobState_Name(state),
              reason.empty() ? "" : ": ", reason);
}

ClusterView CoordinatorState::GetClusterView() {
  absl::MutexLock lock(&mu_);
  ClusterView view;
  view.set_epoch(view_epoch_);
  for (const auto& [id, member] : servers_) {
    ServerInfo* info = view.add_servers();
    info->set_id(id);
    info->set_address(member.address);
  }
  for (const auto& [id, member] : workers_) {
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

absl::StatusOr<std::string> CoordinatorState::SubmitJob(const JobConfig& input) {
  JobConfig config = input;
  ApplyJobConfigDefaults(&config);
  PSD_RETURN_IF_ERROR(ValidateJobConfig(config));
  Job job;
  job.status.set_state(PENDING);
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

namespace {

// "shard 2 (its primary)": which replicas of which shards `server_id`
// holds, for messages.
std::string ShardsHeldBy(const Assignment& assignment,
                         const std::string& server_id) {
  std::vector<std::string> held;
  for (const ShardReplicas& r : assignment.shards()) {
    if (r.primary() == server_id) {
      held.push_back(absl::StrCat(r.shard(), " (primary)"));
    } else if (std::count(r.backups().begin(), r.backups().end(), server_id)) {
      held.push_back(absl::StrCat(r.shard(), " (backup)"));
    }
  }
  return held.empty() ? "no shard"
                      : absl::StrCat(held.size() == 1 ? "shard " : "shards ",
                                     absl::StrJoin(held, ", "));
}

// Takes the servers in `gone` (ids) out of the assignment's replica sets
// and server list; a shard whose primary goes gets its first remaining
// backup as primary, or, with `orphaned`, no primary and an entry there
// (shard -> the old primary) for RunFailovers to choose.
void RemoveServers(const std::set<std::string>& gone, Assignment* assignment,
                   std::map<int32_t, std::string>* orphaned) {
  for (ShardReplicas& r : *assignment->mutable_shards()) {
    auto* backups = r.mutable_backups();
    backups->erase(std::remove_if(backups->begin(), backups->end(),
                                  [&](const std::string& b) {
                                    return gone.count(b) > 0;
                                  }),
                   backups->end());
    if (!gone.count(r.primary())) continue;
    if (orphaned != nullptr) {
      (*orphaned)[r.shard()] = r.primary();
      r.clear_primary();
    } else if (backups->empty()) {
      r.clear_primary();
    } else {
      r.set_primary(backups->Get(0));
      backups->erase(backups->begin());
    }
  }
  auto* servers = assignment->mutable_servers();
  servers->erase(std::remove_if(servers->begin(), servers->end(),
                                [&](const ServerInfo& s) {
                                  return gone.count(s.id()) > 0;
                                }),
                 servers->end());
}

}  // namespace

void CoordinatorState::RecoverJobs() {
  std::string job_id;
  Assignment assignment;
  {
    absl::MutexLock lock(&mu_);
    std::map<std::string, const std::pair<const std::string, Member>*> by_uid;
    for (const auto& entry : servers_) {
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
        const bool replaced = servers_.size() >= static_cast<size_t>(
                                                     job.assignment.servers_size());
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
                                     servers_.size(), " now) or after ",
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

absl::StatusOr<int64_t> CoordinatorState::RestoreFromSnapshots(
    Assignment* assignment) {
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
  int64_t max_step = INT64_MAX;
  std::vector<int64_t> restored(stubs.size(), -1);
  for (int round = 0; round < 100; ++round) {
    for (size_t i = 0; i < stubs.size(); ++i) {
      if (restored[i] == max_step) continue;
      if (restored[i] >= 0) {  // ahead: drop and restore again
        DropJobRequest drop;
        drop.set_job_id(job_id);
        DropJobResponse dropped;
        PSD_RETURN_IF_ERROR(FromGrpcStatus(
            CallServer(stubs[i].get(), &ParameterServer::Stub::DropJob, drop,
                       &dropped, call_timeout)));
      }
      RestoreJobRequest request;
      request.set_job_id(job_id);
      request.set_max_step(max_step);
      request.set_view_epoch(assignment->view_epoch());
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

void CoordinatorState::AssignFreeRanks() {
  for (auto& [id, job] : jobs_) {
    // Ranks freed by a restore from snapshots, or by a worker that died or
    // stalled (never given back to the worker that stalled).
    if (job.status.state() != RUNNING || !job.ranks_free) continue;
    std::vector<std::string> idle;
    for (const auto& [worker_id, member] : workers_) {
      if (member.job_id.empty() && member.stalled_in != id) {
        idle.push_back(worker_id);
      }
    }
    std::vector<int32_t> free;
    for (int32_t r = 0; r < static_cast<int32_t>(job.worker_ids.size()); ++r) {
      if (job.worker_ids[r].empty()) free.push_back(r);
    }
    if (free.empty()) job.ranks_free = false;
    if (free.empty() || idle.size() < free.size()) continue;
    for (int32_t rank : free) {
      const std::string worker = idle.back();
      idle.pop_back();
      job.worker_ids[rank] = worker;
      workers_[worker].job_id = id;
      workers_[worker].rank = rank;
      if (job.resume_ranks.count(rank)) {
        Log()->info("job {}: rank {} goes to {}, at the step its servers are at",
                    id, rank, worker);
      } else {
        Log()->info("job {}: rank {} goes to {} at step {}", id, rank, worker,
                    job.start_step);
      }
    }
  }
}

absl::StatusOr<JobStatus> CoordinatorState::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  }
  return it->second.status;
}

std::vector<JobStatus> CoordinatorState::ListJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<JobStatus> result;
  for (const std::string& id : job_order_) {
    JobStatus status = jobs_[id].status;
    status.clear_placement();  // keep listings small
    result.push_back(std::move(status));
  }
  return result;
}

absl::StatusOr<JobStatus> CoordinatorState::CancelJob(const std::string& job_id) {
  JobStatus result;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    FinishJob(&it->second, CANCELLED, "cancelled by the user");
    result = it->second.status;
  }
  RunDrops();  // the servers have freed the job when CancelJob returns
  return result;
}

absl::StatusOr<int64_t> CoordinatorState::SnapshotJob(const std::string& job_id) {
  Assignment assignment;
  int64_t total_steps = 0;
  bool async = false;  // some parameter under ASP/SSP
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    if (it->second.status.state() != RUNNING) {
      return absl::FailedPreconditionError(
          absl::StrCat("job_id: job \"", job_id, "\" is ",
                       JobState_Name(it->second.status.state()), ", not RUNNING"));
    }
    assignment = it->second.assignment;
    total_steps = it->second.status.total_steps();
    async = HasAsyncParameters(it->second.status.config());
  }
  const auto timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  std::vector<std::unique_ptr<ParameterServer::Stub>> stubs;
  for (const ServerInfo& server : assignment.servers()) {
    stubs.push_back(ParameterServer::NewStub(MakeChannel(server.address())));
  }
  // The step: ahead of every partition now, with a margin for the steps
  // taken while we ask; if one got there first, try again further ahead.
  // ServerJobStatus.step counts updates, which under ASP/SSP are one per
  // push, not one per step: there the slowest rank's clock says how far the
  // job is (an ASP/SSP partition reaches snapshot step k when its slowest
  // rank's clock does, see SnapshotManifest.step).
  absl::Status last;
  for (int64_t margin : {10, 50, 200}) {
    int64_t highest = 0;
    for (auto& stub : stubs) {
      ServerStatus status;
      PSD_RETURN_IF_ERROR(FromGrpcStatus(
          CallServer(stub.get(), &ParameterServer::Stub::GetServerStatus,
                     GetServerStatusRequest(), &status, timeout)));
      for (const ServerJobStatus& job : status.jobs()) {
        if (job.job_id() != job_id) continue;
        if (!async) {
          highest = std::max(highest, job.step());
          continue;
        }
        // The slowest rank: an ASP/SSP partition captures step k when its
        // slowest rank's clock reaches k (a faster rank may be at the end).
        if (job.worker_clocks_size() > 0) {
          highest = std::max(highest, *std::min_element(
                                          job.worker_clocks().begin(),
                                          job.worker_clocks().end()));
        }
      }
    }
    const int64_t step = highest + margin;
    if (step >= total_steps) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job_id: job \"", job_id, "\" is at step ", highest, " of ",
          total_steps, ": too close to its end for a snapshot"));
    }
    last = absl::OkStatus();
    for (size_t i = 0; i < stubs.size() && last.ok(); ++i) {
      SnapshotJobRequest request;
      request.set_job_id(job_id);
      request.set_step(step);
      SnapshotJobResponse response;
      grpc::Status status =
          CallServer(stubs[i].get(), &ParameterServer::Stub::SnapshotJob,
                     request, &response, timeout);
      if (!status.ok()) {
        last = absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            absl::StrCat("server ", assignment.servers(i).id(),
                                         ": ", status.error_message()));
      }
    }
    if (last.ok()) {
      Log()->info("job {}: snapshot requested at step {}", job_id, step);
      return step;
    }
    if (last.message().find("already") == absl::string_view::npos) return last;
  }
  return last;
}

void CoordinatorState::TimedSnapshots() {
  std::vector<std::string> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto& [id, job] : jobs_) {
      const int32_t every = job.status.config().snapshot().every_seconds();
      if (job.status.state() != RUNNING || every <= 0) continue;
      if (job.last_timed_snapshot == absl::Time()) job.last_timed_snapshot = now;
      if (now - job.last_timed_snapshot < absl::Seconds(every)) continue;
      job.last_timed_snapshot = now;
      due.push_back(id);
    }
  }
  for (const std::string& id : due) {
    absl::StatusOr<int64_t> step = SnapshotJob(id);
    if (!step.ok()) {
      Log()->warn("job {}: timed snapshot not taken: {}", id,
                  step.status().ToString());
    }
  }
}

absl::Status CoordinatorState::DeleteJob(const std::string& job_id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
    }
    if (!IsFinished(it->second.status.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job_id: job \"", job_id, "\" is ",
          JobState_Name(it->second.status.state()), "; cancel it first"));
    }
    if (it->second.assignment.servers_size() > 0) {
      drops_.push_back(PendingDrop{it->second.assignment, false,
                                   /*delete_snapshots=*/true});
    }
    ++it->second.version;
    jobs_.erase(it);
    job_order_.erase(std::find(job_order_.begin(), job_order_.end(), job_id));
    dirty_.erase(job_id);
    Log()->info("job {}: deleted", job_id);
  }
  if (options_.db != nullptr) PSD_RETURN_IF_ERROR(options_.db->Delete(job_id));
  RunDrops();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<JobStatus>> CoordinatorState::WaitForJobUpdate(
    const std::string& job_id, int64_t* version, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(job_id);
    return it == jobs_.end() || it->second.version != *version;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  }
  if (it->second.version == *version) return std::nullopt;
  *version = it->second.version;
  return it->second.status;
}

void CoordinatorState::RunDrops() {
  std::vector<PendingDrop> drops;
  {
    absl::MutexLock lock(&mu_);
    drops.swap(drops_);
  }
  for (const PendingDrop& drop : drops) {
    for (const ServerInfo& server : drop.assignment.servers()) {
      auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
      DropJobRequest request;
      request.set_job_id(drop.assignment.job_id());
      request.set_keep_parameters(drop.keep_parameters);
      request.set_delete_snapshots(drop.delete_snapshots);
      DropJobResponse response;
      grpc::Status status = CallServer(
          stub.get(), &ParameterServer::Stub::DropJob, request, &response,
          std::chrono::milliseconds(options_.server_call_timeout_ms));
      if (!status.ok() && status.error_code() != grpc::StatusCode::NOT_FOUND) {
        Log()->warn("job {}: DropJob on {} failed: {}",
                    drop.assignment.job_id(), server.id(),
                    status.error_message());
      }
    }
  }
}

void CoordinatorState::SchedulerLoop() {
  while (!stop_.WaitForNotificationWithTimeout(
      absl::Milliseconds(options_.schedule_interval_ms))) {
    ExpireMembers();
    WatchProgress();
    RunFailovers();
    RunDrops();  // before a server dropping a job can be a joiner of it
    RecoverJobs();
    StartPendingJobs();
    RepairReplicas();
    RunDrops();
    TimedSnapshots();
    SaveDirty();
  }
}

void CoordinatorState::ExpireMembers() {
  absl::MutexLock lock(&mu_);
  const absl::Time cutoff =
      absl::Now() - absl::Milliseconds(options_.heartbeat_timeout_ms);
  for (bool server : {true, false}) {
    auto& members = server ? servers_ : workers_;
    for (auto it = members.begin(); it != members.end();) {
      if (it->second.last_seen >= cutoff) {
        ++it;
        continue;
      }
      const std::string id = it->first;
      ++it;
      RemoveMemberLocked(
          server, id,
          absl::StrCat("missed heartbeats for ", options_.heartbeat_timeout_ms,
                       " ms"));
    }
  }
}

absl::Duration CoordinatorState::ProgressBound(const Job& job) const {
  const absl::Duration floor = absl::Milliseconds(options_.progress_floor_ms);
  const int64_t steps = job.status.step() - job.start_step;
  if (steps <= 0) return floor;
  const absl::Duration mean =
      absl::Seconds(job.status.elapsed_seconds()) / static_cast<double>(steps);
  return std::max(floor, mean * options_.progress_step_factor);
}

void CoordinatorState::WatchProgress() {
  if (options_.progress_floor_ms <= 0) return;
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (auto& [job_id, job] : jobs_) {
    const int32_t workers = job.status.config().workers();
    if (job.status.state() != RUNNING ||
        job.status.worker_clocks_size() != workers) {
      continue;
    }
    job.watch.resize(workers);
    const auto& clocks = job.status.worker_clocks();
    const int64_t fastest = *std::max_element(clocks.begin(), clocks.end());
    const absl::Duration bound = ProgressBound(job);
    for (int32_t r = 0; r < workers; ++r) {
      Job::RankWatch& watch = job.watch[r];
      const int64_t clock = clocks[r];
      const bool behind = clock < fastest && clock < job.status.total_steps() &&
                          !job.worker_ids[r].empty();
      if (clock != watch.clock || !behind) {
        watch.clock = clock;
        watch.behind_since = behind ? now : absl::InfiniteFuture();
        continue;
      }
      // Behind since now, or since it fell behind at this clock.
      watch.behind_since = std::min(watch.behind_since, now);
      if (now - watch.behind_since <= bound) continue;
      const std::string worker = job.worker_ids[r];
      Log()->warn("job {}: rank {} ({}) made no progress for {} ms at clock "
                  "{} while rank clocks reach {} (bound {} ms): its rank goes "
                  "to another worker",
                  job_id, r, worker,
                  absl::ToInt64Milliseconds(now - watch.behind_since), clock,
                  fastest, absl::ToInt64Milliseconds(bound));
      job.status.add_stalls(absl::StrCat(
          "rank ", r, " (", worker, ") made no progress for ",
          absl::ToInt64Milliseconds(now - watch.behind_since), " ms at clock ",
          clock, ", replaced"));
      if (job.status.stalls_size() > 10) {  // keep the newest 10
        job.status.mutable_stalls()->DeleteSubrange(0, 1);
      }
      ++job.version;
      MarkDirty(job);
      auto member = workers_.find(worker);
      if (member != workers_.end()) {
        // Its next heartbeat tells it to stop (rank < 0), and it is not
        // given this job's ranks again.
        member->second.rank = -1;
        member->second.stalled_in = job_id;
      }
      job.worker_ids[r].clear();
      job.ranks_free = true;
      job.resume_ranks.insert(r);
      watch = Job::RankWatch();
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
    for (auto* members : {&servers_, &workers_}) {
      for (auto& [id, member] : *members) {
        member.last_seen = std::min(now, member.last_seen + stalled);
      }
    }
    Log()->warn("coordinator stalled for {} ms (busy or paused host): not "
                "counted against members' heartbeats",
                absl::ToInt64Milliseconds(stalled));
  }
}

void CoordinatorState::RemoveMemberLocked(bool server, const std::string& id,
                                          const std::string& why) {
  auto& members = server ? servers_ : workers_;
  auto member = members.find(id);
  if (member == members.end()) return;
  ++view_epoch_;
  Log()->warn("{} {} at {} {}: removed (view epoch {})",
              server ? "server" : "worker", id, member->second.address, why,
              view_epoch_);
  for (auto& [job_id, job] : jobs_) {
    if (job.status.state() != RUNNING) continue;
    if (!server) {
      for (size_t r = 0; r < job.worker_ids.size(); ++r) {
        if (job.worker_ids[r] != id) continue;
        // Under BSP the step waits for this rank; an idle worker takes
        // it (AssignFreeRanks) and resumes where the servers are.
        job.worker_ids[r].clear();
        job.ranks_free = true;
        job.resume_ranks.insert(static_cast<int32_t>(r));
        Log()->warn("job {}: rank {} lost its worker {}; waiting for an "
                    "idle worker to take it", job_id, r, id);
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
  members.erase(member);
}

std::string CoordinatorState::NextJobToStartLocked(
    const std::vector<std::string>& idle) {
  const int32_t registered = static_cast<int32_t>(workers_.size());
  const int32_t servers_needed = std::max(1, options_.replication_factor);
  std::string blocker;  // fits the cluster, waits for busy workers
  std::string blocker_reason;
  for (const std::string& id : job_order_) {
    Job& job = jobs_[id];
    if (job.status.state() != PENDING || job.starting) continue;
    const int32_t needed = job.status.config().workers();
    if (static_cast<int32_t>(servers_.size()) < servers_needed) {
      SetPendingReasonLocked(
          &job, absl::StrFormat("waiting for %d server(s) (replication "
                                "factor %d); %d registered",
                                servers_needed, options_.replication_factor,
                                servers_.size()));
    } else if (registered < needed) {
      // Cannot start until more workers register: later jobs that fit go
      // first (backfill).
      SetPendingReasonLocked(
          &job, absl::StrFormat("waiting for %d workers; %d registered (jobs "
                                "behind it that fit start first)",
                                needed, registered));
    } else if (!blocker.empty()) {
      // The registered workers could run the blocker: it keeps its turn,
      // so it is never starved by smaller jobs.
      SetPendingReasonLocked(
          &job, absl::StrCat("behind job ", Quote(blocker), ", which ",
                             blocker_reason));
    } else if (static_cast<int32_t>(idle.size()) >= needed) {
      SetPendingReasonLocked(&job, "");
      return id;
    } else {
      blocker = id;
      blocker_reason = absl::StrFormat(
          "waits for %d idle workers; %d of the %d registered are idle (the "
          "others run other jobs)",
          needed, idle.size(), registered);
      SetPendingReasonLocked(&job, blocker_reason);
    }
  }
  return "";
}

void CoordinatorState::StartPendingJobs() {
  std::string job_id;
  CreateJobRequest create;
  std::vector<ServerInfo> servers;
  {
    absl::MutexLock lock(&mu_);
    AssignFreeRanks();
    std::vector<std::string> idle;
    for (const auto& [id, member] : workers_) {
      if (member.job_id.empty()) idle.push_back(id);
    }
    const std::string next = NextJobToStartLocked(idle);
    if (next.empty()) return;
    for (const std::string& id : job_order_) {
      if (id != next) continue;
      Job& job = jobs_[id];
      const int32_t needed = job.status.config().workers();
      // Reserve the workers and build the placement over every server.
      job.starting = true;
      job.worker_ids.assign(idle.begin(), idle.begin() + needed);
      for (int32_t rank = 0; rank < needed; ++rank) {
        Member& worker = workers_[job.worker_ids[rank]];
        worker.job_id = id;
        worker.rank = rank;
      }
      const JobConfig& config = job.status.config();
      auto placement =
          BuildPlacement(ModelParameters(config.model()),
                         config.partition_bytes(),
                         static_cast<int32_t>(servers_.size()));
      if (!placement.ok()) {
        FinishJob(&job, FAILED, placement.status().ToString());
        for (const std::string& w : job.worker_ids) workers_[w].job_id.clear();
        return;
      }
      Assignment& a = job.assignment;
      a.set_job_id(id);
      *a.mutable_config() = config;
      *a.mutable_placement() = *placement;
      a.set_view_epoch(view_epoch_);
      for (const auto& [server_id, member] : servers_) {
        ServerInfo* info = a.add_servers();
        info->set_id(server_id);
        info->set_address(member.address);
        info->set_uid(member.uid);
        servers.push_back(*info);
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
      *job.status.mutable_placement() = *placement;
      *job.status.mutable_shards() = a.shards();
      *job.status.mutable_servers() = a.servers();
      job.status.set_view_epoch(view_epoch_);
      job_id = id;
      create.set_job_id(id);
      *create.mutable_config() = config;
      *create.mutable_placement() = *placement;
      create.set_view_epoch(view_epoch_);
      break;
    }
  }
  if (job_id.empty()) return;

  // Create the partitions on the servers, with no lock held.
  std::string error;
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
    }
  }

  // The servers learn their roles before any worker can push.
  if (error.empty()) {
    error = SendViewTo(created,
                       std::chrono::milliseconds(options_.control_call_budget_ms));
  }

  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {  // cancelled and deleted meanwhile
      PendingDrop drop;
      drop.assignment.set_job_id(job_id);
      for (const ServerInfo& server : servers) *drop.assignment.add_servers() = server;
      drops_.push_back(std::move(drop));
    } else if (it->second.status.state() == PENDING) {
      it->second.starting = false;
      StartJobLocked(&it->second, error);
      return;
    } else {
      // Cancelled while the servers were setting it up: CancelJob's DropJob
      // may have run before CreateJob, so drop again now.
      it->second.starting = false;
      drops_.push_back(PendingDrop{it->second.assignment, false, true});
    }
  }
  RunDrops();
}

void CoordinatorState::StartJobLocked(Job* job_ptr, const std::string& error) {
  Job& job = *job_ptr;
  const std::string& job_id = job.status.job_id();
  if (!error.empty()) {
    FinishJob(&job, FAILED, error);
    for (const std::string& w : job.worker_ids) workers_[w].job_id.clear();
    return;
  }
  job.status.set_state(RUNNING);
  ++job.version;
  MarkDirty(job);
  job.started = absl::Now();
  job.ranks.assign(job.worker_ids.size(), RankProgress());
  Log()->info("job {}: RUNNING on {} servers and {} workers", job_id,
              job.assignment.servers_size(), job.worker_ids.size());
}

std::string CoordinatorState::SendViewTo(const Assignment& assignment,
                                         std::chrono::milliseconds budget) {
  SetViewRequest request;
  request.set_job_id(assignment.job_id());
  JobView* view = request.mutable_view();
  view->set_epoch(assignment.view_epoch());
  *view->mutable_shards() = assignment.shards();
  *view->mutable_servers() = assignment.servers();
  std::string error;
  for (const ServerInfo& server : assignment.servers()) {
    request.set_server_id(server.id());
    auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
    SetViewResponse response;
    grpc::Status status =
        CallIdempotent(stub.get(), &ParameterServer::Stub::SetView, request,
                       &response, std::chrono::milliseconds(2000), budget);
    if (!status.ok() && error.empty()) {
      error = absl::StrCat("sending view epoch ", assignment.view_epoch(),
                           " to server ", server.id(), " (", server.address(),
                           "): ", status.error_message());
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
  for (const auto& [id, member] : servers_) {
    if (known.count(id)) continue;
    ServerInfo info;
    info.set_id(id);
    info.set_address(member.address);
    info.set_uid(member.uid);
    known[id] = info;
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
        auto stub = ParameterServer::NewStub(MakeChannel(address[backup]));
        ServerStatus status;
        grpc::Status called =
            CallServer(stub.get(), &ParameterServer::Stub::GetServerStatus,
                       GetServerStatusRequest(), &status,
                       std::chrono::milliseconds(1000));
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
      for (const auto& [sid, member] : servers_) load[sid] = 0;
      for (const ShardReplicas& r : job.assignment.shards()) {
        if (load.count(r.primary())) ++load[r.primary()];
        for (const std::string& b : r.backups()) {
          if (load.count(b)) ++load[b];
        }
      }
      for (const ShardReplicas& r : job.assignment.shards()) {
        if (1 + r.backups_size() >= options_.replication_factor) continue;
        if (!servers_.count(r.primary())) continue;  // failover first
        std::string best;
        for (const auto& [sid, n] : load) {
          if (sid == r.primary() ||
              std::count(r.backups().begin(), r.backups().end(), sid) > 0) {
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
        joiner_address = servers_[best].address;
        primary_address = servers_[r.primary()].address;
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
  const auto timeout = std::chrono::milliseconds(options_.server_call_timeout_ms);
  CreateJobRequest create;
  create.set_job_id(job_id);
  *create.mutable_config() = assignment.config();
  *create.mutable_placement() = assignment.placement();
  create.add_shards(shard);
  create.set_view_epoch(assignment.view_epoch());
  create.set_joining(true);
  CreateJobResponse created;
  auto joiner = ParameterServer::NewStub(MakeChannel(joiner_address));
  grpc::Status status = CallServer(joiner.get(), &ParameterServer::Stub::CreateJob,
                                   create, &created, timeout);
  SyncBackupResponse synced;
  if (status.ok()) {
    SyncBackupRequest sync;
    sync.set_job_id(job_id);
    sync.set_shard(shard);
    sync.set_backup_address(joiner_address);
    auto primary = ParameterServer::NewStub(MakeChannel(primary_address));
    status = CallServer(primary.get(), &ParameterServer::Stub::SyncBackup, sync,
                        &synced, std::chrono::milliseconds(120000));
  }
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
    if (job.status.state() != RUNNING || !servers_.count(joiner_id)) return;
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
