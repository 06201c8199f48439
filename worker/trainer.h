// Training one rank of a job: the worker's loop (BSP, ASP or SSP).
#ifndef PSD_WORKER_TRAINER_H_
#define PSD_WORKER_TRAINER_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/proto.h"
#include "kernels/kernels.h"
#include "worker/ps_client.h"

namespace psd {

// The worker's training metrics. Registered once per process (TrainRank
// only updates them, lock-free).
struct TrainerMetrics {
  // Registers psd_worker_* metrics in `registry`, which must outlive this.
  explicit TrainerMetrics(MetricsRegistry* registry);

  Counter* const steps;              // psd_worker_steps_total
  Counter* const samples;            // psd_worker_samples_total
  Histogram* const step_seconds;     // psd_worker_step_seconds
  Histogram* const pull_seconds;     // psd_worker_pull_seconds
  Histogram* const compute_seconds;  // psd_worker_compute_seconds
  Histogram* const push_seconds;     // psd_worker_push_seconds
  // Per step: the pull's time plus the push's wait after the backward pass
  // (psd_worker_network_wait_seconds); its sum over psd_worker_step_seconds'
  // sum is the share of step time spent waiting on the network.
  Histogram* const network_wait_seconds;
  // Records one step: its pull (< 0: no pull this step), compute, push
  // and whole time in seconds, the network wait (pull + push), and its
  // examples.
  void ObserveStep(double pull_s, double compute_s, double push_s,
                   double step_s, int64_t samples);
  // Sparse jobs (issue 25): embedding rows pulled from the servers and
  // pushed to them (psd_worker_rows_pulled_total, _pushed_total, counting
  // each row of a call once), and the worker row cache's answers
  // (psd_worker_row_cache_hits_total / _misses_total; ASP tables with
  // cache_staleness_steps only).
  Counter* const rows_pulled;
  Counter* const rows_pushed;
  Counter* const row_cache_hits;
  Counter* const row_cache_misses;
};

struct TrainerOptions {
  // Folder with Fashion-MNIST's {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
  // Default: the Debian package's folder.
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  // Send a progress report every this many steps (and at each epoch end).
  // Default: 20.
  int progress_every_steps = 20;
  // Deadline of one Pull, ms (it waits for the slowest rank). Default: 10 min.
  int pull_timeout_ms = 600000;
  // Where step counts and timings go. Not owned; must outlive TrainRank.
  // Default: nullptr (none).
  TrainerMetrics* metrics = nullptr;
  // Overlap the push with the backward pass: tensor i's partitions are sent
  // as soon as its gradient is final (Mlp::GradientReady,
  // ParameterClient::PushTensor), layer by layer from the last, instead of
  // all after the backward pass. Any consistency model allows it (a push is
  // applied only once a partition has it whole, as before), and the pushed
  // bytes are the same, so a BSP result is bitwise the same either way.
  // Default: true.
  bool overlap_push = true;
  // Carry tensor bytes through shared memory with the parameter servers on
  // this host (ParameterClientOptions::shared_memory). Default: false.
  bool shared_memory = false;
  // One call per partition per step for the push and the next pull
  // (ParameterClientOptions::pull_with_push). Default: true.
  bool pull_with_push = true;
  // One call per shard, not per partition
  // (ParameterClientOptions::call_per_shard). Default: true.
  bool call_per_shard = true;
  // Where view changes come from (failover of a primary; see
  // ParameterClientOptions::views). Not owned. Default: none.
  ViewSource* views = nullptr;
  // FOR TESTS ONLY: sleep this long in every step (after its push), to make
  // this worker artificially slow (tests/consistency_test.sh, SSP).
  // Default: 0 (no delay).
  int test_slow_ms_per_step = 0;
  // Called with the example indices (into the training set) of each step's
  // batch before its push is sent, from the training thread. A batch passed
  // here may or may not have reached the servers: a worker killed after
  // this call has its rank's next worker train the step again (the servers
  // take it once), never leaves a pushed step unreported. For the
  // exactly-once check of elastic jobs (psd_worker --sample_log). Default:
  // none.
  std::function<void(const Assignment& assignment, int32_t epoch, int64_t step,
                     const int32_t* indices, int32_t count)>
      on_step_batch;
};

// How TrainRank is told to stop at a step boundary, and where it stopped.
struct RankRelease {
  // Set by another thread: stop before the next step (after the current
  // step's push was acknowledged). Not owned.
  const std::atomic<bool>* release = nullptr;
  // Set by TrainRank when it stopped for `release`: the first step it did
  // not push (where the rank's next worker starts). -1 otherwise.
  int64_t released_at = -1;
};

// Where progress goes (the coordinator's ReportProgress). Returns true when
// the job was cancelled and training must stop.
using ProgressSink = std::function<bool(const ReportProgressRequest&)>;

// A rank's progress reports (ReportProgressRequest), shared by the dense
// and the sparse trainer: the mean training loss of the epoch's steps so
// far, and the samples per second since the previous report.
class ProgressWindow {
 public:
  ProgressWindow(const Assignment& assignment, int32_t rank,
                 const ProgressSink& sink);
  // A new epoch: the loss mean starts again.
  void StartEpoch();
  // One step of `samples` examples with mean loss `loss`.
  void AddStep(float loss, int64_t samples);
  // The mean loss of this epoch's steps so far (0 before the first).
  double mean_loss() const {
    return loss_count_ > 0 ? loss_sum_ / loss_count_ : 0.0;
  }
  // The next report, to add a test accuracy or `done` to before Send.
  ReportProgressRequest& request() { return request_; }
  // Sends the report of `steps_done` steps in `epoch` (test accuracy
  // fields are cleared after it). Returns the sink's answer: true when
  // training must stop.
  bool Send(int32_t epoch, int64_t steps_done);

 private:
  const ProgressSink& sink_;
  ReportProgressRequest request_;
  double loss_sum_ = 0;
  int64_t loss_count_ = 0;
  absl::Time window_start_;
  int64_t window_samples_ = 0;
};

// The step rank `assignment.rank()` starts at: assignment.start_step, or,
// for a replacement (resume_from_servers), the rank's clock on the
// servers (PullResponse.clock: under BSP the partitions' step, under
// ASP/SSP this rank's pushes applied everywhere); `scratch` receives the
// parameters pulled for it. Errors: the pull's; INVALID_ARGUMENT naming
// assignment.start_step outside [0, total_steps].
absl::StatusOr<int64_t> StartStep(const Assignment& assignment,
                                  ParameterClient* client,
                                  const std::vector<float*>& scratch,
                                  int64_t total_steps);

// Trains `assignment.rank()` of the job, step by step:
//   for step s: pull the parameters for step s (BSP: after s updates; ASP:
//   the current ones, once this rank's s pushes are applied; SSP: the same,
//   once every rank has pushed >= s - staleness steps; see PullRequest.step
//   in proto/parameter_server.proto); compute the gradient of the mean loss
//   over this rank's next batch; push it for step s.
// The batches of rank r in epoch e follow EpochOrder(shard r, seed, e, r),
// so a rank's gradients are a function of (job, rank, step) only (DESIGN
// invariant 5). Rank 0 evaluates the test set at every epoch end.
// With assignment.resume_from_servers (this rank's worker died), training
// starts at the step the rank's partitions are at, read from the servers
// (ASP/SSP: the rank's clock there).
// Memory: the parameters are pulled straight into buffers from
// backend->AllocateHost() (pinned under CUDA), which the Mlp uploads from
// asynchronously; a pull overwrites them only after the previous Mlp call
// returned (it synchronizes the backend first: worker/mlp.h).
// Setting `*cancel` stops training within a step (calls in flight to the
// servers are cancelled). Setting `*release->release` (when release is not
// null) stops it at the next step boundary: OK with release->released_at
// set (an elastic job's rank moving to another worker, or this worker
// leaving). Returns OK when all steps are done (released_at -1), or
// released; CANCELLED when stopped, or the error that ended it.
absl::Status TrainRank(const Assignment& assignment,
                       const TrainerOptions& options, kernels::Backend* backend,
                       const ProgressSink& report,
                       const std::atomic<bool>* cancel,
                       RankRelease* release = nullptr);

}  // namespace psd

#endif  // PSD_WORKER_TRAINER_H_
