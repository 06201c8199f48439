// Bearer tokens: how people and scripts without a client certificate call
// the job API (and export a job's parameters) on a TLS cluster.
//
// A caller sends "authorization: Bearer <token>" (grpcurl -H, or psd_ctl
// --token_file, which uses gRPC's AccessTokenCredentials). A process run
// with --auth_tokens_file=PATH checks the token against that file, one
// token per line:
//
//   # TOKEN                            ROLE    NAME
//   3b1f0c...                          submit  alice
//   9c44aa...                          view    dashboards
//   e0d1f2...                          admin   root
//
// ROLE is one of
//   admin   anything a user may do, on every job;
//   submit  submit jobs, and watch, cancel, delete, snapshot and export the
//           jobs it submitted (the same as a spiffe://psd/user/NAME
//           certificate);
//   view    get, list and watch jobs only (spiffe://psd/viewer/NAME).
// NAME ([A-Za-z0-9._:-]+) is who the caller is: jobs record it as their
// submitter. Blank lines and lines starting with '#' are ignored. The file
// should be readable by the process's user only; only SHA-256 digests of
// the tokens are kept in memory. It is read at start: a change needs a
// restart. Tokens are only taken over TLS (gRPC sends call credentials over
// secure channels only).
#ifndef PSD_COMMON_AUTH_TOKENS_H_
#define PSD_COMMON_AUTH_TOKENS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/transport_security.h"

namespace psd {

// Tokens -> who presents them. Immutable once parsed; thread-safe.
class TokenTable {
 public:
  // Parses the file format above. `origin` names the file in errors.
  // Errors: INVALID_ARGUMENT naming the line: not three fields, an unknown
  // role, a bad name, a token shorter than 16 characters, or one given
  // twice.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text,
                                          absl::string_view origin);

  // Reads and parses `path`. Errors: those of Parse; INVALID_ARGUMENT when
  // the file cannot be read (named with the flag --auth_tokens_file).
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The identity a token stands for (role kAdmin, kUser or kViewer and the
  // line's NAME), or nullopt for an unknown token.
  std::optional<SpiffeId> Find(absl::string_view token) const;

  int size() const { return static_cast<int>(grants_.size()); }

 private:
  // SHA-256 of the token (raw 32 bytes) -> identity.
  absl::flat_hash_map<std::string, SpiffeId> grants_;
};

// The table from --auth_tokens_file, or null when the flag is empty.
// Errors: those of TokenTable::Load.
absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTableFromFlags();

// The bearer token of "authorization" metadata ("Bearer <token>", the
// scheme case-insensitive), or nullopt when `value` is not of that form.
std::optional<absl::string_view> BearerToken(absl::string_view value);

}  // namespace psd

#endif  // PSD_COMMON_AUTH_TOKENS_H_
