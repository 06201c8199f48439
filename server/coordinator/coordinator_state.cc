// CoordinatorState's frame: construction and shutdown, Start (loading the
// persisted jobs), the persistence of job records, and the scheduler loop
// that drives the other parts (registration.cc, views.cc, jobs.cc,
// job_scheduler.cc, job_recovery.cc, job_progress.cc,
// snapshot_schedule.cc).
#include "server/coordinator/coordinator_state.h"

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/status.h"

namespace psd {

CoordinatorState::CoordinatorState(CoordinatorOptions options)
    : options_(std::move(options)) {}

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
      if (job.status.state() == PENDING && job.assignment.servers_size() > 0) {
        // A start attempt was under way when the coordinator stopped: its
        // servers drop what it created (fenced by its epoch), and the job
        // starts again from scratch.
        Log()->warn("job {}: a start attempt (view epoch {}) was under way "
                    "when the coordinator stopped: undoing it",
                    id, job.assignment.view_epoch());
        drops_.push_back(PendingDrop{job.assignment, false, false,
                                     job.assignment.view_epoch()});
        ClearStartAttempt(&job);
        MarkDirty(job);
      }
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
    RunMoves();
    RunDrops();
    TimedSnapshots();
    SaveDirty();
  }
}

}  // namespace psd
