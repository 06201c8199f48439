// Transport security of a psd process: mutual TLS with gRPC's own TLS
// credentials (grpc::experimental::TlsServerCredentials and TlsCredentials),
// certificates read from PEM files and re-read when they change (rotation,
// as cert-manager renews them), and SPIFFE-style identities.
//
// Identities. Every psd certificate carries one URI SAN of the form
//   spiffe://psd/<role>[/<name>]
// where <role> is coordinator, server, worker, user or admin, and <name>
// (optional for the first three) tells processes or people apart, e.g.
// spiffe://psd/user/alice. gRPC puts that URI in the call's AuthContext as
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
enum class Role { kCoordinator, kServer, kWorker, kUser, kAdmin };

// "coordinator", "server", "worker", "user" or "admin".
absl::string_view RoleName(Role role);

// A parsed psd SPIFFE ID.
struct SpiffeId {
  Role role;
  // The part after the role, e.g. "alice" for spiffe://psd/user/alice; may
  // be empty for coordinator, server and worker.
  std::string name;
};

// Parses "spiffe://psd/<role>[/<name>]". nullopt for anything else: another
// scheme or trust domain, an unknown role, a user or admin without a name,
// or a name with characters other than [A-Za-z0-9._:-].
std::optional<SpiffeId> ParseSpiffeId(absl::string_view uri);

struct TlsOptions {
  // PEM files. All three are needed for TLS.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // How often gRPC re-reads the files (a changed certificate is used for
  // new connections from then on), seconds. Default: 60.
  int refresh_s = 60;
};

// Sets this process's transport security to mutual TLS with `options`.
// Errors: INVALID_ARGUMENT naming the flag (--tls_ca_file, ...) of a file
// that cannot be read or holds no PEM block.
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
// --insecure is given with them, when --tls_refresh_s is below 1, and under
// kRequireInsecureFlag when neither the three nor --insecure are given.
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
