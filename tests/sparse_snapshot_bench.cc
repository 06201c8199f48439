// sparse_snapshot_bench: the cost of a snapshot of a sparse embedding table
// and of its restore, at the store level (no gRPC: what SnapshotTable and
// CreateTable-with-restore do on a server, minus the call).
//
// Table: --rows rows of V = 10^8 (ids SplitMix64Mix(k) mod V, k < rows) x
// --dim, Adagrad (one slot: 8 + 8 d bytes of record per row), one shard,
// created by pushes of 10,000 rows, with a dedup log of one client. Then
// --runs times: EmbeddingStore::Capture (the time pushes to the table wait),
// EmbeddingSnapshotStore::Write to a RocksDB in --dir (a new generation each
// run; keep_last 2 as psd_server), printed per run; then
// ReadNewestValid + Restore into a fresh store, --runs times. Printed: the
// median of each, the bytes of records written, and the size of the
// database directory at the end.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/process.h"
#include "common/embedding_rows.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"

ABSL_FLAG(int64_t, rows, 1000000, "Rows in the table.");
ABSL_FLAG(int, dim, 64, "Row width d.");
ABSL_FLAG(int, runs, 5, "Snapshots (and restores) measured.");
ABSL_FLAG(std::string, dir, "/tmp/psd-sparse-snapshot-bench",
          "RocksDB directory (deleted first and at the end).");

namespace psd {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t DirBytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

int Main() {
  const int64_t rows = absl::GetFlag(FLAGS_rows);
  const int dim = absl::GetFlag(FLAGS_dim);
  const int runs = std::max(1, absl::GetFlag(FLAGS_runs));
  const std::string dir = absl::GetFlag(FLAGS_dir);
  std::filesystem::remove_all(dir);
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(100000000);
  spec.set_dim(dim);
  spec.set_num_shards(1);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  spec.mutable_optimizer()->set_learning_rate(0.05f);
  EmbeddingStore store;
  if (!store.CreateTable("bench", spec, {0}).ok()) return 1;
  const int64_t per_push = 10000;
  std::vector<uint64_t> ids;
  std::vector<float> grads(per_push * dim, 0.01f);
  Tensor t;
  t.set_dtype(FLOAT32);
  const auto fill = std::chrono::steady_clock::now();
  for (int64_t k = 0, seq = 1; k < rows; k += per_push, ++seq) {
    ids.clear();
    for (int64_t j = k; j < std::min(rows, k + per_push); ++j) {
      ids.push_back(SplitMix64Mix(static_cast<uint64_t>(j)) % spec.num_rows());
    }
    t.clear_shape();
    t.add_shape(static_cast<int64_t>(ids.size()));
    t.add_shape(dim);
    t.set_data(grads.data(), ids.size() * dim * 4);
    auto pushed = store.Push("bench", "emb", ids, t,
                             {"bench-client", static_cast<uint64_t>(seq)});
    if (!pushed.ok()) {
      std::fprintf(stderr, "%s\n", pushed.status().ToString().c_str());
      return 1;
    }
  }
  auto status = store.Status("bench", "emb");
  std::printf("table: %lld rows x d=%d (Adagrad, %lld B/row record), filled "
              "in %.1f s\n",
              static_cast<long long>(status->rows()), dim,
              static_cast<long long>(status->row_bytes()), Since(fill));
  auto opened = EmbeddingSnapshotStore::Open(dir);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<EmbeddingSnapshotStore> snapshots = *std::move(opened);
  std::vector<double> capture_s, write_s, read_s, restore_s;
  int64_t bytes = 0;
  for (int r = 0; r < runs; ++r) {
    auto start = std::chrono::steady_clock::now();
    auto capture = store.Capture("bench", "emb");
    if (!capture.ok()) return 1;
    capture_s.push_back(Since(start));
    start = std::chrono::steady_clock::now();
    auto written = snapshots->Write(*capture, {{"run", std::to_string(r)}});
    if (!written.ok()) {
      std::fprintf(stderr, "%s\n", written.status().ToString().c_str());
      return 1;
    }
    write_s.push_back(Since(start));
    bytes = written->total_bytes();
    std::printf("snapshot %d: generation %lld, capture %.3f s, write %.3f s, "
                "%lld bytes (%.1f MB/s)\n",
                r + 1, static_cast<long long>(written->generation()),
                capture_s.back(), write_s.back(),
                static_cast<long long>(bytes), bytes / write_s.back() / 1e6);
  }
  for (int r = 0; r < runs; ++r) {
    auto start = std::chrono::steady_clock::now();
    auto read = snapshots->ReadNewestValid("bench", "emb");
    if (!read.ok()) {
      std::fprintf(stderr, "%s\n", read.status().ToString().c_str());
      return 1;
    }
    read_s.push_back(Since(start));
    start = std::chrono::steady_clock::now();
    EmbeddingStore fresh;
    auto loaded = fresh.Restore(read->capture, {0});
    if (!loaded.ok() || *loaded != status->rows()) return 1;
    restore_s.push_back(Since(start));
    std::printf("restore %d: read+verify %.3f s, load %.3f s\n", r + 1,
                read_s.back(), restore_s.back());
  }
  std::printf("median of %d: capture (pushes blocked) %.3f s, write %.3f s "
              "(%.1f MB/s), read+verify %.3f s, load %.3f s; %lld bytes of "
              "records (%.1f B/row); database directory %lld bytes (keep_last "
              "2)\n",
              runs, Median(capture_s), Median(write_s),
              bytes / Median(write_s) / 1e6, Median(read_s),
              Median(restore_s), static_cast<long long>(bytes),
              static_cast<double>(bytes) / status->rows(),
              static_cast<long long>(DirBytes(dir)));
  snapshots.reset();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  psd::TuneAllocator();
  absl::SetProgramUsageMessage(
      "Times a snapshot and a restore of a sparse embedding table (store "
      "level, RocksDB in --dir).\n"
      "  sparse_snapshot_bench [--rows=1000000] [--dim=64] [--runs=5] "
      "[--dir=DIR]");
  absl::ParseCommandLine(argc, argv);
  return psd::Main();
}
