// The prologue that psd_server, psd_coordinator and psd_worker share: their
// common flags, flag parsing and --help, logging, shutdown signals and the
// metrics endpoint. Flags a binary has alone (and those whose default or
// help text differs between binaries, such as --listen and --port_file)
// stay in its own main file.
//
// The flags defined here, in every binary that links this library:
//   --log_level          trace, debug, info, warn, error or off (default info)
//   --metrics_listen     host:port of the Prometheus endpoint; empty: none
//   --metrics_port_file  where to write the metrics endpoint's bound port
//
// Example (a main file, less its own flags and services):
//   int Main() {
//     MetricsRegistry metrics;
//     AddProcessMetrics(&metrics);
//     auto metrics_server = ServeMetrics(&metrics);
//     if (!metrics_server.ok()) return StartupError(metrics_server.status());
//     auto rpc = StartRpcServer(rpc_options, {&service});
//     if (!rpc.ok()) { Log()->error("{}", rpc.status().ToString()); return 1; }
//     return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
//                                     std::chrono::seconds(5));
//   }
//   int main(int argc, char** argv) {
//     return psd::RunProcess(argc, argv,
//                            {"psd_thing", "thing", "A psd thing.\n..."},
//                            psd::Main);
//   }
#ifndef PSD_COMMON_PROCESS_MAIN_H_
#define PSD_COMMON_PROCESS_MAIN_H_

#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "common/metrics_http.h"

namespace psd {

// What RunProcess needs to know of a binary.
struct ProcessSpec {
  // The binary's name, e.g. "psd_server". --help lists the flags of the file
  // named after it (<program>.cc, as absl does by default) and the shared
  // flags defined in common/; it also prefixes an error printed before
  // logging is set up.
  std::string program;
  // The name of its spdlog logger, e.g. "server" (see SetUpLogging).
  std::string logger;
  // The usage text --help prints first (absl::SetProgramUsageMessage).
  std::string usage;
};

// Runs a binary's main(): TuneAllocator(), BlockShutdownSignals(), the
// usage text and --help configuration, absl::ParseCommandLine (which exits
// the process for --help and for a bad flag, as absl does), then
// SetUpLogging(spec.logger, --log_level), then `body`. Returns body's exit
// code, or 2 (after printing "<program>: <error>" to stderr) when
// --log_level is not a level.
// REQUIRES: called once, first thing in main(), before any thread starts.
int RunProcess(int argc, char** argv, const ProcessSpec& spec,
               absl::FunctionRef<int()> body);

// Serves `registry` over HTTP (GET /metrics) as --metrics_listen and
// --metrics_port_file ask, with StartMetricsEndpoint: nullptr when
// --metrics_listen is empty. Over HTTPS, with the process's certificate
// and key, when it runs mutual TLS (common/transport_security.h). The registry must outlive the server.
// Errors: those of StartMetricsEndpoint (INVALID_ARGUMENT for a malformed
// --metrics_listen, UNAVAILABLE when it cannot be bound or the port file
// cannot be written).
absl::StatusOr<std::unique_ptr<MetricsServer>> ServeMetrics(
    MetricsRegistry* registry);

// Logs `status`, an error that stops the process while it starts, and
// returns the exit code for it: 2 for INVALID_ARGUMENT (a bad flag value),
// 1 for any other error.
int StartupError(const absl::Status& status);

}  // namespace psd

#endif  // PSD_COMMON_PROCESS_MAIN_H_
