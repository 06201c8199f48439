#include "server/ps/replicator.h"

#include <algorithm>
#include <chrono>

#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"

namespace psd {

Replicator::Replicator(ReplicatorOptions options, Settle settle,
                       MetricsRegistry* metrics)
    : options_(options), settle_(std::move(settle)) {
  if (metrics != nullptr) {
    calls_ = metrics->AddCounter("psd_server_replicate_calls_total",
                                 "Replicate calls made to backups.");
    errors_ = metrics->AddCounter(
        "psd_server_replicate_errors_total",
        "Replicate calls that failed (each is retried while the backup is in "
        "the view).");
    bytes_ = metrics->AddCounter("psd_server_replicate_bytes_total",
                                 "Bytes of Replicate requests sent.");
    latency_ = metrics->AddHistogram(
        "psd_server_replicate_latency_seconds",
        "Time of one Replicate call to a backup, seconds.", LatencyBuckets());
  }
  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
}

Replicator::~Replicator() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void Replicator::Send(ReplicationTask task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(Pending{std::move(task), absl::InfinitePast(), 0});
}

ParameterServer::Stub* Replicator::StubFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (!stub) stub = ParameterServer::NewStub(MakeChannel(address));
  return stub.get();
}

void Replicator::Loop() {
  while (true) {
    Pending pending;
    {
      absl::MutexLock lock(&mu_);
      // The first task that is due, else wait (a short while: a retry may
      // come due, or a new task arrive).
      while (true) {
        if (stopping_) return;
        const absl::Time now = absl::Now();
        auto due = std::find_if(queue_.begin(), queue_.end(),
                                [&](const Pending& p) { return p.not_before <= now; });
        if (due != queue_.end()) {
          pending = std::move(*due);
          queue_.erase(due);
          break;
        }
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          if (stopping_) return true;
          for (const Pending& p : queue_) {
            if (p.not_before == absl::InfinitePast()) return true;
          }
          return false;
        };
        mu_.AwaitWithTimeout(absl::Condition(&ready),
                             absl::Milliseconds(queue_.empty() ? 1000 : 5));
      }
    }
    ParameterServer::Stub* stub = StubFor(pending.task.address);
    grpc::ClientContext context;
    context.set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.call_timeout_ms)));
    ReplicateResponse response;
    const auto start = std::chrono::steady_clock::now();
    grpc::Status status =
        stub->Replicate(&context, *pending.task.request, &response);
    if (calls_ != nullptr) {
      calls_->Increment();
      bytes_->Increment(pending.task.request->ByteSizeLong());
      latency_->Observe(std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - start)
                            .count());
      if (!status.ok()) errors_->Increment();
    }
    const absl::Status result = FromGrpcStatus(status);
    const std::optional<int64_t> again = settle_(pending.task, result);
    if (!again.has_value()) continue;
    if (*again != pending.task.request->view_epoch()) {
      // The primary moved to a newer view and still leads the shard.
      auto request = std::make_shared<ReplicateRequest>(*pending.task.request);
      request->set_view_epoch(*again);
      pending.task.request = std::move(request);
    }
    if (pending.attempts % 50 == 0) {
      Log()->warn("job {}: replicating step {} to {} failed (attempt {}), "
                  "retrying while it is in the view: {}",
                  pending.task.request->job_id(), pending.task.request->step(),
                  pending.task.address, pending.attempts + 1,
                  result.ToString());
    }
    const int backoff = std::min(
        options_.max_backoff_ms,
        options_.first_backoff_ms << std::min(pending.attempts, 10));
    pending.attempts++;
    pending.not_before = absl::Now() + absl::Milliseconds(backoff);
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(pending));
  }
}

}  // namespace psd
