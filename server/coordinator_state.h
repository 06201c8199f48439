// The coordinator's state: cluster membership, the cluster view, and jobs.
#ifndef PSD_SERVER_COORDINATOR_STATE_H_
#define PSD_SERVER_COORDINATOR_STATE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/proto.h"

namespace psd {

struct CoordinatorOptions {
  // A member that has not sent a heartbeat for this long is removed from the
  // view, and a running job that used it fails. Default: 3000 ms.
  int heartbeat_timeout_ms = 3000;
  // How often the scheduler looks for jobs to start and expired members.
  // Default: 100 ms.
  int schedule_interval_ms = 100;
  // Deadline of CreateJob/DropJob calls to parameter servers. Default: 10 s.
  int server_call_timeout_ms = 10000;
};

// Membership, the cluster view (epoch grows with every change), and the job
// table. Jobs start in submission order, each once `workers` idle workers
// and at least one server are registered; jobs that fit run side by side.
// Every registered server holds one shard of every job started while it was
// registered (num_shards = number of servers).
//
// Thread-safe. Owns a scheduler thread (started by Start(), stopped by the
// destructor). Never holds its lock across an RPC.
class CoordinatorState {
 public:
  explicit CoordinatorState(CoordinatorOptions options);
  ~CoordinatorState();
  CoordinatorState(const CoordinatorState&) = delete;
  CoordinatorState& operator=(const CoordinatorState&) = delete;

  void Start();

  // Membership. Errors: INVALID_ARGUMENT (no address), FAILED_PRECONDITION
  // (protocol version mismatch).
  absl::StatusOr<RegisterResponse> RegisterServer(const RegisterRequest& request);
  absl::StatusOr<RegisterResponse> RegisterWorker(const RegisterRequest& request);
  // Errors: NOT_FOUND (unknown or expired member: register again).
  absl::StatusOr<HeartbeatResponse> Heartbeat(const HeartbeatRequest& request);
  // Errors: NOT_FOUND (job), FAILED_PRECONDITION (the member does not hold
  // that rank of that job).
  absl::StatusOr<ReportProgressResponse> ReportProgress(
      const ReportProgressRequest& request);
  ClusterView GetClusterView();

  // Jobs. Errors: INVALID_ARGUMENT naming the config field; NOT_FOUND.
  absl::StatusOr<std::string> SubmitJob(const JobConfig& config);
  absl::StatusOr<JobStatus> GetJob(const std::string& job_id);
  std::vector<JobStatus> ListJobs();
  absl::StatusOr<JobStatus> CancelJob(const std::string& job_id);
  // Forgets a finished job and frees what its servers hold. Errors:
  // NOT_FOUND, FAILED_PRECONDITION (not finished).
  absl::Status DeleteJob(const std::string& job_id);

  // Waits up to `timeout` for the job's status to change from the version
  // in *version (-1: return at once). Returns the status and updates
  // *version when it changed, nullopt when it did not. Errors: NOT_FOUND.
  absl::StatusOr<std::optional<JobStatus>> WaitForJobUpdate(
      const std::string& job_id, int64_t* version, absl::Duration timeout);

 private:
  struct Member {
    std::string address;
    absl::Time last_seen;
    // Workers only: the job and rank held, "" when idle.
    std::string job_id;
    int32_t rank = 0;
  };
  struct RankProgress {
    int32_t epoch = 0;
    int64_t step = 0;
    float loss = 0;
    float samples_per_sec = 0;
    bool done = false;
  };
  struct Job {
    JobStatus status;
    // Set once the job starts: what every rank is told (rank filled per
    // worker).
    Assignment assignment;
    std::vector<std::string> worker_ids;  // by rank
    std::vector<RankProgress> ranks;
    absl::Time started;
    bool starting = false;  // servers are being set up
    // Grows with every change of `status`, for WaitForJobUpdate.
    int64_t version = 0;
  };
  // A DropJob to send to a job's servers, outside the lock.
  struct PendingDrop {
    Assignment assignment;
    bool keep_parameters = false;
  };

  absl::StatusOr<RegisterResponse> Register(const RegisterRequest& request,
                                            bool server);
  void SchedulerLoop();
  void ExpireMembers() ABSL_LOCKS_EXCLUDED(mu_);
  void StartPendingJobs() ABSL_LOCKS_EXCLUDED(mu_);
  // After the servers' CreateJob calls: marks the job RUNNING, or FAILED
  // with `error` when one failed.
  void StartJobLocked(Job* job, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a job (state and reason); frees its workers.
  void FinishJob(Job* job, JobState state, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateAggregates(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the queued DropJob calls (no lock held while calling).
  void RunDrops() ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  const CoordinatorOptions options_;

  absl::Mutex mu_;
  int64_t view_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_member_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_job_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Member> servers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Member> workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);
  std::vector<PendingDrop> drops_ ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread scheduler_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_STATE_H_
