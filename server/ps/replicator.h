// Sends a primary's replication calls (ParameterServer.Replicate) to its
// backups, retrying each until the store says it is settled.
#ifndef PSD_SERVER_PS_REPLICATOR_H_
#define PSD_SERVER_PS_REPLICATOR_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/proto.h"
#include "server/ps/parameter_store.h"

namespace psd {

struct ReplicatorOptions {
  // Deadline of one Replicate call. Default: 2000 ms.
  int call_timeout_ms = 2000;
  // Backoff before retrying a failed call: doubles from the first value up
  // to the second. Defaults: 10 ms, 200 ms.
  int first_backoff_ms = 10;
  int max_backoff_ms = 200;
};

// Thread-safe. Send starts the call at once (gRPC callback API) on the
// caller's thread; `settle(task, status)` runs after every call, on gRPC's
// callback thread; when it returns an epoch the call is made again, in that
// view epoch, after a backoff, by the replicator's retry thread (a backup
// that is down is retried until the coordinator's next view drops it from
// the shard, which settles the task). Counts calls, bytes and errors in
// psd_server_replicate_* metrics.
class Replicator {
 public:
  using Settle = std::function<std::optional<int64_t>(const ReplicationTask&,
                                                       const absl::Status&)>;

  // `metrics` (not owned) may be null.
  Replicator(ReplicatorOptions options, Settle settle,
             MetricsRegistry* metrics);
  // Stops: calls in flight are cancelled (and not settled), retries not
  // made yet are dropped, and Send does nothing from then on. Returns once
  // no call is in flight (no `settle` runs after). Idempotent.
  void Stop();
  ~Replicator();  // Stop()
  Replicator(const Replicator&) = delete;
  Replicator& operator=(const Replicator&) = delete;

  // Starts a call. Never blocks.
  void Send(ReplicationTask task);

 private:
  struct Pending {
    ReplicationTask task;
    absl::Time not_before;
    int attempts = 0;
  };
  // One call in flight (defined in the .cc).
  struct Call;
  void Start(Pending pending);
  void Done(Call* call, const grpc::Status& status);
  // The retry thread: starts the calls in retries_ as they come due.
  void RetryLoop();
  ParameterServer::Stub* StubFor(const std::string& address)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ReplicatorOptions options_;
  const Settle settle_;
  Counter* calls_ = nullptr;
  Counter* errors_ = nullptr;
  Counter* bytes_ = nullptr;
  Histogram* latency_ = nullptr;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Pending> retries_ ABSL_GUARDED_BY(mu_);
  std::set<Call*> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<ParameterServer::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);
  std::thread retry_thread_;
};

}  // namespace psd

#endif  // PSD_SERVER_PS_REPLICATOR_H_
