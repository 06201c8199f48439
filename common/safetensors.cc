#include "common/safetensors.h"

#include <zlib.h>

#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {

namespace {

bool PlainToken(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
          c == '-' || c == ':')) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::Status WriteSafetensors(
    const std::string& path, const std::vector<NamedTensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> entries;
  std::vector<std::string> meta;
  for (const auto& [key, value] : metadata) {
    if (!PlainToken(key) || !PlainToken(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata ", key, "=", value, ": only [A-Za-z0-9._:-] allowed"));
    }
    meta.push_back(absl::StrCat("\"", key, "\":\"", value, "\""));
  }
  if (!meta.empty()) {
    entries.push_back(absl::StrCat("\"__metadata__\":{", absl::StrJoin(meta, ","), "}"));
  }
  int64_t offset = 0;
  std::set<std::string> names;
  for (const NamedTensor& t : tensors) {
    if (!PlainToken(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name \"", t.name, "\": only [A-Za-z0-9._:-] allowed"));
    }
    // Keys of one JSON object: each once, and not the metadata's.
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name \"", t.name, "\": used twice, or reserved"));
    }
    // Dimensions >= 0, and their product without overflow: past
    // values.size() it is a mismatch whatever it is.
    const int64_t size = static_cast<int64_t>(t.values.size());
    bool empty = false;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", t.name, ": dimension ", d, " is negative"));
      }
      empty = empty || d == 0;
    }
    int64_t n = empty ? 0 : 1;
    for (int64_t d : t.shape) {
      if (n == 0) break;
      if (n > size / d) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", t.name, ": shape [", absl::StrJoin(t.shape, ","),
            "] holds more elements than values has (", size, ")"));
      }
      n *= d;
    }
    if (n != static_cast<int64_t>(t.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", t.name, ": shape holds ", n, " elements, values has ",
          t.values.size()));
    }
    const int64_t end = offset + n * static_cast<int64_t>(sizeof(float));
    entries.push_back(absl::StrCat("\"", t.name, "\":{\"dtype\":\"F32\",\"shape\":[",
                                   absl::StrJoin(t.shape, ","),
                                   "],\"data_offsets\":[", offset, ",", end, "]}"));
    offset = end;
  }
  std::string header = absl::StrCat("{", absl::StrJoin(entries, ","), "}");
  header.append((8 - header.size() % 8) % 8, ' ');  // align the data to 8
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t length = header.size();
  char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<char>(length >> (8 * i));
  out.write(length_bytes, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const NamedTensor& t : tensors) {
    out.write(reinterpret_cast<const char*>(t.values.data()),
              static_cast<std::streamsize>(t.values.size() * sizeof(float)));
  }
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

uint32_t ParameterChecksum(const std::vector<NamedTensor>& tensors) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const NamedTensor& t : tensors) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(t.name.data()),
                static_cast<uInt>(t.name.size()));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(t.values.data()),
                static_cast<uInt>(t.values.size() * sizeof(float)));
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace psd
