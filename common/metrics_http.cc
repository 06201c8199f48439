#include "common/metrics_http.h"

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "common/http_listener.h"
#include "common/process.h"

namespace psd {

namespace {

// Scrapes are rare and small: two handler threads are plenty.
constexpr size_t kHandlerThreads = 2;

}  // namespace

struct MetricsServer::Impl {
  std::unique_ptr<HttpListener> listener;
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() = default;

int MetricsServer::port() const { return impl_->listener->port(); }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, MetricsRegistry* registry,
    const std::optional<Https>& https) {
  std::unique_ptr<httplib::Server> http;
  if (https.has_value()) {
    auto ssl = std::make_unique<httplib::SSLServer>(https->cert_file.c_str(),
                                                    https->key_file.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTPS: cannot load the certificate ", https->cert_file,
                       " with the key ", https->key_file));
    }
    http = std::move(ssl);
  } else {
    http = std::make_unique<httplib::Server>();
  }
  http->new_task_queue = [] { return new httplib::ThreadPool(kHandlerThreads); };
  http->Get("/metrics",
            [registry](const httplib::Request&, httplib::Response& response) {
              response.set_content(registry->RenderPrometheusText(),
                                   "text/plain; version=0.0.4; charset=utf-8");
            });
  http->Get("/", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("psd: metrics are at /metrics\n", "text/plain");
  });
  auto impl = std::make_unique<Impl>();
  auto listener = HttpListener::Start(std::move(http), listen, "metrics");
  if (!listener.ok()) return listener.status();
  impl->listener = *std::move(listener);
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsEndpoint(
    const std::string& listen, const std::string& port_file,
    MetricsRegistry* registry,
    const std::optional<MetricsServer::Https>& https) {
  if (listen.empty()) return nullptr;
  auto server = MetricsServer::Start(listen, registry, https);
  if (!server.ok()) {
    return absl::Status(
        server.status().code(),
        absl::StrCat("--metrics_listen: ", server.status().message()));
  }
  const size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  Log()->info("serving Prometheus metrics on {}://{}:{}/metrics",
              https.has_value() ? "https" : "http", host, (*server)->port());
  if (!port_file.empty()) {
    absl::Status written =
        WriteFileAtomically(port_file, absl::StrCat((*server)->port()));
    if (!written.ok()) return written;
  }
  return server;
}

}  // namespace psd
