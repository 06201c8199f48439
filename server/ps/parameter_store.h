// The parameter store of one psd_server: the partitions it holds for each
// job, their optimizer state, and the BSP, ASP and SSP update logic.
#ifndef PSD_SERVER_PS_PARAMETER_STORE_H_
#define PSD_SERVER_PS_PARAMETER_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/proto.h"

namespace psd {

// Holds jobs' partitions (dense float32) and applies updates under BSP:
// a partition at step s collects the gradients of step s from every worker
// rank; when the last one arrives they are summed in rank order (0, 1, ...),
// divided by the number of workers, and applied once with the job's
// optimizer, and the partition moves to step s + 1. So the result does not
// depend on the order pushes arrive in (DESIGN invariant 4).
//
// Pushes are idempotent in (job, rank, step): a push for a step already
// applied, or one already received, is acknowledged as a duplicate and
// changes nothing (invariant 1). A push is validated whole (shapes, dtype,
// finite values, partitions held, step) before any of it is taken.
//
// Replication (DESIGN invariants 2 and 3): each shard held is in a role set
// by the coordinator's view (SetView): PRIMARY, BACKUP, JOINING (state
// transfer pending) or NONE. Pushes and pulls go to the primary only. When a
// primary's partition has every rank's gradient of step s, it sends the
// averaged gradient to every backup of its shard (ReplicationTask, through
// options.replicate) and applies it itself, making step s + 1 pullable, only
// once all of them acknowledged (OnReplicated). A backup applies the same
// averaged gradient with the same optimizer code, so replicas stay bitwise
// equal. Every push, pull and replication message carries the view epoch;
// a server refuses those of an older epoch (ABORTED), so a replaced primary
// cannot complete a step. A partition also keeps its previous step's
// weights, so that a replacement worker can recompute a step that some
// partitions applied already (its dead predecessor pushed part of it).
//
// ASP and SSP (JobConfig.consistency; see "Consistency models" in
// docs/ARCHITECTURE.md). Each partition keeps, per worker rank, its clock:
// the number of that rank's pushes applied (committed: replicated to every
// backup and applied). A rank's push of step c is taken only when c is the
// next step of that rank (c < that: a duplicate, acknowledged and ignored;
// c > that: FAILED_PRECONDITION), so no push is applied twice. A taken push
// is scaled by 1/workers and becomes one optimizer update at once when the
// partition is not replicating one; otherwise it is added (in arrival
// order) to the queued update, which starts when the one in flight is
// applied. An update is replicated (ReplicateRequest with the update's
// float bits, its step = the partition's update count before it, and the
// clocks it brings) and applied by the primary only once every backup
// acknowledged it, exactly as a BSP step, so backups stay bitwise equal to
// the primary and nothing a pull sees can be lost in a failover.
// A pull of clock c by rank r (PullRequest.step) is answered with the
// current weights once r's own c pushes are applied (read-my-writes: a
// rank has at most one push not yet applied, the one its client sends
// again after a failover) and, under SSP, once the slowest rank's clock on
// the partition is >= c - staleness (Ho et al., NIPS 2013). The staleness
// c - min_clock of each answered pull is recorded (Status()).
//
// Thread-safe: any method may be called from any thread. A pull waiting for
// a step holds no thread (PullAsync), so any number of pulls can wait.
// Snapshots: the partitions are captured at snapshot step k, one meaning for
// every model: every rank's pushes of steps < k are applied. A BSP partition
// is captured by the update that completes step k - 1; an ASP/SSP partition
// by the update that makes its slowest rank's clock reach k, with its
// clocks (ApplyStep, on primaries and backups alike).
//
// A consistent copy of one server's state of one job at one snapshot step,
// for the snapshot writer (server/snapshot/snapshot_store.h).
struct ShardSnapshot;
// One partition's state (server/ps/partition_state.h, private).
struct PartitionState;

// One Replicate call a primary makes to one backup.
struct ReplicationTask {
  // host:port of the backup.
  std::string address;
  // The averaged gradients of one step, one per partition (BSP: of every
  // partition whose update one call started; shared by the backups).
  std::shared_ptr<const ReplicateRequest> request;
};

struct ParameterStoreOptions {
  // Sends replication calls to backups; must not block. Each call's outcome
  // must be given to OnReplicated. Unset: a shard with backups never
  // completes a step (tests of a single server need none).
  std::function<void(ReplicationTask)> replicate;
  // Receives every snapshot the store captures (see SnapshotPolicy in
  // proto/job.proto), on the thread whose push completed the step; it must
  // not block (queue it and write elsewhere). Unset = never capture.
  std::function<void(ShardSnapshot)> snapshot_sink;
  // The most memory one job's partitions may take on this server (bytes of
  // float32 state, see CreateJob); a CreateJob or RestoreJob asking for
  // more is refused with RESOURCE_EXHAUSTED before anything is allocated.
  // Default: 16 GiB.
  int64_t max_job_bytes = int64_t{16} << 30;
  // The largest Pull answer (tensor bytes) built: a pull asking for more is
  // refused with RESOURCE_EXHAUSTED before anything is allocated. Default:
  // 64 MiB, the gRPC message limit of psd's servers (common/rpc.h).
  int64_t max_pull_bytes = 64 << 20;
  // A primary whose backup has not acknowledged a step for this long (its
  // Replicate calls failing or timing out while the coordinator still sees
  // it alive) reports it in TakeBackupFailures, so the coordinator drops it
  // from the view and the step completes without it; a state transfer
  // brings it back later. 0: never (only a backup that lost its state is
  // reported). Default: 10 s.
  int64_t backup_stall_ms = 10000;
  // The replica check (see "Replica check" in docs/OPERATIONS.md): as a
  // primary, this store sends its partitions' checksums (ReplicateRequest.
  // checksums) with the replication of every update whose step (the
  // updates applied before it) is a multiple of this, and of the job's
  // snapshot steps (SnapshotPolicy.every_steps); as a backup it compares
  // them with its own. 0: only at snapshot steps. Default: 100.
  int64_t replica_check_every_steps = 100;
  // FOR TESTS ONLY (psd_server --test_slow_create_job_ms): every CreateJob
  // waits this long before it does anything, as a server on a slow network
  // or a loaded host answers late, while its heartbeats stay on time.
  // 0 (default): never.
  int64_t test_slow_create_job_ms = 0;
  // FOR TESTS ONLY (psd_server --test_corrupt_backup_at_step): when this
  // store, as a shard's backup, applies the replicated update that brings a
  // partition to this step, it then changes that partition's weights (adds
  // 1 to its first element) behind its primary's back, as a memory fault or
  // a bug would. nullopt (default): never.
  std::optional<int64_t> test_corrupt_backup_at_step;
  // FOR TESTS ONLY (psd_server --test_stall_replicate_at_step and
  // --test_stall_replicate_ms): a backup that stalls while its heartbeats
  // go on (a hung disk, a path to its primary cut one way). The first
  // Replicate of this step (ReplicateRequest.step) this store is asked
  // about opens a window of test_stall_replicate_ms (0: until the server
  // stops) in which every Replicate of this step is held unanswered; see
  // ReplicateHeldUntilForTest. nullopt (default): never.
  std::optional<int64_t> test_stall_replicate_at_step;
  int64_t test_stall_replicate_ms = 0;
};

class ParameterStore {
 public:
  explicit ParameterStore(ParameterStoreOptions options = {})
      : options_(std::move(options)) {}
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  // Creates the job's partitions on `shards` with their initial values.
  // The same request again is OK. Start attempts are fenced by view epoch
  // (the coordinator gives each attempt a new one): a request (not
  // joining) at a newer epoch than the job held replaces the held job when
  // it has taken no update yet (every partition at step 0, nothing
  // received: an abandoned attempt); one at an older epoch, or at or below
  // the epoch of a fenced DropJob received for the job, is refused.
  // Errors: INVALID_ARGUMENT (bad config or placement), ALREADY_EXISTS (a
  // job with this id and another config), ABORTED (a stale start attempt,
  // see above), RESOURCE_EXHAUSTED (over options.max_job_bytes).
  absl::StatusOr<CreateJobResponse> CreateJob(const CreateJobRequest& request);

  // Frees the job. With keep_parameters, frees only the training state
  // (gradient buffers, optimizer slots): the parameters stay for pulls, and
  // pushes are refused (FAILED_PRECONDITION). Waiting pulls end with
  // CANCELLED. view_epoch > 0 fences the drop (the undoing of a failed
  // start attempt of that epoch): a job held at a newer epoch is kept
  // (ABORTED), and later CreateJob calls at that epoch or older are
  // refused (the attempt's CreateJob may arrive after its drop); 0 drops
  // whatever is held. Errors: NOT_FOUND, ABORTED.
  absl::Status DropJob(const std::string& job_id, bool keep_parameters = false,
                       int64_t view_epoch = 0);

  // What this server holds, per job.
  ServerStatus Status();

  // Ids of the jobs held now (live, not dropped).
  std::vector<std::string> JobIds();

  // Captures a snapshot of the job when its partitions reach `step` (a BSP
  // partition its step boundary, an ASP/SSP one its slowest rank's clock;
  // see SnapshotManifest.step in proto/snapshot.proto), as if the policy
  // asked for it. Errors: NOT_FOUND, FAILED_PRECONDITION (a partition
  // already reached the step, or the store has no snapshot sink).
  absl::Status RequestSnapshot(const std::string& job_id, int64_t step);

  // Holds the job as `snapshot` recorded it: its config, placement, shards,
  // parameters, optimizer slots and step (ASP/SSP partitions: their update
  // count and per-rank clocks, the dedup table), serving in `view_epoch`.
  // `submitted_by` and `servers`: as in CreateJobRequest (the snapshot does
  // not record them; RestoreJobRequest carries them).
  // Errors: ALREADY_EXISTS (the job is held already), INVALID_ARGUMENT (a
  // snapshot inconsistent with its placement).
  absl::Status Restore(
      const ShardSnapshot& snapshot, int64_t view_epoch,
      const std::string& submitted_by = "",
      const google::protobuf::RepeatedPtrField<ServerInfo>& servers = {});

  // Access checks for callers that mutual TLS identified (the service runs
  // them before the call). A server takes Replicate and InstallPartition
  // for a job only from a server of the job's view: `identity` (the
  // caller's certificate URI) must be the ServerInfo.identity of one of the
  // servers of the latest SetView, or of the CreateJob/RestoreJob before
  // any. OK when `identity` is empty (plaintext), when the view carries no
  // identities (a plaintext coordinator), or for a job not held (the call
  // itself answers NOT_FOUND). Errors: PERMISSION_DENIED naming the caller,
  // the job and the view epoch.
  absl::Status CheckReplicaPeer(const std::string& job_id,
                                const std::string& identity);
  // CreateJobRequest.submitted_by of a held job. Errors: NOT_FOUND.
  absl::StatusOr<std::string> SubmittedBy(const std::string& job_id);

  // See ParameterServer.Push in proto/parameter_server.proto. Errors also:
  // ABORTED (the push's view epoch is older than this server's, or this
  // server is not the primary of a partition's shard: refresh the view),
  // UNAVAILABLE (the push's epoch is newer: this server's view is on its
  // way; retry).
  absl::StatusOr<PushResponse> Push(const PushRequest& request);

  // Replication: see ParameterServer.SetView, Replicate and InstallPartition
  // in proto/parameter_server.proto for what they do and their errors.
  absl::Status SetView(const SetViewRequest& request);
  absl::StatusOr<ReplicateResponse> Replicate(const ReplicateRequest& request);
  absl::Status InstallPartition(const InstallPartitionRequest& request);

  // The coordinator forgot this server (it was expelled after missing
  // heartbeats, or the coordinator restarted): every shard of every job
  // loses its role (NONE) until a SetView gives it one again, so a replaced
  // primary takes no push; pulls waiting end with ABORTED.
  void FenceAll();

  // Backups that refused replication with FAILED_PRECONDITION or DATA_LOSS
  // (the replica check), or that have not applied a step for longer than
  // options.backup_stall_ms, since the last call (for the coordinator, in
  // the next heartbeat); one entry per job, shard and backup.
  std::vector<BackupFailure> TakeBackupFailures();

  // The replica checks this store made as a backup (one per partition
  // checked), and those that found a partition's state different from its
  // primary's (each counted once: the partition refuses replication until
  // a state transfer replaces it).
  struct ReplicaCheckCounts {
    int64_t checks = 0;
    int64_t mismatches = 0;
  };
  ReplicaCheckCounts ReplicaChecks() const;

  // options.test_stall_replicate_at_step: until when the service must hold
  // this Replicate call unanswered (or until its caller gives up, or the
  // server stops) before handing it to Replicate; absl::InfinitePast() for
  // a call not to hold (always, without the option).
  absl::Time ReplicateHeldUntilForTest(const ReplicateRequest& request);

  // The outcome of a ReplicationTask's call. Returns the view epoch to make
  // the call again in when it must be (the backup is still awaited: it
  // failed, and no view has removed the backup since; the epoch is this
  // server's current one, which may have grown since the call was made);
  // nullopt when it is settled.
  std::optional<int64_t> OnReplicated(const ReplicationTask& task,
                                      const absl::Status& status);

  // State transfer to a joining backup, run by the shard's primary (see
  // SyncBackup in server/ps/parameter_service.h): AddJoiner makes every later
  // step of the shard (and the one being replicated now) go to `address`
  // too, and returns the shard's partition ids; CopyPartition copies one
  // partition's state to send; RemoveJoiner undoes AddJoiner after a failed
  // transfer. Errors: NOT_FOUND, FAILED_PRECONDITION (not the primary of
  // the shard).
  absl::StatusOr<std::vector<int32_t>> AddJoiner(const std::string& job_id,
                                                 int32_t shard,
                                                 const std::string& address);
  absl::StatusOr<InstallPartitionRequest> CopyPartition(
      const std::string& job_id, int32_t partition_id);
  void RemoveJoiner(const std::string& job_id, int32_t shard,
                    const std::string& address);

  // Called exactly once with the outcome of a pull; *response is filled
  // when the status is OK.
  using PullDone = std::function<void(absl::Status)>;

  // An id for PullAsync/CancelPull, unique in this store.
  uint64_t NewPullId() { return next_pull_id_.fetch_add(1); }

  // See ParameterServer.Pull. Never blocks: when the step is reached (or the
  // request is bad) `done` runs on the calling thread before PullAsync
  // returns; otherwise the pull waits, holding no thread, and `done` runs
  // later on the thread whose push completes the step, or in DropJob (with
  // CANCELLED) or CancelPull. `response` must stay valid until `done`.
  // Errors: NOT_FOUND, INVALID_ARGUMENT (no partition ids, one named twice,
  // a step < 0), RESOURCE_EXHAUSTED (an answer over
  // options.max_pull_bytes),
  // FAILED_PRECONDITION (wrong epoch, partition not held, a step no longer
  // held), CANCELLED.
  void PullAsync(uint64_t pull_id, const PullRequest& request,
                 PullResponse* response, PullDone done);

  // Ends a waiting pull with `status` (e.g. its client went away or its
  // deadline passed). Does nothing when the pull was answered already.
  void CancelPull(const std::string& job_id, uint64_t pull_id,
                  absl::Status status);

  // Ends a waiting pull whose deadline passed with DEADLINE_EXCEEDED and a
  // message saying what it waited for (BSP: the step and the partition
  // behind; SSP: the bound, the pulling rank's clock and the slowest rank
  // and its clock; ASP: the rank's own push not yet applied). Does nothing
  // when the pull was answered already.
  void ExpirePull(const std::string& job_id, uint64_t pull_id);

  // Blocking form of PullAsync, for callers with a thread to spare (tests):
  // waits until `deadline` (then DEADLINE_EXCEEDED, as ExpirePull) or until
  // `is_cancelled()` returns true (polled every 100 ms; then CANCELLED).
  absl::Status Pull(const PullRequest& request, absl::Time deadline,
                    const std::function<bool()>& is_cancelled,
                    PullResponse* response);

  // One job's state (server/ps/parameter_store_internal.h, private).
  struct Job;

 private:
  absl::StatusOr<std::shared_ptr<Job>> FindJob(const std::string& job_id);
  // Validates the request and builds the job's partitions at step 0.
  absl::StatusOr<std::shared_ptr<Job>> BuildJob(const CreateJobRequest& request);
  // After an update moved the partition on the snapshot scale
  // (ConsistencyRule::SnapshotPoint: a BSP partition's step, an ASP/SSP
  // one's slowest rank's clock) from `before` to where it is now: captures
  // it (CaptureIfDue) for the newest snapshot step due in (before, now], by
  // the job's policy or RequestSnapshot, if any. REQUIRES: job->mu held.
  void CaptureReached(Job* job, int32_t partition_id,
                      const PartitionState& state, int64_t before,
                      std::vector<ShardSnapshot>* snapshots);
  // When the job's policy (or RequestSnapshot) wants a snapshot at `step`,
  // copies the partition into the capture of that step (with its clocks
  // and update count under ASP/SSP); a capture that has every partition
  // moves to *complete. `step` is the BSP partition's new step, or the
  // ASP/SSP partition's slowest rank's new clock (SnapshotManifest.step).
  // REQUIRES: job->mu held.
  void CaptureIfDue(Job* job, int32_t partition_id, const PartitionState& state,
                    int64_t step, std::vector<ShardSnapshot>* complete);
  // Moves every waiter whose step is reached (or whose pull failed) into
  // `completions`, with its response filled. REQUIRES: job->mu held.
  void AnswerWaiters(Job* job,
                     std::vector<std::pair<PullDone, absl::Status>>* completions);
  // Runs what a call left to do once the job's lock is released: pull
  // completions, snapshots to write, replication calls to send.
  void Settle(std::vector<std::pair<PullDone, absl::Status>>* completions,
              std::vector<ShardSnapshot>* snapshots,
              std::vector<ReplicationTask>* tasks);
  // True when no partition of the shard waits for its state transfer.
  // REQUIRES: job.mu held.
  static bool AllInstalled(const Job& job, int32_t shard);
  // Applies the averaged gradient in state.sum as step state.step and
  // moves to the next step. REQUIRES: job->mu held.
  void ApplyStep(Job* job, int32_t partition_id, PartitionState* state,
                 std::vector<ShardSnapshot>* snapshots);
  // Backup: the replica check of a replication request, before any of it
  // is applied: compares request.checksums (when set) with the partitions'
  // own; a mismatch is logged, counted and answered with DATA_LOSS, and so
  // is every later request for that partition until a state transfer.
  // REQUIRES: job->mu held; the request validated.
  absl::Status CheckReplica(Job* job, const ReplicateRequest& request);
  // options.test_corrupt_backup_at_step: after a backup's ApplyStep.
  // REQUIRES: job.mu held.
  void MaybeCorruptForTest(const Job& job, int32_t partition_id,
                           PartitionState* state);
  // ASP/SSP primary: makes state.sum the partition's next update: applies
  // it at once when the shard has no backups (returns true), else sends it
  // to them (into *tasks). REQUIRES: job->mu held, not replicating.
  bool StartUpdate(Job* job, int32_t partition_id, PartitionState* state,
                   std::vector<ShardSnapshot>* snapshots,
                   std::vector<ReplicationTask>* tasks);
  // ASP/SSP primary, after an update was applied: starts the queued one,
  // if any. Returns true when it was applied at once. REQUIRES: job->mu.
  bool StartQueued(Job* job, int32_t partition_id, PartitionState* state,
                   std::vector<ShardSnapshot>* snapshots,
                   std::vector<ReplicationTask>* tasks);

  const ParameterStoreOptions options_;
  std::atomic<uint64_t> next_pull_id_{1};
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<BackupFailure> backup_failures_ ABSL_GUARDED_BY(mu_);
  // options.test_stall_replicate_at_step: the end of its window, once open.
  std::optional<absl::Time> test_stall_until_ ABSL_GUARDED_BY(mu_);
  // Fenced drops (DropJob with view_epoch > 0) by job id: CreateJob at that
  // epoch or older is refused. Cleared by a newer CreateJob; at most
  // kMaxDropFences entries (the smallest ids go first).
  std::map<std::string, int64_t> drop_fences_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> replica_checks_{0};
  std::atomic<int64_t> replica_mismatches_{0};
};

}  // namespace psd

#endif  // PSD_SERVER_PS_PARAMETER_STORE_H_
