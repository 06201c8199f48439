// ParameterStore's pull path: a pull is checked (CheckPullRequest), answered
// at once when its partitions' rules (consistency_rule.h) allow it
// (TryAnswer), or kept as a waiter, holding no thread, until an update
// makes it readable (AnswerWaiters), its deadline passes (ExpirePull) or it
// is cancelled (CancelPull).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/tensor.h"
#include "server/ps/consistency_rule.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"

namespace psd {

namespace {

// Answers `request` from the job's current state if it can. Returns true
// when *response is filled, false when the step is not reached yet, or the
// error that ends the pull.
//
// Answers the pull into *response when every partition it reads is
// readable by its consistency model (ConsistencyRule::Readable; BSP: the
// partition reached the step, or keeps it as its previous one; ASP/SSP:
// the rank's own pushes applied and, under SSP, the staleness bound), or
// latest is set. Returns false when it must wait, an error when it never
// can.
absl::StatusOr<bool> TryAnswer(ParameterStore::Job& job,
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
    PSD_ASSIGN_OR_RETURN(
        const bool readable,
        RuleOf(state).Readable(it->first, state, request, nullptr));
    ready = ready && readable;
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
    const PullRead read = RuleOf(state).Read(state, request, rank_valid);
    lowest = std::min(lowest, read.step);
    if (read.clock.has_value()) clock = std::min(clock, *read.clock);
    if (read.staleness.has_value()) {
      staleness = std::max(staleness, *read.staleness);
    }
    PartitionTensor* out = response->add_parameters();
    out->set_partition_id(id);
    if (request.dtype() == BFLOAT16) {
      EncodeBfloat16(read.weights->data(), state.num_elements,
                     out->mutable_tensor());
    } else {
      EncodeFloat32(read.weights->data(), state.num_elements,
                    out->mutable_tensor());
    }
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

}  // namespace

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
  if (request.dtype() != DTYPE_UNSPECIFIED && request.dtype() != FLOAT32 &&
      request.dtype() != BFLOAT16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: want FLOAT32 or BFLOAT16, got ", DType_Name(request.dtype())));
  }
  if (request.dtype() == BFLOAT16 && request.has_shared_region()) {
    return absl::InvalidArgumentError(
        "dtype: BFLOAT16 cannot be pulled through shared_region (a shared "
        "slice holds FLOAT32); pull FLOAT32 there");
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
      const absl::StatusOr<bool> readable =
          RuleOf(state).Readable(id, state, request, &why);
      if (readable.ok() && !*readable) break;
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

}  // namespace psd
