// CoordinatorState, membership of a job's ranks (issue 16, "Elastic jobs"
// in docs/ARCHITECTURE.md): which worker holds which rank, ranks released
// at step boundaries and handed on, elastic jobs growing toward max_workers
// and shrinking to min_workers, and the membership epoch and history in the
// job's status.
//
// The rule: an elastic job has max_workers ranks, fixed for its life (the
// servers' BSP step waits for every rank and averages over all of them, and
// rank r's batches are a function of (seed, epoch, r) only). Its workers
// hold the ranks between them, each a balanced share; a rank changes hands
// only at a step boundary: its worker releases it after pushing step s-1
// and reports s, and its next worker starts at s. So every sample of an
// epoch is processed exactly once, by whichever worker holds its rank then,
// and the result does not depend on the membership.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/process.h"
#include "server/coordinator/coordinator_state.h"

namespace psd {

void CoordinatorState::RebalanceLocked(Job* job) {
  const std::string id = job->status.job_id();
  const JobConfig& config = job->status.config();
  // The job's workers (leaving ones hold their ranks until they release
  // them, but count for nothing) and the ranks each holds or is given.
  std::map<std::string, int32_t> load;
  for (const auto& [worker_id, member] : members_.workers()) {
    if (member.job_id == id && !member.leaving) load[worker_id] = 0;
  }
  const int32_t ranks = static_cast<int32_t>(job->worker_ids.size());
  for (int32_t r = 0; r < ranks; ++r) {
    std::string owner = job->worker_ids[r];
    if (auto moving = job->releasing.find(r); moving != job->releasing.end()) {
      owner = moving->second;
    }
    if (auto it = load.find(owner); it != load.end()) ++it->second;
  }
  std::vector<std::pair<MembershipChange::Kind, std::string>> events;
  bool changed = false;
  // Grow: idle workers join, unless a job waits to start (it has them
  // first).
  const bool pending = std::any_of(jobs_.begin(), jobs_.end(), [](auto& j) {
    return j.second.status.state() == PENDING;
  });
  for (auto& [worker_id, member] : members_.workers()) {
    if (pending || static_cast<int32_t>(load.size()) >= MaxWorkers(config)) {
      break;
    }
    if (!member.job_id.empty() || member.leaving || member.stalled_in == id ||
        !member.Trains(config.model())) {
      continue;
    }
    member.job_id = id;
    member.rank = 0;
    load[worker_id] = 0;
    events.emplace_back(MembershipChange::JOINED, worker_id);
    Log()->info("job {}: worker {} joins ({} workers)", id, worker_id,
                load.size());
  }
  const int32_t workers = static_cast<int32_t>(load.size());
  if (workers < MinWorkers(config)) {
    const std::string reason = absl::StrFormat(
        "paused: %d worker(s), fewer than min_workers %d; waiting for idle "
        "workers",
        workers, MinWorkers(config));
    if (job->status.paused_reason() != reason) {
      Log()->warn("job {}: {}", id, reason);
      job->status.set_paused_reason(reason);
      ++job->version;
    }
    if (!events.empty()) MembershipChangedLocked(job, events);
    return;
  }
  if (!job->status.paused_reason().empty()) {
    Log()->info("job {}: {} workers again, resuming", id, workers);
    job->status.clear_paused_reason();
    ++job->version;
  }
  auto least = [&load] {
    return std::min_element(load.begin(), load.end(), [](auto& a, auto& b) {
      return a.second < b.second;
    });
  };
  // Free ranks (their worker died or left) go to the least loaded workers.
  for (int32_t r = 0; r < ranks; ++r) {
    if (!job->worker_ids[r].empty() || job->releasing.count(r)) continue;
    auto to = least();
    job->worker_ids[r] = to->first;
    ++to->second;
    changed = true;
    Log()->info("job {}: rank {} goes to {} at {}", id, r, to->first,
                job->rank_start.count(r)
                    ? absl::StrCat("step ", job->rank_start[r])
                    : std::string("the step its servers are at"));
  }
  // Balance: the most loaded worker releases a rank to the least loaded
  // until their loads differ by at most one.
  while (true) {
    auto from = std::max_element(load.begin(), load.end(),
                                 [](auto& a, auto& b) { return a.second < b.second; });
    auto to = least();
    if (from->second - to->second <= 1) break;
    int32_t moved = -1;
    for (int32_t r = ranks - 1; r >= 0 && moved < 0; --r) {
      if (job->worker_ids[r] == from->first && !job->releasing.count(r)) moved = r;
    }
    if (moved < 0) break;
    job->releasing[moved] = to->first;
    --from->second;
    ++to->second;
    changed = true;
    Log()->info("job {}: rank {} moves from {} to {} at its next step boundary",
                id, moved, from->first, to->first);
  }
  if (changed || !events.empty()) MembershipChangedLocked(job, events);
}

void CoordinatorState::ReleaseRankLocked(Job* job, const std::string& worker,
                                         int32_t rank, int64_t step,
                                         bool leaving) {
  const std::string id = job->status.job_id();
  job->worker_ids[rank].clear();
  job->rank_start[rank] = step;
  job->resume_ranks.erase(rank);
  std::string to;
  if (auto moving = job->releasing.find(rank); moving != job->releasing.end()) {
    to = moving->second;
    job->releasing.erase(moving);
  }
  auto target = members_.workers().find(to);
  if (!to.empty() && target != members_.workers().end() &&
      target->second.job_id == id && !target->second.leaving) {
    job->worker_ids[rank] = to;
    Log()->info("job {}: rank {} released by {} at step {}, goes to {}", id,
                rank, worker, step, to);
  } else {
    job->ranks_free = true;
    Log()->info("job {}: rank {} released by {} at step {}{}", id, rank,
                worker, step, leaving ? " (leaving)" : "");
  }
  std::vector<std::pair<MembershipChange::Kind, std::string>> events;
  auto member = members_.workers().find(worker);
  if (member != members_.workers().end()) {
    if (leaving) member->second.leaving = true;
    const bool holds_more =
        std::find(job->worker_ids.begin(), job->worker_ids.end(), worker) !=
        job->worker_ids.end();
    if (member->second.leaving && !holds_more) {
      // Gone from the job: its heartbeats get nothing more.
      member->second.job_id.clear();
      events.emplace_back(MembershipChange::LEFT, worker);
      Log()->info("job {}: worker {} left at step {}", id, worker, step);
    }
  }
  MembershipChangedLocked(job, events);
}

void CoordinatorState::MembershipChangedLocked(
    Job* job,
    const std::vector<std::pair<MembershipChange::Kind, std::string>>& events) {
  JobStatus& status = job->status;
  status.set_membership_epoch(status.membership_epoch() + 1);
  status.clear_workers();
  std::map<std::string, JobWorker> by_worker;
  for (const auto& [worker_id, member] : members_.workers()) {
    if (member.job_id == status.job_id()) {
      by_worker[worker_id].set_worker_id(worker_id);
      by_worker[worker_id].set_address(member.address);
    }
  }
  for (int32_t r = 0; r < static_cast<int32_t>(job->worker_ids.size()); ++r) {
    auto it = by_worker.find(job->worker_ids[r]);
    if (it != by_worker.end()) it->second.add_ranks(r);
  }
  for (auto& [worker_id, worker] : by_worker) {
    *status.add_workers() = std::move(worker);
  }
  const double elapsed =
      job->started == absl::Time()
          ? 0.0
          : absl::ToDoubleSeconds(absl::Now() - job->started);
  for (const auto& [kind, worker_id] : events) {
    MembershipChange* change = status.add_membership_history();
    change->set_kind(kind);
    change->set_worker_id(worker_id);
    change->set_membership_epoch(status.membership_epoch());
    change->set_step(status.step());
    change->set_workers(status.workers_size());
    change->set_elapsed_seconds(elapsed);
  }
  constexpr int kKeep = 100;
  if (status.membership_history_size() > kKeep) {
    status.mutable_membership_history()->DeleteSubrange(
        0, status.membership_history_size() - kKeep);
  }
  ++job->version;
  MarkDirty(*job);
}

void CoordinatorState::FillRanksLocked(const Job& job,
                                       const std::string& worker,
                                       int32_t member_rank,
                                       Assignment* assignment) {
  assignment->set_membership_epoch(job.status.membership_epoch());
  auto start_of = [&job](int32_t r) -> int64_t {
    if (auto it = job.rank_start.find(r); it != job.rank_start.end()) {
      return it->second;
    }
    return job.resume_ranks.count(r) ? -1 : job.start_step;
  };
  if (!IsElastic(job.status.config())) {
    assignment->set_rank(member_rank);
    if (auto it = job.rank_start.find(member_rank); it != job.rank_start.end()) {
      assignment->set_start_step(it->second);  // released there by its worker
    } else {
      assignment->set_resume_from_servers(job.resume_ranks.count(member_rank) > 0);
    }
    return;
  }
  for (int32_t r = 0; r < static_cast<int32_t>(job.worker_ids.size()); ++r) {
    if (job.worker_ids[r] != worker || job.releasing.count(r)) continue;
    if (assignment->ranks_size() == 0) assignment->set_rank(r);
    assignment->add_ranks(r);
    (*assignment->mutable_rank_start_steps())[r] = start_of(r);
  }
}

}  // namespace psd
