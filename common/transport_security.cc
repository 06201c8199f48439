#include "common/transport_security.h"

#include <fstream>
#include <sstream>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/auth_tokens.h"
#include "common/authorization.h"
#include "common/process.h"

ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM file of the CA certificate(s) that sign psd certificates. With "
          "--tls_cert_file and --tls_key_file: mutual TLS on every port and "
          "channel, callers checked by the role in their certificate's URI "
          "SAN spiffe://psd/<role>[/<name>].");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM file of this process's certificate (chain).");
ABSL_FLAG(std::string, tls_key_file, "", "PEM file of its private key.");
ABSL_FLAG(int, tls_refresh_s, 60,
          "Seconds between re-reads of the three --tls_* files: a renewed "
          "certificate is used for new connections without a restart.");
ABSL_FLAG(bool, insecure, false,
          "Plaintext without identities: any program that reaches a port can "
          "call every method. Only for a trusted network; logs a warning. "
          "psd_coordinator, psd_server and psd_worker need it, or the three "
          "--tls_* flags.");
ABSL_FLAG(std::string, token_file, "",
          "Clients (psd_ctl): a file holding a bearer token to send with "
          "every call (see --auth_tokens_file). Needs --tls_ca_file; with it "
          "alone, no client certificate is shown.");

namespace psd {
namespace {

// Set once by ConfigureTls, before any thread (see the header); read-only
// afterwards.
struct TlsState {
  TlsOptions options;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  std::shared_ptr<grpc::ServerCredentials> server;
  std::shared_ptr<grpc::ChannelCredentials> channel;
};
TlsState* tls_state = nullptr;

// Checks that a server presents a psd identity fit to serve: coordinator,
// server, or serve (psd_serve's inference port). The chain was verified
// against the CA before this runs. Which of them a port should be is not
// checked per channel: the ports' callers are authorized by role on the
// other side (common/authorization.h), and a serve identity may not call
// any method that a worker, server or coordinator would send it.
class ServerIdentityVerifier final
    : public grpc::experimental::ExternalCertificateVerifier {
 public:
  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)>,
              grpc::Status* sync_status) override {
    std::vector<std::string> seen;
    for (const grpc::string_ref& uri : request->uri_names()) {
      std::string text(uri.data(), uri.size());
      std::optional<SpiffeId> id = ParseSpiffeId(text);
      if (id.has_value() &&
          (id->role == Role::kCoordinator || id->role == Role::kServer ||
           id->role == Role::kServe)) {
        *sync_status = grpc::Status::OK;
        return true;
      }
      seen.push_back(std::move(text));
    }
    *sync_status = grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        absl::StrCat("the peer's certificate is not a psd coordinator's, "
                     "server's or psd_serve's (URI SAN spiffe://psd/"
                     "coordinator, spiffe://psd/server or spiffe://psd/"
                     "serve); its URIs: ",
                     seen.empty() ? "none" : absl::StrJoin(seen, ", ")));
    return true;
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {
  }
};

// Reads `path` and checks it holds a PEM block, for an error at start
// rather than failed handshakes later. gRPC's file watcher reads it again.
absl::Status CheckPemFile(absl::string_view flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": cannot read '", path, "'"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (!absl::StrContains(text.str(), "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": '", path, "' holds no PEM block"));
  }
  return absl::OkStatus();
}

bool ValidName(absl::string_view name) {
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '_' && c != ':' && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kCoordinator:
      return "coordinator";
    case Role::kServer:
      return "server";
    case Role::kWorker:
      return "worker";
    case Role::kUser:
      return "user";
    case Role::kViewer:
      return "viewer";
    case Role::kAdmin:
      return "admin";
    case Role::kServe:
      return "serve";
  }
  return "unknown";
}

std::optional<SpiffeId> ParseSpiffeId(absl::string_view uri) {
  if (!absl::ConsumePrefix(&uri, "spiffe://psd/")) return std::nullopt;
  std::vector<absl::string_view> parts = absl::StrSplit(uri, '/');
  if (parts.empty() || parts.size() > 2) return std::nullopt;
  SpiffeId id;
  bool found = false;
  for (Role role : kAllRoles) {
    if (parts[0] == RoleName(role)) {
      id.role = role;
      found = true;
    }
  }
  if (!found) return std::nullopt;
  if (parts.size() == 2) {
    if (parts[1].empty() || !ValidName(parts[1])) return std::nullopt;
    id.name = std::string(parts[1]);
  }
  if ((id.role == Role::kUser || id.role == Role::kViewer ||
       id.role == Role::kAdmin) &&
      id.name.empty()) {
    return std::nullopt;
  }
  return id;
}

absl::Status ConfigureTls(const TlsOptions& options) {
  const bool identity = !options.cert_file.empty() || !options.key_file.empty();
  const struct {
    absl::string_view flag;
    const std::string* path;
  } files[] = {{"tls_ca_file", &options.ca_file},
               {"tls_cert_file", &options.cert_file},
               {"tls_key_file", &options.key_file}};
  for (const auto& file : files) {
    if (!identity && file.path != &options.ca_file) continue;
    absl::Status ok = CheckPemFile(file.flag, *file.path);
    if (!ok.ok()) return ok;
  }
  if (options.refresh_s < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_refresh_s: must be at least 1, got ", options.refresh_s));
  }
  auto* state = new TlsState;
  state->options = options;
  if (identity) {
    state->provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.key_file, options.cert_file, options.ca_file,
            options.refresh_s);
    grpc::experimental::TlsServerCredentialsOptions server(state->provider);
    server.watch_root_certs();
    server.watch_identity_key_cert_pairs();
    server.set_cert_request_type(
        GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
    state->server = grpc::experimental::TlsServerCredentials(server);
    if (state->server != nullptr) {
      state->server->SetAuthMetadataProcessor(
          MakeRoleAuthorizer(options.tokens));
    }
  } else {
    state->provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.ca_file, options.refresh_s);
  }

  grpc::experimental::TlsChannelCredentialsOptions channel;
  channel.set_certificate_provider(state->provider);
  channel.watch_root_certs();
  if (identity) channel.watch_identity_key_cert_pairs();
  channel.set_verify_server_certs(true);
  channel.set_check_call_host(false);
  channel.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<
          ServerIdentityVerifier>());
  state->channel = grpc::experimental::TlsCredentials(channel);
  if (state->channel != nullptr && !options.bearer_token.empty()) {
    state->channel = grpc::CompositeChannelCredentials(
        state->channel, grpc::AccessTokenCredentials(options.bearer_token));
  }
  if ((identity && state->server == nullptr) || state->channel == nullptr) {
    delete state;
    return absl::InvalidArgumentError(
        "--tls_*: gRPC refused the TLS options");
  }
  tls_state = state;
  return absl::OkStatus();
}

namespace {

// The bearer token in --token_file (its first line, trimmed).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  std::string token;
  if (!in || !std::getline(in, token)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token_file: cannot read '", path, "'"));
  }
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token_file: '", path, "' starts with an empty line"));
  }
  return token;
}

}  // namespace

absl::Status ConfigureTransportSecurityFromFlags(PlaintextPolicy policy) {
  TlsOptions options;
  options.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.refresh_s = absl::GetFlag(FLAGS_tls_refresh_s);
  const int given = !options.ca_file.empty() + !options.cert_file.empty() +
                    !options.key_file.empty();
  const bool insecure = absl::GetFlag(FLAGS_insecure);
  const bool quiet = policy == PlaintextPolicy::kAllowQuietly;
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  auto tokens = TokenTableFromFlags();
  if (!tokens.ok()) return tokens.status();
  options.tokens = *std::move(tokens);
  if (insecure && given > 0) {
    return absl::InvalidArgumentError(
        "--insecure: given with --tls_* flags; choose one");
  }
  // A client may show no certificate and authenticate with a token.
  const bool server_auth_only = quiet && given == 1 && !options.ca_file.empty();
  if (given > 0 && given < 3 && !server_auth_only) {
    return absl::InvalidArgumentError(
        "--tls_ca_file, --tls_cert_file, --tls_key_file: give all three for "
        "mutual TLS, or none and --insecure for plaintext");
  }
  if (given == 0 && (options.tokens != nullptr || !token_file.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.tokens != nullptr ? "--auth_tokens_file" : "--token_file",
        ": bearer tokens need TLS (--tls_ca_file, and --tls_cert_file and "
        "--tls_key_file on a process that listens)"));
  }
  if (!token_file.empty()) {
    auto token = ReadTokenFile(token_file);
    if (!token.ok()) return token.status();
    options.bearer_token = *std::move(token);
  }
  if (given > 0) {
    absl::Status configured = ConfigureTls(options);
    if (configured.ok() && !quiet) {
      Log()->info("mutual TLS: certificate {}, CA {}, re-read every {} s{}",
                  options.cert_file, options.ca_file, options.refresh_s,
                  options.tokens == nullptr
                      ? ""
                      : absl::StrCat("; ", options.tokens->size(),
                                     " bearer tokens"));
    }
    return configured;
  }
  if (quiet) return absl::OkStatus();
  if (!insecure) {
    return absl::InvalidArgumentError(
        "--tls_ca_file, --tls_cert_file, --tls_key_file: give all three for "
        "mutual TLS (deploy/make_certs.sh makes throwaway ones), or "
        "--insecure for plaintext");
  }
  Log()->warn(
      "--insecure: plaintext, no caller identities; any program that "
      "reaches a port can call every method");
  return absl::OkStatus();
}

const TlsOptions* ConfiguredTls() {
  return tls_state == nullptr ? nullptr : &tls_state->options;
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials() {
  // A client configured without a certificate has no server credentials;
  // it never listens.
  if (tls_state != nullptr && tls_state->server != nullptr) {
    return tls_state->server;
  }
  return grpc::InsecureServerCredentials();
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() {
  if (tls_state != nullptr) return tls_state->channel;
  return grpc::InsecureChannelCredentials();
}

}  // namespace psd
