// psd_worker: a stateless training worker. Registers with the coordinator,
// waits for a rank of a job, trains it (worker/trainer.h), then goes back to
// idle and waits for the next job.
#include <atomic>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/job_config.h"
#include "common/member_flags.h"
#include "common/membership.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/rpc.h"
#include "common/shared_memory.h"
#include "common/sparse_config.h"
#include "common/status.h"
#include "kernels/device.h"
#include "kernels/kernels.h"
#include "worker/progress.h"
#include "worker/sparse_trainer.h"
#include "worker/trainer.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "Address to serve gRPC health and reflection on; port 0 lets the "
          "OS choose.");
ABSL_FLAG(std::string, advertise, "",
          "Address others dial to reach this worker (default: the listen host "
          "with the bound port).");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound port to this file once registered.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder holding Fashion-MNIST's gzip IDX files.");
ABSL_FLAG(std::string, device, "auto",
          "auto (the first GPU if this build has CUDA and one is usable, "
          "else the CPU), cpu, or cuda:N (GPU N; an error if this build "
          "has no CUDA or there is no such GPU).");
ABSL_FLAG(int, blas_threads, 1, "OpenBLAS threads for the CPU backend.");
ABSL_FLAG(bool, bf16_gemm, false,
          "GPU only: matrix products on tensor cores with bfloat16 inputs "
          "and float32 accumulation (cublasGemmEx; see "
          "kernels/cuda_backend.h for the tolerance against fp32). An error "
          "when the device is the CPU. Default: fp32 gemm.");
ABSL_FLAG(bool, overlap_push, true,
          "Push each layer's gradients as soon as the backward pass has "
          "computed them, overlapping communication with the rest of the "
          "backward pass (same pushed bytes, same results). false: push all "
          "of a step's gradients after its backward pass (for measuring the "
          "overlap, or debugging).");
ABSL_FLAG(bool, shared_memory, false,
          "EXPERIMENTAL, off by default: carry pushed gradients and pulled "
          "parameters through shared memory (/dev/shm) with the parameter "
          "servers on this host that agree to map it (the others get them "
          "in gRPC messages). Not safe with failover yet: a primary that was "
          "stopped and resumes can still read or write the region after the "
          "worker moved on (docs/ARCHITECTURE.md, \"Shared memory\").");
ABSL_FLAG(bool, pull_with_push, true,
          "Each step's push also asks for the next step's parameters, so "
          "one call per shard per step does both (PushRequest.pull_next); "
          "false: a push and a pull call each (same results).");
ABSL_FLAG(bool, call_per_shard, true,
          "Carry all the partitions a shard holds in one push (and one pull) "
          "call per step, started when the last of their gradients is "
          "ready; false: one call per partition, each started as soon as "
          "its gradient is (same results).");
ABSL_FLAG(int, test_slow_ms_per_step, 0,
          "FOR TESTS ONLY: sleep this many ms in every training step, to make "
          "this worker artificially slow (the SSP test). Default 0.");

ABSL_FLAG(int, leave_timeout_ms, 20000,
          "On SIGTERM/SIGINT (e.g. a spot instance's preemption notice), "
          "how long to wait for each rank to finish its step, push it and "
          "be handed back to the coordinator before exiting anyway (then "
          "its ranks resume on other workers where the servers are). Keep "
          "it below the grace period of the platform (Kubernetes: "
          "terminationGracePeriodSeconds).");
ABSL_FLAG(std::string, sample_log, "",
          "FOR TESTS: append one line per training step, before its push, "
          "to this file: \"job epoch step rank index...\" (the examples of the "
          "step's batch), for checking that each example of an epoch is "
          "trained exactly once. Default: none.");

namespace psd {
namespace {

// Receives assignments from heartbeats and trains the ranks it is given,
// each on a thread of its own with a backend of its own (a fixed-size job:
// one rank; an elastic job: the ranks listed in Assignment.ranks, which
// change as workers join and leave). A rank no longer listed is released at
// its next step boundary and reported (ReportProgressRequest.released), so
// its next worker starts where this one stopped. Leave() releases every
// rank the same way (SIGTERM). Thread-safe.
class WorkerAgent : public ViewSource {
 public:
  using BackendFactory =
      std::function<absl::StatusOr<std::unique_ptr<kernels::Backend>>()>;

  WorkerAgent(TrainerOptions options, BackendFactory backends)
      : options_(std::move(options)), backends_(std::move(backends)) {
    options_.views = this;
  }

  ~WorkerAgent() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      ++generation_;
    }
    cancel_ = true;
    if (thread_.joinable()) thread_.join();
  }

  void Start(Membership* membership) {
    membership_ = membership;
    thread_ = std::thread([this] { Run(); });
  }

  // Preemption: releases every rank at its next step boundary (each
  // finishes the step it is in and pushes it), tells the coordinator, and
  // returns once they are all released or after `timeout` (then training is
  // cancelled: the coordinator treats the ranks as a dead worker's).
  void Leave(absl::Duration timeout) {
    const absl::Time start = absl::Now();
    absl::MutexLock lock(&mu_);
    leaving_ = true;
    ++generation_;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return current_job_.empty();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), timeout)) {
      Log()->warn("leaving: ranks not released within {} ms; stopping them",
                  absl::ToInt64Milliseconds(timeout));
      cancel_ = true;
      return;
    }
    Log()->info("leaving: every rank released in {} ms",
                absl::ToInt64Milliseconds(absl::Now() - start));
  }

  // Tells the coordinator which rank this worker trains, if any, so that a
  // restarted coordinator gives it back.
  void FillRegister(RegisterRequest* request) {
    request->add_model_kinds(ModelSpec::MLP);  // TrainRank's models
    request->add_model_kinds(ModelSpec::SPARSE_LR);  // TrainSparseRank's
    request->add_model_kinds(ModelSpec::DLRM);
    absl::MutexLock lock(&mu_);
    if (current_job_.empty() || runs_.empty()) return;
    request->set_job_id(current_job_);
    request->set_rank(runs_.begin()->first);
  }

  // Names the assignment this worker holds, so that the coordinator leaves
  // it out of the answer while it is current (HeartbeatResponse.
  // assignment_held).
  void FillHeartbeat(HeartbeatRequest* request) {
    absl::MutexLock lock(&mu_);
    if (current_job_.empty() || !view_.has_value()) return;
    request->set_held_job_id(current_job_);
    request->set_held_view_epoch(view_->view_epoch());
    request->set_held_membership_epoch(view_->membership_epoch());
  }

  // ViewSource: the view of the job being trained, from heartbeats.
  int64_t LatestEpoch() override { return latest_epoch_.load(); }
  std::optional<Assignment> AwaitNewer(int64_t epoch,
                                       absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    auto newer = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || (view_.has_value() && view_->view_epoch() > epoch);
    };
    mu_.AwaitWithTimeout(absl::Condition(&newer), timeout);
    if (view_.has_value() && view_->view_epoch() > epoch) return view_;
    return std::nullopt;
  }

  void OnHeartbeat(const HeartbeatResponse& response) {
    absl::MutexLock lock(&mu_);
    if (response.has_assignment() &&
        response.assignment().job_id() == current_job_ && view_.has_value() &&
        (response.assignment().view_epoch() > view_->view_epoch() ||
         response.assignment().membership_epoch() >
             view_->membership_epoch())) {
      view_ = response.assignment();
      latest_epoch_ = view_->view_epoch();
      ++generation_;
    }
    if (response.cancelled() && !current_job_.empty() && !cancel_) {
      Log()->warn("job {}: the coordinator says stop (cancelled, or a job it "
                  "no longer runs)", current_job_);
    }
    if (response.cancelled()) {
      cancel_ = true;
      ++generation_;
    }
    if (!response.has_assignment() || leaving_) return;
    const std::string& id = response.assignment().job_id();
    if (id == current_job_ || finished_.count(id)) return;
    next_ = response.assignment();
    ++generation_;
  }

 private:
  // One rank being trained.
  struct RankRun {
    std::thread thread;
    std::atomic<bool> release{false};
    RankRelease result;
    absl::Status status;
    bool ended = false;  // guarded by mu_
  };

  // The ranks `view` gives this worker, and where each starts (-1: from
  // the servers).
  static std::map<int32_t, int64_t> RanksOf(const Assignment& view) {
    std::map<int32_t, int64_t> ranks;
    if (!IsElastic(view.config())) {
      ranks[view.rank()] = view.resume_from_servers() ? -1 : view.start_step();
      return ranks;
    }
    for (int32_t r : view.ranks()) {
      auto start = view.rank_start_steps().find(r);
      ranks[r] = start == view.rank_start_steps().end() ? -1 : start->second;
    }
    return ranks;
  }

  void Run() {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WorkerAgent* a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) {
              return a->stopping_ || a->next_.has_value();
            },
            this));
        if (stopping_) return;
        view_ = *std::move(next_);
        next_.reset();
        current_job_ = view_->job_id();
        cancel_ = false;
        latest_epoch_ = view_->view_epoch();
      }
      RunJob();
      absl::MutexLock lock(&mu_);
      finished_.insert(current_job_);
      current_job_.clear();
      view_.reset();
    }
  }

  // Trains the current job's ranks until none is left to train.
  void RunJob() {
    std::set<int32_t> done;  // ranks that trained all their steps
    bool over = false;       // a rank failed or was cancelled
    int64_t seen = -1;
    while (true) {
      std::vector<ReportProgressRequest> reports;
      {
        absl::MutexLock lock(&mu_);
        auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return generation_ != seen;
        };
        mu_.Await(absl::Condition(&changed));
        seen = generation_;
        // Ranks that ended: reap them.
        for (auto it = runs_.begin(); it != runs_.end();) {
          RankRun& run = *it->second;
          if (!run.ended) {
            ++it;
            continue;
          }
          run.thread.join();
          const int32_t rank = it->first;
          ReportProgressRequest report;
          report.set_job_id(current_job_);
          report.set_rank(rank);
          if (!run.status.ok()) {
            over = true;
            if (run.status.code() != absl::StatusCode::kCancelled) {
              Log()->error("job {}: rank {} failed: {}", current_job_, rank,
                           run.status.ToString());
              report.set_error(run.status.ToString());
              reports.push_back(report);
            } else {
              Log()->info("job {}: rank {} stopped: {}", current_job_, rank,
                          run.status.ToString());
            }
          } else if (run.result.released_at >= 0) {
            report.set_released(true);
            report.set_leaving(leaving_);
            report.set_step(run.result.released_at);
            reports.push_back(report);
          } else {
            Log()->info("job {}: rank {} finished", current_job_, rank);
            done.insert(rank);
          }
          it = runs_.erase(it);
        }
        if (stopping_ || cancel_) over = true;
        // What the coordinator asks for now.
        const std::map<int32_t, int64_t> wanted =
            over || leaving_ ? std::map<int32_t, int64_t>() : RanksOf(*view_);
        for (auto& [rank, run] : runs_) {
          if (!wanted.count(rank)) run->release = true;
        }
        bool all_done = !done.empty();
        for (const auto& [rank, start] : wanted) {
          all_done = all_done && done.count(rank);
          if (runs_.count(rank) || done.count(rank)) continue;
          Assignment assignment = *view_;
          assignment.set_rank(rank);
          assignment.set_resume_from_servers(start < 0);
          if (start >= 0) assignment.set_start_step(start);
          StartRankLocked(std::move(assignment));
        }
        // Over for this worker: nothing runs, and it finished, failed, was
        // cancelled, or is leaving. (An elastic job's worker may hold no rank
        // for a moment while one moves to it.)
        const bool elastic = IsElastic(view_->config());
        if (reports.empty() && runs_.empty() &&
            (over || leaving_ || all_done || !elastic)) {
          return;
        }
      }
      for (const ReportProgressRequest& report : reports) Report(report);
      if (!reports.empty()) seen = -1;  // look again at once
    }
  }

  void StartRankLocked(Assignment assignment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int32_t rank = assignment.rank();
    auto run = std::make_unique<RankRun>();
    RankRun* r = run.get();
    r->result.release = &r->release;
    Log()->info("job {}: assigned rank {}{}", assignment.job_id(), rank,
                assignment.resume_from_servers()
                    ? " (at the step its servers are at)"
                    : absl::StrCat(" at step ", assignment.start_step()));
    r->thread = std::thread([this, r, assignment = std::move(assignment)] {
      absl::StatusOr<std::unique_ptr<kernels::Backend>> backend = backends_();
      absl::Status status = backend.status();
      if (IsSparseModel(assignment.config().model())) {
        status = TrainSparseRank(
            assignment, options_,
            [&](const ReportProgressRequest& p) { return Report(p); },
            &cancel_);
      } else if (backend.ok()) {
        status = TrainRank(
            assignment, options_, backend->get(),
            [&](const ReportProgressRequest& p) { return Report(p); },
            &cancel_, &r->result);
      }
      absl::MutexLock lock(&mu_);
      r->status = status;
      r->ended = true;
      ++generation_;
    });
    runs_[rank] = std::move(run);
  }

  // Sends progress; returns true when the job was cancelled. The last
  // report of a rank (done, released) is retried while the coordinator is
  // away (up to 2 minutes): it is what ends the job or hands the rank on,
  // and this worker keeps claiming its rank (FillRegister) until it is
  // delivered.
  bool Report(const ReportProgressRequest& request) {
    return SendProgress(membership_, request, cancel_);
  }

  TrainerOptions options_;  // constant after construction
  const BackendFactory backends_;
  std::atomic<int64_t> latest_epoch_{0};
  Membership* membership_ = nullptr;
  std::atomic<bool> cancel_{false};
  std::thread thread_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool leaving_ ABSL_GUARDED_BY(mu_) = false;
  // Grows with every event the job loop waits for.
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Assignment> next_ ABSL_GUARDED_BY(mu_);
  // The newest assignment of current_job_ (its epochs may grow).
  std::optional<Assignment> view_ ABSL_GUARDED_BY(mu_);
  std::string current_job_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, std::unique_ptr<RankRun>> runs_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> finished_ ABSL_GUARDED_BY(mu_);
};

// --sample_log: one line per step about to be pushed, "job epoch step rank
// i1 i2 ..." (TrainerOptions.on_step_batch).
class SampleLog {
 public:
  explicit SampleLog(const std::string& path) : out_(path, std::ios::app) {}
  bool ok() const { return out_.good(); }
  void Write(const Assignment& a, int32_t epoch, int64_t step,
             const int32_t* indices, int32_t count) {
    std::string line = absl::StrCat(a.job_id(), " ", epoch, " ", step, " ",
                                    a.rank());
    for (int32_t i = 0; i < count; ++i) absl::StrAppend(&line, " ", indices[i]);
    line += '\n';
    absl::MutexLock lock(&mu_);
    out_ << line << std::flush;
  }

 private:
  absl::Mutex mu_;
  std::ofstream out_ ABSL_GUARDED_BY(mu_);
};

int Main() {
  absl::StatusOr<MembershipOptions> member =
      MembershipOptionsFromFlags(MembershipOptions::Role::kWorker);
  if (!member.ok()) {
    Log()->error("{}", std::string(member.status().message()));
    return 2;
  }
  kernels::DeviceOptions device_options;
  device_options.blas_threads = absl::GetFlag(FLAGS_blas_threads);
  device_options.cuda_bf16_gemm = absl::GetFlag(FLAGS_bf16_gemm);
  absl::StatusOr<kernels::SelectedBackend> selected =
      kernels::CreateBackendForDevice(absl::GetFlag(FLAGS_device),
                                      device_options);
  if (!selected.ok()) {
    Log()->error("{}", std::string(selected.status().message()));
    return 2;
  }
  MetricsRegistry metrics;
  AddProcessMetrics(&metrics);
  TrainerMetrics trainer_metrics(&metrics);
  auto metrics_server = ServeMetrics(&metrics);
  if (!metrics_server.ok()) return StartupError(metrics_server.status());
  Log()->info("device: {} ({})", selected->backend->Name(), selected->reason);
  // The first rank trained uses this backend; each further one (an
  // elastic job's worker holding several) gets one of its own.
  absl::Mutex first_mu;
  std::unique_ptr<kernels::Backend> first = std::move(selected->backend);
  auto backends = [&]() -> absl::StatusOr<std::unique_ptr<kernels::Backend>> {
    {
      absl::MutexLock lock(&first_mu);
      if (first != nullptr) return std::move(first);
    }
    PSD_ASSIGN_OR_RETURN(
        kernels::SelectedBackend more,
        kernels::CreateBackendForDevice(absl::GetFlag(FLAGS_device),
                                        device_options));
    return std::move(more.backend);
  };

  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  auto rpc = StartRpcServer(rpc_options, {});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  std::string advertised = absl::GetFlag(FLAGS_advertise);
  if (advertised.empty()) {
    advertised = AdvertisedAddress(rpc_options.listen_address, rpc->port);
  }

  TrainerOptions trainer;
  trainer.data_dir = absl::GetFlag(FLAGS_data_dir);
  trainer.metrics = &trainer_metrics;
  trainer.test_slow_ms_per_step = absl::GetFlag(FLAGS_test_slow_ms_per_step);
  trainer.overlap_push = absl::GetFlag(FLAGS_overlap_push);
  trainer.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  trainer.pull_with_push = absl::GetFlag(FLAGS_pull_with_push);
  trainer.call_per_shard = absl::GetFlag(FLAGS_call_per_shard);
  if (trainer.shared_memory) {
    // Regions left by workers that crashed before unlinking theirs.
    if (const int removed = SharedMemory::RemoveStale(); removed > 0) {
      Log()->info("removed {} shared-memory regions of workers no longer "
                  "running", removed);
    }
  }
  std::unique_ptr<SampleLog> sample_log;
  if (const std::string path = absl::GetFlag(FLAGS_sample_log); !path.empty()) {
    sample_log = std::make_unique<SampleLog>(path);
    if (!sample_log->ok()) {
      Log()->error("--sample_log: cannot open {} for appending", path);
      return 2;
    }
    trainer.on_step_batch = [&sample_log](const Assignment& a, int32_t epoch,
                                           int64_t step, const int32_t* idx,
                                           int32_t n) {
      sample_log->Write(a, epoch, step, idx, n);
    };
  }
  WorkerAgent agent(trainer, backends);
  MembershipOptions options = *std::move(member);
  options.advertised_address = advertised;
  options.fill_register = [&agent](RegisterRequest* r) { agent.FillRegister(r); };
  options.fill_heartbeat = [&agent](HeartbeatRequest* r) { agent.FillHeartbeat(r); };
  Membership membership(
      options, [&agent](const HeartbeatResponse& r) { agent.OnHeartbeat(r); });
  absl::Status joined = membership.Start();
  if (!joined.ok()) {
    Log()->error("{}", joined.ToString());
    rpc->server->Shutdown();
    return 1;
  }
  agent.Start(&membership);
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file);
      !port_file.empty()) {
    if (absl::Status written =
            WriteFileAtomically(port_file, std::to_string(rpc->port));
        !written.ok()) {
      Log()->error("--port_file: {}", written.ToString());
      rpc->server->Shutdown();
      return 1;
    }
  }
  const int sig = WaitForShutdownSignal();
  // Preemption (a spot instance's notice): finish the steps in flight,
  // push them, hand the ranks back, then go.
  Log()->info("signal {}: releasing ranks (at most --leave_timeout_ms {})",
              sig, absl::GetFlag(FLAGS_leave_timeout_ms));
  agent.Leave(absl::Milliseconds(absl::GetFlag(FLAGS_leave_timeout_ms)));
  rpc->health->Shutdown();
  rpc->server->Shutdown(DeadlineIn(std::chrono::seconds(2)));
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"psd_worker", "worker",
       "A psd training worker (stateless).\n"
       "  psd_worker --coordinator=HOST:PORT [--data_dir=DIR] [--device=cpu]\n"
       "Registers with the coordinator, trains the rank of a job it is given\n"
       "(pull parameters, compute gradients, push them), then waits for the\n"
       "next job; in an elastic job, the ranks it is given as workers join\n"
       "and leave. Serves gRPC health and reflection, and Prometheus metrics\n"
       "with --metrics_listen. SIGINT/SIGTERM: it finishes the step in\n"
       "flight, pushes it, hands its ranks back and exits (within\n"
       "--leave_timeout_ms)."},
      psd::Main);
}
