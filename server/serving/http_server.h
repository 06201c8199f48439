// The Open Inference Protocol's HTTP/JSON form (KServe v2 REST), served
// with cpp-httplib in front of an InferenceService:
//   GET  /v2/health/live                                  200 {"live": true}
//   GET  /v2/health/ready                   200 {"ready": true}, or 503 false
//   GET  /v2                                               server metadata
//   GET  /v2/models/{name}[/versions/{v}]                  model metadata
//   GET  /v2/models/{name}[/versions/{v}]/ready  200 {"ready": true}, or 503
//   POST /v2/models/{name}[/versions/{v}]/infer            inference
// Bodies: oip_json.h. Errors: {"error": "..."} naming the field, with the
// HTTP status of the gRPC code the service gave (oip_json.h's
// HttpStatusOf: 400, 404, 429, 503...); 404 for any other path.
//
// Transport security: with `tls` set, HTTPS with the process's own
// certificate, client certificates requested and verified against the CA
// (but not required, like the gRPC port, so health probes need none), and
// every metadata and infer request authorized by the caller's SPIFFE
// identity with the same method table as gRPC (common/authorization.h:
// inference.GRPCInferenceService is for user, viewer, admin and worker);
// no certificate gets 401, a role not allowed 403. Bearer tokens are not
// taken over HTTP. The certificate is read once at start (the gRPC port
// re-reads it; restart psd_serve to rotate the HTTP one).
#ifndef PSD_SERVER_SERVING_HTTP_SERVER_H_
#define PSD_SERVER_SERVING_HTTP_SERVER_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "server/serving/inference_service.h"

namespace psd::serving {

class HttpServer {
 public:
  struct Tls {
    std::string ca_file;    // CA that signs client certificates (PEM)
    std::string cert_file;  // this server's chain (PEM)
    std::string key_file;   // its key (PEM)
  };

  // Binds `listen` (host:port; port 0 lets the OS choose) and serves
  // `service` (not owned; must outlive the server) on `threads` handler
  // threads (one per open connection: give at least the number of
  // concurrent keep-alive clients). Errors: INVALID_ARGUMENT for a
  // malformed address or certificates that cannot be loaded, UNAVAILABLE
  // when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& listen, InferenceService* service, int threads,
      const std::optional<Tls>& tls);

  // Stops serving and joins the handler threads.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_HTTP_SERVER_H_
