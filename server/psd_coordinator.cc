// psd_coordinator: accepts jobs, tracks servers and workers, assigns ranks
// and parameter shards, and publishes the cluster view.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/process.h"
#include "common/rpc.h"
#include "server/coordinator_service.h"
#include "server/coordinator_state.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "Address to serve gRPC on; port 0 lets the OS choose.");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound port to this file once serving.");
ABSL_FLAG(int, heartbeat_timeout_ms, 3000,
          "Remove a server or worker that sent no heartbeat for this long, ms.");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug, info, warn, error or off.");

namespace psd {
namespace {

int Main() {
  absl::Status logging =
      SetUpLogging("coordinator", absl::GetFlag(FLAGS_log_level));
  if (!logging.ok()) {
    std::fprintf(stderr, "psd_coordinator: %s\n", logging.ToString().c_str());
    return 2;
  }
  CoordinatorOptions options;
  options.heartbeat_timeout_ms = absl::GetFlag(FLAGS_heartbeat_timeout_ms);
  CoordinatorState state(options);
  MembershipService membership(&state);
  JobControlService jobs(&state);
  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  auto rpc = StartRpcServer(rpc_options, {&membership, &jobs});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  state.Start();
  Log()->info("serving psd.v1.Coordinator and psd.v1.JobService on {}",
              AdvertisedAddress(rpc_options.listen_address, rpc->port));
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(5));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  psd::TuneAllocator();
  psd::BlockShutdownSignals();
  absl::SetProgramUsageMessage(
      "The psd coordinator.\n"
      "  psd_coordinator [--listen=127.0.0.1:0] [--port_file=FILE]\n"
      "Serves psd.v1.Coordinator (membership, cluster view) and\n"
      "psd.v1.JobService (SubmitJob, GetJob, ListJobs, CancelJob) plus gRPC\n"
      "health and reflection. SIGINT/SIGTERM shut it down gracefully.");
  absl::ParseCommandLine(argc, argv);
  return psd::Main();
}
