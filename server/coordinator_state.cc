#include "server/coordinator_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"

namespace psd {

namespace {

bool IsFinished(JobState state) {
  return state == SUCCEEDED || state == FAILED || state == CANCELLED;
}

}  // namespace

CoordinatorState::CoordinatorState(CoordinatorOptions options)
    : options_(std::move(options)) {}

CoordinatorState::~CoordinatorState() {
  stop_.Notify();
  if (scheduler_.joinable()) scheduler_.join();
}

void CoordinatorState::Start() {
  scheduler_ = std::thread([this] { SchedulerLoop(); });
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
  const std::string id = absl::StrFormat("%s-%04d", server ? "server" : "worker",
                                         next_member_++);
  Member& member = (server ? servers_ : workers_)[id];
  member.address = request.address();
  member.last_seen = absl::Now();
  ++view_epoch_;
  Log()->info("{} {} joined at {} (view epoch {})", server ? "server" : "worker",
              id, request.address(), view_epoch_);
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
  auto job = jobs_.find(member.job_id);
  if (job != jobs_.end() && job->second.status.state() == PENDING) {
    return response;  // reserved while the servers set the job up
  }
  if (job == jobs_.end() || job->second.status.state() != RUNNING) {
    response.set_cancelled(true);
    member.job_id.clear();
    return response;
  }
  *response.mutable_assignment() = job->second.assignment;
  response.mutable_assignment()->set_rank(member.rank);
  return response;
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
  // Servers free the training state; a finished job keeps its parameters
  // for export until DeleteJob, a cancelled one keeps nothing.
  if (job->assignment.servers_size() > 0) {
    drops_.push_back(PendingDrop{job->assignment, state != CANCELLED});
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
    info->set_rank(member.rank);
  }
  return view;
}

absl::StatusOr<std::string> CoordinatorState::SubmitJob(const JobConfig& input) {
  JobConfig config = input;
  ApplyJobConfigDefaults(&config);
  PSD_RETURN_IF_ERROR(ValidateJobConfig(config));
  absl::MutexLock lock(&mu_);
  const std::string id = absl::StrCat(config.name(), "-", next_job_++);
  Job& job = jobs_[id];
  job.status.set_job_id(id);
  job.status.set_state(PENDING);
  *job.status.mutable_config() = config;
  job.status.set_steps_per_epoch(StepsPerEpoch(config, TrainExamples(config)));
  job.status.set_total_steps(job.status.steps_per_epoch() * config.epochs());
  if (job.status.steps_per_epoch() == 0) {
    jobs_.erase(id);
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size: ", config.batch_size(), " x workers ", config.workers(),
        " is larger than the ", TrainExamples(config), " training examples"));
  }
  job_order_.push_back(id);
  Log()->info("job {}: submitted ({} workers, {} steps)", id, config.workers(),
              job.status.total_steps());
  return id;
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
      drops_.push_back(PendingDrop{it->second.assignment, false});
    }
    ++it->second.version;
    jobs_.erase(it);
    job_order_.erase(std::find(job_order_.begin(), job_order_.end(), job_id));
    Log()->info("job {}: deleted", job_id);
  }
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
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(
          std::chrono::milliseconds(options_.server_call_timeout_ms)));
      DropJobRequest request;
      request.set_job_id(drop.assignment.job_id());
      request.set_keep_parameters(drop.keep_parameters);
      DropJobResponse response;
      grpc::Status status = stub->DropJob(&context, request, &response);
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
    StartPendingJobs();
    RunDrops();
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
      ++view_epoch_;
      Log()->warn("{} {} at {} missed heartbeats for {} ms: removed (view epoch {})",
                  server ? "server" : "worker", id, it->second.address,
                  options_.heartbeat_timeout_ms, view_epoch_);
      for (auto& [job_id, job] : jobs_) {
        if (job.status.state() != RUNNING) continue;
        bool uses = false;
        for (const ServerInfo& s : job.assignment.servers()) uses |= s.id() == id;
        for (const std::string& w : job.worker_ids) uses |= w == id;
        if (uses) {
          FinishJob(&job, FAILED,
                    absl::StrCat(server ? "server " : "worker ", id,
                                 " stopped sending heartbeats (failover and "
                                 "worker replacement are not implemented yet)"));
        }
      }
      it = members.erase(it);
    }
  }
}

void CoordinatorState::StartPendingJobs() {
  std::string job_id;
  CreateJobRequest create;
  std::vector<ServerInfo> servers;
  {
    absl::MutexLock lock(&mu_);
    if (servers_.empty()) return;
    std::vector<std::string> idle;
    for (const auto& [id, member] : workers_) {
      if (member.job_id.empty()) idle.push_back(id);
    }
    for (const std::string& id : job_order_) {
      Job& job = jobs_[id];
      if (job.status.state() != PENDING || job.starting) continue;
      const int32_t needed = job.status.config().workers();
      if (static_cast<int32_t>(idle.size()) < needed) return;  // FIFO
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
      int32_t shard = 0;
      for (const auto& [server_id, member] : servers_) {
        ServerInfo* info = a.add_servers();
        info->set_id(server_id);
        info->set_address(member.address);
        ShardReplicas* replicas = a.add_shards();
        replicas->set_shard(shard++);
        replicas->set_primary(server_id);
        servers.push_back(*info);
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
  for (size_t shard = 0; shard < servers.size() && error.empty(); ++shard) {
    CreateJobRequest request = create;
    request.add_shards(static_cast<int32_t>(shard));
    auto stub = ParameterServer::NewStub(MakeChannel(servers[shard].address()));
    grpc::ClientContext context;
    context.set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.server_call_timeout_ms)));
    CreateJobResponse response;
    grpc::Status status = stub->CreateJob(&context, request, &response);
    if (!status.ok()) {
      error = absl::StrCat("creating shard ", shard, " on server ",
                           servers[shard].id(), " (", servers[shard].address(),
                           ") failed: ", status.error_message());
    }
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
      drops_.push_back(PendingDrop{it->second.assignment, false});
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
  job.started = absl::Now();
  job.ranks.assign(job.worker_ids.size(), RankProgress());
  Log()->info("job {}: RUNNING on {} servers and {} workers", job_id,
              job.assignment.servers_size(), job.worker_ids.size());
}

}  // namespace psd
