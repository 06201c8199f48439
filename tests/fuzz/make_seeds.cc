// Writes the seed corpora of the harnesses (README.md) into <dir>/<harness>/
// as seed-<what> files, from real encodings made by psd's own code:
//   bazel run //tests/fuzz:make_seeds -- $PWD/tests/fuzz/corpus
// Deterministic: running it again rewrites the same bytes. The files are
// committed; crash regressions beside them (crash-*) are not made here.
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <rocksdb/db.h>

#include "absl/strings/str_cat.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "proto/embedding.pb.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"
#include "server/snapshot/rocksdb_util.h"
#include "server/snapshot/shard_snapshot.h"
#include "server/snapshot/snapshot_format.h"

namespace psd {
namespace {

std::string root;

void Write(const std::string& harness, const std::string& name,
           const std::string& bytes) {
  const std::string dir = absl::StrCat(root, "/", harness);
  std::filesystem::create_directories(dir);
  std::ofstream out(absl::StrCat(dir, "/seed-", name), std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s/%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

std::string Le(uint64_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out += static_cast<char>(v >> (8 * i));
  return out;
}

std::string Chunk(const std::string& bytes) {
  return Le(bytes.size(), 2) + bytes;
}

JobConfig SmallConfig() {
  JobConfig c;
  c.set_name("fuzz");
  c.mutable_model()->set_kind(ModelSpec::MLP);
  c.mutable_model()->set_input_dim(784);
  c.mutable_model()->add_hidden_sizes(8);
  c.mutable_model()->set_num_classes(10);
  c.mutable_dataset()->set_name("fashion-mnist");
  c.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  c.mutable_optimizer()->set_learning_rate(0.1f);
  c.set_consistency(BSP);
  c.set_batch_size(4);
  c.set_epochs(1);
  c.set_workers(1);
  c.set_seed(1);
  c.set_partition_bytes(4096);
  return c;
}

void JobConfigSeeds() {
  const char* h = "job_config_fuzzer";
  Write(h, "text", R"(name: "fashion-mnist-adam"
model { kind: MLP input_dim: 784 hidden_sizes: [256, 128] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 6000 }
optimizer {
  kind: ADAM learning_rate: 0.001 beta1: 0.9 beta2: 0.999 epsilon: 1e-8
  schedule { kind: COSINE min_learning_rate: 0.00001 }
}
consistency: BSP batch_size: 64 epochs: 8 workers: 2 seed: 42
snapshot { every_steps: 100 keep_last: 2 }
)");
  Write(h, "groups", R"(name: "groups"
model { input_dim: 784 hidden_sizes: 16 num_classes: 10 }
dataset {}
optimizer { kind: SGD learning_rate: 0.1 momentum: 0.9 nesterov: true
  schedule { kind: STEP step_size: 10 } }
consistency: SSP staleness: 2
parameter_groups { parameters: "layer0.weight" consistency: ASP }
parameter_groups { parameters: ["layer1.bias", "layer1.weight"] consistency: BSP }
gradient_dtype: BFLOAT16 batch_size: 32 epochs: 1 workers: 3
)");
  Write(h, "json",
        R"({"name": "j", "model": {"kind": "MLP", "inputDim": 784, "hiddenSizes": [32],
 "numClasses": 10}, "dataset": {"name": "fashion-mnist"}, "optimizer": {"kind": "ADAGRAD",
 "learningRate": 0.01, "initialAccumulatorValue": 0.1}, "consistency": "ASP",
 "batchSize": 16, "epochs": 2, "workers": 2, "partitionBytes": "8192"})");
  Write(h, "binary", SmallConfig().SerializeAsString());
}

void PsRequestSeeds() {
  const char* h = "ps_request_fuzzer";
  const JobConfig config = SmallConfig();
  Placement placement =
      *BuildPlacement(ModelParameters(config.model()), 4096, 1);
  auto push = [&](int rank, int64_t step, bool bf16, bool pull_next) {
    PushRequest r;
    r.set_job_id("fuzz-1");
    r.set_worker_rank(rank);
    r.set_step(step);
    r.set_view_epoch(3);
    r.set_pull_next(pull_next);
    // Two partitions keep the seeds small.
    for (int id : {7, 9}) {
      const Partition& part = placement.partitions(id);
      std::vector<float> g(part.num_elements(), 0.01f * (rank + 1));
      PartitionTensor* out = r.add_gradients();
      out->set_partition_id(id);
      if (bf16) {
        EncodeBfloat16(g.data(), part.num_elements(), out->mutable_tensor());
      } else {
        EncodeFloat32(g.data(), part.num_elements(), out->mutable_tensor());
      }
    }
    return r.SerializeAsString();
  };
  auto pull = [&](int rank, int64_t step, bool latest) {
    PullRequest r;
    r.set_job_id("fuzz-1");
    r.set_worker_rank(rank);
    r.set_step(step);
    r.set_view_epoch(3);
    r.set_latest(latest);
    r.add_partition_ids(7);
    r.add_partition_ids(9);
    return r.SerializeAsString();
  };
  // settings byte, then (type, chunk) pairs; type even: push, odd: pull.
  Write(h, "bsp-push-pull",
        std::string(1, '\0') + '\0' + Chunk(push(0, 0, false, false)) + '\1' +
            Chunk(pull(0, 1, false)) + '\1' + Chunk(pull(0, 0, true)));
  Write(h, "bsp-wait-then-push",
        std::string(1, 4) + '\1' + Chunk(pull(1, 1, false)) + '\0' +
            Chunk(push(0, 0, false, false)) + '\0' +
            Chunk(push(1, 0, true, true)));
  Write(h, "asp-bf16-pull-next",
        std::string(1, 1 | 4) + '\0' + Chunk(push(0, 0, true, true)) + '\0' +
            Chunk(push(1, 0, false, true)) + '\0' +
            Chunk(push(0, 1, false, false)));
  Write(h, "ssp-expire",
        std::string(1, 2 | 4 | 16) + '\0' + Chunk(push(0, 0, false, false)) +
            '\1' + Chunk(pull(0, 3, false)) + '\0' +
            Chunk(push(0, 1, false, true)));
  Write(h, "as-sent-wrong-epoch",
        std::string(1, 8) + '\0' + Chunk(push(0, 0, false, false)));
}

void SnapshotSeeds() {
  const char* h = "snapshot_fuzzer";
  JobConfig config = SmallConfig();
  config.set_consistency(ASP);
  config.set_workers(2);
  ShardSnapshot snap;
  SnapshotManifest& m = snap.manifest;
  m.set_job_id("job-1");
  m.set_step(5);
  m.set_view_epoch(2);
  *m.mutable_config() = config;
  Placement placement =
      *BuildPlacement(ModelParameters(config.model()), 4096, 1);
  *m.mutable_placement() = placement;
  m.add_shards(0);
  for (int id : {8, 9}) {
    PartitionSnapshot p;
    p.id = id;
    p.weights.assign(placement.partitions(id).num_elements(), 0.5f);
    p.slots.assign(p.weights.size(), 0.25f);
    p.clocks = {5, 6};
    p.updates = 11;
    snap.partitions.push_back(p);
  }
  if (!PrepareForWrite(&snap, "seed").ok()) std::exit(1);
  std::vector<std::string> records;
  for (const PartitionSnapshot& p : snap.partitions) {
    const RecordHeader header = MakeRecordHeader(p);
    std::string record(reinterpret_cast<const char*>(&header), sizeof(header));
    record.append(reinterpret_cast<const char*>(p.weights.data()),
                  4 * p.weights.size());
    record.append(reinterpret_cast<const char*>(p.slots.data()),
                  4 * p.slots.size());
    m.add_partition_ids(p.id);
    m.add_partition_crc32(RecordCrc32(header, p));
    records.push_back(record);
  }
  const std::string manifest = *EncodeManifest(m, "seed");
  // Mode 0: the stored manifest as it is (CRC-32 included), job-1 step 0
  // expected (so: a mismatch); mode 4: its own job and step expected.
  Write(h, "manifest-stored", std::string(1, 4) + manifest);
  // Mode 2|4: the CRC-32 made by the harness.
  Write(h, "manifest-forged-crc", std::string(1, 2 | 4) + manifest.substr(4));
  // Records: mode 1|2|4 (checksum and element count from the record).
  Write(h, "record", std::string(1, 1 | 2 | 4) + Le(0, 8) + records[0]);
  // Mode 1|2, with the placement's count given.
  Write(h, "record-count",
        std::string(1, 1 | 2) +
            Le(placement.partitions(9).num_elements(), 8) + records[1]);
  Write(h, "step-key", std::string(1, 0) + "00000000000000000042");
}

void EmbeddingSeeds() {
  const char* h = "embedding_snapshot_fuzzer";
  EmbeddingStore store;
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(100);
  spec.set_dim(2);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  spec.mutable_optimizer()->set_learning_rate(0.1f);
  spec.set_num_shards(2);
  if (!store.CreateTable("job-1", spec, {0, 1}).ok()) std::exit(1);
  const std::vector<uint64_t> ids = {3, 4, 10};
  std::vector<float> g(ids.size() * 2, 0.5f);
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(static_cast<int64_t>(ids.size()));
  t.add_shape(2);
  t.set_data(std::string(reinterpret_cast<const char*>(g.data()),
                         4 * g.size()));
  if (!store.Push("job-1", "emb", ids, t, {"client", 1}).ok()) std::exit(1);
  absl::StatusOr<EmbeddingTableCapture> capture = store.Capture("job-1", "emb");
  if (!capture.ok()) std::exit(1);
  const std::string dir = absl::StrCat(
      std::filesystem::temp_directory_path().string(), "/psd_make_seeds");
  std::filesystem::remove_all(dir);
  EmbeddingSnapshotOptions options;
  options.batch_bytes = 40;  // two rows a batch: two batches
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir, options);
    if (!snapshots.ok() || !(*snapshots)->Write(*capture).ok()) std::exit(1);
  }
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(rocksdb::Options(), dir, &raw).ok()) std::exit(1);
  std::unique_ptr<rocksdb::DB> db(raw);
  auto get = [&](const std::string& key) {
    std::string v;
    if (!db->Get(rocksdb::ReadOptions(), key, &v).ok()) std::exit(1);
    return v;
  };
  const std::string manifest =
      get(EmbeddingSnapshotManifestKey("job-1", "emb", 1));
  std::string batches;
  for (int b = 0; b < 2; ++b) {
    batches += Chunk(get(EmbeddingSnapshotBatchKey("job-1", "emb", 1, b)));
  }
  const std::string dedup = get(EmbeddingSnapshotDedupKey("job-1", "emb", 1));
  // Mode 4: the stored manifest (with its CRC-32) as it is.
  Write(h, "stored", std::string(1, 4) + Chunk(manifest) + Chunk(dedup) + batches);
  // Mode 1|2: identity and checksums made to match.
  Write(h, "fixed", std::string(1, 1 | 2) + Chunk(manifest.substr(4)) +
                        Chunk(dedup) + batches);
  db.reset();
  std::filesystem::remove_all(dir);
}

std::string Gzip(const std::string& plain) {
  const std::string path = absl::StrCat(
      std::filesystem::temp_directory_path().string(), "/psd_make_seeds.gz");
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, plain.data(), static_cast<unsigned>(plain.size()));
  gzclose(f);
  std::ifstream in(path, std::ios::binary);
  std::string out((std::istreambuf_iterator<char>(in)),
                  std::istreambuf_iterator<char>());
  std::filesystem::remove(path);
  return out;
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
          static_cast<char>(v >> 8), static_cast<char>(v)};
}

void IdxSeeds() {
  const char* h = "idx_reader_fuzzer";
  std::string images = Be32(0x803) + Be32(2) + Be32(3) + Be32(3);
  for (int i = 0; i < 18; ++i) images += static_cast<char>(i * 14);
  const std::string labels = Be32(0x801) + Be32(3) + std::string("\x01\x09\x00", 3);
  // Mode bit 0: the harness gzips the rest.
  Write(h, "images", std::string(1, 0) + images);
  Write(h, "images-gz", std::string(1, 1) + images);
  Write(h, "labels", std::string(1, 0) + labels);
  Write(h, "labels-gz", std::string(1, 1) + labels);
  // A gzip stream inside the file, read through gzread.
  Write(h, "gzipped-file", std::string(1, 0) + Gzip(labels));
}

void SafetensorsSeeds() {
  const char* h = "safetensors_fuzzer";
  auto tensor = [](const std::string& name, std::vector<int8_t> shape,
                   int values) {
    std::string out(1, 1);  // another tensor follows
    out += static_cast<char>(name.size());
    out += name;
    out += static_cast<char>(shape.size());
    for (int8_t d : shape) {
      out += '\0';  // small dimension
      out += static_cast<char>(d);
    }
    out += static_cast<char>(values);
    for (int i = 0; i < values; ++i) {
      const float f = 0.5f * static_cast<float>(i) - 1.0f;
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      out += Le(bits, 4);
    }
    return out;
  };
  auto meta = [](const std::string& k, const std::string& v) {
    return std::string(1, 1) + static_cast<char>(k.size()) + k +
           static_cast<char>(v.size()) + v;
  };
  Write(h, "two-tensors",
        tensor("layer0.weight", {2, 3}, 6) + tensor("layer0.bias", {3}, 3) +
            std::string(1, 0) + meta("job", "fuzz-1") + meta("step", "42") +
            std::string(1, 0));
  Write(h, "scalar-and-empty",
        tensor("s", {}, 1) + tensor("e", {0, 4}, 0) + std::string(2, 0));
  Write(h, "mismatch", tensor("x", {2, 2}, 3) + std::string(2, 0));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds <corpus dir>\n");
    return 2;
  }
  psd::root = argv[1];
  psd::JobConfigSeeds();
  psd::PsRequestSeeds();
  psd::SnapshotSeeds();
  psd::EmbeddingSeeds();
  psd::IdxSeeds();
  psd::SafetensorsSeeds();
  return 0;
}
