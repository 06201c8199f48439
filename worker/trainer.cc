#include "worker/trainer.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/process.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "worker/dataset.h"
#include "worker/mlp.h"
#include "worker/ps_client.h"

namespace psd {

TrainerMetrics::TrainerMetrics(MetricsRegistry* registry)
    : steps(registry->AddCounter("psd_worker_steps_total",
                                 "Training steps completed (pushed).")),
      samples(registry->AddCounter("psd_worker_samples_total",
                                   "Training examples processed.")),
      step_seconds(registry->AddHistogram(
          "psd_worker_step_seconds",
          "Time of one training step (pull, compute, push), seconds.",
          LatencyBuckets())),
      pull_seconds(registry->AddHistogram(
          "psd_worker_pull_seconds",
          "Time to pull the parameters for a step (includes waiting for the "
          "other ranks' pushes; with --pull_with_push they come with the "
          "previous step's push, and this is only copying them), seconds.",
          LatencyBuckets())),
      compute_seconds(registry->AddHistogram(
          "psd_worker_compute_seconds",
          "Time of one step's forward and backward passes (with "
          "--overlap_push, including starting the push of each layer's "
          "gradients), seconds.",
          LatencyBuckets())),
      push_seconds(registry->AddHistogram(
          "psd_worker_push_seconds",
          "Time from the end of a step's backward pass until its push is "
          "acknowledged (with --pull_with_push: until the next step's "
          "parameters came back with it), seconds.",
          LatencyBuckets())),
      network_wait_seconds(registry->AddHistogram(
          "psd_worker_network_wait_seconds",
          "Time of one step spent waiting on the network: its pull plus its "
          "push after the backward pass, seconds.",
          LatencyBuckets())),
      rows_pulled(registry->AddCounter(
          "psd_worker_rows_pulled_total",
          "Sparse jobs: embedding rows a batch read (each field's row once "
          "per example), before the row cache.")),
      rows_pushed(registry->AddCounter(
          "psd_worker_rows_pushed_total",
          "Sparse jobs: embedding row gradients pushed (each field's row "
          "once per example; the client sums duplicates before sending).")),
      row_cache_hits(registry->AddCounter(
          "psd_worker_row_cache_hits_total",
          "Sparse jobs: rows answered from the worker row cache (ASP tables "
          "with cache_staleness_steps).")),
      row_cache_misses(registry->AddCounter(
          "psd_worker_row_cache_misses_total",
          "Sparse jobs: rows the worker row cache had to pull.")) {}

void TrainerMetrics::ObserveStep(double pull_s, double compute_s,
                                 double push_s, double step_s,
                                 int64_t samples) {
  if (pull_s >= 0) pull_seconds->Observe(pull_s);
  compute_seconds->Observe(compute_s);
  push_seconds->Observe(push_s);
  network_wait_seconds->Observe(std::max(pull_s, 0.0) + push_s);
  step_seconds->Observe(step_s);
  steps->Increment();
  this->samples->Increment(samples);
}

ProgressWindow::ProgressWindow(const Assignment& assignment, int32_t rank,
                               const ProgressSink& sink)
    : sink_(sink), window_start_(absl::Now()) {
  request_.set_job_id(assignment.job_id());
  request_.set_rank(rank);
}

void ProgressWindow::StartEpoch() {
  loss_sum_ = 0;
  loss_count_ = 0;
}

void ProgressWindow::AddStep(float loss, int64_t samples) {
  loss_sum_ += loss;
  ++loss_count_;
  window_samples_ += samples;
}

bool ProgressWindow::Send(int32_t epoch, int64_t steps_done) {
  const double seconds = absl::ToDoubleSeconds(absl::Now() - window_start_);
  request_.set_epoch(epoch);
  request_.set_step(steps_done);
  if (loss_count_ > 0) request_.set_loss(static_cast<float>(mean_loss()));
  if (seconds > 0 && window_samples_ > 0) {
    request_.set_samples_per_sec(static_cast<float>(window_samples_ / seconds));
  }
  const bool stop = sink_(request_);
  request_.set_has_test_accuracy(false);
  request_.clear_test_accuracy();
  request_.clear_test_log_loss();
  request_.clear_test_auc();
  window_start_ = absl::Now();
  window_samples_ = 0;
  return stop;
}

absl::StatusOr<int64_t> StartStep(const Assignment& assignment,
                                  ParameterClient* client,
                                  const std::vector<float*>& scratch,
                                  int64_t total_steps) {
  int64_t start_step = assignment.start_step();
  if (assignment.resume_from_servers()) {
    // A replacement: the slowest partition's step is the one this rank's
    // predecessor did not finish pushing (BSP waits for it).
    int64_t clock = 0;
    PSD_RETURN_IF_ERROR(
        client->Pull(0, /*latest=*/true, scratch, &start_step, &clock));
    // The rank's own progress is its clock (PullResponse.clock): under BSP
    // the partitions' step, under ASP/SSP its pushes applied everywhere
    // (there the step counts updates from every rank).
    start_step = clock;
    Log()->info("job {} rank {}: replacing a worker, resuming at step {}",
                assignment.job_id(), assignment.rank(), start_step);
  }
  if (start_step < 0 || start_step > total_steps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "assignment.start_step: ", start_step, " outside the job's ",
        total_steps, " steps"));
  }
  return start_step;
}

namespace {

constexpr int32_t kEvalBatch = 1000;

double SecondsBetween(std::chrono::steady_clock::time_point from,
                      std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

struct Split {
  Dataset train;
  Dataset test;
};

absl::StatusOr<Split> LoadFashionMnist(const std::string& dir,
                                       const JobConfig& config, bool with_test) {
  const std::string train_images = dir + "/train-images-idx3-ubyte.gz";
  PSD_ASSIGN_OR_RETURN(Normalization norm,
                       ComputeNormalization(train_images, 0));
  Split split;
  PSD_ASSIGN_OR_RETURN(
      split.train,
      LoadDataset(train_images, dir + "/train-labels-idx1-ubyte.gz",
                  config.dataset().train_limit(), config.model().num_classes(),
                  norm));
  if (with_test) {
    PSD_ASSIGN_OR_RETURN(
        split.test,
        LoadDataset(dir + "/t10k-images-idx3-ubyte.gz",
                    dir + "/t10k-labels-idx1-ubyte.gz",
                    config.dataset().test_limit(), config.model().num_classes(),
                    norm));
  }
  return split;
}

// The pulled parameters, one buffer per tensor, in the backend's
// AllocateHost() memory: pinned under CUDA, so the Mlp's uploads from them
// are asynchronous; malloc on the CPU backend, whose kernels read them in
// place.
struct ParamBuffers {
  std::vector<kernels::HostBuffer<float>> buffers;
  std::vector<float*> out;       // For ParameterClient::Pull.
  std::vector<const float*> in;  // For the Mlp.
};

absl::StatusOr<ParamBuffers> AllocateParams(kernels::Backend* backend,
                                            const Mlp& model) {
  ParamBuffers p;
  const std::vector<int64_t> sizes = model.ParameterSizes();
  const std::vector<std::string> names = model.ParameterNames();
  for (size_t i = 0; i < sizes.size(); ++i) {
    p.buffers.emplace_back(backend, sizes[i]);
    if (p.buffers.back().data() == nullptr) {
      const absl::Status why = backend->status();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate host memory for ", names[i], " (", sizes[i],
          " floats) on backend ", backend->Name(),
          why.ok() ? "" : absl::StrCat(": ", why.ToString())));
    }
    p.out.push_back(p.buffers.back().data());
    p.in.push_back(p.buffers.back().data());
  }
  return p;
}

}  // namespace

absl::Status TrainRank(const Assignment& assignment,
                       const TrainerOptions& options, kernels::Backend* backend,
                       const ProgressSink& report,
                       const std::atomic<bool>* cancel,
                       RankRelease* release) {
  if (release != nullptr) release->released_at = -1;
  const JobConfig& config = assignment.config();
  if (config.model().kind() != ModelSpec::MLP) {
    return absl::FailedPreconditionError(
        "model.kind: psd_worker trains MLP models only; an EXTERNAL model "
        "is trained by psd.torch workers (worker/python/psd)");
  }
  const int32_t rank = assignment.rank();
  const int32_t workers = config.workers();
  PSD_ASSIGN_OR_RETURN(Split data,
                       LoadFashionMnist(options.data_dir, config, rank == 0));
  if (data.train.size != TrainExamples(config)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the training set in ", options.data_dir, " has ", data.train.size,
        " examples; the job expects ", TrainExamples(config)));
  }
  std::vector<int32_t> layers = {config.model().input_dim()};
  for (int32_t h : config.model().hidden_sizes()) layers.push_back(h);
  layers.push_back(config.model().num_classes());
  PSD_ASSIGN_OR_RETURN(
      std::unique_ptr<Mlp> model,
      Mlp::Create(layers, std::max(config.batch_size(), kEvalBatch), backend));
  ParameterClientOptions client_options;
  client_options.pull_timeout_ms = options.pull_timeout_ms;
  client_options.cancel = cancel;
  client_options.views = options.views;
  client_options.shared_memory = options.shared_memory;
  client_options.pull_with_push = options.pull_with_push;
  client_options.call_per_shard = options.call_per_shard;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ParameterClient> client,
                       ParameterClient::Create(assignment, client_options));
  if (client->parameter_sizes() != model->ParameterSizes()) {
    return absl::FailedPreconditionError(
        "the placement's parameters do not match the model's");
  }

  const int64_t steps_per_epoch = StepsPerEpoch(config, data.train.size);
  const std::vector<int32_t> shard =
      ShardIndices(data.train.size, rank, workers);
  const int32_t batch = config.batch_size();
  // The reuse rule of asynchronous uploads (Backend::CopyFromHostAsync):
  // a Pull may overwrite these only once the Mlp call that read them
  // returned, which synchronizes the backend (worker/mlp.h, "Parameter
  // upload"). Every Pull below follows the previous Mlp call's return on
  // this thread.
  PSD_ASSIGN_OR_RETURN(ParamBuffers params, AllocateParams(backend, *model));
  std::vector<std::vector<float>> grads(model->ParameterSizes().size());
  for (size_t i = 0; i < grads.size(); ++i) {
    grads[i].resize(model->ParameterSizes()[i]);
  }
  std::vector<float> x(static_cast<size_t>(batch) * data.train.dim);
  std::vector<int32_t> y(batch);

  ProgressWindow progress(assignment, rank, report);

  Log()->info("job {} rank {}/{}: {} steps per epoch, {} epochs, backend {}",
              assignment.job_id(), rank, workers, steps_per_epoch,
              config.epochs(), backend->Name());
  int64_t pulled_step = -1;
  // After a recovery the job resumes at start_step: the same batches follow
  // as in a run never stopped, since the order depends on (seed, epoch,
  // rank) only.
  const int64_t total_steps = steps_per_epoch * config.epochs();
  PSD_ASSIGN_OR_RETURN(const int64_t start_step,
                       StartStep(assignment, client.get(), params.out, total_steps));
  if (start_step == total_steps) {  // the predecessor pushed every step
    progress.request().set_done(true);
    progress.Send(config.epochs() - 1, total_steps);
    return absl::OkStatus();
  }
  const absl::Time train_start = absl::Now();
  // Sums over the steps: waiting on the network (pull + push after the
  // backward pass), and the steps' whole time.
  double wait_seconds = 0, step_seconds = 0;
  for (int32_t epoch = static_cast<int32_t>(start_step / steps_per_epoch);
       epoch < config.epochs(); ++epoch) {
    const std::vector<int32_t> order =
        EpochOrder(shard, config.seed(), epoch, rank);
    progress.StartEpoch();
    const int64_t first = epoch * steps_per_epoch < start_step
                              ? start_step - epoch * steps_per_epoch
                              : 0;
    for (int64_t i = first; i < steps_per_epoch; ++i) {
      if (cancel->load()) return absl::CancelledError("job cancelled");
      const int64_t step = epoch * steps_per_epoch + i;
      if (release != nullptr && release->release != nullptr &&
          release->release->load()) {
        // A step boundary: every earlier step of this rank is pushed.
        release->released_at = step;
        Log()->info("job {} rank {}: released at step {}", assignment.job_id(),
                    rank, step);
        return absl::OkStatus();
      }
      const auto start = std::chrono::steady_clock::now();
      if (pulled_step != step) {
        PSD_RETURN_IF_ERROR(client->Pull(step, false, params.out));
      }
      const auto pulled = std::chrono::steady_clock::now();
      GatherBatch(data.train, order.data() + i * batch, batch, x.data(),
                  y.data());
      if (options.on_step_batch) {
        options.on_step_batch(assignment, epoch, step, order.data() + i * batch,
                              batch);
      }
      std::vector<float*> grad_ptrs;
      for (auto& g : grads) grad_ptrs.push_back(g.data());
      float loss;
      if (options.overlap_push) {
        PSD_RETURN_IF_ERROR(client->BeginPush(step));
        loss = model->ForwardBackward(
            params.in, x.data(), y.data(), batch, grad_ptrs,
            [&](int32_t t) {
              // An error is kept and returned by FinishPush.
              client->PushTensor(t, grads[t].data(), grads[t].size())
                  .IgnoreError();
            });
      } else {
        loss = model->ForwardBackward(params.in, x.data(), y.data(),
                                      batch, grad_ptrs);
      }
      const auto computed = std::chrono::steady_clock::now();
      PSD_RETURN_IF_ERROR(options.overlap_push ? client->FinishPush()
                                               : client->Push(step, grads));
      const auto pushed = std::chrono::steady_clock::now();
      const double pull_s =
          pulled_step != step ? SecondsBetween(start, pulled) : 0.0;
      const double wait_s = pull_s + SecondsBetween(computed, pushed);
      wait_seconds += wait_s;
      step_seconds += SecondsBetween(start, pushed);
      if (options.test_slow_ms_per_step > 0) {
        absl::SleepFor(absl::Milliseconds(options.test_slow_ms_per_step));
      }
      if (TrainerMetrics* m = options.metrics) {
        m->ObserveStep(pulled_step != step ? pull_s : -1.0,
                       SecondsBetween(pulled, computed),
                       SecondsBetween(computed, pushed),
                       SecondsBetween(start, pushed), batch);
      }
      progress.AddStep(loss, batch);
      if ((step + 1) % options.progress_every_steps == 0 &&
          progress.Send(epoch, step + 1)) {
        return absl::CancelledError("job cancelled");
      }
    }
    const int64_t end_step = (epoch + 1) * steps_per_epoch;
    if (rank == 0) {
      // Parameters after the whole epoch: also the next step's pull.
      PSD_RETURN_IF_ERROR(client->Pull(end_step, false, params.out));
      pulled_step = end_step;
      const int64_t correct =
          model->CountCorrect(params.in, data.test.features.data(),
                              data.test.labels.data(), data.test.size);
      progress.request().set_has_test_accuracy(true);
      progress.request().set_test_accuracy(static_cast<float>(correct) /
                                 static_cast<float>(data.test.size));
      Log()->info("job {}: epoch {} done, train loss {:.4f}, test accuracy {:.4f}",
                  assignment.job_id(), epoch, progress.mean_loss(),
                  progress.request().test_accuracy());
    }
    if (epoch + 1 == config.epochs()) progress.request().set_done(true);
    if (progress.Send(epoch, end_step) && !progress.request().done()) {
      return absl::CancelledError("job cancelled");
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - train_start);
  Log()->info("job {} rank {}: trained {} steps in {:.3f} s ({:.2f} steps/s)",
              assignment.job_id(), rank, total_steps - start_step, seconds,
              seconds > 0 ? (total_steps - start_step) / seconds : 0.0);
  // tests/bench/overlap_bench.sh reads this line.
  Log()->info("job {} rank {}: network wait {:.3f} s of {:.3f} s of steps "
              "({:.1f}%), push overlapped with backward: {}",
              assignment.job_id(), rank, wait_seconds, step_seconds,
              step_seconds > 0 ? 100 * wait_seconds / step_seconds : 0.0,
              options.overlap_push ? "yes" : "no");
  return absl::OkStatus();
}

}  // namespace psd
