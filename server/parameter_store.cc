#include "server/parameter_store.h"

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/optimizer.h"
#include "server/snapshot_store.h"

namespace psd {

// One partition's state. Protected by its Job's mu.
struct PartitionState {
  int64_t num_elements = 0;
  std::vector<float> weights;
  // Optimizer slots: OptimizerSlots(config.optimizer()) * num_elements.
  std::vector<float> slots;
  // Updates applied so far.
  int64_t step = 0;
  // Gradients of `step` received so far, by rank; buffers reused each step.
  std::vector<std::vector<float>> pending;
  std::vector<bool> received;
  int32_t received_count = 0;
  // Sum of pending gradients (reused buffer).
  std::vector<float> sum;
};

namespace {


// A pull waiting for its step.
struct Waiter {
  PullRequest request;
  PullResponse* response;
  ParameterStore::PullDone done;
};

// Callbacks to run once the job's lock is released.
using Completions = std::vector<std::pair<ParameterStore::PullDone, absl::Status>>;

void RunCompletions(Completions* completions) {
  for (auto& [done, status] : *completions) done(std::move(status));
  completions->clear();
}

}  // namespace

struct ParameterStore::Job {
  // Constant after construction.
  std::string id;
  JobConfig config;
  std::string config_bytes;  // serialized config, to compare re-creates
  int64_t view_epoch = 0;
  Placement placement;
  std::vector<int32_t> shards;

  absl::Mutex mu;
  // Snapshots being captured, by step: filled partition by partition as
  // each reaches the step, handed to the sink when complete.
  std::map<int64_t, ShardSnapshot> captures ABSL_GUARDED_BY(mu);
  // Steps asked for by RequestSnapshot, besides the policy's.
  std::set<int64_t> requested_snapshots ABSL_GUARDED_BY(mu);
  bool dropped ABSL_GUARDED_BY(mu) = false;
  // Training is over: parameters kept for export, training state freed.
  bool finished ABSL_GUARDED_BY(mu) = false;
  std::map<int32_t, PartitionState> partitions ABSL_GUARDED_BY(mu);
  // Pulls waiting for a step, by pull id.
  std::map<uint64_t, Waiter> waiters ABSL_GUARDED_BY(mu);
};

absl::StatusOr<std::shared_ptr<ParameterStore::Job>> ParameterStore::FindJob(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("job_id: no job \"", job_id, "\" on this server"));
  }
  return it->second;
}

absl::StatusOr<std::shared_ptr<ParameterStore::Job>> ParameterStore::BuildJob(
    const CreateJobRequest& request) {
  if (request.job_id().empty()) {
    return absl::InvalidArgumentError("job_id: required");
  }
  JobConfig config = request.config();
  ApplyJobConfigDefaults(&config);
  absl::Status valid = ValidateJobConfig(config);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.", valid.message()));
  }
  const Placement& placement = request.placement();
  std::set<int32_t> shards(request.shards().begin(), request.shards().end());
  auto job = std::make_shared<Job>();
  job->id = request.job_id();
  job->config = config;
  job->config_bytes = config.SerializeAsString();
  job->view_epoch = request.view_epoch();
  job->placement = placement;
  job->shards.assign(shards.begin(), shards.end());
  {
    absl::MutexLock lock(&job->mu);
    std::map<int32_t, std::vector<float>> initial;  // by parameter index
    for (const Partition& part : placement.partitions()) {
      if (!shards.count(part.shard())) continue;
      if (part.parameter() < 0 ||
          part.parameter() >= placement.parameters_size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "placement.partitions[", part.id(), "].parameter: out of range"));
      }
      const ParameterSpec& spec = placement.parameters(part.parameter());
      const int64_t total = NumElements(spec);
      if (part.offset() < 0 || part.num_elements() <= 0 ||
          part.offset() + part.num_elements() > total) {
        return absl::InvalidArgumentError(absl::StrCat(
            "placement.partitions[", part.id(), "]: slice [", part.offset(),
            ", +", part.num_elements(), ") outside ", spec.name()));
      }
      auto it = initial.find(part.parameter());
      if (it == initial.end()) {
        it = initial
                 .emplace(part.parameter(),
                          InitialValues(spec, part.parameter(),
                                        config.model().init_seed()))
                 .first;
      }
      PartitionState& state = job->partitions[part.id()];
      state.num_elements = part.num_elements();
      state.weights.assign(it->second.begin() + part.offset(),
                           it->second.begin() + part.offset() +
                               part.num_elements());
      state.slots.assign(
          OptimizerSlots(config.optimizer()) * part.num_elements(), 0.0f);
      state.pending.assign(config.workers(),
                           std::vector<float>(part.num_elements()));
      state.received.assign(config.workers(), false);
      state.sum.resize(part.num_elements());
    }
  }
  return job;
}

absl::StatusOr<CreateJobResponse> ParameterStore::CreateJob(
    const CreateJobRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, BuildJob(request));
  CreateJobResponse response;
  {
    absl::MutexLock lock(&job->mu);
    for (const auto& [id, state] : job->partitions) {
      response.set_num_partitions(response.num_partitions() + 1);
      response.set_state_bytes(
          response.state_bytes() +
          static_cast<int64_t>(sizeof(float)) *
              (state.num_elements * (3 + job->config.workers()) +
               static_cast<int64_t>(state.slots.size())));
    }
  }
  absl::MutexLock lock(&mu_);
  auto existing = jobs_.find(job->id);
  if (existing != jobs_.end()) {
    if (existing->second->config_bytes != job->config_bytes) {
      return absl::AlreadyExistsError(absl::StrCat(
          "job_id: job \"", job->id, "\" exists with another config"));
    }
    return response;  // a retried CreateJob: keep the state we have
  }
  jobs_[job->id] = std::move(job);
  return response;
}

absl::Status ParameterStore::DropJob(const std::string& job_id,
                                     bool keep_parameters) {
  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(
          absl::StrCat("job_id: no job \"", job_id, "\" on this server"));
    }
    job = it->second;
    if (!keep_parameters) jobs_.erase(it);
  }
  Completions completions;
  {
    absl::MutexLock lock(&job->mu);
    if (keep_parameters) {
      job->finished = true;
      for (auto& [id, state] : job->partitions) {
        std::vector<float>().swap(state.slots);
        std::vector<float>().swap(state.sum);
        std::vector<std::vector<float>>().swap(state.pending);
        state.received.assign(state.received.size(), false);
        state.received_count = 0;
      }
    } else {
      job->dropped = true;
      job->partitions.clear();
    }
    // Pulls still waiting for a step will never get it.
    for (auto& [id, waiter] : job->waiters) {
      completions.emplace_back(
          std::move(waiter.done),
          absl::CancelledError(absl::StrCat(
              "job \"", job_id, "\" ended while the pull waited for step ",
              waiter.request.step())));
    }
    job->waiters.clear();
  }
  RunCompletions(&completions);
  return absl::OkStatus();
}

ServerStatus ParameterStore::Status() {
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) jobs.push_back(job);
  }
  ServerStatus status;
  for (const std::shared_ptr<Job>& job : jobs) {
    absl::MutexLock lock(&job->mu);
    ServerJobStatus* out = status.add_jobs();
    out->set_job_id(job->id);
    out->set_finished(job->finished);
    out->set_num_partitions(static_cast<int32_t>(job->partitions.size()));
    int64_t floats = 0;
    int64_t step = job->partitions.empty() ? 0 : INT64_MAX;
    for (const auto& [id, state] : job->partitions) {
      floats += state.weights.size() + state.slots.size() + state.sum.size();
      for (const auto& p : state.pending) floats += p.size();
      step = std::min(step, state.step);
    }
    out->set_state_bytes(floats * static_cast<int64_t>(sizeof(float)));
    out->set_step(step);
  }
  return status;
}

absl::StatusOr<PushResponse> ParameterStore::Push(const PushRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  if (request.view_epoch() != job->view_epoch) {
    return absl::FailedPreconditionError(absl::StrCat(
        "view_epoch: push is for epoch ", request.view_epoch(),
        ", this server is in epoch ", job->view_epoch));
  }
  const int32_t rank = request.worker_rank();
  if (rank < 0 || rank >= job->config.workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_rank: ", rank, " outside [0, ",
                     job->config.workers(), ")"));
  }
  if (request.step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0, got ", request.step()));
  }
  // Finite values: checked before taking the lock (CPU work on request data).
  for (int i = 0; i < request.gradients_size(); ++i) {
    const Tensor& t = request.gradients(i).tensor();
    if (t.dtype() != FLOAT32 || t.data().size() % sizeof(float) != 0) continue;
    const int64_t bad = FindNonFinite(Float32Data(t), t.data().size() / 4);
    if (bad >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradients[", i, "] (partition ", request.gradients(i).partition_id(),
          "): element ", bad, " is ", Float32Data(t)[bad],
          "; non-finite gradients are never applied"));
    }
  }

  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  PushResponse response;
  {
  absl::MutexLock lock(&job->mu);
  if (job->dropped) {
    return absl::NotFoundError(
        absl::StrCat("job_id: job \"", job->id, "\" was dropped"));
  }
  if (job->finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job_id: job \"", job->id, "\" has finished; it takes no more pushes"));
  }
  // Validate the whole request before taking any of it.
  std::set<int32_t> seen;
  bool all_duplicate = true;
  int64_t applied_step = INT64_MAX;
  for (int i = 0; i < request.gradients_size(); ++i) {
    const PartitionTensor& g = request.gradients(i);
    auto it = job->partitions.find(g.partition_id());
    if (it == job->partitions.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("gradients[", i, "].partition_id: partition ",
                       g.partition_id(), " is not held by this server"));
    }
    if (!seen.insert(g.partition_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("gradients[", i, "].partition_id: partition ",
                       g.partition_id(), " appears twice"));
    }
    const PartitionState& state = it->second;
    PSD_RETURN_IF_ERROR(CheckFloat32(
        g.tensor(), state.num_elements,
        absl::StrCat("gradients[", i, "] (partition ", g.partition_id(), ")")));
    if (request.step() > state.step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " is ahead of partition ", g.partition_id(),
          ", which is at step ", state.step,
          " (pull the parameters of a step before pushing its gradients)"));
    }
    const bool duplicate =
        request.step() < state.step || state.received[rank];
    all_duplicate = all_duplicate && duplicate;
  }
  bool advanced = false;
  for (int i = 0; i < request.gradients_size(); ++i) {
    const PartitionTensor& g = request.gradients(i);
    PartitionState& state = job->partitions[g.partition_id()];
    if (request.step() == state.step && !state.received[rank]) {
      const float* data = Float32Data(g.tensor());
      std::copy(data, data + state.num_elements, state.pending[rank].begin());
      state.received[rank] = true;
      if (++state.received_count == job->config.workers()) {
        // Sum in rank order, average, apply once.
        std::copy(state.pending[0].begin(), state.pending[0].end(),
                  state.sum.begin());
        for (size_t r = 1; r < state.pending.size(); ++r) {
          const std::vector<float>& p = state.pending[r];
          for (int64_t k = 0; k < state.num_elements; ++k) state.sum[k] += p[k];
        }
        const float scale = 1.0f / static_cast<float>(job->config.workers());
        for (float& v : state.sum) v *= scale;
        ApplyOptimizer(job->config.optimizer(), state.step, state.sum.data(),
                       state.num_elements, state.weights.data(),
                       state.slots.data());
        state.step++;
        state.received.assign(state.received.size(), false);
        state.received_count = 0;
        advanced = true;
        CaptureIfDue(job.get(), g.partition_id(), state, &snapshots);
      }
    }
    applied_step = std::min(applied_step, state.step);
  }
  if (advanced) AnswerWaiters(job.get(), &completions);
  response.set_duplicate(all_duplicate && request.gradients_size() > 0);
  response.set_applied_step(applied_step == INT64_MAX ? 0 : applied_step);
  }
  RunCompletions(&completions);
  for (ShardSnapshot& snapshot : snapshots) {
    options_.snapshot_sink(std::move(snapshot));
  }
  return response;
}

void ParameterStore::CaptureIfDue(Job* job, int32_t partition_id,
                                  const PartitionState& state,
                                  std::vector<ShardSnapshot>* complete) {
  const int64_t every = job->config.snapshot().every_steps();
  const bool by_policy = every > 0 && state.step % every == 0;
  if (!options_.snapshot_sink ||
      !(by_policy || job->requested_snapshots.count(state.step))) {
    return;
  }
  ShardSnapshot& capture = job->captures[state.step];
  if (capture.partitions.empty()) {
    SnapshotManifest& m = capture.manifest;
    m.set_job_id(job->id);
    m.set_step(state.step);
    m.set_view_epoch(job->view_epoch);
    *m.mutable_config() = job->config;
    *m.mutable_placement() = job->placement;
    for (int32_t shard : job->shards) m.add_shards(shard);
  }
  PartitionSnapshot part;
  part.id = partition_id;
  part.weights = state.weights;
  part.slots = state.slots;
  capture.partitions.push_back(std::move(part));
  if (capture.partitions.size() == job->partitions.size()) {
    std::sort(capture.partitions.begin(), capture.partitions.end(),
              [](const PartitionSnapshot& a, const PartitionSnapshot& b) {
                return a.id < b.id;
              });
    complete->push_back(std::move(capture));
    job->captures.erase(state.step);
    job->requested_snapshots.erase(state.step);
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
    if (state.step >= step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: partition ", id, " is at step ", state.step,
          " already; a snapshot at step ", step, " cannot be taken"));
    }
  }
  job->requested_snapshots.insert(step);
  return absl::OkStatus();
}

std::vector<std::string> ParameterStore::JobIds() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  return ids;
}

absl::Status ParameterStore::Restore(const ShardSnapshot& snapshot,
                                     int64_t view_epoch) {
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
      it->second.weights = part.weights;
      it->second.slots = part.slots;
      it->second.step = m.step();
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

// Answers `request` from the job's current state if it can. Returns true
// when *response is filled, false when the step is not reached yet, or the
// error that ends the pull.
static absl::StatusOr<bool> TryAnswer(const ParameterStore::Job& job,
                                      const PullRequest& request,
                                      PullResponse* response)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (job.dropped) {
    return absl::CancelledError(absl::StrCat("job \"", job.id, "\" was dropped"));
  }
  int64_t lowest = INT64_MAX;
  for (int i = 0; i < request.partition_ids_size(); ++i) {
    auto it = job.partitions.find(request.partition_ids(i));
    if (it == job.partitions.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("partition_ids[", i, "]: partition ",
                       request.partition_ids(i), " is not held by this server"));
    }
    if (!request.latest() && it->second.step > request.step()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " is no longer held: partition ",
          it->first, " is at step ", it->second.step));
    }
    lowest = std::min(lowest, it->second.step);
  }
  if (!request.latest() && lowest != INT64_MAX && lowest < request.step()) {
    if (job.finished) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " will never be reached: job \"", job.id,
          "\" finished at step ", lowest));
    }
    return false;
  }
  response->clear_parameters();
  for (int32_t id : request.partition_ids()) {
    const PartitionState& state = job.partitions.at(id);
    PartitionTensor* out = response->add_parameters();
    out->set_partition_id(id);
    EncodeFloat32(state.weights.data(), state.num_elements, out->mutable_tensor());
  }
  response->set_step(lowest == INT64_MAX ? request.step() : lowest);
  return true;
}

void ParameterStore::AnswerWaiters(Job* job, Completions* completions) {
  for (auto it = job->waiters.begin(); it != job->waiters.end();) {
    Waiter& waiter = it->second;
    absl::StatusOr<bool> answered =
        TryAnswer(*job, waiter.request, waiter.response);
    if (answered.ok() && !*answered) {
      ++it;
      continue;
    }
    completions->emplace_back(std::move(waiter.done), answered.status());
    it = job->waiters.erase(it);
  }
}

void ParameterStore::PullAsync(uint64_t pull_id, const PullRequest& request,
                               PullResponse* response, PullDone done) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(request.job_id());
  if (!job.ok()) return done(job.status());
  if (!request.latest() && request.view_epoch() != (*job)->view_epoch) {
    return done(absl::FailedPreconditionError(absl::StrCat(
        "view_epoch: pull is for epoch ", request.view_epoch(),
        ", this server is in epoch ", (*job)->view_epoch)));
  }
  absl::StatusOr<bool> answered;
  {
    absl::MutexLock lock(&(*job)->mu);
    answered = TryAnswer(**job, request, response);
    if (answered.ok() && !*answered) {
      (*job)->waiters[pull_id] = Waiter{request, response, std::move(done)};
      return;
    }
  }
  done(answered.status());
}

void ParameterStore::CancelPull(const std::string& job_id, uint64_t pull_id,
                                absl::Status status) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(job_id);
  if (!job.ok()) return;  // dropped: DropJob answered every waiter
  PullDone done;
  {
    absl::MutexLock lock(&(*job)->mu);
    auto it = (*job)->waiters.find(pull_id);
    if (it == (*job)->waiters.end()) return;  // answered already
    done = std::move(it->second.done);
    (*job)->waiters.erase(it);
  }
  done(std::move(status));
}

absl::Status ParameterStore::Pull(const PullRequest& request,
                                  absl::Time deadline,
                                  const std::function<bool()>& is_cancelled,
                                  PullResponse* response) {
  const uint64_t id = NewPullId();
  absl::Notification finished;
  absl::Status result;
  PullAsync(id, request, response, [&](absl::Status status) {
    result = std::move(status);
    finished.Notify();
  });
  while (!finished.WaitForNotificationWithDeadline(
      std::min(deadline, absl::Now() + absl::Milliseconds(100)))) {
    if (absl::Now() >= deadline) {
      CancelPull(request.job_id(), id,
                 absl::DeadlineExceededError(absl::StrCat(
                     "step ", request.step(),
                     " not reached before the deadline (waiting for other "
                     "workers' pushes)")));
    } else if (is_cancelled()) {
      CancelPull(request.job_id(), id,
                 absl::CancelledError("pull cancelled by client"));
    }
  }
  return result;
}

}  // namespace psd
