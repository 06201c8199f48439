// Serves a MetricsRegistry over HTTP or HTTPS for Prometheus: GET /metrics.
#ifndef PSD_COMMON_METRICS_HTTP_H_
#define PSD_COMMON_METRICS_HTTP_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/metrics.h"

namespace psd {

// An HTTP server (cpp-httplib) answering GET /metrics with
// registry->RenderPrometheusText() (Content-Type "text/plain;
// version=0.0.4"), on threads of its own. Destroying it stops serving and
// joins those threads. Does not own the registry, which must outlive it.
// Thread-safe.
//
// Example:
//   PSD_ASSIGN_OR_RETURN(auto metrics,
//                        MetricsServer::Start("127.0.0.1:0", &registry));
//   Log()->info("metrics on port {}", metrics->port());
class MetricsServer {
 public:
  // HTTPS instead of HTTP: the server's certificate chain and key (PEM
  // files), read once at start. Scrapers need no client certificate.
  struct Https {
    std::string cert_file;
    std::string key_file;
  };

  // Binds `listen` (host:port; port 0 lets the OS choose) and starts
  // serving, over HTTPS when `https` is given. Errors: INVALID_ARGUMENT for
  // a malformed address or a certificate or key that cannot be loaded,
  // UNAVAILABLE "cannot listen on ..." when it cannot be bound (e.g.
  // already in use).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, MetricsRegistry* registry,
      const std::optional<Https>& https = std::nullopt);

  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The bound port.
  int port() const;

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// For a binary's main(): starts a MetricsServer on `listen` (over HTTPS
// when `https` is given) and returns it, or returns nullptr when `listen`
// is empty (metrics off). Logs one line
// with the address, and writes the bound port to `port_file` unless it is
// empty. Errors: those of MetricsServer::Start, prefixed with the flag name
// "--metrics_listen"; UNAVAILABLE when the port file cannot be written.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsEndpoint(
    const std::string& listen, const std::string& port_file,
    MetricsRegistry* registry,
    const std::optional<MetricsServer::Https>& https = std::nullopt);

}  // namespace psd

#endif  // PSD_COMMON_METRICS_HTTP_H_
