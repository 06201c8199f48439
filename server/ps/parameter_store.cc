#include "server/ps/parameter_store.h"

#include <algorithm>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/quote.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/optimizer.h"
#include "server/snapshot/snapshot_store.h"
#include "zlib.h"

namespace psd {

// One partition's state. Protected by its Job's mu.
struct PartitionState {
  // Constant after construction: the consistency model of the partition's
  // parameter (ConsistencyOf). async: ASP or SSP, pushes applied as they
  // arrive; staleness: SSP's bound, -1 for ASP (unused under BSP).
  bool async = false;
  int64_t staleness = -1;
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
  // Sum of pending gradients (reused buffer); the averaged gradient while
  // the step is being replicated.
  std::vector<float> sum;
  // The shard this partition is placed on.
  int32_t shard = 0;
  // Primary: the step's averaged gradient is with the backups; `awaiting`
  // are those that have not acknowledged it yet, since `replicating_since`.
  bool replicating = false;
  absl::Time replicating_since;
  std::set<std::string> awaiting;
  // Joining backup: the state transfer has not arrived yet.
  bool installing = false;
  // The weights before the last update (after *previous_step updates), so
  // a pull of that step can still be answered; no value: none kept. (Not a
  // -1 sentinel: a pull's step is a peer's number, and -1 must match nothing.)
  std::vector<float> previous;
  std::optional<int64_t> previous_step;
  // ASP/SSP only (empty under BSP). Per worker rank: its pushes applied to
  // `weights` (the rank's clock on this partition; the dedup table).
  std::vector<int64_t> clocks;
  // Primary: per rank, its pushes taken (applied, in flight or queued);
  // elsewhere equal to `clocks`.
  std::vector<int64_t> accepted;
  // Primary, while replicating: `clocks` once the update in flight is
  // applied (a backup: those of the update being applied).
  std::vector<int64_t> update_clocks;
  // Primary: pushes taken while an update was being replicated, each scaled
  // by 1/workers and summed in arrival order: the next update.
  std::vector<float> queued;
  int32_t queued_count = 0;
  // The replica check: the newest step at which this partition's replicas
  // were found equal (a primary: every backup's checksum matched; a backup:
  // its own matched the primary's); 0: none yet.
  int64_t verified_step = 0;
  // Backup: why the replica check found this replica different from its
  // primary; empty: it was not. It refuses replication until a state
  // transfer (InstallPartition) replaces it.
  std::string diverged;
};

// The slowest rank's clock on an ASP/SSP partition, and that rank.
static int64_t MinClock(const PartitionState& state, int32_t* slowest) {
  int64_t lowest = INT64_MAX;
  for (size_t r = 0; r < state.clocks.size(); ++r) {
    if (state.clocks[r] < lowest) {
      lowest = state.clocks[r];
      if (slowest != nullptr) *slowest = static_cast<int32_t>(r);
    }
  }
  return lowest == INT64_MAX ? 0 : lowest;
}

// Voids what the partition collected as a primary (received pushes, the
// update being replicated, queued ASP/SSP pushes): the shard's next primary
// gets the workers' pushes again.
static void DiscardPending(PartitionState* state) {
  state->replicating = false;
  state->awaiting.clear();
  state->received.assign(state->received.size(), false);
  state->received_count = 0;
  state->queued_count = 0;
  state->accepted = state->clocks;
}

// The role of a server for one shard of a job, from the coordinator's view.
enum class Role { kPrimary, kBackup, kJoining, kNone };

static const char* RoleName(Role role) {
  switch (role) {
    case Role::kPrimary: return "PRIMARY";
    case Role::kBackup: return "BACKUP";
    case Role::kJoining: return "JOINING";
    case Role::kNone: return "NONE";
  }
  return "?";
}

struct ShardRole {
  Role role = Role::kPrimary;
  // Primary: addresses of the view's backups, and of backups still joining
  // (state transfer under way or done, not yet in the view).
  std::vector<std::string> backups;
  std::set<std::string> joiners;
};

namespace {


// A pull waiting for its step.
struct Waiter {
  PullRequest request;
  PullResponse* response;
  ParameterStore::PullDone done;
};

// Buckets of ServerJobStatus.staleness_counts.
constexpr int kStalenessBuckets = 16;

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
  Placement placement;
  // Some parameter is under ASP or SSP (HasAsyncParameters).
  bool any_async = false;

  absl::Mutex mu;
  // ASP/SSP: the largest staleness seen by an answered pull, and pulls
  // answered by staleness (the last bucket: that or more).
  int64_t max_staleness ABSL_GUARDED_BY(mu) = 0;
  std::vector<int64_t> staleness_counts ABSL_GUARDED_BY(mu) =
      std::vector<int64_t>(kStalenessBuckets);
  int64_t view_epoch ABSL_GUARDED_BY(mu) = 0;
  // Shards held, ascending, and this server's role for each.
  std::vector<int32_t> shards ABSL_GUARDED_BY(mu);
  std::map<int32_t, ShardRole> roles ABSL_GUARDED_BY(mu);
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

namespace {

// A push's or pull's view epoch against the server's.
absl::Status CheckEpoch(const ParameterStore::Job& job, int64_t epoch,
                        const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (epoch < job.view_epoch) {
    return absl::AbortedError(absl::StrCat(
        "view_epoch: ", what, " is for epoch ", epoch,
        ", this server is in epoch ", job.view_epoch,
        " (the view changed: refresh it)"));
  }
  if (epoch > job.view_epoch) {
    return absl::UnavailableError(absl::StrCat(
        "view_epoch: ", what, " is for epoch ", epoch,
        ", this server is still in epoch ", job.view_epoch, "; retry"));
  }
  return absl::OkStatus();
}

// Pushes and pulls go to a shard's primary only.
absl::Status CheckPrimary(const ParameterStore::Job& job,
                          const PartitionState& state, int32_t partition_id)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  const Role role = job.roles.at(state.shard).role;
  if (role == Role::kPrimary) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat(
      "partition ", partition_id, " (shard ", state.shard,
      "): this server is its ", RoleName(role), " in view epoch ",
      job.view_epoch, ", not its primary (refresh the view)"));
}

}  // namespace

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
  {
    absl::MutexLock lock(&job->mu);
    job->view_epoch = request.view_epoch();
    job->shards.assign(shards.begin(), shards.end());
    for (int32_t shard : shards) {
      job->roles[shard].role =
          request.joining() ? Role::kJoining : Role::kPrimary;
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
      if (state.async) {
        state.clocks.assign(config.workers(), 0);
        state.accepted.assign(config.workers(), 0);
        state.update_clocks.assign(config.workers(), 0);
        state.queued.resize(part.num_elements());
      } else {
        state.pending.assign(config.workers(),
                             std::vector<float>(part.num_elements()));
      }
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
  std::shared_ptr<Job> held;
  {
    absl::MutexLock lock(&mu_);
    auto existing = jobs_.find(job->id);
    if (existing == jobs_.end()) {
      jobs_[job->id] = std::move(job);
      return response;
    }
    held = existing->second;
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
                      (request.joining() && (role->second.role == Role::kNone ||
                                             role->second.role == Role::kJoining));
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

// The replica check: the oldest verified step over the partitions the
// server leads (all it holds when it leads none).
static int64_t VerifiedStep(const ParameterStore::Job& job)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  bool any_primary = false;
  for (const auto& [id, state] : job.partitions) {
    any_primary |= job.roles.at(state.shard).role == Role::kPrimary;
  }
  int64_t verified = INT64_MAX;
  for (const auto& [id, state] : job.partitions) {
    if (any_primary && job.roles.at(state.shard).role != Role::kPrimary) {
      continue;
    }
    verified = std::min(verified, state.verified_step);
  }
  return verified == INT64_MAX ? 0 : verified;
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
      any_primary |= job->roles[state.shard].role == Role::kPrimary;
    }
    for (const auto& [id, state] : job->partitions) {
      if (any_primary && job->roles[state.shard].role != Role::kPrimary) continue;
      for (int32_t r = 0; r < workers; ++r) {
        const int64_t c =
            state.async ? (r < static_cast<int32_t>(state.clocks.size())
                              ? state.clocks[r]
                              : 0)
                       : state.step + (r < static_cast<int32_t>(
                                               state.received.size()) &&
                                       state.received[r]);
        clocks[r] = std::min(clocks[r], c);
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
      s->set_role(RoleName(job->roles[shard].role));
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

absl::StatusOr<PushResponse> ParameterStore::Push(const PushRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
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
  std::vector<ReplicationTask> tasks;
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
  PSD_RETURN_IF_ERROR(CheckEpoch(*job, request.view_epoch(), "push"));
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
    PSD_RETURN_IF_ERROR(CheckPrimary(*job, state, g.partition_id()));
    PSD_RETURN_IF_ERROR(CheckFloat32(
        g.tensor(), state.num_elements,
        absl::StrCat("gradients[", i, "] (partition ", g.partition_id(), ")")));
    if (state.async) {
      // A rank's pushes are taken in order, each once.
      const int64_t next = state.accepted[rank];
      if (request.step() > next) {
        return absl::FailedPreconditionError(absl::StrCat(
            "step: ", request.step(), " from rank ", rank,
            " is ahead: partition ", g.partition_id(), " has taken ", next,
            " of its pushes (a rank pushes steps in order, from 0)"));
      }
      all_duplicate = all_duplicate && request.step() < next;
      continue;
    }
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
    if (state.async) {
      if (request.step() == state.accepted[rank]) {
        ++state.accepted[rank];
        const float scale = 1.0f / static_cast<float>(job->config.workers());
        const float* data = Float32Data(g.tensor());
        if (!state.replicating) {
          for (int64_t k = 0; k < state.num_elements; ++k) {
            state.sum[k] = data[k] * scale;
          }
          advanced |= StartUpdate(job.get(), g.partition_id(), &state,
                                  &snapshots, &tasks);
        } else if (state.queued_count++ == 0) {
          for (int64_t k = 0; k < state.num_elements; ++k) {
            state.queued[k] = data[k] * scale;
          }
        } else {
          for (int64_t k = 0; k < state.num_elements; ++k) {
            state.queued[k] += data[k] * scale;
          }
        }
      }
      applied_step = std::min(applied_step, state.step);
      continue;
    }
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
        advanced |= StartUpdate(job.get(), g.partition_id(), &state,
                                &snapshots, &tasks);
      }
    }
    applied_step = std::min(applied_step, state.step);
  }
  if (advanced) AnswerWaiters(job.get(), &completions);
  response.set_duplicate(all_duplicate && request.gradients_size() > 0);
  response.set_applied_step(applied_step == INT64_MAX ? 0 : applied_step);
  }
  Settle(&completions, &snapshots, &tasks);
  return response;
}

void ParameterStore::Settle(std::vector<std::pair<PullDone, absl::Status>>* completions,
                            std::vector<ShardSnapshot>* snapshots,
                            std::vector<ReplicationTask>* tasks) {
  RunCompletions(completions);
  for (ShardSnapshot& snapshot : *snapshots) {
    options_.snapshot_sink(std::move(snapshot));
  }
  snapshots->clear();
  if (options_.replicate) {
    for (ReplicationTask& task : *tasks) options_.replicate(std::move(task));
  }
  tasks->clear();
}

void ParameterStore::ApplyStep(Job* job, int32_t partition_id,
                               PartitionState* state,
                               std::vector<ShardSnapshot>* snapshots) {
  // ASP/SSP: the slowest rank's clock before this update (snapshot steps
  // in (that, the one after] are due now).
  const int64_t min_before = state->async ? MinClock(*state, nullptr) : 0;
  if (state->async) {
    // No previous weights: ASP/SSP pulls are of the current ones.
    state->clocks = state->update_clocks;
    for (size_t r = 0; r < state->clocks.size(); ++r) {
      state->accepted[r] = std::max(state->accepted[r], state->clocks[r]);
    }
  } else {
    state->previous = state->weights;
    state->previous_step = state->step;
  }
  ApplyOptimizer(job->config.optimizer(), state->step, state->sum.data(),
                 state->num_elements, state->weights.data(),
                 state->slots.data());
  state->step++;
  state->received.assign(state->received.size(), false);
  state->received_count = 0;
  state->replicating = false;
  state->awaiting.clear();
  if (!state->async) {
    CaptureIfDue(job, partition_id, *state, state->step, snapshots);
    return;
  }
  // Snapshot step k of an ASP/SSP partition: captured by the update that
  // makes its slowest rank's clock reach k (on primaries and backups alike,
  // which apply the same updates in the same order). An update moves each
  // rank's clock by at most one (read-my-writes), so normally there is at
  // most one such k; a larger jump (a peer's bad clocks) captures only the
  // newest due step in it.
  const int64_t min_after = MinClock(*state, nullptr);
  if (min_after <= min_before) return;
  int64_t due = -1;
  const int64_t every = job->config.snapshot().every_steps();
  if (every > 0) {
    const int64_t k = min_after - min_after % every;
    if (k > min_before) due = k;
  }
  auto req = job->requested_snapshots.upper_bound(min_after);
  if (req != job->requested_snapshots.begin() && *std::prev(req) > min_before) {
    due = std::max(due, *std::prev(req));
  }
  if (due > 0) CaptureIfDue(job, partition_id, *state, due, snapshots);
}

namespace {

// The replica check's checksum of a partition's state: CRC-32 (zlib) of its
// weights, its optimizer slots and (ASP/SSP) its clocks, as their bytes in
// memory (little-endian on every platform psd builds for).
uint32_t StateChecksum(const PartitionState& state) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  const auto add = [&crc](const void* data, size_t bytes) {
    // zlib returns the initial value for a null buffer, whatever `crc` is.
    if (bytes > 0) crc = crc32_z(crc, static_cast<const Bytef*>(data), bytes);
  };
  add(state.weights.data(), state.weights.size() * sizeof(float));
  add(state.slots.data(), state.slots.size() * sizeof(float));
  if (state.async) add(state.clocks.data(), state.clocks.size() * sizeof(int64_t));
  return static_cast<uint32_t>(crc);
}

// Whether the replication of update `step` carries the replica check: every
// `every` steps (0: never) and at the snapshot steps of the job's policy.
bool ReplicaCheckDue(const ParameterStore::Job& job, int64_t step,
                     int64_t every) {
  if (step <= 0) return false;
  const int64_t snapshot_every = job.config.snapshot().every_steps();
  return (every > 0 && step % every == 0) ||
         (snapshot_every > 0 && step % snapshot_every == 0);
}

// The replication of the update in state.sum (the partition's next update),
// with the replica check when it is due (every `check_every` steps).
std::shared_ptr<ReplicateRequest> MakeReplicate(
    const ParameterStore::Job& job, int32_t partition_id,
    const PartitionState& state, int64_t check_every)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  auto replicate = std::make_shared<ReplicateRequest>();
  replicate->set_job_id(job.id);
  replicate->set_view_epoch(job.view_epoch);
  replicate->set_step(state.step);
  PartitionTensor* out = replicate->add_gradients();
  out->set_partition_id(partition_id);
  EncodeFloat32(state.sum.data(), state.num_elements, out->mutable_tensor());
  if (state.async) {
    for (int64_t c : state.update_clocks) replicate->add_clocks(c);
  }
  if (ReplicaCheckDue(job, state.step, check_every)) {
    replicate->add_checksums(StateChecksum(state));
  }
  return replicate;
}

}  // namespace

bool ParameterStore::StartUpdate(Job* job, int32_t partition_id,
                                 PartitionState* state,
                                 std::vector<ShardSnapshot>* snapshots,
                                 std::vector<ReplicationTask>* tasks) {
  // Every push taken so far is in the update in flight or applied.
  state->update_clocks = state->accepted;
  const ShardRole& role = job->roles[state->shard];
  std::set<std::string> targets(role.backups.begin(), role.backups.end());
  targets.insert(role.joiners.begin(), role.joiners.end());
  if (targets.empty()) {
    ApplyStep(job, partition_id, state, snapshots);
    return true;
  }
  // Applied once every backup has it (OnReplicated).
  state->replicating = true;
  state->replicating_since = absl::Now();
  state->awaiting = targets;
  std::shared_ptr<ReplicateRequest> replicate =
      MakeReplicate(*job, partition_id, *state,
                    options_.replica_check_every_steps);
  for (const std::string& target : targets) {
    tasks->push_back(ReplicationTask{target, replicate});
  }
  return false;
}

bool ParameterStore::StartQueued(Job* job, int32_t partition_id,
                                 PartitionState* state,
                                 std::vector<ShardSnapshot>* snapshots,
                                 std::vector<ReplicationTask>* tasks) {
  if (!state->async || state->queued_count == 0 || state->replicating ||
      job->roles[state->shard].role != Role::kPrimary) {
    return false;
  }
  state->sum.swap(state->queued);
  state->queued_count = 0;
  return StartUpdate(job, partition_id, state, snapshots, tasks);
}

void ParameterStore::CaptureIfDue(Job* job, int32_t partition_id,
                                  const PartitionState& state, int64_t step,
                                  std::vector<ShardSnapshot>* complete) {
  const int64_t every = job->config.snapshot().every_steps();
  const bool by_policy = every > 0 && step % every == 0;
  if (!options_.snapshot_sink ||
      !(by_policy || job->requested_snapshots.count(step))) {
    return;
  }
  ShardSnapshot& capture = job->captures[step];
  if (capture.partitions.empty()) {
    SnapshotManifest& m = capture.manifest;
    m.set_job_id(job->id);
    m.set_step(step);
    m.set_view_epoch(job->view_epoch);
    *m.mutable_config() = job->config;
    *m.mutable_placement() = job->placement;
    for (int32_t shard : job->shards) m.add_shards(shard);
  }
  PartitionSnapshot part;
  part.id = partition_id;
  part.weights = state.weights;
  part.slots = state.slots;
  if (state.async) {
    part.clocks = state.clocks;
    part.updates = state.step;
  }
  capture.partitions.push_back(std::move(part));
  if (capture.partitions.size() == job->partitions.size()) {
    std::sort(capture.partitions.begin(), capture.partitions.end(),
              [](const PartitionSnapshot& a, const PartitionSnapshot& b) {
                return a.id < b.id;
              });
    complete->push_back(std::move(capture));
    job->captures.erase(step);
    job->requested_snapshots.erase(step);
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
    // An ASP/SSP partition reaches snapshot step k when its slowest rank's
    // clock does (see SnapshotManifest.step).
    const int64_t at = state.async ? MinClock(state, nullptr) : state.step;
    if (at >= step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: partition ", id, " is at step ", at,
          state.async ? " (its slowest rank's clock)" : "",
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
      PartitionState& state = it->second;
      if (state.async != !part.clocks.empty() ||
          (state.async &&
           static_cast<int64_t>(part.clocks.size()) !=
               (*job)->config.workers())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot of ", m.job_id(), " at step ", m.step(), ": partition ",
            part.id, state.async ? " is under ASP/SSP but has "
                                 : " is under BSP but has ",
            part.clocks.size(), " worker clocks"));
      }
      state.weights = part.weights;
      state.slots = part.slots;
      if (state.async) {
        // Its update count and dedup table: a rank's pushes of steps it
        // holds already are acknowledged as duplicates when sent again.
        state.step = part.updates;
        state.clocks = part.clocks;
        state.accepted = part.clocks;
        state.update_clocks = part.clocks;
      } else {
        state.step = m.step();
      }
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

// ASP/SSP: whether a pull of clock request.step() by request.worker_rank()
// may read `state` now; when not, *why says what it waits for.
static bool AsyncReady(int32_t partition_id, const PartitionState& state,
                       const PullRequest& request, std::string* why) {
  const int32_t rank = request.worker_rank();
  const int64_t c = request.step();
  if (state.clocks[rank] < c) {
    if (why != nullptr) {
      *why = absl::StrCat("rank ", rank, "'s own push of step ", c - 1,
                          " is not applied yet to partition ", partition_id,
                          " (", state.clocks[rank], " of its pushes applied, ",
                          state.accepted[rank], " received)");
    }
    return false;
  }
  if (state.staleness < 0) return true;  // ASP
  int32_t slowest = 0;
  const int64_t min_clock = MinClock(state, &slowest);
  if (min_clock >= c - state.staleness) return true;
  if (why != nullptr) {
    *why = absl::StrCat("SSP staleness bound ", state.staleness, ": rank ",
                        rank, " at clock ", c, " may read partition ",
                        partition_id, " once every rank's clock is >= ",
                        c - state.staleness, "; the slowest is rank ", slowest,
                        " at clock ", min_clock);
  }
  return false;
}

// Answers the pull into *response when every partition it reads is
// readable by its consistency model (BSP: the partition reached the step,
// or keeps it as its previous one; ASP/SSP: AsyncReady), or latest is set.
// Returns false when it must wait, an error when it never can.
static absl::StatusOr<bool> TryAnswer(ParameterStore::Job& job,
                                      const PullRequest& request,
                                      PullResponse* response)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (job.dropped) {
    return absl::CancelledError(absl::StrCat("job \"", job.id, "\" was dropped"));
  }
  const int32_t rank = request.worker_rank();
  const bool rank_valid = rank >= 0 && rank < job.config.workers();
  if (job.any_async && !request.latest() && !rank_valid) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker_rank: ", rank, " outside [0, ", job.config.workers(), ")"));
  }
  // Every partition: held, led here, readable.
  bool ready = true;
  for (int i = 0; i < request.partition_ids_size(); ++i) {
    auto it = job.partitions.find(request.partition_ids(i));
    if (it == job.partitions.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "partition_ids[", i, "]: partition ", request.partition_ids(i),
          " is not held by this server"));
    }
    if (request.latest()) continue;
    const PartitionState& state = it->second;
    PSD_RETURN_IF_ERROR(CheckPrimary(job, state, it->first));
    if (state.async) {
      ready = ready && AsyncReady(it->first, state, request, nullptr);
      continue;
    }
    if (state.step > request.step() && state.previous_step != request.step()) {
      // Also a step < 0, which no partition keeps.
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " is no longer held: partition ",
          it->first, " is at step ", state.step));
    }
    ready = ready && state.step >= request.step();
  }
  if (!ready) {
    if (job.finished) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " of rank ", rank,
          " will never be readable: job \"", job.id, "\" finished"));
    }
    return false;
  }
  // step: the fewest updates of a returned partition; clock: the fewest of
  // this rank's pushes applied (BSP: the step returned); staleness: over
  // the ASP/SSP partitions, c - the slowest rank's clock.
  int64_t lowest = INT64_MAX;
  int64_t clock = INT64_MAX;
  int64_t staleness = -1;
  response->clear_parameters();
  for (int32_t id : request.partition_ids()) {
    const PartitionState& state = job.partitions.at(id);
    // A BSP pull of the step before the partition's (a replacement worker
    // recomputing it) gets the previous weights.
    const bool previous =
        !state.async && !request.latest() && state.step > request.step();
    const int64_t step = previous ? request.step() : state.step;
    lowest = std::min(lowest, step);
    if (!state.async) {
      clock = std::min(clock, step);
    } else {
      if (rank_valid) clock = std::min(clock, state.clocks[rank]);
      staleness = std::max(staleness, request.step() - MinClock(state, nullptr));
    }
    PartitionTensor* out = response->add_parameters();
    out->set_partition_id(id);
    EncodeFloat32(previous ? state.previous.data() : state.weights.data(),
                  state.num_elements, out->mutable_tensor());
  }
  response->set_step(lowest == INT64_MAX ? request.step() : lowest);
  response->set_clock(clock == INT64_MAX ? response->step() : clock);
  if (!request.latest() && staleness >= 0) {
    staleness = std::max<int64_t>(staleness, 0);
    job.max_staleness = std::max(job.max_staleness, staleness);
    ++job.staleness_counts[std::min<int64_t>(staleness, kStalenessBuckets - 1)];
  }
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

// Checks what a pull asks for before any work is done for it: a step that
// can exist, each partition named once, and an answer within
// max_bytes (bounded before anything is allocated).
static absl::Status CheckPullRequest(const ParameterStore::Job& job,
                                     const PullRequest& request,
                                     int64_t max_bytes)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  if (request.partition_ids_size() == 0) {
    return absl::InvalidArgumentError(
        "partition_ids: empty; name the partitions to pull");
  }
  if (!request.latest() && request.step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0, got ", request.step()));
  }
  std::set<int32_t> seen;
  int64_t bytes = 0;
  for (int i = 0; i < request.partition_ids_size(); ++i) {
    const int32_t id = request.partition_ids(i);
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "partition_ids[", i, "]: partition ", id, " appears twice"));
    }
    auto it = job.partitions.find(id);
    if (it == job.partitions.end()) continue;  // TryAnswer names it
    bytes += static_cast<int64_t>(sizeof(float)) * it->second.num_elements;
    if (bytes > max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "partition_ids: the answer would exceed ", max_bytes,
          " bytes at partition_ids[", i,
          "]; pull fewer partitions per call"));
    }
  }
  return absl::OkStatus();
}

void ParameterStore::PullAsync(uint64_t pull_id, const PullRequest& request,
                               PullResponse* response, PullDone done) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(request.job_id());
  if (!job.ok()) return done(job.status());
  absl::StatusOr<bool> answered;
  {
    absl::MutexLock lock(&(*job)->mu);
    absl::Status checked = CheckPullRequest(**job, request, options_.max_pull_bytes);
    if (checked.ok() && !request.latest()) {
      checked = CheckEpoch(**job, request.view_epoch(), "pull");
    }
    if (!checked.ok()) {
      answered = checked;
    } else {
      answered = TryAnswer(**job, request, response);
    }
    if (answered.ok() && !*answered) {
      (*job)->waiters[pull_id] = Waiter{request, response, std::move(done)};
      return;
    }
  }
  done(answered.status());
}

void ParameterStore::ExpirePull(const std::string& job_id, uint64_t pull_id) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(job_id);
  if (!job.ok()) return;
  PullDone done;
  std::string why;
  int64_t step = 0;
  {
    absl::MutexLock lock(&(*job)->mu);
    auto it = (*job)->waiters.find(pull_id);
    if (it == (*job)->waiters.end()) return;  // answered already
    const PullRequest& request = it->second.request;
    step = request.step();
    for (int32_t id : request.partition_ids()) {
      auto part = (*job)->partitions.find(id);
      if (part == (*job)->partitions.end()) continue;
      const PartitionState& state = part->second;
      if (state.async) {
        if (!AsyncReady(id, state, request, &why)) break;
      } else if (state.step < request.step()) {
        why = absl::StrCat("partition ", id, " is at step ", state.step,
                           " (waiting for other workers' pushes)");
        break;
      }
    }
    done = std::move(it->second.done);
    (*job)->waiters.erase(it);
  }
  done(absl::DeadlineExceededError(
      absl::StrCat("pull of step ", step, " not answered before the deadline: ",
                   why.empty() ? "still waiting" : why)));
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
      ExpirePull(request.job_id(), id);
    } else if (is_cancelled()) {
      CancelPull(request.job_id(), id,
                 absl::CancelledError("pull cancelled by client"));
    }
  }
  return result;
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
      roles[shard].role = job->roles[shard].role == Role::kJoining
                              ? Role::kJoining
                              : Role::kNone;
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
        role.role = Role::kPrimary;
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
        if (old.role == Role::kPrimary) {
          for (const std::string& joiner : old.joiners) {
            if (std::count(role.backups.begin(), role.backups.end(), joiner) == 0) {
              role.joiners.insert(joiner);
            }
          }
        }
      } else {
        role.role = job->roles[replicas.shard()].role == Role::kJoining &&
                            !AllInstalled(*job, replicas.shard())
                        ? Role::kJoining
                        : Role::kBackup;
      }
    }
    job->view_epoch = view.epoch();
    job->roles = std::move(roles);
    bool advanced = false;
    for (auto& [id, state] : job->partitions) {
      const ShardRole& role = job->roles[state.shard];
      if (role.role != Role::kPrimary) {
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
                job->roles[part->second.shard].role != Role::kPrimary;
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
      auto it = job->partitions.find(g.partition_id());
      if (it == job->partitions.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("gradients[", i, "].partition_id: partition ",
                         g.partition_id(), " is not held by this server"));
      }
      const PartitionState& state = it->second;
      const Role role = job->roles[state.shard].role;
      if (role == Role::kPrimary && request.view_epoch() == job->view_epoch) {
        return absl::FailedPreconditionError(absl::StrCat(
            "partition ", g.partition_id(), ": this server is its primary in "
            "epoch ", job->view_epoch, "; it takes no replication"));
      }
      if (role == Role::kNone) {
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

absl::Status ParameterStore::CheckReplica(Job* job,
                                          const ReplicateRequest& request) {
  if (request.checksums_size() != 0 &&
      request.checksums_size() != request.gradients_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checksums: ", request.checksums_size(), " given for ",
        request.gradients_size(), " gradients"));
  }
  for (int i = 0; i < request.gradients_size(); ++i) {
    const int32_t id = request.gradients(i).partition_id();
    PartitionState& state = job->partitions[id];
    if (!state.diverged.empty()) return absl::DataLossError(state.diverged);
    if (request.checksums_size() == 0 || request.step() != state.step) continue;
    replica_checks_.fetch_add(1, std::memory_order_relaxed);
    const uint32_t own = StateChecksum(state);
    if (own == request.checksums(i)) {
      state.verified_step = std::max(state.verified_step, request.step());
      continue;
    }
    state.diverged = absl::StrFormat(
        "replica check: job %s, shard %d, partition %d at step %d: this "
        "backup's state has checksum crc32:%08x, its primary's crc32:%08x; "
        "it needs a state transfer",
        Quote(job->id), state.shard, id, request.step(), own,
        request.checksums(i));
    replica_mismatches_.fetch_add(1, std::memory_order_relaxed);
    Log()->error("{}", state.diverged);
    return absl::DataLossError(state.diverged);
  }
  return absl::OkStatus();
}

ParameterStore::ReplicaCheckCounts ParameterStore::ReplicaChecks() const {
  ReplicaCheckCounts counts;
  counts.checks = replica_checks_.load(std::memory_order_relaxed);
  counts.mismatches = replica_mismatches_.load(std::memory_order_relaxed);
  return counts;
}

void ParameterStore::MaybeCorruptForTest(const Job& job, int32_t partition_id,
                                         PartitionState* state) {
  if (!options_.test_corrupt_backup_at_step.has_value() ||
      state->step != *options_.test_corrupt_backup_at_step ||
      state->weights.empty()) {
    return;
  }
  state->weights[0] += 1.0f;
  Log()->warn("job {}: shard {}: partition {}: TEST HOOK "
              "--test_corrupt_backup_at_step: this backup changed its weights "
              "at step {} behind its primary's back",
              Quote(job.id), state->shard, partition_id, state->step);
}

absl::Status ParameterStore::InstallPartition(
    const InstallPartitionRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(request.job_id()));
  absl::MutexLock lock(&job->mu);
  if (request.view_epoch() < job->view_epoch) {
    return absl::AbortedError(absl::StrCat(
        "view_epoch: state transfer from epoch ", request.view_epoch(),
        ", this server is in epoch ", job->view_epoch, " (fenced)"));
  }
  auto it = job->partitions.find(request.partition_id());
  if (it == job->partitions.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("partition_id: partition ", request.partition_id(),
                     " is not held by this server"));
  }
  PartitionState& state = it->second;
  const Role role = job->roles[state.shard].role;
  if (role == Role::kPrimary) {
    return absl::FailedPreconditionError(absl::StrCat(
        "partition_id: this server is the primary of partition ",
        request.partition_id(), "; its state is not replaced"));
  }
  PSD_RETURN_IF_ERROR(CheckFloat32(request.weights(), state.num_elements,
                                   "weights"));
  PSD_RETURN_IF_ERROR(CheckFloat32(
      request.slots(), static_cast<int64_t>(state.slots.size()), "slots"));
  if (request.step() < 0) {
    return absl::InvalidArgumentError("step: must be >= 0");
  }
  if (state.async && request.clocks_size() != job->config.workers()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "clocks: ", request.clocks_size(), " given, the job has ",
        job->config.workers(), " worker ranks"));
  }
  if (state.async) {
    state.clocks.assign(request.clocks().begin(), request.clocks().end());
    state.accepted = state.clocks;
    state.queued_count = 0;
  }
  const float* w = Float32Data(request.weights());
  state.weights.assign(w, w + state.num_elements);
  const float* v = Float32Data(request.slots());
  state.slots.assign(v, v + state.slots.size());
  state.step = request.step();
  state.previous_step.reset();
  state.replicating = false;
  state.awaiting.clear();
  state.received.assign(state.received.size(), false);
  state.received_count = 0;
  state.installing = false;
  state.diverged.clear();
  job->view_epoch = std::max(job->view_epoch, request.view_epoch());
  return absl::OkStatus();
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
        if (status.code() == absl::StatusCode::kFailedPrecondition ||
            status.code() == absl::StatusCode::kDataLoss || stalled) {
          BackupFailure failure;
          failure.set_job_id(job->id);
          failure.set_shard(state.shard);
          failure.set_address(task.address);
          failure.set_error(
              stalled && status.code() != absl::StatusCode::kFailedPrecondition &&
                      status.code() != absl::StatusCode::kDataLoss
                  ? absl::StrCat("has not applied step ", state.step, " for ",
                                 absl::ToInt64Milliseconds(waited), " ms (",
                                 status.message(), ")")
                  : std::string(status.message()));
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

absl::StatusOr<std::vector<int32_t>> ParameterStore::AddJoiner(
    const std::string& job_id, int32_t shard, const std::string& address) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  std::vector<ReplicationTask> tasks;
  std::vector<int32_t> ids;
  {
    absl::MutexLock lock(&job->mu);
    auto role = job->roles.find(shard);
    if (role == job->roles.end() || role->second.role != Role::kPrimary) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard: this server is not the primary of shard ", shard, " of job \"",
          job_id, "\" in epoch ", job->view_epoch));
    }
    role->second.joiners.insert(address);
    for (auto& [id, state] : job->partitions) {
      if (state.shard != shard) continue;
      ids.push_back(id);
      if (!state.replicating || state.awaiting.count(address)) continue;
      // The step in flight goes to the joiner too, after its state (at this
      // step) is installed there.
      state.awaiting.insert(address);
      tasks.push_back(
          ReplicationTask{address, MakeReplicate(*job, id, state,
                                                 options_.replica_check_every_steps)});
    }
  }
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  Settle(&completions, &snapshots, &tasks);
  return ids;
}

absl::StatusOr<InstallPartitionRequest> ParameterStore::CopyPartition(
    const std::string& job_id, int32_t partition_id) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(job_id));
  absl::MutexLock lock(&job->mu);
  auto it = job->partitions.find(partition_id);
  if (it == job->partitions.end()) {
    return absl::NotFoundError(absl::StrCat("partition ", partition_id,
                                            " is not held by this server"));
  }
  const PartitionState& state = it->second;
  InstallPartitionRequest request;
  request.set_job_id(job_id);
  request.set_view_epoch(job->view_epoch);
  request.set_partition_id(partition_id);
  // While a step is replicated the state is the one before it; the joiner
  // gets that step by replication after this.
  request.set_step(state.step);
  EncodeFloat32(state.weights.data(), state.num_elements,
                request.mutable_weights());
  EncodeFloat32(state.slots.data(), static_cast<int64_t>(state.slots.size()),
                request.mutable_slots());
  for (int64_t c : state.clocks) request.add_clocks(c);  // ASP/SSP only
  return request;
}

void ParameterStore::RemoveJoiner(const std::string& job_id, int32_t shard,
                                  const std::string& address) {
  absl::StatusOr<std::shared_ptr<Job>> job = FindJob(job_id);
  if (!job.ok()) return;
  Completions completions;
  std::vector<ShardSnapshot> snapshots;
  std::vector<ReplicationTask> tasks;
  {
    absl::MutexLock lock(&(*job)->mu);
    auto role = (*job)->roles.find(shard);
    if (role == (*job)->roles.end()) return;
    role->second.joiners.erase(address);
    bool advanced = false;
    for (auto& [id, state] : (*job)->partitions) {
      if (state.shard != shard || !state.replicating) continue;
      if (state.awaiting.erase(address) && state.awaiting.empty()) {
        ApplyStep(job->get(), id, &state, &snapshots);
        StartQueued(job->get(), id, &state, &snapshots, &tasks);
        advanced = true;
      }
    }
    if (advanced) AnswerWaiters(job->get(), &completions);
  }
  Settle(&completions, &snapshots, &tasks);
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
        role.role = Role::kNone;
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

std::vector<BackupFailure> ParameterStore::TakeBackupFailures() {
  absl::MutexLock lock(&mu_);
  std::vector<BackupFailure> failures;
  failures.swap(backup_failures_);
  return failures;
}

}  // namespace psd
