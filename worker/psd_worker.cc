// psd_worker: a stateless training worker. Registers with the coordinator,
// waits for a rank of a job, trains it (worker/trainer.h), then goes back to
// idle and waits for the next job.
#include <atomic>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/synchronization/mutex.h"
#include "common/member_flags.h"
#include "common/membership.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/rpc.h"
#include "common/shared_memory.h"
#include "kernels/device.h"
#include "kernels/kernels.h"
#include "worker/progress.h"
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
          "one call per partition per step does both (PushRequest.pull_next); "
          "false: a push and a pull call each (same results).");
ABSL_FLAG(int, test_slow_ms_per_step, 0,
          "FOR TESTS ONLY: sleep this many ms in every training step, to make "
          "this worker artificially slow (the SSP test). Default 0.");

namespace psd {
namespace {

// Receives assignments from heartbeats and runs them one at a time on its
// own thread. Thread-safe.
class WorkerAgent : public ViewSource {
 public:
  WorkerAgent(TrainerOptions options, kernels::Backend* backend)
      : options_(std::move(options)), backend_(backend) {
    options_.views = this;
  }

  ~WorkerAgent() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    cancel_ = true;
    if (thread_.joinable()) thread_.join();
  }

  void Start(Membership* membership) {
    membership_ = membership;
    thread_ = std::thread([this] { Run(); });
  }

  // Tells the coordinator which rank this worker trains, if any, so that a
  // restarted coordinator gives it back.
  void FillRegister(RegisterRequest* request) {
    absl::MutexLock lock(&mu_);
    if (current_job_.empty()) return;
    request->set_job_id(current_job_);
    request->set_rank(current_rank_);
  }

  // Names the assignment this worker holds, so that the coordinator leaves
  // it out of the answer while it is current (HeartbeatResponse.
  // assignment_held).
  void FillHeartbeat(HeartbeatRequest* request) {
    absl::MutexLock lock(&mu_);
    if (current_job_.empty() || !view_.has_value()) return;
    request->set_held_job_id(current_job_);
    request->set_held_view_epoch(view_->view_epoch());
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
        response.assignment().job_id() == current_job_ &&
        (!view_.has_value() ||
         response.assignment().view_epoch() > view_->view_epoch())) {
      view_ = response.assignment();
      latest_epoch_ = view_->view_epoch();
    }
    if (response.cancelled() && !current_job_.empty() && !cancel_) {
      Log()->warn("job {}: the coordinator says stop (cancelled, or a job it "
                  "no longer runs)", current_job_);
    }
    if (response.cancelled()) cancel_ = true;
    if (!response.has_assignment()) return;
    const std::string& id = response.assignment().job_id();
    if (id == current_job_ || finished_.count(id)) return;
    next_ = response.assignment();
  }

 private:
  void Run() {
    while (true) {
      Assignment assignment;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WorkerAgent* a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) {
              return a->stopping_ || a->next_.has_value();
            },
            this));
        if (stopping_) return;
        assignment = *std::move(next_);
        next_.reset();
        current_job_ = assignment.job_id();
        current_rank_ = assignment.rank();
        cancel_ = false;
        view_ = assignment;
        latest_epoch_ = assignment.view_epoch();
      }
      Log()->info("job {}: assigned rank {}", assignment.job_id(),
                  assignment.rank());
      absl::Status status = TrainRank(
          assignment, options_, backend_,
          [&](const ReportProgressRequest& p) { return Report(p); },
          &cancel_);
      if (status.ok()) {
        Log()->info("job {}: rank {} finished", assignment.job_id(),
                    assignment.rank());
      } else if (status.code() == absl::StatusCode::kCancelled) {
        Log()->info("job {}: rank {} stopped: {}", assignment.job_id(),
                    assignment.rank(), status.ToString());
      } else {
        Log()->error("job {}: rank {} failed: {}", assignment.job_id(),
                     assignment.rank(), status.ToString());
        ReportProgressRequest failure;
        failure.set_job_id(assignment.job_id());
        failure.set_rank(assignment.rank());
        failure.set_error(status.ToString());
        Report(failure);
      }
      absl::MutexLock lock(&mu_);
      finished_.insert(current_job_);
      current_job_.clear();
    }
  }

  // Sends progress; returns true when the job was cancelled. The last
  // report of a rank (done) is retried while the coordinator is away (up to
  // 2 minutes): it is what ends the job, and this worker keeps claiming its
  // rank (FillRegister) until it is delivered.
  bool Report(const ReportProgressRequest& request) {
    return SendProgress(membership_, request, cancel_);
  }

  TrainerOptions options_;  // constant after construction
  kernels::Backend* const backend_;
  std::atomic<int64_t> latest_epoch_{0};
  Membership* membership_ = nullptr;
  std::atomic<bool> cancel_{false};
  std::thread thread_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Assignment> next_ ABSL_GUARDED_BY(mu_);
  // The newest assignment of current_job_ (its view epoch may grow).
  std::optional<Assignment> view_ ABSL_GUARDED_BY(mu_);
  std::string current_job_ ABSL_GUARDED_BY(mu_);
  int32_t current_rank_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> finished_ ABSL_GUARDED_BY(mu_);
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
  std::unique_ptr<kernels::Backend> backend = std::move(selected->backend);
  Log()->info("device: {} ({})", backend->Name(), selected->reason);

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
  if (trainer.shared_memory) {
    // Regions left by workers that crashed before unlinking theirs.
    if (const int removed = SharedMemory::RemoveStale(); removed > 0) {
      Log()->info("removed {} shared-memory regions of workers no longer "
                  "running", removed);
    }
  }
  WorkerAgent agent(trainer, backend.get());
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
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(2));
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
       "next job. Serves gRPC health and reflection, and Prometheus metrics\n"
       "with --metrics_listen. SIGINT/SIGTERM stop it."},
      psd::Main);
}
