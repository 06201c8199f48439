// Quoting strings that came from a user or a peer, for log lines and error
// messages: they are bounded and printable, whatever was sent.
#ifndef PSD_COMMON_QUOTE_H_
#define PSD_COMMON_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace psd {

// Default bound of Quote: the characters of `s` it keeps.
inline constexpr size_t kMaxQuotedChars = 64;

// `s` in double quotes, with control characters, quotes, backslashes and
// non-ASCII bytes escaped C-style (absl::CEscape), cut to its first
// `max_chars` bytes; a cut string ends with `...` and its full length,
// e.g. "aaaa..." (10485760 bytes). Use it for every user-supplied string
// that goes into a log line or a status message.
std::string Quote(absl::string_view s, size_t max_chars = kMaxQuotedChars);

}  // namespace psd

#endif  // PSD_COMMON_QUOTE_H_
