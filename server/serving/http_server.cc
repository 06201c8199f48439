#include "server/serving/http_server.h"

#include <httplib.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/authorization.h"
#include "common/http_listener.h"
#include "common/transport_security.h"
#include "server/serving/oip_json.h"

namespace psd::serving {

namespace {

constexpr char kJson[] = "application/json";
// The largest request body: 128 rows of 784 numbers are about 2 MB of JSON.
constexpr size_t kMaxBody = size_t{64} << 20;
// "(/versions/{v})?" after a model name: matches[1] name, matches[2] version.
constexpr char kModel[] = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";

void Reply(httplib::Response& response, const grpc::Status& status,
           const std::string& ok_body) {
  response.status = HttpStatusOf(status.error_code());
  response.set_content(status.ok() ? ok_body : ErrorJson(status.error_message()),
                       kJson);
}

// The URI SAN of the client's verified certificate ("" when none).
std::string PeerUri(const httplib::Request& request) {
  if (request.ssl == nullptr) return "";
  X509* cert = SSL_get_peer_certificate(request.ssl);
  if (cert == nullptr) return "";
  std::string uri;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != GEN_URI) continue;
    const ASN1_STRING* s = name->d.uniformResourceIdentifier;
    uri.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
               ASN1_STRING_length(s));
    break;
  }
  GENERAL_NAMES_free(names);
  X509_free(cert);
  return uri;
}

}  // namespace

struct HttpServer::Impl {
  std::unique_ptr<HttpListener> listener;
  bool tls = false;
  InferenceService* service = nullptr;

  // OK when the caller may call `method` of inference.GRPCInferenceService
  // (always without TLS).
  grpc::Status Authorize(const httplib::Request& request,
                         const char* method) const {
    if (!tls) return grpc::Status::OK;
    const std::string uri = PeerUri(request);
    absl::Status allowed = AuthorizeCall(
        absl::StrCat("/inference.GRPCInferenceService/", method),
        ParseSpiffeId(uri), uri);
    if (allowed.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(allowed.code()),
                        std::string(allowed.message()));
  }

  void Routes(httplib::Server& s) {
    s.Get("/v2/health/live", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(R"({"live":true})", kJson);
    });
    s.Get("/v2/health/ready", [this](const httplib::Request&,
                                     httplib::Response& r) {
      inference::ServerReadyResponse ready;
      service->ServerReady(nullptr, nullptr, &ready);
      r.status = ready.ready() ? 200 : 503;
      r.set_content(ready.ready() ? R"({"ready":true})" : R"({"ready":false})",
                    kJson);
    });
    s.Get("/v2", [this](const httplib::Request& q, httplib::Response& r) {
      grpc::Status status = Authorize(q, "ServerMetadata");
      inference::ServerMetadataResponse metadata;
      if (status.ok()) status = service->ServerMetadata(nullptr, nullptr, &metadata);
      Reply(r, status, status.ok() ? ServerMetadataJson(metadata) : "");
    });
    s.Get(kModel, [this](const httplib::Request& q, httplib::Response& r) {
      grpc::Status status = Authorize(q, "ModelMetadata");
      inference::ModelMetadataRequest request;
      request.set_name(q.matches[1]);
      request.set_version(q.matches[2]);
      inference::ModelMetadataResponse metadata;
      if (status.ok()) status = service->ModelMetadata(nullptr, &request, &metadata);
      Reply(r, status, status.ok() ? ModelMetadataJson(metadata) : "");
    });
    s.Get(absl::StrCat(kModel, "/ready"),
          [this](const httplib::Request& q, httplib::Response& r) {
            grpc::Status status = Authorize(q, "ModelReady");
            inference::ModelReadyRequest request;
            request.set_name(q.matches[1]);
            request.set_version(q.matches[2]);
            inference::ModelReadyResponse ready;
            if (status.ok()) status = service->ModelReady(nullptr, &request, &ready);
            if (status.ok() && !ready.ready()) {
              status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                    "no version loaded yet");
            }
            Reply(r, status, R"({"ready":true})");
          });
    s.Post(absl::StrCat(kModel, "/infer"),
           [this](const httplib::Request& q, httplib::Response& r) {
             const absl::Time start = absl::Now();
             grpc::Status status = Authorize(q, "ModelInfer");
             inference::ModelInferRequest request;
             if (status.ok()) {
               absl::Status parsed =
                   ParseInferRequestJson(q.body, q.matches[1], q.matches[2], &request);
               if (!parsed.ok()) {
                 status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       std::string(parsed.message()));
               }
             }
             inference::ModelInferResponse response;
             if (status.ok()) {
               status = service->ModelInfer(nullptr, &request, &response);
             } else if (service->metrics() != nullptr) {
               // Refused before the service: counted here.
               service->metrics()->RecordRequest(status.error_code(),
                                                 absl::Now() - start);
             }
             Reply(r, status, status.ok() ? InferResponseJson(response) : "");
           });
    // Unknown paths and methods: httplib's 404/405, with a JSON body.
    s.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
      if (!r.body.empty()) return;
      r.set_content(ErrorJson(absl::StrCat(q.method, " ", q.path, ": HTTP ",
                                           r.status,
                                           " (see /v2/models/{name}/infer)")),
                    kJson);
    });
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// The listener stops and joins the handler threads.
HttpServer::~HttpServer() = default;

int HttpServer::port() const { return impl_->listener->port(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& listen, InferenceService* service, int threads,
    const std::optional<Tls>& tls) {
  if (threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_threads ", threads, ": want >= 1"));
  }
  auto impl = std::make_unique<Impl>();
  impl->service = service;
  std::unique_ptr<httplib::Server> http;
  if (tls.has_value()) {
    impl->tls = true;
    auto ssl = std::make_unique<httplib::SSLServer>([&tls](SSL_CTX& ctx) {
      SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
      // Requested and verified, not required (health probes show none).
      SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, nullptr);
      return SSL_CTX_use_certificate_chain_file(&ctx, tls->cert_file.c_str()) == 1 &&
             SSL_CTX_use_PrivateKey_file(&ctx, tls->key_file.c_str(),
                                         SSL_FILETYPE_PEM) == 1 &&
             SSL_CTX_check_private_key(&ctx) == 1 &&
             SSL_CTX_load_verify_locations(&ctx, tls->ca_file.c_str(),
                                           nullptr) == 1;
    });
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HTTPS: cannot load the certificate ", tls->cert_file, ", key ",
          tls->key_file, " and CA ", tls->ca_file));
    }
    http = std::move(ssl);
  } else {
    http = std::make_unique<httplib::Server>();
  }
  http->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http->set_payload_max_length(kMaxBody);
  http->set_keep_alive_max_count(size_t{1} << 30);
  // No Nagle: an answer goes out in two writes (headers, body), and Nagle
  // holding the second for the client's delayed ACK cost 40 ms a request.
  http->set_tcp_nodelay(true);
  impl->Routes(*http);
  auto listener = HttpListener::Start(std::move(http), listen, "HTTP");
  if (!listener.ok()) return listener.status();
  impl->listener = *std::move(listener);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

}  // namespace psd::serving
