#include "common/process_main.h"

#include <cstdio>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/process.h"
#include "common/transport_security.h"

ABSL_FLAG(std::string, metrics_listen, "",
          "Address to serve Prometheus metrics on (GET /metrics), host:port; "
          "port 0 lets the OS choose. Empty: no metrics endpoint.");
ABSL_FLAG(std::string, metrics_port_file, "",
          "If set, write the bound metrics port to this file.");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug, info, warn, error or off.");

namespace psd {
namespace {

// Whether --help (and --helpshort, --helppackage, --help=substring) lists
// the flags defined in `file`: those of the binary's own main file, named
// after the program as absl expects by default (<program>.cc,
// <program>-main.cc or <program>_main.cc), and the flags the binaries share,
// defined in common/ (this file's).
bool IsHelpFile(absl::string_view program, absl::string_view file) {
  if (absl::StartsWith(file, "common/")) return true;
  const size_t slash = file.rfind('/');
  absl::string_view base =
      slash == absl::string_view::npos ? file : file.substr(slash + 1);
  if (!absl::ConsumePrefix(&base, program)) return false;
  return absl::StartsWith(base, ".") || absl::StartsWith(base, "-main.") ||
         absl::StartsWith(base, "_main.");
}

}  // namespace

int RunProcess(int argc, char** argv, const ProcessSpec& spec,
               absl::FunctionRef<int()> body) {
  TuneAllocator();
#ifndef PSD_MUTEX_DEADLOCK_DETECTION
  // Debian's abseil is built without NDEBUG, so absl::Mutex checks every
  // lock order against a graph of all locks held (1.5-3% of a quick
  // start's CPU, on every push's path). That is abseil's debug-build
  // default; a release build's is off, as here. The sanitizer builds
  // (.bazelrc) keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  BlockShutdownSignals();
  absl::SetProgramUsageMessage(spec.usage);
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [program = spec.program](absl::string_view f) {
    return IsHelpFile(program, f);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.contains_helppackage_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  absl::Status logging =
      SetUpLogging(spec.logger, absl::GetFlag(FLAGS_log_level));
  if (!logging.ok()) {
    std::fprintf(stderr, "%s: %s\n", spec.program.c_str(),
                 logging.ToString().c_str());
    return 2;
  }
  absl::Status security = ConfigureTransportSecurityFromFlags(
      PlaintextPolicy::kRequireInsecureFlag);
  if (!security.ok()) return StartupError(security);
  return body();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> ServeMetrics(
    MetricsRegistry* registry) {
  std::optional<MetricsServer::Https> https;
  if (const TlsOptions* tls = ConfiguredTls(); tls != nullptr) {
    https = MetricsServer::Https{tls->cert_file, tls->key_file};
  }
  return StartMetricsEndpoint(absl::GetFlag(FLAGS_metrics_listen),
                              absl::GetFlag(FLAGS_metrics_port_file), registry,
                              https);
}

int StartupError(const absl::Status& status) {
  Log()->error("{}", status.ToString());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace psd
