// Fuzzes the safetensors writer (common/safetensors.h): WriteSafetensors of
// tensors and metadata made from the input, then the file read back by a
// strict reader of the format (https://github.com/huggingface/safetensors:
// 8-byte little-endian header length N, N bytes of a JSON object, the data)
// written here, as the `safetensors` package would read it, and by psd's
// own reader (ReadSafetensors), and ParameterChecksum.
//
// Input: up to 4 tensors, then up to 3 metadata pairs, each introduced by a
// nonzero byte (0 ends the list). A tensor: a name (chunk of at most 16
// bytes), a rank byte (0-4), then each dimension (a flag byte: odd, 8 raw
// bytes; even, the next byte as a signed int8), then a count byte (0xff:
// as many values as the shape's product, if small; else the count itself)
// and the values (4 bytes each). A metadata pair: two chunks of at most 16
// bytes.
//
// Invariants: an error is INVALID_ARGUMENT with a message; a file written
// parses: unique keys, F32 tensors with non-negative dimensions whose
// product x 4 is their data_offsets' span, contiguous in order from 0 and
// ending at the file's end, holding exactly the values given, and the
// metadata given under "__metadata__".
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace psd {
namespace {

const std::string& TempPath() {
  static const std::string* path = [] {
    const char* dir = std::getenv("TEST_TMPDIR");
    if (dir == nullptr) dir = std::getenv("TMPDIR");
    if (dir == nullptr) dir = "/tmp";
    return new std::string(absl::StrCat(dir, "/safetensors_fuzzer.", getpid(),
                                        ".safetensors"));
  }();
  return *path;
}

// A strict parser of the JSON the header may hold: objects, arrays, strings
// without escapes, and integers. Fails (FUZZ_REQUIRE) on anything else.
struct Json {
  enum Kind { kObject, kArray, kString, kInt } kind = kInt;
  std::vector<std::pair<std::string, Json>> members;  // kObject, in order
  std::vector<Json> items;                            // kArray
  std::string str;                                    // kString
  int64_t number = 0;                                 // kInt
};

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  Json Document() {
    Json v = Value(0);
    SkipSpace();
    FUZZ_REQUIRE(pos_ == s_.size(), absl::StrCat("junk after JSON: ", s_));
    return v;
  }

 private:
  void SkipSpace() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }
  char Peek() {
    SkipSpace();
    FUZZ_REQUIRE(pos_ < s_.size(), absl::StrCat("JSON ends early: ", s_));
    return s_[pos_];
  }
  void Expect(char c) {
    FUZZ_REQUIRE(Peek() == c, absl::StrCat("want '", std::string(1, c),
                                           "' at ", pos_, ": ", s_));
    ++pos_;
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      const char c = s_[pos_++];
      FUZZ_REQUIRE(c != '\\' && static_cast<unsigned char>(c) >= 0x20,
                   absl::StrCat("escape or control character in a string: ", s_));
      out += c;
    }
    Expect('"');
    return out;
  }
  Json Value(int depth) {
    FUZZ_REQUIRE(depth < 4, "JSON nested too deep");
    Json v;
    const char c = Peek();
    if (c == '{') {
      v.kind = Json::kObject;
      ++pos_;
      if (Peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        std::string key = String();
        Expect(':');
        v.members.emplace_back(std::move(key), Value(depth + 1));
        if (Peek() == '}') break;
        Expect(',');
      }
      ++pos_;
    } else if (c == '[') {
      v.kind = Json::kArray;
      ++pos_;
      if (Peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.items.push_back(Value(depth + 1));
        if (Peek() == ']') break;
        Expect(',');
      }
      ++pos_;
    } else if (c == '"') {
      v.kind = Json::kString;
      v.str = String();
    } else {
      v.kind = Json::kInt;
      const size_t start = pos_;
      if (s_[pos_] == '-') ++pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      FUZZ_REQUIRE(absl::SimpleAtoi(s_.substr(start, pos_ - start), &v.number),
                   absl::StrCat("not an int64 at ", start, ": ", s_));
    }
    return v;
  }

  const std::string& s_;
  size_t pos_ = 0;
};

const Json& Member(const Json& object, const std::string& key) {
  for (const auto& [k, v] : object.members) {
    if (k == key) return v;
  }
  FUZZ_REQUIRE(false, absl::StrCat("no \"", key, "\""));
  std::abort();
}

// Reads `path` as the safetensors package would, and checks it holds
// exactly `tensors` and `metadata`.
void CheckFile(const std::string& path, const std::vector<NamedTensor>& tensors,
               const std::map<std::string, std::string>& metadata) {
  std::ifstream in(path, std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  FUZZ_REQUIRE(file.size() >= 8, "no header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) {
    n |= uint64_t{static_cast<unsigned char>(file[i])} << (8 * i);
  }
  FUZZ_REQUIRE(n <= file.size() - 8 && n % 8 == 0, absl::StrCat(n));
  const std::string header = file.substr(8, n);
  const Json doc = Parser(header).Document();
  FUZZ_REQUIRE(doc.kind == Json::kObject, header);
  std::set<std::string> keys;
  for (const auto& [k, v] : doc.members) {
    FUZZ_REQUIRE(keys.insert(k).second, absl::StrCat("key twice: ", k));
  }
  size_t next = 0;  // index in `tensors`
  uint64_t offset = 0;
  const std::string data = file.substr(8 + n);
  for (const auto& [k, v] : doc.members) {
    if (k == "__metadata__") {
      FUZZ_REQUIRE(v.kind == Json::kObject, header);
      std::map<std::string, std::string> got;
      for (const auto& [mk, mv] : v.members) {
        FUZZ_REQUIRE(mv.kind == Json::kString, header);
        got[mk] = mv.str;
      }
      FUZZ_REQUIRE(got == metadata, header);
      continue;
    }
    FUZZ_REQUIRE(next < tensors.size(), absl::StrCat("extra tensor: ", header));
    const NamedTensor& t = tensors[next++];
    FUZZ_REQUIRE(k == t.name, header);
    FUZZ_REQUIRE(v.kind == Json::kObject, header);
    FUZZ_REQUIRE(Member(v, "dtype").kind == Json::kString &&
                     Member(v, "dtype").str == "F32",
                 header);
    const Json& shape = Member(v, "shape");
    FUZZ_REQUIRE(shape.kind == Json::kArray, header);
    // The product, as the reader computes it: unsigned, checked.
    unsigned __int128 elements = 1;
    for (const Json& d : shape.items) {
      FUZZ_REQUIRE(d.kind == Json::kInt && d.number >= 0,
                   absl::StrCat("bad dimension: ", header));
      elements *= static_cast<uint64_t>(d.number);
      if (elements > (uint64_t{1} << 40)) elements = uint64_t{1} << 40;
    }
    const Json& offsets = Member(v, "data_offsets");
    FUZZ_REQUIRE(offsets.kind == Json::kArray && offsets.items.size() == 2 &&
                     offsets.items[0].kind == Json::kInt &&
                     offsets.items[1].kind == Json::kInt,
                 header);
    const int64_t begin = offsets.items[0].number;
    const int64_t end = offsets.items[1].number;
    FUZZ_REQUIRE(begin == static_cast<int64_t>(offset) && end >= begin,
                 absl::StrCat("offsets not contiguous: ", header));
    FUZZ_REQUIRE(elements * 4 == static_cast<uint64_t>(end - begin),
                 absl::StrCat("shape and data_offsets disagree: ", header));
    FUZZ_REQUIRE(static_cast<uint64_t>(end) <= data.size(),
                 absl::StrCat("data past the file's end: ", header));
    FUZZ_REQUIRE(std::memcmp(data.data() + begin, t.values.data(),
                             end - begin) == 0,
                 absl::StrCat("data of ", t.name, " differs"));
    offset = end;
  }
  FUZZ_REQUIRE(next == tensors.size(), header);
  FUZZ_REQUIRE(offset == data.size(), "bytes after the last tensor");
  FUZZ_REQUIRE(metadata.empty() || keys.count("__metadata__"), header);
}

// psd's own reader (ReadSafetensors, used by psd_serve) must read back
// exactly what the writer wrote: the same tensors (matched by name: empty
// tensors share an offset, so data order does not fix their order), shapes,
// bits and metadata. (CheckFile above is an independent reader of the
// format, the oracle for both.)
void CheckOwnReader(const std::string& path,
                    const std::vector<NamedTensor>& tensors,
                    const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<SafetensorsContents> read = ReadSafetensors(path);
  FUZZ_REQUIRE(read.ok(), read.status().ToString());
  FUZZ_REQUIRE(read->tensors.size() == tensors.size(), "tensor count");
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& got : read->tensors) by_name[got.name] = &got;
  for (const NamedTensor& want : tensors) {
    auto it = by_name.find(want.name);
    FUZZ_REQUIRE(it != by_name.end(), absl::StrCat("missing ", want.name));
    const NamedTensor& got = *it->second;
    FUZZ_REQUIRE(got.shape == want.shape &&
                     got.values.size() == want.values.size() &&
                     std::memcmp(got.values.data(), want.values.data(),
                                 4 * want.values.size()) == 0,
                 absl::StrCat("ReadSafetensors differs on ", want.name));
  }
  FUZZ_REQUIRE(read->metadata == metadata, "ReadSafetensors: metadata");
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::Input in(data, size);
  std::vector<psd::NamedTensor> tensors;
  while (tensors.size() < 4 && in.Byte() != 0) {
    psd::NamedTensor t;
    t.name = in.Bytes(in.Byte() % 17);
    const int rank = in.Byte() % 5;
    int64_t product = 1;
    bool small = true;
    for (int d = 0; d < rank; ++d) {
      const int64_t dim = (in.Byte() & 1)
                              ? static_cast<int64_t>(in.Uint(8))
                              : static_cast<int8_t>(in.Byte());
      t.shape.push_back(dim);
      if (dim < 0 || dim > 64) small = false;
      if (small) product *= dim;
    }
    const uint8_t count = in.Byte();
    const size_t n = count == 0xff ? (small ? product : 0) : count;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(in.Uint(4));
      float f;
      std::memcpy(&f, &bits, 4);
      t.values.push_back(f);
    }
    tensors.push_back(std::move(t));
  }
  std::map<std::string, std::string> metadata;
  while (metadata.size() < 3 && in.Byte() != 0) {
    std::string key = in.Bytes(in.Byte() % 17);
    metadata[key] = in.Bytes(in.Byte() % 17);
  }
  const std::string& path = psd::TempPath();
  const absl::Status written = psd::WriteSafetensors(path, tensors, metadata);
  if (written.ok()) {
    psd::CheckFile(path, tensors, metadata);
    psd::CheckOwnReader(path, tensors, metadata);
  } else {
    psd::fuzz::RequireClearError(written);
    FUZZ_REQUIRE(written.code() == absl::StatusCode::kInvalidArgument,
                 written.ToString());
  }
  psd::ParameterChecksum(tensors);
  std::remove(path.c_str());
  return 0;
}
