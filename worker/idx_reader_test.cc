// Tests of the IDX reader on small files written here (gzip and plain), and
// of LoadDataset's cross-file checks; reads the real Fashion-MNIST files
// where the Debian package dataset-fashion-mnist is installed.
#include "worker/idx_reader.h"

#include <sys/stat.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "worker/dataset.h"

namespace psd {
namespace {

const char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

void PutBigEndian32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(v >> shift);
}

std::vector<uint8_t> ImagesBytes(uint32_t count, uint32_t rows, uint32_t cols,
                                 size_t pixel_bytes) {
  std::vector<uint8_t> out;
  PutBigEndian32(out, kIdxImagesMagic);
  PutBigEndian32(out, count);
  PutBigEndian32(out, rows);
  PutBigEndian32(out, cols);
  for (size_t i = 0; i < pixel_bytes; ++i) out.push_back(i * 7 % 256);
  return out;
}

std::vector<uint8_t> LabelsBytes(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> out;
  PutBigEndian32(out, kIdxLabelsMagic);
  PutBigEndian32(out, labels.size());
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

// Writes bytes to TEST_TMPDIR/name, gzip-compressed if gzip; returns path.
std::string WriteFile(const std::string& name,
                      const std::vector<uint8_t>& bytes, bool gzip) {
  const std::string path = TempPath(name);
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    if (!bytes.empty()) {
      REQUIRE(gzwrite(f, bytes.data(), bytes.size()) ==
              static_cast<int>(bytes.size()));
    }
    REQUIRE(gzclose(f) == Z_OK);
  } else {
    FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    // fwrite must not be given an empty vector's data() (may be null).
    if (!bytes.empty()) {
      REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    }
    REQUIRE(std::fclose(f) == 0);
  }
  return path;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_CASE("ReadIdxImages: reads a good file, gzip or plain", "[idx]") {
  for (bool gzip : {true, false}) {
    INFO("gzip=" << gzip);
    const auto bytes = ImagesBytes(3, 2, 5, 30);
    const std::string path = WriteFile("good-images", bytes, gzip);
    auto images = ReadIdxImages(path);
    REQUIRE(images.ok());
    CHECK(images->count == 3);
    CHECK(images->rows == 2);
    CHECK(images->cols == 5);
    CHECK(images->pixels == std::vector<uint8_t>(bytes.begin() + 16,
                                                 bytes.end()));
  }
}

TEST_CASE("ReadIdxLabels: reads a good file", "[idx]") {
  const std::string path =
      WriteFile("good-labels.gz", LabelsBytes({1, 0, 9, 4}), true);
  auto labels = ReadIdxLabels(path);
  REQUIRE(labels.ok());
  CHECK(labels->labels == std::vector<uint8_t>{1, 0, 9, 4});
}

TEST_CASE("ReadIdxImages: zero images is a valid empty file", "[idx]") {
  auto images = ReadIdxImages(WriteFile("empty.gz", ImagesBytes(0, 28, 28, 0),
                                        true));
  REQUIRE(images.ok());
  CHECK(images->count == 0);
  CHECK(images->pixels.empty());
}

TEST_CASE("ReadIdx: a missing file is NOT_FOUND naming the path", "[idx]") {
  const std::string path = TempPath("no-such-file.gz");
  auto images = ReadIdxImages(path);
  CHECK(images.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(std::string(images.status().message()), path));
  CHECK(ReadIdxLabels(path).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("ReadIdxImages: truncated pixels are DATA_LOSS", "[idx]") {
  for (bool gzip : {true, false}) {
    INFO("gzip=" << gzip);
    const std::string path =
        WriteFile("truncated-images", ImagesBytes(4, 28, 28, 3000), gzip);
    auto images = ReadIdxImages(path);
    CHECK(images.status().code() == absl::StatusCode::kDataLoss);
    const std::string msg(images.status().message());
    INFO(msg);
    CHECK(Contains(msg, path));
    CHECK(Contains(msg, "truncated: header says 4 images of 28x28, file has "
                        "only 3000 bytes of pixels"));
  }
}

TEST_CASE("ReadIdx: truncated header and labels are DATA_LOSS", "[idx]") {
  auto header = ImagesBytes(4, 28, 28, 0);
  header.resize(10);
  CHECK(ReadIdxImages(WriteFile("short-header.gz", header, true))
            .status()
            .code() == absl::StatusCode::kDataLoss);
  auto labels = LabelsBytes({1, 2, 3});
  labels.pop_back();
  auto read = ReadIdxLabels(WriteFile("short-labels.gz", labels, true));
  CHECK(read.status().code() == absl::StatusCode::kDataLoss);
  CHECK(Contains(std::string(read.status().message()),
                 "header says 3 labels, file has only 2"));
  CHECK(ReadIdxImages(WriteFile("zero-bytes", {}, false)).status().code() ==
        absl::StatusCode::kDataLoss);
}

TEST_CASE("ReadIdx: trailing bytes after the body are DATA_LOSS", "[idx]") {
  auto bytes = ImagesBytes(2, 3, 3, 19);
  auto images = ReadIdxImages(WriteFile("trailing.gz", bytes, true));
  CHECK(images.status().code() == absl::StatusCode::kDataLoss);
  CHECK(Contains(std::string(images.status().message()), "1 unexpected"));
}

TEST_CASE("ReadIdx: wrong magic (labels file as images) is INVALID_ARGUMENT",
          "[idx]") {
  const std::string labels_path =
      WriteFile("magic-labels.gz", LabelsBytes({1, 2, 3}), true);
  auto images = ReadIdxImages(labels_path);
  CHECK(images.status().code() == absl::StatusCode::kInvalidArgument);
  const std::string msg(images.status().message());
  INFO(msg);
  CHECK(Contains(msg, "bad magic 0x00000801 in " + labels_path +
                          ", want 0x00000803"));
  const std::string images_path =
      WriteFile("magic-images.gz", ImagesBytes(1, 2, 2, 4), true);
  CHECK(ReadIdxLabels(images_path).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ReadIdxImages: absurd dimensions are INVALID_ARGUMENT", "[idx]") {
  for (auto dims : std::vector<std::vector<uint32_t>>{
           {1, 0, 28}, {1, 28, 100000}, {0x7fffffff, 28, 28},
           {0xffffffff, 1, 1}}) {
    INFO(dims[0] << "x" << dims[1] << "x" << dims[2]);
    auto images = ReadIdxImages(WriteFile(
        "absurd.gz", ImagesBytes(dims[0], dims[1], dims[2], 16), true));
    CHECK(images.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("ReadIdxImages: a corrupt gzip stream is an error, not a crash",
          "[idx]") {
  std::vector<uint8_t> bytes = ImagesBytes(2, 28, 28, 2 * 28 * 28);
  const std::string path = WriteFile("corrupt.gz", bytes, true);
  // Flip bytes in the middle of the compressed stream.
  FILE* f = std::fopen(path.c_str(), "r+b");
  REQUIRE(f != nullptr);
  std::fseek(f, 30, SEEK_SET);
  const uint8_t junk[8] = {0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef};
  std::fwrite(junk, 1, sizeof(junk), f);
  std::fclose(f);
  CHECK_FALSE(ReadIdxImages(path).ok());
}

TEST_CASE("LoadDataset: mislabelled (label count differs) is caught",
          "[idx][dataset]") {
  const std::string images =
      WriteFile("ds-images.gz", ImagesBytes(3, 2, 2, 12), true);
  const std::string labels =
      WriteFile("ds-labels.gz", LabelsBytes({1, 2}), true);
  auto data = LoadDataset(images, labels, 0, 10, {0.0f, 1.0f});
  CHECK(data.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(data.status().message()) ==
        images + " has 3 images but " + labels + " has 2 labels");
}

TEST_CASE("LoadDataset: label >= num_classes is caught", "[idx][dataset]") {
  const std::string images =
      WriteFile("ds2-images.gz", ImagesBytes(3, 2, 2, 12), true);
  const std::string labels =
      WriteFile("ds2-labels.gz", LabelsBytes({1, 10, 2}), true);
  auto data = LoadDataset(images, labels, 0, 10, {0.0f, 1.0f});
  CHECK(data.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(std::string(data.status().message()), "example 1"));
}

TEST_CASE("LoadDataset: limit and normalisation", "[idx][dataset]") {
  std::vector<uint8_t> bytes = ImagesBytes(3, 1, 2, 0);
  for (uint8_t p : {0, 255, 51, 102, 153, 204}) bytes.push_back(p);
  const std::string images = WriteFile("ds3-images.gz", bytes, true);
  const std::string labels =
      WriteFile("ds3-labels", LabelsBytes({3, 1, 2}), false);
  auto data = LoadDataset(images, labels, 2, 4, {0.5f, 0.25f});
  REQUIRE(data.ok());
  CHECK(data->size == 2);
  CHECK(data->dim == 2);
  CHECK(data->num_classes == 4);
  CHECK(data->labels == std::vector<int32_t>{3, 1});
  REQUIRE(data->features.size() == 4);
  const float want[] = {-2.0f, 2.0f, -1.2f, -0.4f};  // (p/255 - .5)/.25
  for (int i = 0; i < 4; ++i) CHECK(data->features[i] == Approx(want[i]));

  auto norm = ComputeNormalization(images, 1);  // pixels {0, 1}
  REQUIRE(norm.ok());
  CHECK(norm->mean == Approx(0.5f));
  CHECK(norm->std == Approx(0.5f));
  CHECK(LoadDataset(images, labels, -1, 4, {0, 1}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(LoadDataset(images, labels, 0, 4, {0, 0}).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ReadIdx: the real Fashion-MNIST training set", "[idx][real]") {
  struct stat st;
  if (stat(kFashionDir, &st) != 0) {
    WARN("skipped: " << kFashionDir << " is absent (dataset-fashion-mnist)");
    return;
  }
  const std::string dir = kFashionDir;
  auto images = ReadIdxImages(dir + "/train-images-idx3-ubyte.gz");
  REQUIRE(images.ok());
  CHECK(images->count == 60000);
  CHECK(images->rows == 28);
  CHECK(images->cols == 28);
  CHECK(images->pixels.size() == 60000u * 28 * 28);
  auto labels = ReadIdxLabels(dir + "/train-labels-idx1-ubyte.gz");
  REQUIRE(labels.ok());
  REQUIRE(labels->labels.size() == 60000);
  int counts[10] = {};
  for (uint8_t l : labels->labels) {
    REQUIRE(l <= 9);
    ++counts[l];
  }
  for (int c : counts) CHECK(c == 6000);  // Fashion-MNIST is balanced.
  auto test = ReadIdxImages(dir + "/t10k-images-idx3-ubyte.gz");
  REQUIRE(test.ok());
  CHECK(test->count == 10000);
}

}  // namespace
}  // namespace psd
