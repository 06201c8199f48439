#include "common/auth_tokens.h"

#include <openssl/sha.h>

#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, auth_tokens_file, "",
          "File of bearer tokens that may call the job API (and export), one "
          "'TOKEN ROLE NAME' per line, ROLE admin, submit or view (see "
          "docs/OPERATIONS.md, \"Users and tokens\"). Needs TLS. Read at "
          "start.");

namespace psd {
namespace {

std::string Digest(absl::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
         digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

constexpr size_t kMinTokenLength = 16;

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text,
                                             absl::string_view origin) {
  TokenTable table;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto error = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", line_number, ": ", why));
    };
    if (fields.size() != 3) {
      return error("expected 'TOKEN ROLE NAME'");
    }
    if (fields[0].size() < kMinTokenLength) {
      return error(absl::StrCat("the token is shorter than ", kMinTokenLength,
                                " characters"));
    }
    std::string uri;
    if (fields[1] == "admin") {
      uri = "spiffe://psd/admin/";
    } else if (fields[1] == "submit") {
      uri = "spiffe://psd/user/";
    } else if (fields[1] == "view") {
      uri = "spiffe://psd/viewer/";
    } else {
      return error(absl::StrCat("role '", fields[1],
                                "' is not admin, submit or view"));
    }
    std::optional<SpiffeId> id = ParseSpiffeId(absl::StrCat(uri, fields[2]));
    if (!id.has_value()) {
      return error(absl::StrCat("name '", fields[2],
                                "' is not [A-Za-z0-9._:-]+"));
    }
    if (!table.grants_.emplace(Digest(fields[0]), *std::move(id)).second) {
      return error("this token is given on an earlier line too");
    }
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth_tokens_file: cannot read '", path, "'"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), absl::StrCat("--auth_tokens_file ", path));
}

std::optional<SpiffeId> TokenTable::Find(absl::string_view token) const {
  auto it = grants_.find(Digest(token));
  if (it == grants_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTableFromFlags() {
  const std::string path = absl::GetFlag(FLAGS_auth_tokens_file);
  if (path.empty()) return std::shared_ptr<const TokenTable>();
  absl::StatusOr<TokenTable> table = TokenTable::Load(path);
  if (!table.ok()) return table.status();
  return std::make_shared<const TokenTable>(*std::move(table));
}

std::optional<absl::string_view> BearerToken(absl::string_view value) {
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return std::nullopt;
  }
  absl::string_view token =
      absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  if (token.empty()) return std::nullopt;
  return token;
}

}  // namespace psd
