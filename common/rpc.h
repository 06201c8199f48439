// gRPC plumbing shared by every psd process: starting a server with the
// standard health service and reflection, and client channels tuned for
// bulk tensor transfer.
#ifndef PSD_COMMON_RPC_H_
#define PSD_COMMON_RPC_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/health.h"

namespace psd {

struct RpcServerOptions {
  // host:port to bind. Port 0 lets the OS choose (read it back from
  // RpcServer::port). Default: 127.0.0.1:0.
  std::string listen_address = "127.0.0.1:0";
  // Largest request or response, in bytes. Default: 64 MiB.
  int max_message_bytes = 64 << 20;
  // Upper bound on the sync server's handler threads. Default: 64.
  int max_threads = 64;
};

// A started gRPC server, with this process's transport security (mutual TLS
// and every call authorized, or plaintext: common/transport_security.h),
// that always serves grpc.health.v1.Health (status
// SERVING for "" and every registered service, described by reflection) and
// server reflection.
struct RpcServer {
  // Declared first: it outlives `server`.
  std::unique_ptr<HealthService> health;
  std::unique_ptr<grpc::Server> server;
  // The bound port.
  int port = 0;
};

// Binds and starts. `services` are not owned and must outlive the server.
// Errors: UNAVAILABLE naming the address when it cannot be bound (for
// example, already in use).
absl::StatusOr<RpcServer> StartRpcServer(
    const RpcServerOptions& options,
    const std::vector<grpc::Service*>& services);

// Channel arguments for tensor traffic: no message size limits, HTTP/2
// windows and frames raised, a subchannel pool per channel; a DNS name
// resolution that gets no answer fails after 6 s and is tried again 1 s
// later (gRPC's defaults: 120 s and 30 s). Add to them
// (e.g. a retry policy) and pass them to MakeChannel.
grpc::ChannelArguments ChannelArguments();

// A channel to host:port with `args` (default: ChannelArguments()), with
// this process's transport security (common/transport_security.h: mutual
// TLS, or plaintext).
std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& address,
    const grpc::ChannelArguments& args = ChannelArguments());

// now + timeout, for ClientContext::set_deadline.
inline std::chrono::system_clock::time_point DeadlineIn(
    std::chrono::milliseconds timeout) {
  return std::chrono::system_clock::now() + timeout;
}

// The end of every psd binary's main(): writes the bound port to `port_file`
// (unless empty) so launchers can find it, waits for SIGINT or SIGTERM, then
// shuts the server down, giving in-flight calls up to `drain` to finish.
// Returns the exit code: 0, or 1 when the port file cannot be written (the
// server is shut down at once then).
// REQUIRES: BlockShutdownSignals() was called before any thread started.
int ServeUntilShutdownSignal(RpcServer* rpc, const std::string& port_file,
                             std::chrono::milliseconds drain);

// "host:port" with the host of `listen_address` and the given port, for the
// address a process advertises when no --advertise is given. A wildcard
// host (0.0.0.0, [::], empty) becomes this machine's host name.
std::string AdvertisedAddress(const std::string& listen_address, int port);

}  // namespace psd

#endif  // PSD_COMMON_RPC_H_
