// EmbeddingStore::Capture / Restore and EmbeddingSnapshotStore: round trip,
// dedup logs, damage detection, incomplete generations.
#include "server/embedding/embedding_snapshot.h"

#include <algorithm>
#include <rocksdb/db.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/embedding_rows.h"
#include "server/embedding/embedding_store.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-1";

EmbeddingTableSpec Spec(int32_t dim, int32_t shards) {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(1000000);
  spec.set_dim(dim);
  spec.set_num_shards(shards);
  spec.mutable_initializer()->set_seed(99);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAM);
  spec.mutable_optimizer()->set_learning_rate(0.01f);
  return spec;
}

Tensor Grads(int64_t n, int64_t dim, float base) {
  std::vector<float> v(n * dim);
  for (int64_t i = 0; i < n * dim; ++i) v[i] = base + 0.001f * (i % 97);
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(n);
  t.add_shape(dim);
  t.set_data(v.data(), v.size() * 4);
  return t;
}

// A fresh directory under the test's temporary folder.
std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir =
      std::string(base != nullptr ? base : "/tmp") + "/embsnap-" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

// Pushes `rounds` pushes of `rows` rows each from client "c1" (sequences
// first, first + 1, ...) to a 2-shard table holding both shards.
void Train(EmbeddingStore* store, int rounds, int rows, int32_t dim,
           int first = 1) {
  for (int r = first; r < first + rounds; ++r) {
    std::vector<uint64_t> ids;
    for (int i = 0; i < rows; ++i) ids.push_back((i * 7919 + r * 13) % 5000);
    auto pushed = store->Push(kJob, "emb", ids, Grads(rows, dim, 0.01f * r),
                              {"c1", static_cast<uint64_t>(r)});
    REQUIRE(pushed.ok());
  }
}

uint64_t Checksum(const EmbeddingStore& store) {
  auto status = store.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  uint64_t sum = 0;
  for (const TableShardStatus& s : status->shard_status()) sum += s.checksum();
  return sum;
}

// Overwrites one byte of the value at `key` in the RocksDB at `dir` (the
// store must be closed).
void Damage(const std::string& dir, const std::string& key) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Options options;
  REQUIRE(rocksdb::DB::Open(options, dir, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string value;
  REQUIRE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
  value[value.size() / 2] ^= 0x40;
  REQUIRE(db->Put(rocksdb::WriteOptions(), key, value).ok());
  REQUIRE(db->Close().ok());
}

TEST_CASE("EmbeddingSnapshot: a restored table is bitwise the original",
          "[embedding][snapshot]") {
  const std::string dir = TempDir("roundtrip");
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(16, 2), {0, 1}).ok());
  Train(&store, 20, 300, 16);
  const uint64_t before = Checksum(store);
  auto capture = store.Capture(kJob, "emb");
  REQUIRE(capture.ok());
  int64_t generation = 0;
  {
    // Small batches, so that the table spans many batch records.
    auto snapshots = EmbeddingSnapshotStore::Open(dir, {2, 4096});
    REQUIRE(snapshots.ok());
    auto written = (*snapshots)->Write(*capture, {{"epoch", "3"}});
    REQUIRE(written.ok());
    generation = written->generation();
    CHECK(generation == 1);
    CHECK(written->rows() == static_cast<int64_t>(capture->ids.size()));
    CHECK(written->batch_crc32_size() > 10);
  }
  // After a "restart": a new store and a new snapshot store on the same dir.
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  auto read = (*snapshots)->ReadNewestValid(kJob, "emb");
  REQUIRE(read.ok());
  CHECK(read->manifest.generation() == generation);
  CHECK(read->manifest.metadata().at("epoch") == "3");
  EmbeddingStore restored;
  auto loaded = restored.Restore(read->capture, {0, 1});
  REQUIRE(loaded.ok());
  CHECK(*loaded == static_cast<int64_t>(capture->ids.size()));
  CHECK(Checksum(restored) == before);
  // Every row, weights and slots, bitwise: pull them all and compare; and
  // one more identical push to each keeps them equal (slots and counts
  // came back too, not only weights).
  std::vector<uint64_t> ids(capture->ids.begin(), capture->ids.end());
  std::string a, b;
  REQUIRE(store.Pull(kJob, "emb", ids, &a).ok());
  REQUIRE(restored.Pull(kJob, "emb", ids, &b).ok());
  CHECK(a == b);
  Train(&store, 1, 50, 16);  // sequence 1 again: a duplicate on both
  Train(&restored, 1, 50, 16);
  CHECK(Checksum(restored) == before);
  auto more = Grads(2, 16, 0.5f);
  REQUIRE(store.Push(kJob, "emb", {1, 2}, more, {"c2", 1}).ok());
  REQUIRE(restored.Push(kJob, "emb", {1, 2}, more, {"c2", 1}).ok());
  CHECK(Checksum(restored) == Checksum(store));
  // A restore of one shard loads only its rows.
  EmbeddingStore half;
  auto one = half.Restore(read->capture, {1});
  REQUIRE(one.ok());
  CHECK(*one > 0);
  CHECK(*one < *loaded);
  // A shard the snapshot lacks, an existing table.
  EmbeddingStore other;
  auto shard_one = other.Restore(read->capture, {1});
  REQUIRE(shard_one.ok());
  auto again = other.Restore(read->capture, {1});
  CHECK(again.status().code() == absl::StatusCode::kAlreadyExists);
  auto snap_one = other.Capture(kJob, "emb");
  REQUIRE(snap_one.ok());
  EmbeddingStore third;
  auto missing = third.Restore(*snap_one, {0});
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK(std::string(missing.status().message()).find("shards[0]") !=
        std::string::npos);
}

TEST_CASE("EmbeddingSnapshot: the dedup log survives a restore",
          "[embedding][snapshot]") {
  const std::string dir = TempDir("dedup");
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(4, 1), {0}).ok());
  Train(&store, 5, 10, 4);  // c1: 1..5
  auto capture = store.Capture(kJob, "emb");
  REQUIRE(capture.ok());
  REQUIRE(capture->dedup.size() == 1);
  CHECK(capture->dedup[0].second == std::vector<uint64_t>{1, 2, 3, 4, 5});
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir);
    REQUIRE(snapshots.ok());
    REQUIRE((*snapshots)->Write(*capture).ok());
  }
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  auto read = (*snapshots)->ReadNewestValid(kJob, "emb");
  REQUIRE(read.ok());
  CHECK(read->manifest.dedup_entries() == 5);
  EmbeddingStore restored;
  REQUIRE(restored.Restore(read->capture, {0}).ok());
  const uint64_t before = Checksum(restored);
  // A retry of a push the snapshot holds: a duplicate, nothing changes.
  auto retry = restored.Push(kJob, "emb", {1}, Grads(1, 4, 1.0f), {"c1", 5});
  REQUIRE(retry.ok());
  CHECK(retry->duplicate);
  CHECK(Checksum(restored) == before);
  // One it lacks: applied.
  auto fresh = restored.Push(kJob, "emb", {1}, Grads(1, 4, 1.0f), {"c1", 6});
  REQUIRE(fresh.ok());
  CHECK_FALSE(fresh->duplicate);
  CHECK(Checksum(restored) != before);
}

TEST_CASE("EmbeddingSnapshot: a damaged record is DATA_LOSS, never loaded",
          "[embedding][snapshot]") {
  for (const char* what : {"batch", "dedup", "manifest"}) {
    DYNAMIC_SECTION(what) {
      const std::string dir = TempDir(std::string("damage-") + what);
      EmbeddingStore store;
      REQUIRE(store.CreateTable(kJob, Spec(8, 1), {0}).ok());
      Train(&store, 3, 100, 8);
      auto capture = store.Capture(kJob, "emb");
      REQUIRE(capture.ok());
      {
        auto snapshots = EmbeddingSnapshotStore::Open(dir, {1, 4096});
        REQUIRE(snapshots.ok());
        REQUIRE((*snapshots)->Write(*capture).ok());
      }
      const std::string key =
          std::string(what) == "batch"
              ? EmbeddingSnapshotBatchKey(kJob, "emb", 1, 1)
          : std::string(what) == "dedup"
              ? EmbeddingSnapshotDedupKey(kJob, "emb", 1)
              : EmbeddingSnapshotManifestKey(kJob, "emb", 1);
      Damage(dir, key);
      auto snapshots = EmbeddingSnapshotStore::Open(dir);
      REQUIRE(snapshots.ok());
      auto read = (*snapshots)->ReadNewestValid(kJob, "emb");
      REQUIRE(read.status().code() == absl::StatusCode::kDataLoss);
      const std::string message(read.status().message());
      INFO(message);
      CHECK(message.find("table \"emb\"") != std::string::npos);
      CHECK(message.find("generation 1") != std::string::npos);
      CHECK(message.find("checksum mismatch") != std::string::npos);
    }
  }
}

TEST_CASE("EmbeddingSnapshot: an incomplete generation is ignored",
          "[embedding][snapshot]") {
  const std::string dir = TempDir("incomplete");
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(8, 1), {0}).ok());
  Train(&store, 3, 100, 8);
  auto first = store.Capture(kJob, "emb");
  REQUIRE(first.ok());
  const uint64_t first_sum = Checksum(store);
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir, {1, 4096});
    REQUIRE(snapshots.ok());
    REQUIRE((*snapshots)->Write(*first).ok());
  }
  // A crash while generation 2 was written: row batches, no manifest.
  {
    rocksdb::DB* raw = nullptr;
    REQUIRE(rocksdb::DB::Open(rocksdb::Options(), dir, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    REQUIRE(db->Put(rocksdb::WriteOptions(),
                    EmbeddingSnapshotBatchKey(kJob, "emb", 2, 0), "partial")
                .ok());
    REQUIRE(db->Close().ok());
  }
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir, {1, 4096});
    REQUIRE(snapshots.ok());
    auto read = (*snapshots)->ReadNewestValid(kJob, "emb");
    REQUIRE(read.ok());
    CHECK(read->manifest.generation() == 1);
    EmbeddingStore restored;
    REQUIRE(restored.Restore(read->capture, {0}).ok());
    CHECK(Checksum(restored) == first_sum);
    // The next write takes generation 2 over the leftovers.
    Train(&store, 1, 10, 8, 4);
    auto second = store.Capture(kJob, "emb");
    REQUIRE(second.ok());
    auto written = (*snapshots)->Write(*second);
    REQUIRE(written.ok());
    CHECK(written->generation() == 2);
    auto gens = (*snapshots)->Generations(kJob, "emb");
    REQUIRE(gens.ok());
    CHECK(*gens == std::vector<int64_t>{2});  // keep_last 1
    auto now = (*snapshots)->ReadNewestValid(kJob, "emb");
    REQUIRE(now.ok());
    CHECK(now->manifest.generation() == 2);
  }
}

TEST_CASE("EmbeddingSnapshot: a damaged newest generation falls back to the "
          "previous one",
          "[embedding][snapshot]") {
  const std::string dir = TempDir("fallback");
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(8, 1), {0}).ok());
  Train(&store, 2, 50, 8);
  const uint64_t first_sum = Checksum(store);
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir);  // keep_last 2
    REQUIRE(snapshots.ok());
    REQUIRE((*snapshots)->Write(*store.Capture(kJob, "emb")).ok());
    Train(&store, 1, 50, 8, 3);
    REQUIRE((*snapshots)->Write(*store.Capture(kJob, "emb")).ok());
    Train(&store, 1, 50, 8, 4);
    // Generation 3 deletes generation 1 (keep_last 2): 2 and 3 remain.
    REQUIRE((*snapshots)->Write(*store.Capture(kJob, "emb")).ok());
    auto gens = (*snapshots)->Generations(kJob, "emb");
    REQUIRE(gens.ok());
    CHECK(*gens == std::vector<int64_t>{3, 2});
  }
  Damage(dir, EmbeddingSnapshotBatchKey(kJob, "emb", 3, 0));
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  std::vector<std::pair<int64_t, absl::Status>> skipped;
  auto read = (*snapshots)->ReadNewestValid(kJob, "emb", &skipped);
  REQUIRE(read.ok());
  CHECK(read->manifest.generation() == 2);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].first == 3);
  EmbeddingStore restored;
  REQUIRE(restored.Restore(read->capture, {0}).ok());
  CHECK(Checksum(restored) != first_sum);  // generation 2, not 1
  // No snapshot at all: NOT_FOUND naming the table.
  auto none = (*snapshots)->ReadNewestValid(kJob, "other");
  CHECK(none.status().code() == absl::StatusCode::kNotFound);
  CHECK(std::string(none.status().message()).find("\"other\"") !=
        std::string::npos);
}

TEST_CASE("EmbeddingStore: Capture is a cut between concurrent pushes",
          "[embedding][snapshot]") {
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(4, 1), {0}).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0};
  std::thread pusher([&] {
    for (uint64_t seq = 1; !stop.load(); ++seq) {
      // Every push updates rows 1 and 2 once, so both rows always have the
      // same update count in a consistent cut.
      if (!store.Push(kJob, "emb", {1, 2}, Grads(2, 4, 0.1f), {"c", seq})
               .ok()) {
        failed.fetch_add(1);
      }
    }
  });
  for (int i = 0; i < 200; ++i) {
    auto capture = store.Capture(kJob, "emb");
    REQUIRE(capture.ok());
    if (capture->ids.size() < 2) continue;
    int64_t counts[2];
    for (int r = 0; r < 2; ++r) {
      std::memcpy(&counts[r], capture->records.data() + r * capture->record_floats,
                  8);
    }
    REQUIRE(counts[0] == counts[1]);
    // And the dedup log holds exactly the pushes applied.
    REQUIRE(capture->dedup.size() == 1);
    REQUIRE(static_cast<int64_t>(capture->dedup[0].second.size()) ==
            std::min<int64_t>(counts[0], 1024));
  }
  stop = true;
  pusher.join();
  CHECK(failed.load() == 0);
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

TEST_CASE("EmbeddingSnapshot: BSP clocks, num_ranks, the ASP step and "
          "admission counts survive a snapshot",
          "[embedding][snapshot][bsp]") {
  const std::string dir = TempDir("bsp-state");
  EmbeddingTableSpec spec = Spec(4, 2);
  spec.set_admit_after_pushes(3);
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, spec, {0, 1}).ok());
  for (int64_t step = 0; step < 2; ++step) {
    for (int32_t shard = 0; shard < 2; ++shard) {
      std::vector<uint64_t> ids;
      for (uint64_t id = 0; id < 50; ++id) {
        if (ShardOfRow(id, 2) == shard && (step == 0 || id % 2 == 0)) {
          ids.push_back(id);
        }
      }
      REQUIRE(store.PushBsp(kJob, "emb", ids,
                            Grads(static_cast<int64_t>(ids.size()), 4, 0.1f),
                            {step, 0, 1, shard}, {},
                            EmbeddingPushSource::kClient, nullptr)
                  .ok());
    }
  }
  // An ASP push with a step, and a real client's dedup entry.
  REQUIRE(store.Push(kJob, "emb", {7}, Grads(1, 4, 0.5f), {"c1", 4},
                     EmbeddingPushSource::kClient, 9)
              .ok());
  auto capture = store.Capture(kJob, "emb");
  REQUIRE(capture.ok());
  {
    auto snapshots = EmbeddingSnapshotStore::Open(dir);
    REQUIRE(snapshots.ok());
    auto written = (*snapshots)->Write(*capture, {});
    REQUIRE(written.ok());
    CHECK(written->dedup_entries() == 1);  // reserved entries not counted
  }
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  auto read = (*snapshots)->ReadNewestValid(kJob, "emb");
  REQUIRE(read.ok());
  const EmbeddingTableCapture& got = read->capture;
  CHECK(got.bsp_num_ranks == 1);
  CHECK(got.asp_step == 9);
  auto clocks = got.bsp_clocks;
  std::sort(clocks.begin(), clocks.end());
  CHECK(clocks == std::vector<std::pair<int32_t, int64_t>>{{0, 2}, {1, 2}});
  auto admission = got.admission;
  std::sort(admission.begin(), admission.end());
  CHECK(admission == capture->admission);
  CHECK(admission.size() == 50u);  // none of rows 0..49 has 3 pushes yet
  REQUIRE(got.dedup.size() == 1u);
  CHECK(got.dedup[0].first == "c1");
  EmbeddingStore restored;
  REQUIRE(restored.Restore(got, {0, 1}).ok());
  auto a = store.Status(kJob, "emb");
  auto b = restored.Status(kJob, "emb");
  CHECK(b->pending_admission_rows() == a->pending_admission_rows());
  CHECK(b->step() == a->step());
  CHECK(b->shard_status(1).bsp_clock() == 2);
}

}  // namespace
}  // namespace psd
