// Joining the cluster: how a psd_server or psd_worker registers with the
// coordinator and keeps its membership alive with heartbeats.
#ifndef PSD_COMMON_MEMBERSHIP_H_
#define PSD_COMMON_MEMBERSHIP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/proto.h"

namespace psd {

struct MembershipOptions {
  // Coordinator address, host:port. Required.
  std::string coordinator;
  // Address this member serves gRPC on, as others should dial it.
  std::string advertised_address;
  enum class Role { kServer, kWorker };
  Role role = Role::kServer;
  // Give up registering after this long. Default: 10 s.
  int connect_timeout_ms = 10000;
  // Period of heartbeats. Default: 250 ms.
  int heartbeat_ms = 250;
  // Adds what the member reports about itself to every registration
  // (server uid, live jobs, a worker's current rank) and heartbeat
  // (snapshot failures). Called on the registering / heartbeat thread.
  std::function<void(RegisterRequest*)> fill_register;
  std::function<void(HeartbeatRequest*)> fill_heartbeat;
};

// Registers on Start() and sends heartbeats from its own thread until
// destroyed. A heartbeat answered NOT_FOUND (the coordinator forgot us, for
// example after it restarted) registers again. Thread-safe.
class Membership {
 public:
  // Called on the heartbeat thread with every heartbeat response.
  using Listener = std::function<void(const HeartbeatResponse&)>;

  Membership(MembershipOptions options, Listener listener);
  ~Membership();  // stops the heartbeat thread

  // Registers, retrying with backoff until connect_timeout_ms. Errors:
  // UNAVAILABLE "cannot reach the coordinator at ...", or the coordinator's
  // refusal (e.g. FAILED_PRECONDITION for a protocol version mismatch).
  absl::Status Start();

  // This member's id. REQUIRES: Start() returned OK.
  std::string member_id() const;

  // The coordinator stub, for other calls (e.g. ReportProgress).
  Coordinator::Stub* coordinator() { return stub_.get(); }

 private:
  absl::Status RegisterOnce(int timeout_ms);
  void HeartbeatLoop();

  const MembershipOptions options_;
  const Listener listener_;
  const std::unique_ptr<Coordinator::Stub> stub_;
  absl::Notification stop_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::string member_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_COMMON_MEMBERSHIP_H_
