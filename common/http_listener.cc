#include "common/http_listener.h"

#include <sys/socket.h>

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace psd {

absl::StatusOr<std::unique_ptr<HttpListener>> HttpListener::Start(
    std::unique_ptr<httplib::Server> server, const std::string& listen,
    const std::string& what) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " address \"", listen, "\": want host:port (port 0 = any)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";

  std::unique_ptr<HttpListener> listener(new HttpListener);
  listener->server_ = std::move(server);
  httplib::Server& http = *listener->server_;
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  const bool bound = port == 0 ? (port = http.bind_to_any_port(host)) > 0
                               : http.bind_to_port(host, port);
  if (!bound) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen, " for ", what,
                     " (address in use or not local?)"));
  }
  listener->port_ = port;
  HttpListener* l = listener.get();
  listener->thread_ = std::thread([l] {
    l->server_->listen_after_bind();
    l->exited_ = true;
  });
  // stop() is a no-op until the listen loop runs: wait for it, so that the
  // destructor can always stop the thread.
  while (!http.is_running()) {
    if (listener->exited_) {
      listener->thread_.join();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", listen, " for ", what));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return listener;
}

HttpListener::~HttpListener() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace psd
