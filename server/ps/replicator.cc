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
  retry_thread_ = std::thread([this] { RetryLoop(); });
}

struct Replicator::Call {
  Pending pending;
  grpc::ClientContext context;
  ReplicateResponse response;
  std::chrono::steady_clock::time_point start;
};

void Replicator::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  for (Call* call : in_flight_) call->context.TryCancel();
  mu_.Await(absl::Condition(
      +[](std::set<Call*>* calls) { return calls->empty(); }, &in_flight_));
}

Replicator::~Replicator() {
  Stop();
  retry_thread_.join();
}

void Replicator::Send(ReplicationTask task) {
  Start(Pending{std::move(task), absl::InfinitePast(), 0});
}

ParameterServer::Stub* Replicator::StubFor(const std::string& address) {
  auto& stub = stubs_[address];
  if (!stub) stub = ParameterServer::NewStub(MakeChannel(address));
  return stub.get();
}

void Replicator::Start(Pending pending) {
  auto* call = new Call{std::move(pending)};
  ParameterServer::Stub* stub;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      delete call;
      return;
    }
    in_flight_.insert(call);
    stub = StubFor(call->pending.task.address);
  }
  call->context.set_deadline(
      DeadlineIn(std::chrono::milliseconds(options_.call_timeout_ms)));
  call->start = std::chrono::steady_clock::now();
  stub->async()->Replicate(&call->context, call->pending.task.request.get(),
                           &call->response,
                           [this, call](grpc::Status status) {
                             Done(call, status);
                           });
}

void Replicator::Done(Call* call, const grpc::Status& status) {
  std::unique_ptr<Call> owned(call);
  Pending& pending = call->pending;
  if (calls_ != nullptr) {
    calls_->Increment();
    bytes_->Increment(pending.task.request->ByteSizeLong());
    latency_->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                      call->start)
            .count());
    if (!status.ok()) errors_->Increment();
  }
  bool stopping;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
  }
  std::optional<int64_t> again;
  const absl::Status result = FromGrpcStatus(status);
  // Settled unless stopping (the store may be going away with us).
  if (!stopping) again = settle_(pending.task, result);
  absl::MutexLock lock(&mu_);
  in_flight_.erase(call);
  if (!again.has_value() || stopping_) return;
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
                pending.task.address, pending.attempts + 1, result.ToString());
  }
  const int backoff =
      std::min(options_.max_backoff_ms,
               options_.first_backoff_ms << std::min(pending.attempts, 10));
  pending.attempts++;
  pending.not_before = absl::Now() + absl::Milliseconds(backoff);
  retries_.push_back(std::move(pending));
}

void Replicator::RetryLoop() {
  while (true) {
    Pending pending;
    {
      absl::MutexLock lock(&mu_);
      // The first retry that is due, else wait (a short while: one may
      // come due, or a new one arrive).
      while (true) {
        if (stopping_) return;
        const absl::Time now = absl::Now();
        auto due = std::find_if(retries_.begin(), retries_.end(),
                                [&](const Pending& p) { return p.not_before <= now; });
        if (due != retries_.end()) {
          pending = std::move(*due);
          retries_.erase(due);
          break;
        }
        mu_.AwaitWithTimeout(
            absl::Condition(+[](bool* stopping) { return *stopping; }, &stopping_),
            absl::Milliseconds(retries_.empty() ? 100 : 5));
      }
    }
    Start(std::move(pending));
  }
}

}  // namespace psd
