#include "common/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/process.h"

namespace psd {

namespace {

// Scrapes are rare and small: two handler threads are plenty.
constexpr size_t kHandlerThreads = 2;

// Like httplib's default but without SO_REUSEPORT: a second process on the
// same port must fail to bind, not share it silently.
void SocketOptions(int sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

}  // namespace

struct MetricsServer::Impl {
  std::unique_ptr<httplib::Server> http;  // an httplib::SSLServer for HTTPS
  std::thread thread;
  std::atomic<bool> exited{false};  // listen_after_bind returned
  int port = 0;
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  impl_->http->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, MetricsRegistry* registry,
    const std::optional<Https>& https) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", listen, "\": want host:port (port 0 = any)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";

  auto impl = std::make_unique<Impl>();
  if (https.has_value()) {
    auto ssl = std::make_unique<httplib::SSLServer>(https->cert_file.c_str(),
                                                    https->key_file.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTPS: cannot load the certificate ", https->cert_file,
                       " with the key ", https->key_file));
    }
    impl->http = std::move(ssl);
  } else {
    impl->http = std::make_unique<httplib::Server>();
  }
  httplib::Server& http = *impl->http;
  http.new_task_queue = [] { return new httplib::ThreadPool(kHandlerThreads); };
  http.set_socket_options(SocketOptions);
  http.Get("/metrics",
           [registry](const httplib::Request&, httplib::Response& response) {
             response.set_content(registry->RenderPrometheusText(),
                                  "text/plain; version=0.0.4; charset=utf-8");
           });
  http.Get("/", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("psd: metrics are at /metrics\n", "text/plain");
  });
  const bool bound = port == 0 ? (port = http.bind_to_any_port(host)) > 0
                               : http.bind_to_port(host, port);
  if (!bound) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen,
                     " for metrics (address in use or not local?)"));
  }
  impl->port = port;
  impl->thread = std::thread([impl = impl.get()] {
    impl->http->listen_after_bind();
    impl->exited = true;
  });
  // stop() is a no-op until the listen loop runs: wait for it, so that the
  // destructor can always stop the thread.
  while (!http.is_running()) {
    if (impl->exited) {
      impl->thread.join();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", listen, " for metrics"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
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
