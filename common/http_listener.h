// Runs a cpp-httplib server on a port and a thread of its own: the part
// that psd's HTTP endpoints (common/metrics_http.h, psd_serve's OIP
// HTTP/JSON API) share.
#ifndef PSD_COMMON_HTTP_LISTENER_H_
#define PSD_COMMON_HTTP_LISTENER_H_

#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace psd {

class HttpListener {
 public:
  // Binds `server` (routes and options set; its socket options are
  // replaced by SO_REUSEADDR without SO_REUSEPORT, so that a second
  // process cannot share the port) to `listen`, host:port (port 0 lets the
  // OS choose; "[::1]:p" for IPv6; an empty host is 0.0.0.0), and runs its
  // accept loop on a new thread. `what` names the endpoint in errors.
  // Errors: INVALID_ARGUMENT "<what> address \"...\": want host:port" for
  // a malformed address; UNAVAILABLE "cannot listen on ... for <what>"
  // when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpListener>> Start(
      std::unique_ptr<httplib::Server> server, const std::string& listen,
      const std::string& what);

  // Stops the server and joins its threads.
  ~HttpListener();
  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;

  // The bound port.
  int port() const { return port_; }

 private:
  HttpListener() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> exited_{false};  // listen_after_bind returned
  int port_ = 0;
};

}  // namespace psd

#endif  // PSD_COMMON_HTTP_LISTENER_H_
