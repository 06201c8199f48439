// Control calls from the coordinator to parameter servers: one call with a
// deadline, and the retried form for idempotent calls. Private to the
// coordinator.
#ifndef PSD_SERVER_COORDINATOR_SERVER_CALLS_H_
#define PSD_SERVER_COORDINATOR_SERVER_CALLS_H_

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/process.h"
#include "common/proto.h"
#include "common/rpc.h"

namespace psd {

// Calls one RPC of a parameter server (its ParameterServer or
// EmbeddingServer service), with a deadline `timeout` from now.
template <typename Stub, typename Request, typename Response>
grpc::Status CallServer(Stub* stub,
                        grpc::Status (Stub::*method)(
                            grpc::ClientContext*, const Request&, Response*),
                        const Request& request, Response* response,
                        std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(timeout));
  return (stub->*method)(&context, request, response);
}

// CallServer for an idempotent control call (CreateJob with the same
// config, SetView, GetServerStatus, ListSnapshots: a repeat changes
// nothing): an attempt that fails UNAVAILABLE (unreachable, a DNS error) or
// DEADLINE_EXCEEDED (one slow answer) is made again after a backoff that
// doubles from 100 ms up to 2 s, until `budget` has passed since the first.
// The last failure's message says how many attempts were made.
template <typename Stub, typename Request, typename Response>
grpc::Status CallIdempotent(Stub* stub,
                            grpc::Status (Stub::*method)(
                                grpc::ClientContext*, const Request&, Response*),
                            const Request& request, Response* response,
                            std::chrono::milliseconds timeout,
                            std::chrono::milliseconds budget) {
  const auto give_up = std::chrono::steady_clock::now() + budget;
  auto backoff = std::chrono::milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    grpc::Status status = CallServer(stub, method, request, response, timeout);
    const bool transient =
        status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!transient) return status;
    if (std::chrono::steady_clock::now() + backoff >= give_up) {
      return grpc::Status(
          status.error_code(),
          absl::StrCat(status.error_message(), " (", attempt,
                       " attempts over ", budget.count(), " ms)"));
    }
    Log()->warn("control call failed ({}: {}); attempt {} in {} ms",
                static_cast<int>(status.error_code()), status.error_message(),
                attempt + 1, backoff.count());
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

// One channel per server address for the coordinator's calls to servers
// (views, failover, replica repair, resharding), kept between calls: a new channel per call is a new DNS
// resolution, TCP connection and TLS handshake each time, and on a network
// whose DNS loses a datagram, a call that waits for an address. Only a
// READY channel is reused. Any other is replaced by a new one, which
// resolves the name again: a server restarted under the same name may have
// a new address (a restarted container does), and a channel that lost its
// connection keeps connecting to the address it resolved then, or waits out
// its reconnect backoff (up to 120 s). A call through a channel that failed
// UNAVAILABLE or DEADLINE_EXCEEDED drops it (a READY channel to a peer that
// vanished without closing its connections stays READY).
class ServerChannels {
 public:
  std::unique_ptr<ParameterServer::Stub> Stub(const std::string& address) {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<grpc::Channel>& channel = channels_[address];
    if (channel == nullptr || channel->GetState(false) != GRPC_CHANNEL_READY) {
      channel = MakeChannel(address);
    }
    return ParameterServer::NewStub(channel);
  }

  void Done(const std::string& address, const grpc::Status& status) {
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
        status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return;
    }
    absl::MutexLock lock(&mu_);
    channels_.erase(address);
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_
      ABSL_GUARDED_BY(mu_);
};

// Process-wide (channels are per address and thread-safe), never destroyed.
inline ServerChannels& Channels() {
  static ServerChannels* const channels = new ServerChannels;
  return *channels;
}

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_SERVER_CALLS_H_
