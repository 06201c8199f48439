#include "common/quote.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace psd {

std::string Quote(absl::string_view s, size_t max_chars) {
  if (s.size() <= max_chars) return absl::StrCat("\"", absl::CEscape(s), "\"");
  return absl::StrCat("\"", absl::CEscape(s.substr(0, max_chars)), "...\" (",
                      s.size(), " bytes)");
}

}  // namespace psd
