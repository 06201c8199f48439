// Transport security of a psd process: mutual TLS with gRPC's own TLS
// credentials (grpc::experimental::TlsServerCredentials and TlsCredentials),
// certificates read from PEM files and re-read when they change (rotation,
// as cert-manager renews them), and SPIFFE-style identities.
//
// Identities. Every psd certificate carries one URI SAN of the form
//   spiffe://psd/<role>[/<name>]
// where <role> is coordinator, server, worker, user, viewer or admin, and
// <name> (optional for the first three) tells processes or people apart,
// e.g. spiffe://psd/user/alice. People without a certificate use bearer
// tokens instead (common/auth_tokens.h), which stand for the same roles. gRPC puts that URI in the call's AuthContext as
// "peer_spiffe_id"; common/authorization.h decides from it who may call
// which method.
//
// A process's security is one process-wide setting, like its host name: it
// is what its certificate says it is. main() sets it once from the flags
// below (ConfigureTransportSecurityFromFlags), before any channel or server
// exists; every StartRpcServer and MakeChannel (common/rpc.h) then uses it.
// A process that never sets it (the in-process tests) speaks plaintext.
//
// The flags, in every binary that links this library:
//   --tls_ca_file    PEM bundle of the CA(s) that sign psd certificates
//   --tls_cert_file  this process's certificate chain (PEM)
//   --tls_key_file   its private key (PEM)
//   --tls_refresh_s  how often the three files are re-read (default 60 s)
//   --insecure       plaintext, no identities: says that is intended
//   --auth_tokens_file  bearer tokens this process takes (auth_tokens.h)
//   --token_file     clients (psd_ctl): a file holding the bearer token to
//                    send; with --tls_ca_file alone (no client certificate)
#ifndef PSD_COMMON_TRANSPORT_SECURITY_H_
#define PSD_COMMON_TRANSPORT_SECURITY_H_

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace psd {

// What a peer is allowed to be, from its certificate.
// kUser submits jobs and acts on its own; kViewer only reads jobs; kAdmin
// acts on every job; kServe is psd_serve (server/serving), which serves
// inference and reads finished jobs' parameters (--coordinator --job).
enum class Role {
  kCoordinator,
  kServer,
  kWorker,
  kUser,
  kViewer,
  kAdmin,
  kServe
};

// Every role, in the order of the enum.
inline constexpr Role kAllRoles[] = {Role::kCoordinator, Role::kServer,
                                     Role::kWorker,      Role::kUser,
                                     Role::kViewer,      Role::kAdmin,
                                     Role::kServe};

// "coordinator", "server", "worker", "user", "viewer", "admin" or "serve".
absl::string_view RoleName(Role role);

// A parsed psd SPIFFE ID.
struct SpiffeId {
  Role role;
  // The part after the role, e.g. "alice" for spiffe://psd/user/alice; may
  // be empty for coordinator, server and worker.
  std::string name;
};

// Parses "spiffe://psd/<role>[/<name>]". nullopt for anything else: another
// scheme or trust domain, an unknown role, a person (user, viewer, admin)
// without a name,
// or a name with characters other than [A-Za-z0-9._:-].
std::optional<SpiffeId> ParseSpiffeId(absl::string_view uri);

class TokenTable;

struct TlsOptions {
  // PEM files. All three are needed for mutual TLS; a client (see
  // PlaintextPolicy::kAllowQuietly) may give ca_file alone and then shows
  // no certificate (it authenticates with `bearer_token`).
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Bearer tokens the process's ports take (null: none).
  std::shared_ptr<const TokenTable> tokens;
  // A client's bearer token, sent on every call of its channels (gRPC's
  // AccessTokenCredentials); empty: none.
  std::string bearer_token;
  // How often gRPC re-reads the files (a changed certificate is used for
  // new connections from then on), seconds. Default: 60.
  int refresh_s = 60;
};

// Sets this process's transport security to mutual TLS with `options`.
// Errors: INVALID_ARGUMENT naming the flag (--tls_ca_file, ...) of a file
// that cannot be read or holds no PEM block, or when only one of
// cert_file and key_file is given.
// REQUIRES: called at most once, before any thread, channel or server.
absl::Status ConfigureTls(const TlsOptions& options);

// What a process given no --tls_* flag does.
enum class PlaintextPolicy {
  // Refuses to start unless --insecure says plaintext is intended, and
  // then logs a warning line: the processes that listen (psd_coordinator,
  // psd_server, psd_worker).
  kRequireInsecureFlag,
  // Talks plaintext without a word: command-line clients (psd_ctl,
  // sparse_train), whose plaintext calls a TLS cluster refuses anyway.
  kAllowQuietly,
};

// Reads the flags above and calls ConfigureTls (logging the files used
// under kRequireInsecureFlag), or keeps plaintext as `policy` says.
// Errors: those of ConfigureTls; INVALID_ARGUMENT when only some of
// --tls_ca_file, --tls_cert_file and --tls_key_file are given, when
// --insecure is given with them, when --tls_refresh_s is below 1, under
// kRequireInsecureFlag when neither the three nor --insecure are given,
// when --auth_tokens_file or --token_file come without TLS, and those of
// TokenTable::Load. Under kAllowQuietly, --tls_ca_file alone is TLS
// without a client certificate (for --token_file).
// REQUIRES: flags parsed; called at most once, before any thread.
absl::Status ConfigureTransportSecurityFromFlags(PlaintextPolicy policy);

// The options ConfigureTls succeeded with in this process, or null
// (plaintext). The metrics endpoint serves HTTPS with the same files.
const TlsOptions* ConfiguredTls();

// Credentials for listening ports: with TLS, the process's certificate,
// client certificates requested and verified against the CA (but not
// required, so a health probe can connect), and common/authorization.h's
// check of every call; otherwise insecure.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials();

// Credentials for channels: with TLS, the process's certificate as the
// client certificate, and the server's chain verified against the CA and
// its identity checked to be spiffe://psd/coordinator or
// spiffe://psd/server (not its host name: psd peers are named by their
// certificates, as SPIFFE does); otherwise insecure.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials();

}  // namespace psd

#endif  // PSD_COMMON_TRANSPORT_SECURITY_H_
