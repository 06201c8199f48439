// ParameterStore's jobs: creating (CreateJob, BuildJob), finding, dropping
// and describing them (Status). The rest of the class is in the files named
// by their concern: update_path.cc (pushes and updates), pull_path.cc,
// replication.cc, state_transfer.cc, snapshot_capture.cc and
// replica_check.cc; the consistency models in consistency_rule.h.
#include "server/ps/parameter_store.h"

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/quote.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/consistency_rule.h"
#include "server/ps/optimizer.h"
#include "server/ps/parameter_store_internal.h"

namespace psd {
namespace {

std::string ConsistencyName(Consistency c, int32_t staleness) {
  switch (c) {
    case ASP: return "ASP";
    case SSP: return absl::StrCat("SSP(s=", staleness, ")");
    default: return "BSP";
  }
}

// The job's consistency model, then each parameter group's, e.g.
// "BSP; SSP(s=2): layer1.weight, layer1.bias".
std::string ConsistencyDescription(const JobConfig& config) {
  std::string out = ConsistencyName(config.consistency(), config.staleness());
  for (const ParameterGroup& g : config.parameter_groups()) {
    absl::StrAppend(&out, "; ", ConsistencyName(g.consistency(), g.staleness()),
                    ": ", absl::StrJoin(g.parameters(), ", "));
  }
  return out;
}

}  // namespace

std::set<std::string> PeerIdentities(
    const google::protobuf::RepeatedPtrField<ServerInfo>& servers) {
  std::set<std::string> identities;
  for (const ServerInfo& server : servers) {
    if (!server.identity().empty()) identities.insert(server.identity());
  }
  return identities;
}

absl::Status ParameterStore::CheckReplicaPeer(const std::string& job_id,
                                              const std::string& identity) {
  if (identity.empty()) return absl::OkStatus();
  auto job = FindJob(job_id);
  if (!job.ok()) return absl::OkStatus();
  absl::MutexLock lock(&(*job)->mu);
  const std::set<std::string>& peers = (*job)->peer_identities;
  if (peers.empty() || peers.count(identity)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "the caller ", identity, " is not a server of job ", Quote(job_id),
      "'s view (epoch ", (*job)->view_epoch, ": ", absl::StrJoin(peers, ", "),
      "); only they replicate to this server"));
}

absl::StatusOr<std::string> ParameterStore::SubmittedBy(
    const std::string& job_id) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  return job->submitted_by;
}

absl::StatusOr<std::shared_ptr<ParameterStore::Job>> ParameterStore::FindJob(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("job_id: no job ", Quote(job_id), " on this server"));
  }
  return it->second;
}

// Bounds what BuildJob will allocate for the partitions of `shards` before
// any of it is: the partitions' state (weights, optimizer slots, the sum,
// and per rank a gradient buffer under BSP or the queue under ASP/SSP) and
// each parameter's initial values, computed whole once. Every dimension
// must be >= 1; products are checked against the bound as they grow, so a
// peer's shape cannot overflow them.
static absl::Status CheckJobBytes(const JobConfig& config,
                                  const Placement& placement,
                                  const std::set<int32_t>& shards,
                                  int64_t max_bytes) {
  const int64_t max_floats = max_bytes / static_cast<int64_t>(sizeof(float));
  auto too_big = [&](absl::string_view what) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": this server would allocate more than ", max_bytes,
        " bytes for the job (--max_job_bytes); use more servers or a "
        "smaller model"));
  };
  std::vector<int64_t> elements(placement.parameters_size(), 0);
  for (int p = 0; p < placement.parameters_size(); ++p) {
    const ParameterSpec& spec = placement.parameters(p);
    int64_t n = 1;
    for (int d = 0; d < spec.shape_size(); ++d) {
      const int64_t dim = spec.shape(d);
      if (dim < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "placement.parameters[", p, "].shape[", d, "]: must be >= 1, got ",
            dim));
      }
      if (dim > max_floats || n > max_floats / dim) {
        return too_big(absl::StrCat("placement.parameters[", p, "].shape"));
      }
      n *= dim;
    }
    elements[p] = n;
  }
  const int64_t per_element =
      2 + OptimizerSlots(config.optimizer()) + config.workers();
  int64_t floats = 0;
  std::set<int32_t> initialised;
  for (int i = 0; i < placement.partitions_size(); ++i) {
    const Partition& part = placement.partitions(i);
    if (!shards.count(part.shard())) continue;
    if (part.parameter() < 0 || part.parameter() >= placement.parameters_size()) {
      continue;  // BuildJob names it
    }
    if (part.num_elements() < 0 || part.num_elements() > max_floats) {
      return too_big(absl::StrCat("placement.partitions[", i, "].num_elements"));
    }
    floats += part.num_elements() * per_element;
    if (initialised.insert(part.parameter()).second) {
      floats += elements[part.parameter()];
    }
    if (floats > max_floats) {
      return too_big(absl::StrCat("placement.partitions[", i, "]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ParameterStore::Job>> ParameterStore::BuildJob(
    const CreateJobRequest& request) {
  if (request.job_id().empty()) {
    return absl::InvalidArgumentError("job_id: required");
  }
  PSD_RETURN_IF_ERROR(CheckJobId("job_id", request.job_id()));
  JobConfig config = request.config();
  ApplyJobConfigDefaults(&config);
  absl::Status valid = ValidateJobConfig(config);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.", valid.message()));
  }
  const Placement& placement = request.placement();
  std::set<int32_t> shards(request.shards().begin(), request.shards().end());
  PSD_RETURN_IF_ERROR(CheckJobBytes(config, placement, shards,
                                    options_.max_job_bytes));
  auto job = std::make_shared<Job>();
  job->id = request.job_id();
  job->config = config;
  job->config_bytes = config.SerializeAsString();
  job->placement = placement;
  job->any_async = HasAsyncParameters(config);
  job->submitted_by = request.submitted_by();
  {
    absl::MutexLock lock(&job->mu);
    job->view_epoch = request.view_epoch();
    job->peer_identities = PeerIdentities(request.servers());
    job->shards.assign(shards.begin(), shards.end());
    for (int32_t shard : shards) {
      job->roles[shard].role =
          request.joining() ? ReplicaRole::kJoining : ReplicaRole::kPrimary;
    }
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
      const ParameterConsistency consistency =
          ConsistencyOf(config, spec.name());
      state.async = consistency.consistency != BSP;
      state.staleness =
          consistency.consistency == SSP ? consistency.staleness : -1;
      state.num_elements = part.num_elements();
      state.shard = part.shard();
      state.installing = request.joining();
      state.weights.assign(it->second.begin() + part.offset(),
                           it->second.begin() + part.offset() +
                               part.num_elements());
      state.slots.assign(
          OptimizerSlots(config.optimizer()) * part.num_elements(), 0.0f);
      state.received.assign(config.workers(), false);
      state.sum.resize(part.num_elements());
      RuleOf(state).Init(config.workers(), &state);
    }
  }
  return job;
}

namespace {

// At most this many fenced drops are remembered (ParameterStore::
// drop_fences_): a few per failed start attempt, so far more than enough.
constexpr size_t kMaxDropFences = 4096;

// The job has taken no update: every partition at step 0 with nothing
// received, replicating or queued (a start attempt no worker used yet).
bool Untouched(const ParameterStore::Job& job)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (job.finished || job.dropped) return false;
  for (const auto& [id, state] : job.partitions) {
    if (state.step != 0 || state.received_count != 0 || state.replicating ||
        state.queued_count != 0) {
      return false;
    }
    for (int64_t clock : state.accepted) {
      if (clock != 0) return false;
    }
  }
  return true;
}

// Ends the job's waiting pulls with CANCELLED (into *completions).
void CancelWaiters(ParameterStore::Job* job, Completions* completions)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job->mu) {
  for (auto& [id, waiter] : job->waiters) {
    completions->emplace_back(
        std::move(waiter.done),
        absl::CancelledError(absl::StrCat(
            "job \"", job->id, "\" ended while the pull waited for step ",
            waiter.request.step())));
  }
  job->waiters.clear();
}

}  // namespace

absl::StatusOr<CreateJobResponse> ParameterStore::CreateJob(
    const CreateJobRequest& request) {
  if (options_.test_slow_create_job_ms > 0) {
    absl::SleepFor(absl::Milliseconds(options_.test_slow_create_job_ms));
  }
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
  const int64_t epoch = request.view_epoch();
  // Refused when a fenced DropJob of this epoch or a newer one came first.
  auto fenced = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto fence = drop_fences_.find(request.job_id());
    if (fence == drop_fences_.end()) return absl::OkStatus();
    if (epoch <= fence->second) {
      return absl::AbortedError(absl::StrCat(
          "view_epoch: job \"", request.job_id(), "\" was dropped at view epoch ",
          fence->second, "; this CreateJob is for epoch ", epoch,
          " (a start attempt the coordinator gave up on)"));
    }
    drop_fences_.erase(fence);
    return absl::OkStatus();
  };
  std::shared_ptr<Job> held;
  {
    absl::MutexLock lock(&mu_);
    PSD_RETURN_IF_ERROR(fenced());
    auto existing = jobs_.find(job->id);
    if (existing == jobs_.end()) {
      jobs_[job->id] = std::move(job);
      return response;
    }
    held = existing->second;
  }
  // A start attempt's epoch against the held job's (job->mu is taken
  // before mu_, never after: see replication.cc).
  if (!request.joining() && held->config_bytes == job->config_bytes) {
    Completions completions;
    {
      absl::MutexLock held_lock(&held->mu);
      if (epoch < held->view_epoch) {
        return absl::AbortedError(absl::StrCat(
            "view_epoch: job \"", job->id, "\" is held at view epoch ",
            held->view_epoch, "; this CreateJob is for epoch ", epoch,
            " (a start attempt the coordinator gave up on)"));
      }
      if (epoch > held->view_epoch && Untouched(*held)) {
        // A newer start attempt: the held job is an abandoned one.
        held->dropped = true;
        held->partitions.clear();
        CancelWaiters(held.get(), &completions);
      }
    }
    RunCompletions(&completions);
    bool replaced = false;
    {
      absl::MutexLock held_lock(&held->mu);
      replaced = held->dropped;
    }
    if (replaced) {
      absl::MutexLock lock(&mu_);
      PSD_RETURN_IF_ERROR(fenced());
      auto existing = jobs_.find(job->id);
      if (existing == jobs_.end() || existing->second == held) {
        jobs_[job->id] = std::move(job);
        return response;
      }
      return absl::AbortedError(absl::StrCat(
          "job_id: job \"", job->id, "\" changed on this server during "
          "this CreateJob; retry"));
    }
  }
  if (held->config_bytes != job->config_bytes) {
    return absl::AlreadyExistsError(absl::StrCat(
        "job_id: job \"", job->id, "\" exists with another config"));
  }
  // The job is held already: add the shards it lacks (a backup joining),
  // and take over as joining the shards the view left it no role in. Shards
  // held in a role keep their state (a retried CreateJob).
  absl::MutexLock held_lock(&held->mu);
  absl::MutexLock lock(&job->mu);
  if (held->finished || held->dropped) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job_id: job \"", job->id, "\" has finished on this server"));
  }
  for (int32_t shard : job->shards) {
    auto role = held->roles.find(shard);
    const bool take = role == held->roles.end() ||
                      (request.joining() && (role->second.role == ReplicaRole::kNone ||
                                             role->second.role == ReplicaRole::kJoining));
    if (!take) continue;
    held->roles[shard] = job->roles[shard];
    for (auto& [id, state] : job->partitions) {
      if (state.shard == shard) held->partitions[id] = std::move(state);
    }
    if (role == held->roles.end()) held->shards.push_back(shard);
  }
  std::sort(held->shards.begin(), held->shards.end());
  return response;
}

absl::Status ParameterStore::DropJob(const std::string& job_id,
                                     bool keep_parameters, int64_t view_epoch) {
  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    if (view_epoch > 0) {
      // The attempt's CreateJob may still arrive: refuse it then.
      int64_t& fence = drop_fences_[job_id];
      fence = std::max(fence, view_epoch);
      if (drop_fences_.size() > kMaxDropFences) {
        drop_fences_.erase(drop_fences_.begin());
      }
    }
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(
          absl::StrCat("job_id: no job \"", job_id, "\" on this server"));
    }
    job = it->second;
  }
  if (view_epoch > 0) {
    absl::MutexLock job_lock(&job->mu);
    if (job->view_epoch > view_epoch) {
      return absl::AbortedError(absl::StrCat(
          "view_epoch: job \"", job_id, "\" is held at view epoch ",
          job->view_epoch, ", newer than this drop's ", view_epoch,
          " (a later start attempt): not dropped"));
    }
  }
  if (!keep_parameters) {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it != jobs_.end() && it->second == job) jobs_.erase(it);
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
        std::vector<float>().swap(state.previous);
        std::vector<float>().swap(state.queued);
        state.previous_step.reset();
        DiscardPending(&state);
      }
    } else {
      job->dropped = true;
      job->partitions.clear();
    }
    // Pulls still waiting for a step will never get it.
    CancelWaiters(job.get(), &completions);
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
      floats += state.weights.size() + state.slots.size() + state.sum.size() +
                state.previous.size();
      for (const auto& p : state.pending) floats += p.size();
      step = std::min(step, state.step);
    }
    out->set_state_bytes(floats * static_cast<int64_t>(sizeof(float)));
    out->set_step(step);
    out->set_view_epoch(job->view_epoch);
    out->set_consistency(ConsistencyDescription(job->config));
    // Clocks over the partitions this server leads (all held when none).
    const int32_t workers = job->config.workers();
    std::vector<int64_t> clocks(workers, INT64_MAX);
    bool any_primary = false;
    for (const auto& [id, state] : job->partitions) {
      any_primary |= job->roles[state.shard].role == ReplicaRole::kPrimary;
    }
    for (const auto& [id, state] : job->partitions) {
      if (any_primary && job->roles[state.shard].role != ReplicaRole::kPrimary) continue;
      const ConsistencyRule& rule = RuleOf(state);
      for (int32_t r = 0; r < workers; ++r) {
        clocks[r] = std::min(clocks[r], rule.WorkerClock(state, r));
      }
    }
    for (int64_t c : clocks) out->add_worker_clocks(c == INT64_MAX ? 0 : c);
    out->set_replicas_verified_step(VerifiedStep(*job));
    if (job->any_async) {
      out->set_max_staleness(job->max_staleness);
      for (int64_t n : job->staleness_counts) out->add_staleness_counts(n);
    }
    for (int32_t shard : job->shards) {
      ShardStatus* s = out->add_shards();
      s->set_shard(shard);
      s->set_role(ReplicaRoleName(job->roles[shard].role));
      int64_t lo = INT64_MAX, hi = 0;
      for (const auto& [id, state] : job->partitions) {
        if (state.shard != shard) continue;
        lo = std::min(lo, state.step);
        hi = std::max(hi, state.step);
      }
      s->set_min_step(lo == INT64_MAX ? 0 : lo);
      s->set_max_step(hi);
    }
  }
  return status;
}

std::vector<std::string> ParameterStore::JobIds() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  return ids;
}

}  // namespace psd
