// Training one rank of a job: the worker's loop (BSP, ASP or SSP).
#ifndef PSD_WORKER_TRAINER_H_
#define PSD_WORKER_TRAINER_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
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
