#include "common/safetensors.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace psd {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

// A file: the 8-byte little-endian length of `header`, `header`, `data`.
std::string File(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(n >> (8 * i)));
  return out + header + data;
}

std::string Floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// The message of ParseSafetensors' error on `bytes` (CHECKs it is
// INVALID_ARGUMENT).
std::string Error(const std::string& bytes) {
  auto parsed = ParseSafetensors(bytes);
  REQUIRE_FALSE(parsed.ok());
  CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(parsed.status().message());
}

TEST_CASE("Safetensors: WriteSafetensors' files read back bit for bit",
          "[safetensors]") {
  std::vector<NamedTensor> tensors = {
      {"layer0.weight", {2, 3}, {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f}},
      {"layer0.bias", {3}, {0.1f, 0.2f, 0.3f}},
      {"empty", {0, 4}, {}},
      {"scalar", {}, {42.0f}},
  };
  const std::string path = TempPath("round_trip.safetensors");
  REQUIRE(WriteSafetensors(path, tensors, {{"job_id", "j-1"}, {"step", "186"}})
              .ok());
  auto read = ReadSafetensors(path);
  REQUIRE(read.ok());
  REQUIRE(read->tensors.size() == tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    CHECK(read->tensors[i].name == tensors[i].name);
    CHECK(read->tensors[i].shape == tensors[i].shape);
    CHECK(read->tensors[i].values.size() == tensors[i].values.size());
    CHECK(ParameterChecksum({read->tensors[i]}) ==
          ParameterChecksum({tensors[i]}));
  }
  CHECK(ParameterChecksum(read->tensors) == ParameterChecksum(tensors));
  CHECK(read->metadata ==
        std::map<std::string, std::string>{{"job_id", "j-1"}, {"step", "186"}});

  // No metadata, no tensors.
  REQUIRE(WriteSafetensors(path, {}, {}).ok());
  read = ReadSafetensors(path);
  REQUIRE(read.ok());
  CHECK(read->tensors.empty());
  CHECK(read->metadata.empty());
}

TEST_CASE("Safetensors: a missing file is NOT_FOUND naming the path",
          "[safetensors]") {
  auto read = ReadSafetensors(TempPath("no_such.safetensors"));
  REQUIRE_FALSE(read.ok());
  CHECK(read.status().code() == absl::StatusCode::kNotFound);
  CHECK(read.status().message().find("no_such.safetensors") !=
        absl::string_view::npos);
}

TEST_CASE("Safetensors: the length prefix is checked before allocating",
          "[safetensors]") {
  CHECK_THAT(Error("1234567"), Catch::Contains("fewer than 8"));
  // 2^64 - 1: no overflow in 8 + length.
  CHECK_THAT(Error(std::string(8, '\xff') + "{}"),
             Catch::Contains("more than the"));
  CHECK_THAT(Error(File("{}", "").substr(0, 9)), Catch::Contains("only 1 follow"));
  SafetensorsReadOptions small;
  small.max_header_bytes = 4;
  auto parsed = ParseSafetensors(File("{\"a\":1}", ""), small);
  CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Safetensors: malformed headers name the field at fault",
          "[safetensors]") {
  const std::string four = Floats({1, 2, 3, 4});
  CHECK_THAT(Error(File("", "")), Catch::Contains("does not start with"));
  CHECK_THAT(Error(File("[1,2]", "")), Catch::Contains("does not start with"));
  CHECK_THAT(Error(File("{\"a\":", "")), Catch::Contains("not a JSON object"));
  CHECK_THAT(Error(File("{\"a\":7}", "")), Catch::Contains("tensor a: not a JSON object"));
  CHECK_THAT(Error(File(R"({"a":{"shape":[4],"data_offsets":[0,16]}})", four)),
             Catch::Contains("tensor a: dtype missing"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", four)),
      Catch::Contains("dtype \"BF16\" not supported"));
  CHECK_THAT(Error(File(R"({"a":{"dtype":"F32","data_offsets":[0,16]}})", four)),
             Catch::Contains("tensor a: shape missing"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", four)),
      Catch::Contains("tensor a: shape[0]"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}})", four)),
      Catch::Contains("tensor a: shape[0]"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":["4"],"data_offsets":[0,16]}})", four)),
      Catch::Contains("tensor a: shape[0]: not a number"));
  CHECK_THAT(Error(File(R"({"a":{"dtype":"F32","shape":[4]}})", four)),
             Catch::Contains("tensor a: data_offsets missing"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", four)),
      Catch::Contains("tensor a: data_offsets is not a list"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", four)),
      Catch::Contains("end before begin"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":1}})", four)),
      Catch::Contains("tensor a: unknown field \"x\""));
  CHECK_THAT(Error(File(R"({"__metadata__":{"step":3}})", "")),
             Catch::Contains("__metadata__.step: not a string"));
  CHECK_THAT(Error(File(R"({"__metadata__":[]})", "")),
             Catch::Contains("__metadata__: not a JSON object"));
}

TEST_CASE("Safetensors: sizes and offsets are checked without overflow",
          "[safetensors]") {
  const std::string four = Floats({1, 2, 3, 4});
  // Shape and range disagree.
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", four)),
      Catch::Contains("tensor a: data_offsets [0, 16] hold 16 bytes, shape [2,3] needs 24"));
  // A shape whose product overflows 64 bits.
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})",
                 four)),
      Catch::Contains("needs more"));
  // Past the data.
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", four)),
      Catch::Contains("run past the 16 bytes"));
  // A hole, an overlap, trailing bytes.
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}})", four)),
      Catch::Contains("leave a hole"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                 four)),
      Catch::Contains("tensor b: data_offsets [8, 16] overlap"));
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", four)),
      Catch::Contains("4 bytes after the last tensor"));
  // Offsets beyond 2^53 are refused as numbers.
  CHECK_THAT(
      Error(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,1e300]}})", four)),
      Catch::Contains("data_offsets[1]"));
}

TEST_CASE("Safetensors: a file cut short anywhere is an error, not a crash",
          "[safetensors]") {
  const std::string path = TempPath("cut.safetensors");
  REQUIRE(WriteSafetensors(path, {{"w", {3, 2}, {1, 2, 3, 4, 5, 6}}}, {{"k", "v"}})
              .ok());
  std::ifstream in(path, std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  REQUIRE(ParseSafetensors(whole).ok());
  for (size_t n = 0; n < whole.size(); ++n) {
    CHECK_FALSE(ParseSafetensors(whole.substr(0, n)).ok());
  }
  // Every byte of the length prefix and header changed to every value:
  // an answer each time (OK or INVALID_ARGUMENT), never a crash.
  const size_t header_end = 8 + static_cast<unsigned char>(whole[0]);
  for (size_t i = 0; i < header_end; ++i) {
    for (int b = 0; b < 256; ++b) {
      std::string bent = whole;
      bent[i] = static_cast<char>(b);
      auto parsed = ParseSafetensors(bent);
      CHECK((parsed.ok() ||
             parsed.status().code() == absl::StatusCode::kInvalidArgument));
    }
  }
}

TEST_CASE("Safetensors: WriteTypedSafetensors writes I64 and F32 tensors "
          "and JSON metadata",
          "[safetensors]") {
  const std::string path = TempPath("typed.safetensors");
  std::string ids(16, '\0');
  ids[0] = 3;
  ids[8] = 9;
  const float row[2] = {1.5f, -2.0f};
  std::string rows(reinterpret_cast<const char*>(row), 8);
  rows += rows;
  std::vector<TypedTensor> tensors = {{"ids", "I64", {2}, ids},
                                      {"rows", "F32", {2, 2}, rows}};
  REQUIRE(WriteTypedSafetensors(path, tensors,
                                {{"initializer", "{\"kind\":\"ZERO\"}\n"}})
              .ok());
  std::ifstream in(path, std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  REQUIRE(n % 8 == 0);
  const std::string header = file.substr(8, n);
  CHECK(header.find(R"("__metadata__":{"initializer":"{\"kind\":\"ZERO\"}\n"})") !=
        std::string::npos);
  CHECK(header.find(R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]})") !=
        std::string::npos);
  CHECK(header.find(R"("rows":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]})") !=
        std::string::npos);
  CHECK(file.substr(8 + n) == ids + rows);
  // The checksum of F32 tensors is ParameterChecksum's.
  NamedTensor f{"rows", {2, 2}, {1.5f, -2.0f, 1.5f, -2.0f}};
  CHECK(TypedTensorChecksum({tensors[1]}) == ParameterChecksum({f}));

  CHECK(WriteTypedSafetensors(path, {{"x", "I32", {1}, "abcd"}}, {}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(WriteTypedSafetensors(path, {{"x", "I64", {3}, ids}}, {}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(WriteTypedSafetensors(path, {{"x", "I64", {-2}, ids}}, {}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(WriteTypedSafetensors(path, tensors, {{"bad key", "v"}}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(WriteTypedSafetensors(path, {{"x", "U64", {0, 5}, ""}}, {}).ok());
}

}  // namespace
}  // namespace psd
