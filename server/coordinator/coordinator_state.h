// The coordinator's state: cluster membership, the cluster view, and jobs.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_STATE_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_STATE_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/proto.h"
#include "server/coordinator/coordinator_db.h"
#include "server/coordinator/member_table.h"

namespace psd {

struct CoordinatorOptions {
  // A member that has not sent a heartbeat for this long is removed from the
  // view: a server's shards fail over to their backups (a shard left with no
  // replica fails its job), a worker's rank goes to an idle worker.
  // Default: 1500 ms.
  int heartbeat_timeout_ms = 1500;
  // Replicas of every shard (primary + backups on distinct servers); jobs
  // wait for this many servers. Default: 1 (no backups).
  int replication_factor = 1;
  // How often the scheduler looks for jobs to start and expired members.
  // Default: 100 ms.
  int schedule_interval_ms = 100;
  // Pause detection (docs/OPERATIONS.md, "Failure detection"): a thread
  // wakes every pause_tick_ms; when it wakes later than that by more than
  // pause_threshold_ms, the coordinator itself was stalled (a busy or
  // paused host), heartbeats may have waited unread meanwhile, and every
  // member's silence is shortened by the stall before expiry is judged.
  // Defaults: 50 ms and 200 ms.
  int pause_tick_ms = 50;
  int pause_threshold_ms = 200;
  // Progress watch (docs/OPERATIONS.md, "Progress watch"): a rank of a
  // running job that stays behind the fastest rank, its clock unchanged,
  // for longer than max(progress_floor_ms, progress_step_factor x the job's
  // mean step time) is replaced as a dead one is; its worker stays alive
  // but is never given that job's ranks again. 0 turns the watch off.
  // Defaults: 60 s, 50.
  int progress_floor_ms = 60000;
  int progress_step_factor = 50;
  // Starting a job, its CreateJob and SetView calls to each server are
  // retried with backoff while they fail UNAVAILABLE or DEADLINE_EXCEEDED
  // (both are idempotent), for up to this long; then the start attempt has
  // failed (see job_start_attempts). Default: 20 s.
  int control_call_budget_ms = 20000;
  // Starting a job (docs/OPERATIONS.md, "Starting a job"): a failed start
  // attempt (a server's CreateJob or SetView failed) is undone (DropJob
  // fenced by the attempt's view epoch), its workers are released, and the
  // job is PENDING again with a pending_reason naming the server, the error
  // and the attempt. The server is left out of placements for
  // start_failure_cooldown_ms while at least replication_factor other
  // servers are registered, and the job is tried again at once without it;
  // with fewer, the job waits job_start_backoff_ms (doubling per failed
  // attempt, at most 30 s) and is tried again on every server. Past
  // job_start_attempts failed attempts the job FAILS with every attempt's
  // error. An INVALID_ARGUMENT answer (a config every server refuses)
  // fails it at once. Defaults: 5, 60 s, 1 s.
  int job_start_attempts = 5;
  int start_failure_cooldown_ms = 60000;
  int job_start_backoff_ms = 1000;
  // Deadline of CreateJob/DropJob calls to parameter servers. Default: 10 s.
  int server_call_timeout_ms = 10000;
  // How long a RECOVERING job waits for the servers that held its shards
  // (known by their data directories' uids) to register again. Past it, the
  // job resumes without the missing ones when every shard still has a
  // replica back, and FAILS naming each shard that has none otherwise. (It
  // resumes without them sooner once as many servers are registered as
  // the job had: a lost disk comes back with a new uid.) Default: 300 s.
  int recovery_timeout_ms = 300000;
  // Jobs held, in every state, until DeleteJob forgets them; SubmitJob
  // past it gets RESOURCE_EXHAUSTED. Default: 1000.
  int max_jobs = 1000;
  // Where jobs persist (not owned; must outlive the state). Null: in memory
  // only. With it, a restarted coordinator resumes its jobs: see Start().
  CoordinatorDb* db = nullptr;
};

// Membership, the cluster view (epoch grows with every change), and the job
// table. Jobs start in submission order, each once `workers` idle workers
// and replication_factor servers are registered; jobs that fit run side by
// side. Backfill: a job asking for more workers than are registered does
// not hold up later jobs that fit; a job that the registered workers could
// run but that waits for busy ones does (so it is never starved). A pending
// job's status says why it waits (JobStatus.pending_reason). A job has one
// shard per server registered when it started (less those cooling down
// after a failed start, see CoordinatorOptions.job_start_attempts); shard
// k's primary is the k-th server and its backups the next R-1 (round robin).
//
// Failover: when a server's heartbeats stop, each shard it was primary of
// gets as primary the backup with the most steps applied (asked with
// GetServerStatus); backups behind it leave the view; the new view (epoch
// + 1) goes to the job's servers (SetView) and its workers (heartbeats).
// Re-join: a shard with fewer than R replicas gets a server that holds none
// of it (a restarted or new one first): CreateJob (joining), then the
// primary's SyncBackup (state transfer), then a view with it as a backup.
// A worker's rank whose heartbeats stop goes to an idle worker, which
// resumes at the step the servers are at.
//
// Thread-safe. Owns a scheduler thread (started by Start(), stopped by the
// destructor) and the member table (MemberTable, under the same lock as the
// jobs). Never holds its lock across an RPC. The implementation is one file
// per concern: registration.cc (membership), views.cc (views, failover,
// replica repair), jobs.cc, job_scheduler.cc, job_recovery.cc,
// job_progress.cc, snapshot_schedule.cc, and coordinator_state.cc (start,
// persistence, the scheduler loop).
class CoordinatorState {
 public:
  explicit CoordinatorState(CoordinatorOptions options);
  ~CoordinatorState();
  CoordinatorState(const CoordinatorState&) = delete;
  CoordinatorState& operator=(const CoordinatorState&) = delete;

  // Loads the persisted jobs (when options.db is set) and starts the
  // scheduler. A job that was RUNNING becomes RECOVERING: once every server
  // that held a shard of it (known by its data directory's uid) registers
  // again, it runs on, either from the servers' memory (only the coordinator
  // restarted) or from their newest common snapshot, with idle workers
  // taking its ranks at that step. Servers that do not come back (a lost
  // disk), or come back without any snapshot of the job, are left out
  // while every shard has another replica, and brought back as backups by
  // state transfer; see CoordinatorOptions.recovery_timeout_ms. Errors:
  // DATA_LOSS from the database.
  absl::Status Start();

  // Membership. Errors: INVALID_ARGUMENT (no address), FAILED_PRECONDITION
  // (protocol version mismatch).
  // `identity`: the URI of the certificate the server called with (mutual
  // TLS), recorded as its ServerInfo.identity; empty in plaintext.
  absl::StatusOr<RegisterResponse> RegisterServer(const RegisterRequest& request,
                                                  const std::string& identity = "");
  absl::StatusOr<RegisterResponse> RegisterWorker(const RegisterRequest& request);
  // Errors: NOT_FOUND (unknown or expired member: register again).
  absl::StatusOr<HeartbeatResponse> Heartbeat(const HeartbeatRequest& request);
  // Errors: NOT_FOUND (job), FAILED_PRECONDITION (the member does not hold
  // that rank of that job).
  absl::StatusOr<ReportProgressResponse> ReportProgress(
      const ReportProgressRequest& request);
  ClusterView GetClusterView();

  // Jobs. Errors: INVALID_ARGUMENT naming the config field; NOT_FOUND;
  // SubmitJob: RESOURCE_EXHAUSTED past CoordinatorOptions.max_jobs.
  // `submitted_by`: JobStatus.submitted_by (empty in plaintext).
  absl::StatusOr<std::string> SubmitJob(const JobConfig& config,
                                        const std::string& submitted_by = "");
  absl::StatusOr<JobStatus> GetJob(const std::string& job_id);
  std::vector<JobStatus> ListJobs();
  absl::StatusOr<JobStatus> CancelJob(const std::string& job_id);
  // Asks every server of a running job to snapshot it at one step boundary
  // a little ahead of its most advanced partition; returns that step.
  // Errors: NOT_FOUND, FAILED_PRECONDITION (not RUNNING, about to finish, a
  // server without --data_dir), or a server's error naming it.
  absl::StatusOr<int64_t> SnapshotJob(const std::string& job_id);

  // Live resharding (JobService.ReshardJob, proto/coordinator.proto):
  // plans the replica moves (reshard_plan.h) and queues them in
  // JobStatus.pending_moves; the scheduler carries them out (RunMoves).
  // Errors: NOT_FOUND (job), FAILED_PRECONDITION (not RUNNING, moves still
  // pending), and PlanReshard's.
  absl::StatusOr<ReshardJobResponse> ReshardJob(const ReshardJobRequest& request);

  // Forgets a finished job and frees what its servers hold. Errors:
  // NOT_FOUND, FAILED_PRECONDITION (not finished).
  absl::Status DeleteJob(const std::string& job_id);

  // Waits up to `timeout` for the job's status to change from the version
  // in *version (-1: return at once). Returns the status and updates
  // *version when it changed, nullopt when it did not. Errors: NOT_FOUND.
  absl::StatusOr<std::optional<JobStatus>> WaitForJobUpdate(
      const std::string& job_id, int64_t* version, absl::Duration timeout);

 private:
  using Member = MemberTable::Member;
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
    // The first step the current ranks train (0, or the recovery step).
    int64_t start_step = 0;
    // Restored from snapshots: its ranks go to idle workers.
    bool ranks_free = false;
    // When the last time-based snapshot was asked for.
    absl::Time last_timed_snapshot;
    // Shards whose primary died (shard -> its server id), awaiting
    // RunFailovers.
    std::map<int32_t, std::string> orphaned;
    // A backup being brought in by RepairReplicas, or a replica moved by
    // RunMoves (one state transfer at a time).
    bool repairing = false;
    // Servers drained from the job (ReshardJob.drain_servers, until a later
    // ReshardJob adds them): RepairReplicas never brings them back in.
    std::set<std::string> drained;
    // Ranks whose worker died: their next worker reads its step from the
    // servers (Assignment.resume_from_servers).
    std::set<int32_t> resume_ranks;
    // The latest clocks each server reported (by server id), and when.
    std::map<std::string, std::pair<JobClocks, absl::Time>> clocks;
    // Per rank, for WatchProgress: its clock when last seen to change, and
    // since when it has been behind the fastest rank at that clock.
    struct RankWatch {
      int64_t clock = -1;
      absl::Time behind_since = absl::InfiniteFuture();
    };
    std::vector<RankWatch> watch;
    // RECOVERING since (this coordinator's run): for recovery_timeout_ms.
    absl::Time recovering_since;
    // Failed start attempts (this coordinator's run), each one's error,
    // what the pending reason says of them, and (a job waiting for servers
    // after one) when it may be tried again.
    std::vector<std::string> start_errors;
    std::string start_reason;
    absl::Time start_not_before;
    // Membership (elastic.cc). Ranks released at a step boundary by their
    // worker (it left, or the rank moved): rank -> the step its next worker
    // starts at.
    std::map<int32_t, int64_t> rank_start;
    // Elastic jobs: ranks being moved, rank -> the worker that takes it once
    // its holder released it ("": whoever needs it then).
    std::map<int32_t, std::string> releasing;
  };
  // A DropJob to send to a job's servers, outside the lock.
  struct PendingDrop {
    Assignment assignment;
    bool keep_parameters = false;
    bool delete_snapshots = false;
    // > 0: undoes the start attempt of this view epoch only
    // (DropJobRequest.view_epoch); 0: drops whatever the servers hold.
    int64_t view_epoch = 0;
  };

  // The table memory the servers `server_ids` state, summed
  // (RegisterRequest.table_memory_bytes); 0 (no bound) when any of them
  // states none, or for no servers (job_scheduler.cc).
  int64_t TableMemoryLocked(const std::vector<std::string>& server_ids) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Start and persistence (coordinator_state.cc).
  void SchedulerLoop();
  // The job record to persist. REQUIRES: mu_ held.
  JobRecord Record(const Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the job for saving by the scheduler thread (progress, states).
  void MarkDirty(const Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Saves the jobs marked dirty (no lock held while writing).
  void SaveDirty() ABSL_LOCKS_EXCLUDED(mu_);

  // Membership (registration.cc).
  absl::StatusOr<RegisterResponse> Register(const RegisterRequest& request,
                                            bool server,
                                            const std::string& identity);
  void ExpireMembers() ABSL_LOCKS_EXCLUDED(mu_);
  // The pause monitor's loop (see CoordinatorOptions.pause_threshold_ms).
  void PauseMonitorLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // A member failed (`why`, for the log): a server's shards lose it (the
  // primaries' fail over, RunFailovers), a worker's ranks are freed for
  // idle workers. Removes it from the members. No-op for an unknown id.
  void RemoveMemberLocked(bool server, const std::string& id,
                          const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Cluster views, failover and replica repair (views.cc).
  // Promotes backups of the shards whose primary died (see the class
  // comment), then sends the new view.
  void RunFailovers() ABSL_LOCKS_EXCLUDED(mu_);
  // Brings one shard short of replicas back to R (one per call).
  void RepairReplicas() ABSL_LOCKS_EXCLUDED(mu_);
  // State transfer of `shard` to a server joining it as a backup: its
  // CreateJob (joining, at the assignment's view epoch), then the primary's
  // SyncBackup, which returns once the joiner is in sync (resharding.cc).
  grpc::Status TransferShard(const Assignment& assignment, int32_t shard,
                             const std::string& joiner_address,
                             const std::string& primary_address,
                             SyncBackupResponse* synced)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Live resharding (resharding.cc): carries out the first pending
  // ReplicaMove of a running job (one state transfer at a time, shared
  // with RepairReplicas), then the view change that switches it.
  void RunMoves() ABSL_LOCKS_EXCLUDED(mu_);
  // A new view for the job: bumps the epoch, keeps assignment.servers to
  // the servers the shards use, mirrors it in the status, persists it.
  void NewViewLocked(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the views of views_to_send_ to their servers (SetView); logs
  // failures.
  void SendViews() ABSL_LOCKS_EXCLUDED(mu_);
  // Sends the assignment's view to its servers, each call retried while
  // UNAVAILABLE or DEADLINE_EXCEEDED for up to `budget` (0: one attempt);
  // returns the first error, and its server's id in *failed_server when
  // given.
  std::string SendViewTo(const Assignment& assignment,
                         std::chrono::milliseconds budget,
                         std::string* failed_server = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The job table (jobs.cc).
  // Ends a job (state and reason); frees its workers.
  void FinishJob(Job* job, JobState state, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the queued DropJob calls (no lock held while calling).
  void RunDrops() ABSL_LOCKS_EXCLUDED(mu_);

  // Scheduling (job_scheduler.cc).
  void StartPendingJobs() ABSL_LOCKS_EXCLUDED(mu_);
  // After the servers' CreateJob and SetView calls: marks the job RUNNING;
  // or, when `error` (from server `failed_server`; `retryable` unless the
  // server refused the request as INVALID_ARGUMENT) is set, undoes the
  // attempt and makes the job PENDING again, or FAILED past the attempts
  // (see CoordinatorOptions.job_start_attempts).
  void StartJobLocked(Job* job, const std::string& error,
                      const std::string& failed_server, bool retryable)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets an undone start attempt's placement (assignment and status),
  // keeping the assignment's view epoch, so that epochs grow across
  // attempts and restarts.
  static void ClearStartAttempt(Job* job);
  // Sets the job's status.pending_reason; a change is a new status version.
  void SetPendingReasonLocked(Job* job, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The PENDING job to start now given the idle workers (job order with
  // backfill, see the class comment; a job counts only the workers that
  // train its model kind), "" if none; sets every pending job's
  // pending_reason.
  std::string NextJobToStartLocked(const std::vector<std::string>& idle)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The workers of `ids` that train `model`'s kind (RegisterRequest.
  // model_kinds), in order.
  std::vector<std::string> WorkersFor(const ModelSpec& model,
                                      const std::vector<std::string>& ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives idle workers the free ranks of running jobs (after a recovery);
  // rebalances elastic jobs (RebalanceLocked).
  void AssignFreeRanks() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Membership of a job's ranks (elastic.cc; see "Elastic jobs" in
  // docs/ARCHITECTURE.md).
  // An elastic job: idle workers join while it has fewer than max_workers;
  // with fewer than min_workers it pauses (status.paused_reason); otherwise
  // free ranks go to the least loaded workers, and ranks move (released at
  // a step boundary first) until loads differ by at most one.
  void RebalanceLocked(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `worker` stopped training `rank` at `step` (ReportProgressRequest.
  // released): the rank goes to the worker it was moving to, or is free,
  // starting at `step`. `leaving`: the worker takes no more ranks.
  void ReleaseRankLocked(Job* job, const std::string& worker, int32_t rank,
                         int64_t step, bool leaving)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a change of who holds which rank: a new membership epoch, the
  // status's workers, and `events` (kind, worker) added to its history.
  void MembershipChangedLocked(
      Job* job,
      const std::vector<std::pair<MembershipChange::Kind, std::string>>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a heartbeat tells `worker` of its ranks in the job: the rank, its
  // start (a step, or from the servers), the membership epoch; for an
  // elastic job every rank it holds (Assignment.ranks).
  void FillRanksLocked(const Job& job, const std::string& worker,
                       int32_t member_rank, Assignment* assignment)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Recovery after a restart (job_recovery.cc).
  // Brings RECOVERING jobs back once their servers are registered.
  void RecoverJobs() ABSL_LOCKS_EXCLUDED(mu_);
  // Restores the job's shards from the servers' newest common snapshot (no
  // lock held). A server with no snapshot of the job (ListSnapshots empty
  // or NOT_FOUND) while others have some leaves *assignment (its shards
  // keep their other replicas; RepairReplicas brings it back). Returns the
  // step, or the reason it cannot, naming the shard. With `max_step`, at
  // or before it, dropping what an earlier call restored first (a sparse
  // job whose tables lack the step found before).
  absl::StatusOr<int64_t> RestoreFromSnapshots(Assignment* assignment,
                                               int64_t max_step = INT64_MAX);
  // A sparse job resumed from snapshots: its tables at the same step as
  // its dense part (sparse_tables.h, RestoreJobTables) on the new replica
  // sets, recomputing assignment->table_replicas; where a table shard
  // lacks that step, the dense part is restored again at an older one.
  // Returns the step, or why it cannot (an ASP sparse job: its tables
  // have no step snapshots).
  absl::StatusOr<int64_t> RestoreSparseTables(Assignment* assignment,
                                              int64_t step);

  // Progress (job_progress.cc).
  void UpdateAggregates(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the status's worker_clocks, max_staleness and staleness_counts
  // from the servers' reports of the last heartbeat timeout.
  void UpdateClocks(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Raises the status's replicas_verified_step to the oldest one the
  // shards' primaries reported (in `clocks`), once every primary did.
  void UpdateVerifiedStep(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Progress, not only liveness: a rank whose clock stays behind the
  // fastest rank's for longer than ProgressBound(job) loses its worker, the
  // same as a dead one (see CoordinatorOptions.progress_floor_ms).
  void WatchProgress() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration ProgressBound(const Job& job) const;
  // Adds `line` to JobStatus.stalls (a stalled rank or backup), keeping the
  // newest 10. The caller saves the job (a new version).
  static void AddStall(JobStatus* status, std::string line);

  // Snapshots (snapshot_schedule.cc).
  // Asks for the snapshots due by the jobs' snapshot.every_seconds.
  void TimedSnapshots() ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  const CoordinatorOptions options_;

  absl::Mutex mu_;
  int64_t view_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  // The registered servers and workers.
  MemberTable members_ ABSL_GUARDED_BY(mu_);
  int64_t next_job_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);
  std::vector<PendingDrop> drops_ ABSL_GUARDED_BY(mu_);
  // Jobs whose view changed and must be sent to their servers.
  std::set<std::string> views_to_send_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dirty_ ABSL_GUARDED_BY(mu_);
  // Servers that failed a job start (by id), and until when they are left
  // out of placements (CoordinatorOptions.start_failure_cooldown_ms).
  std::map<std::string, absl::Time> start_cooldown_ ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread scheduler_;
  std::thread pause_monitor_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_STATE_H_
