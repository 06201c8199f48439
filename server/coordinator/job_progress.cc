// CoordinatorState, progress: the workers' progress reports, the clocks and
// checks the servers report, and the progress watch that replaces a rank
// that makes none.
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/process.h"

namespace psd {

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
  if (!members_.workers().count(request.member_id())) {
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
  if (request.released()) {
    ReleaseRankLocked(&job, request.member_id(), rank, request.step(),
                      request.leaving());
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
    result->set_test_log_loss(request.test_log_loss());
    result->set_test_auc(request.test_auc());
    result->set_elapsed_seconds(elapsed);
    job.status.set_test_accuracy(request.test_accuracy());
    job.status.set_test_log_loss(request.test_log_loss());
    job.status.set_test_auc(request.test_auc());
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
    // Elastic jobs have no progress watch yet: a worker there holds
    // several ranks, and ranks stop for a moment as they change hands.
    if (job.status.state() != RUNNING || IsElastic(job.status.config()) ||
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
      AddStall(&job.status,
               absl::StrCat("rank ", r, " (", worker, ") made no progress for ",
                            absl::ToInt64Milliseconds(now - watch.behind_since),
                            " ms at clock ", clock, ", replaced"));
      ++job.version;
      MarkDirty(job);
      auto member = members_.workers().find(worker);
      if (member != members_.workers().end()) {
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

void CoordinatorState::AddStall(JobStatus* status, std::string line) {
  status->add_stalls(std::move(line));
  if (status->stalls_size() > 10) {  // keep the newest 10
    status->mutable_stalls()->DeleteSubrange(0, 1);
  }
}

}  // namespace psd
