#include "common/safetensors.h"

#include <zlib.h>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <utility>

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

// A JSON number that must be an exact integer in [0, 2^53] (doubles hold
// every such integer exactly; data offsets and dimensions never need more).
absl::StatusOr<uint64_t> NonNegativeInteger(const google::protobuf::Value& v,
                                            const std::string& what) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a number"));
  }
  const double d = v.number_value();
  if (!(d >= 0.0) || d > 9007199254740992.0 || std::floor(d) != d) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", d, " is not an integer in [0, 2^53]"));
  }
  return static_cast<uint64_t>(d);
}

struct TensorEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name,
                                       const google::protobuf::Value& value) {
  const std::string where = absl::StrCat("tensor ", name);
  if (value.kind_case() != google::protobuf::Value::kStructValue) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  }
  const auto& fields = value.struct_value().fields();
  for (const auto& [key, unused] : fields) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown field \"", key, "\""));
    }
  }
  TensorEntry entry;
  entry.name = name;
  auto dtype = fields.find("dtype");
  if (dtype == fields.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": dtype missing"));
  }
  if (dtype->second.kind_case() != google::protobuf::Value::kStringValue) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": dtype is not a string"));
  }
  if (dtype->second.string_value() != "F32") {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dtype \"", dtype->second.string_value(),
                     "\" not supported (F32 only)"));
  }
  auto shape = fields.find("shape");
  if (shape == fields.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape missing"));
  }
  if (shape->second.kind_case() != google::protobuf::Value::kListValue) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape is not a list"));
  }
  for (int i = 0; i < shape->second.list_value().values_size(); ++i) {
    auto d = NonNegativeInteger(shape->second.list_value().values(i),
                                absl::StrCat(where, ": shape[", i, "]"));
    if (!d.ok()) return d.status();
    entry.shape.push_back(static_cast<int64_t>(*d));
  }
  auto offsets = fields.find("data_offsets");
  if (offsets == fields.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets missing"));
  }
  if (offsets->second.kind_case() != google::protobuf::Value::kListValue ||
      offsets->second.list_value().values_size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets is not a list [begin, end]"));
  }
  auto begin = NonNegativeInteger(offsets->second.list_value().values(0),
                                  absl::StrCat(where, ": data_offsets[0]"));
  if (!begin.ok()) return begin.status();
  auto end = NonNegativeInteger(offsets->second.list_value().values(1),
                                absl::StrCat(where, ": data_offsets[1]"));
  if (!end.ok()) return end.status();
  if (*end < *begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": data_offsets [", *begin, ", ", *end, "] end before begin"));
  }
  entry.begin = *begin;
  entry.end = *end;
  // bytes = product(shape) * 4, with every multiplication checked.
  const uint64_t length = entry.end - entry.begin;
  uint64_t bytes = sizeof(float);
  bool overflow = false;
  for (int64_t d : entry.shape) {
    overflow = overflow ||
               __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
  }
  if (std::find(entry.shape.begin(), entry.shape.end(), 0) != entry.shape.end()) {
    bytes = 0;
    overflow = false;
  }
  if (overflow || bytes != length) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": data_offsets [", entry.begin, ", ", entry.end, "] hold ",
        length, " bytes, shape [", absl::StrJoin(entry.shape, ","), "] needs ",
        overflow ? std::string("more than 2^64") : absl::StrCat(bytes)));
  }
  return entry;
}

}  // namespace

absl::StatusOr<SafetensorsContents> ParseSafetensors(
    absl::string_view bytes, const SafetensorsReadOptions& options) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header length: file has ", bytes.size(), " bytes, fewer than 8"));
  }
  uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) {
    header_length |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  }
  if (header_length > options.max_header_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length: ", header_length, " bytes, more than the ",
                     options.max_header_bytes, " allowed"));
  }
  if (header_length > bytes.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length: ", header_length, " bytes, but only ",
                     bytes.size() - 8, " follow the length prefix"));
  }
  const absl::string_view header = bytes.substr(8, header_length);
  const absl::string_view data = bytes.substr(8 + header_length);
  if (header.empty() || header[0] != '{') {
    return absl::InvalidArgumentError("header: does not start with '{'");
  }
  google::protobuf::Struct root;
  const auto parsed = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(header.data(), header.size()), &root);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header: not a JSON object: ", parsed.ToString()));
  }
  SafetensorsContents contents;
  std::vector<TensorEntry> entries;
  for (const auto& [name, value] : root.fields()) {
    if (name == "__metadata__") {
      if (value.kind_case() != google::protobuf::Value::kStructValue) {
        return absl::InvalidArgumentError("__metadata__: not a JSON object");
      }
      for (const auto& [key, v] : value.struct_value().fields()) {
        if (v.kind_case() != google::protobuf::Value::kStringValue) {
          return absl::InvalidArgumentError(
              absl::StrCat("__metadata__.", key, ": not a string"));
        }
        contents.metadata[key] = v.string_value();
      }
      continue;
    }
    auto entry = ParseEntry(name, value);
    if (!entry.ok()) return entry.status();
    entries.push_back(*std::move(entry));
  }
  // The ranges, in order, must tile [0, data.size()) exactly.
  std::sort(entries.begin(), entries.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected = 0;
  for (const TensorEntry& e : entries) {
    if (e.begin != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", e.name, ": data_offsets [", e.begin, ", ", e.end, "] ",
          e.begin < expected ? "overlap the previous tensor"
                             : "leave a hole after the previous tensor",
          " (which ends at ", expected, ")"));
    }
    if (e.end > data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", e.name, ": data_offsets [", e.begin, ", ", e.end,
          "] run past the ", data.size(), " bytes of data"));
    }
    expected = e.end;
  }
  if (expected != data.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data: ", data.size() - expected,
                     " bytes after the last tensor (ends at ", expected, ")"));
  }
  for (const TensorEntry& e : entries) {
    NamedTensor t;
    t.name = e.name;
    t.shape = e.shape;
    t.values.resize((e.end - e.begin) / sizeof(float));
    // Little-endian on disk; psd runs on little-endian hosts only.
    if (e.end > e.begin) {
      std::memcpy(t.values.data(), data.data() + e.begin, e.end - e.begin);
    }
    contents.tensors.push_back(std::move(t));
  }
  return contents;
}

absl::StatusOr<SafetensorsContents> ReadSafetensors(
    const std::string& path, const SafetensorsReadOptions& options) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    const int error = errno;
    const std::string why = absl::StrCat("cannot open ", path, ": ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(why) : absl::UnavailableError(why);
  }
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  if (static_cast<uint64_t>(size) > options.max_file_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes, more than the ",
                     options.max_file_bytes, " allowed"));
  }
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  in.read(bytes.data(), size);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  auto parsed = ParseSafetensors(bytes, options);
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat(path, ": ", parsed.status().message()));
  }
  return parsed;
}

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
      // JSON readers (ours, ParseSafetensors, among them) hold numbers as
      // doubles: past 2^53 a dimension would not read back exactly.
      if (d > (int64_t{1} << 53)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", t.name, ": dimension ", d, " is larger than 2^53"));
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

namespace {

// A JSON string literal of s (RFC 8259: quote, backslash and control
// characters escaped; other bytes as they are).
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

absl::Status WriteTypedSafetensors(
    const std::string& path, const std::vector<TypedTensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> entries;
  std::vector<std::string> meta;
  for (const auto& [key, value] : metadata) {
    if (!PlainToken(key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata key \"", key, "\": only [A-Za-z0-9._:-] allowed"));
    }
    meta.push_back(absl::StrCat("\"", key, "\":", JsonString(value)));
  }
  if (!meta.empty()) {
    entries.push_back(
        absl::StrCat("\"__metadata__\":{", absl::StrJoin(meta, ","), "}"));
  }
  int64_t offset = 0;
  std::set<std::string> names;
  for (const TypedTensor& t : tensors) {
    if (!PlainToken(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name \"", t.name, "\": only [A-Za-z0-9._:-] allowed"));
    }
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name \"", t.name, "\": used twice, or reserved"));
    }
    int64_t element = 0;
    if (t.dtype == "F32") element = 4;
    if (t.dtype == "I64" || t.dtype == "U64") element = 8;
    if (element == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, ": dtype \"", t.dtype,
                       "\" not supported (F32, I64 or U64)"));
    }
    const int64_t bytes = static_cast<int64_t>(t.data.size());
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || d > (int64_t{1} << 53)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", t.name, ": dimension ", d, " is not in [0, 2^53]"));
      }
      if (d != 0 && n > bytes / element / d) n = -1;  // more than data holds
      if (n < 0) break;
      n *= d;
    }
    if (n < 0 || n * element != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", t.name, ": shape [", absl::StrJoin(t.shape, ","),
          "] of ", t.dtype, " does not match data of ", bytes, " bytes"));
    }
    entries.push_back(absl::StrCat(
        "\"", t.name, "\":{\"dtype\":\"", t.dtype, "\",\"shape\":[",
        absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", offset, ",",
        offset + bytes, "]}"));
    offset += bytes;
  }
  std::string header = absl::StrCat("{", absl::StrJoin(entries, ","), "}");
  header.append((8 - header.size() % 8) % 8, ' ');  // align the data to 8
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t length = header.size();
  char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<char>(length >> (8 * i));
  out.write(length_bytes, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const TypedTensor& t : tensors) {
    out.write(t.data.data(), static_cast<std::streamsize>(t.data.size()));
  }
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

uint32_t TypedTensorChecksum(const std::vector<TypedTensor>& tensors) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const TypedTensor& t : tensors) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(t.name.data()),
                static_cast<uInt>(t.name.size()));
    // In pieces: uInt is 32 bits.
    for (size_t at = 0; at < t.data.size(); at += size_t{1} << 30) {
      const size_t n = std::min(t.data.size() - at, size_t{1} << 30);
      crc = crc32(crc, reinterpret_cast<const Bytef*>(t.data.data() + at),
                  static_cast<uInt>(n));
    }
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace psd
