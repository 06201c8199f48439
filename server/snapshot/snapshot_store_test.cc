#include "server/snapshot/snapshot_store.h"

#include <rocksdb/db.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/proto.h"

namespace psd {
namespace {

namespace fs = std::filesystem;

// A fresh directory under $TEST_TMPDIR (or /tmp) for one test.
std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(base != nullptr ? base : "/tmp") /
                 absl::StrCat("snapshot_store_test.", getpid(), ".", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::unique_ptr<SnapshotStore> OpenStore(const std::string& dir,
                                         int keep_last = 3) {
  SnapshotStoreOptions options;
  options.keep_last = keep_last;
  auto store = SnapshotStore::Open(dir, options);
  REQUIRE(store.ok());
  return *std::move(store);
}

// A job of `num_partitions` partitions of `elements` floats each, all on
// shard 0 (the placement need not come from BuildPlacement here).
ShardSnapshot MakeSnapshot(const std::string& job_id, int64_t step,
                           int num_partitions, int elements,
                           bool with_slots) {
  ShardSnapshot s;
  SnapshotManifest& m = s.manifest;
  m.set_job_id(job_id);
  m.set_step(step);
  m.set_view_epoch(7);
  m.mutable_config()->set_name("mlp");
  m.mutable_config()->mutable_optimizer()->set_momentum(with_slots ? 0.9f
                                                                      : 0.0f);
  m.add_shards(0);
  Placement* placement = m.mutable_placement();
  placement->set_num_shards(1);
  ParameterSpec* spec = placement->add_parameters();
  spec->set_name("w");
  spec->add_shape(int64_t{num_partitions} * elements);
  uint32_t seed = static_cast<uint32_t>(step * 7919 + 1);
  auto next = [&seed] {
    seed = seed * 1664525u + 1013904223u;
    float f;
    uint32_t bits = (seed >> 9) | 0x3f800000u;  // [1, 2)
    std::memcpy(&f, &bits, 4);
    return f - 1.5f;
  };
  for (int i = 0; i < num_partitions; ++i) {
    Partition* p = placement->add_partitions();
    p->set_id(i);
    p->set_parameter(0);
    p->set_offset(int64_t{i} * elements);
    p->set_num_elements(elements);
    p->set_shard(0);
    PartitionSnapshot ps;
    ps.id = i;
    for (int e = 0; e < elements; ++e) ps.weights.push_back(next());
    if (with_slots) {
      for (int e = 0; e < elements; ++e) ps.slots.push_back(next());
    }
    s.partitions.push_back(std::move(ps));
  }
  return s;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Same partitions, bit for bit.
bool SameData(const ShardSnapshot& a, const ShardSnapshot& b) {
  if (a.partitions.size() != b.partitions.size()) return false;
  for (size_t i = 0; i < a.partitions.size(); ++i) {
    if (a.partitions[i].id != b.partitions[i].id ||
        !SameBits(a.partitions[i].weights, b.partitions[i].weights) ||
        !SameBits(a.partitions[i].slots, b.partitions[i].slots)) {
      return false;
    }
  }
  return true;
}

std::vector<int64_t> ListedSteps(SnapshotStore& store, const std::string& job) {
  auto list = store.List(job);
  REQUIRE(list.ok());
  std::vector<int64_t> steps;
  for (const SnapshotInfo& info : *list) steps.push_back(info.step());
  return steps;
}

// Opens the store's RocksDB directly (the store must be closed).
std::unique_ptr<rocksdb::DB> OpenRaw(const std::string& dir) {
  rocksdb::Options options;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return std::unique_ptr<rocksdb::DB>(db);
}

int CountKeys(rocksdb::DB* db, const std::string& prefix) {
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions()));
  int n = 0;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix);
       it->Next()) {
    ++n;
  }
  REQUIRE(it->status().ok());
  return n;
}

bool Contains(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

TEST_CASE("SnapshotStore: a snapshot reads back bit-exact with its manifest",
          "[snapshot]") {
  const std::string dir = TempDir("roundtrip");
  auto store = OpenStore(dir);
  ShardSnapshot original = MakeSnapshot("j-1", 200, 4, 1000, true);
  REQUIRE(store->Write(original).ok());

  auto read = store->Read("j-1", 200);
  REQUIRE(read.ok());
  CHECK(SameData(*read, original));
  const SnapshotManifest& m = read->manifest;
  CHECK(m.job_id() == "j-1");
  CHECK(m.step() == 200);
  CHECK(m.view_epoch() == 7);
  CHECK(m.config().name() == "mlp");
  CHECK(m.placement().partitions_size() == 4);
  CHECK(std::vector<int32_t>(m.shards().begin(), m.shards().end()) ==
        std::vector<int32_t>{0});
  CHECK(std::vector<int32_t>(m.partition_ids().begin(),
                             m.partition_ids().end()) ==
        std::vector<int32_t>{0, 1, 2, 3});
  CHECK(m.partition_crc32_size() == 4);
  CHECK(m.total_bytes() == 4 * (24 + 2 * 4 * 1000));
  CHECK(m.created_unix_ms() > 1600000000000);

  SECTION("without momentum the slots stay empty") {
    ShardSnapshot plain = MakeSnapshot("j-2", 5, 2, 300, false);
    REQUIRE(store->Write(plain).ok());
    auto r = store->Read("j-2", 5);
    REQUIRE(r.ok());
    CHECK(SameData(*r, plain));
    for (const PartitionSnapshot& p : r->partitions) {
      CHECK(p.slots.empty());
      CHECK(p.weights.size() == 300);
    }
  }
  SECTION("partitions given in any order come back in id order") {
    ShardSnapshot shuffled = MakeSnapshot("j-3", 1, 3, 10, true);
    std::reverse(shuffled.partitions.begin(), shuffled.partitions.end());
    REQUIRE(store->Write(shuffled).ok());
    auto r = store->Read("j-3", 1);
    REQUIRE(r.ok());
    std::reverse(shuffled.partitions.begin(), shuffled.partitions.end());
    CHECK(SameData(*r, shuffled));
  }
  SECTION("survives a reopen") {
    store.reset();
    store = OpenStore(dir);
    auto r = store->Read("j-1", 200);
    REQUIRE(r.ok());
    CHECK(SameData(*r, original));
  }
  SECTION("writing the same step again replaces it") {
    ShardSnapshot again = MakeSnapshot("j-1", 200, 2, 1000, false);
    again.partitions[0].weights[0] = 42.0f;
    REQUIRE(store->Write(again).ok());
    auto r = store->Read("j-1", 200);
    REQUIRE(r.ok());
    CHECK(SameData(*r, again));
    CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{200});
  }
}

TEST_CASE("SnapshotStore: Write refuses bad snapshots and keeps the old ones",
          "[snapshot]") {
  auto store = OpenStore(TempDir("invalid"));
  ShardSnapshot good = MakeSnapshot("j-1", 10, 2, 8, true);
  REQUIRE(store->Write(good).ok());

  ShardSnapshot bad = MakeSnapshot("j-1", 20, 2, 8, true);
  std::string expect;
  SECTION("optimizer slots not a multiple of the weights") {
    bad.partitions[1].slots.pop_back();
    expect = "partition 1: optimizer slots have 7 elements";
  }
  SECTION("no job id") {
    bad.manifest.set_job_id("");
    expect = "job_id: empty";
  }
  SECTION("a '/' in the job id") {
    bad.manifest.set_job_id("a/b");
    expect = "contains '/'";
  }
  SECTION("weights not the placement's size") {
    bad.partitions[0].weights.push_back(1.0f);
    expect = "partition 0: 9 weights, but the placement has 8";
  }
  SECTION("a partition outside the placement") {
    bad.partitions[0].id = 99;
    expect = "partition 99: not in the manifest's placement";
  }
  SECTION("a partition given twice") {
    bad.partitions[1].id = 0;
    expect = "partition given twice";
  }
  SECTION("negative step") {
    bad.manifest.set_step(-1);
    expect = "step < 0";
  }
  absl::Status s = store->Write(bad);
  CHECK(absl::IsInvalidArgument(s));
  INFO(s.message());
  CHECK(Contains(s, expect));
  CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{10});
  auto r = store->Read("j-1", 10);
  REQUIRE(r.ok());
  CHECK(SameData(*r, good));
}

TEST_CASE("SnapshotStore: List is newest first, ListJobs lists every job",
          "[snapshot]") {
  auto store = OpenStore(TempDir("list"), /*keep_last=*/10);
  for (int64_t step : {100, 5, 20}) {
    REQUIRE(store->Write(MakeSnapshot("j-1", step, 1, 4, false)).ok());
  }
  REQUIRE(store->Write(MakeSnapshot("j-10", 3, 2, 4, false)).ok());
  REQUIRE(store->Write(MakeSnapshot("a", 1, 1, 4, false)).ok());

  // Written in the order 100, 5, 20: writing 5 removed 100 (a later step
  // from an abandoned timeline).
  CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{20, 5});
  REQUIRE(store->Write(MakeSnapshot("j-1", 1000, 1, 4, false)).ok());
  CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{1000, 20, 5});

  auto list = store->List("j-10");
  REQUIRE(list.ok());
  REQUIRE(list->size() == 1);
  CHECK((*list)[0].job_id() == "j-10");
  CHECK((*list)[0].step() == 3);
  CHECK((*list)[0].total_bytes() == 2 * (24 + 16));
  CHECK((*list)[0].created_unix_ms() > 0);
  CHECK((*list)[0].shards_size() == 1);

  CHECK(ListedSteps(*store, "j-2").empty());
  CHECK(absl::IsInvalidArgument(store->List("").status()));

  auto jobs = store->ListJobs();
  REQUIRE(jobs.ok());
  CHECK(*jobs == std::vector<std::string>{"a", "j-1", "j-10"});

  REQUIRE(store->DeleteJob("j-1").ok());
  CHECK(ListedSteps(*store, "j-1").empty());
  CHECK(absl::IsNotFound(store->Read("j-1", 20).status()));
  jobs = store->ListJobs();
  REQUIRE(jobs.ok());
  CHECK(*jobs == std::vector<std::string>{"a", "j-10"});
  CHECK(store->Read("j-10", 3).ok());
  CHECK(store->DeleteJob("never-was").ok());
}

TEST_CASE("SnapshotStore: keeps only the keep_last newest snapshots",
          "[snapshot]") {
  const std::string dir = TempDir("retention");
  {
    auto store = OpenStore(dir, /*keep_last=*/3);
    for (int i = 1; i <= 7; ++i) {
      REQUIRE(store->Write(MakeSnapshot("j-1", i * 100, 4, 16, true)).ok());
      REQUIRE(store->Write(MakeSnapshot("j-2", i, 1, 16, false)).ok());
    }
    CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{700, 600, 500});
    CHECK(ListedSteps(*store, "j-2") == std::vector<int64_t>{7, 6, 5});
    CHECK(absl::IsNotFound(store->Read("j-1", 400).status()));
    auto r = store->Read("j-1", 500);
    REQUIRE(r.ok());
    CHECK(SameData(*r, MakeSnapshot("j-1", 500, 4, 16, true)));
  }
  auto db = OpenRaw(dir);
  CHECK(CountKeys(db.get(), "m/j-1/") == 3);
  CHECK(CountKeys(db.get(), "p/j-1/") == 3 * 4);
  CHECK(CountKeys(db.get(), "m/j-2/") == 3);
  CHECK(CountKeys(db.get(), "p/j-2/") == 3);
}

TEST_CASE("SnapshotStore: a damaged record is DATA_LOSS and is skipped",
          "[snapshot]") {
  const std::string dir = TempDir("damage");
  const ShardSnapshot s100 = MakeSnapshot("j-1", 100, 4, 64, true);
  const ShardSnapshot s200 = MakeSnapshot("j-1", 200, 4, 64, true);
  {
    auto store = OpenStore(dir);
    REQUIRE(store->Write(s100).ok());
    REQUIRE(store->Write(s200).ok());
  }
  std::string expect;
  {
    auto db = OpenRaw(dir);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    SECTION("a flipped bit in a partition record") {
      const std::string key = SnapshotPartitionKey("j-1", 200, 3);
      std::string value;
      REQUIRE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
      value[24 + 100] ^= 0x10;
      REQUIRE(db->Put(wo, key, value).ok());
      expect =
          "snapshot j-1 step 200 partition 3: checksum mismatch (stored 0x";
    }
    SECTION("a truncated partition record") {
      const std::string key = SnapshotPartitionKey("j-1", 200, 2);
      std::string value;
      REQUIRE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
      value.resize(value.size() / 2);
      REQUIRE(db->Put(wo, key, value).ok());
      expect = "snapshot j-1 step 200 partition 2: checksum mismatch";
    }
    SECTION("a missing partition record") {
      REQUIRE(db->Delete(wo, SnapshotPartitionKey("j-1", 200, 1)).ok());
      expect = "snapshot j-1 step 200 partition 1: record missing";
    }
    SECTION("a manifest that does not parse") {
      REQUIRE(db->Put(wo, SnapshotManifestKey("j-1", 200), "garbage!").ok());
      expect = "snapshot j-1 step 200: manifest checksum mismatch";
    }
    SECTION("a manifest with a valid checksum that does not parse") {
      std::string value(4, '\0');
      value += "\xff\xff\xff";
      uint32_t crc = static_cast<uint32_t>(
          crc32_z(0, reinterpret_cast<const Bytef*>(value.data() + 4), 3));
      std::memcpy(&value[0], &crc, 4);
      REQUIRE(db->Put(wo, SnapshotManifestKey("j-1", 200), value).ok());
      expect = "snapshot j-1 step 200: manifest does not parse";
    }
  }
  auto store = OpenStore(dir);
  auto read = store->Read("j-1", 200);
  CHECK(absl::IsDataLoss(read.status()));
  INFO(read.status().message());
  CHECK(Contains(read.status(), expect));

  // Still listed (List does not verify).
  CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{200, 100});

  std::vector<std::pair<int64_t, absl::Status>> skipped;
  auto newest = store->ReadNewestValid("j-1", &skipped);
  REQUIRE(newest.ok());
  CHECK(newest->manifest.step() == 100);
  CHECK(SameData(*newest, s100));
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].first == 200);
  CHECK(absl::IsDataLoss(skipped[0].second));
  CHECK(Contains(skipped[0].second, expect));

  // Nothing valid at or below 150 but 100; nothing at all below 100.
  skipped.clear();
  auto at_most = store->ReadNewestValidAtMost("j-1", 150, &skipped);
  REQUIRE(at_most.ok());
  CHECK(at_most->manifest.step() == 100);
  CHECK(skipped.empty());
  CHECK(absl::IsNotFound(
      store->ReadNewestValidAtMost("j-1", 99, nullptr).status()));
  CHECK(absl::IsNotFound(store->Read("j-1", 150).status()));
}

// An ASP/SSP snapshot: partitions 1 and 3 of MakeSnapshot's carry clocks
// (3 worker ranks) and update counts; 0 and 2 are BSP.
ShardSnapshot MakeAsyncSnapshot(const std::string& job_id, int64_t step) {
  ShardSnapshot s = MakeSnapshot(job_id, step, 4, 64, true);
  s.manifest.mutable_config()->set_workers(3);
  s.partitions[1].clocks = {step, step + 1, step + 2};
  s.partitions[1].updates = 3 * step + 2;
  s.partitions[3].clocks = {step + 1, step, step};
  s.partitions[3].updates = 3 * step + 1;
  return s;
}

TEST_CASE("SnapshotStore: ASP/SSP partitions' clocks and update counts "
          "round-trip, and snapshots without them read as BSP",
          "[snapshot][asp]") {
  const std::string dir = TempDir("clocks");
  auto store = OpenStore(dir);
  const ShardSnapshot written = MakeAsyncSnapshot("j-1", 10);
  REQUIRE(store->Write(written).ok());
  auto read = store->Read("j-1", 10);
  REQUIRE(read.ok());
  CHECK(SameData(*read, written));
  REQUIRE(read->partitions.size() == 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(read->partitions[i].clocks == written.partitions[i].clocks);
    if (!written.partitions[i].clocks.empty()) {
      CHECK(read->partitions[i].updates == written.partitions[i].updates);
    }
  }
  REQUIRE(read->manifest.async_partitions_size() == 2);
  CHECK(read->manifest.async_partitions(0).partition_id() == 1);
  CHECK(read->manifest.async_partitions(1).partition_id() == 3);
  // A BSP snapshot has none.
  REQUIRE(store->Write(MakeSnapshot("j-2", 5, 2, 8, false)).ok());
  auto bsp = store->Read("j-2", 5);
  REQUIRE(bsp.ok());
  CHECK(bsp->manifest.async_partitions_size() == 0);
  for (const PartitionSnapshot& p : bsp->partitions) CHECK(p.clocks.empty());

  // Write refuses clocks that break the step's meaning or the rank count.
  ShardSnapshot below = MakeAsyncSnapshot("j-1", 20);
  below.partitions[1].clocks[0] = 19;
  absl::Status refused = store->Write(below);
  CHECK(absl::IsInvalidArgument(refused));
  CHECK(Contains(refused, "partition 1: a rank's clock 19 is below the step"));
  ShardSnapshot ranks = MakeAsyncSnapshot("j-1", 20);
  ranks.partitions[3].clocks.pop_back();
  refused = store->Write(ranks);
  CHECK(absl::IsInvalidArgument(refused));
  CHECK(Contains(refused, "partition 3: 2 clocks, the job has 3"));
  CHECK(ListedSteps(*store, "j-1") == std::vector<int64_t>{10});
}

TEST_CASE("SnapshotStore: damaged or inconsistent clocks are DATA_LOSS",
          "[snapshot][asp]") {
  const std::string dir = TempDir("clocks_damage");
  {
    auto store = OpenStore(dir);
    REQUIRE(store->Write(MakeAsyncSnapshot("j-1", 10)).ok());
    REQUIRE(store->Write(MakeAsyncSnapshot("j-1", 20)).ok());
  }
  std::string expect;
  {
    auto db = OpenRaw(dir);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    const std::string key = SnapshotManifestKey("j-1", 20);
    std::string value;
    REQUIRE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
    SnapshotManifest m;
    REQUIRE(m.ParseFromArray(value.data() + 4,
                             static_cast<int>(value.size() - 4)));
    REQUIRE(m.async_partitions_size() == 2);
    // Re-encodes the manifest with a valid checksum.
    auto put = [&](const SnapshotManifest& changed) {
      std::string out(4, '\0');
      REQUIRE(changed.AppendToString(&out));
      uint32_t crc = static_cast<uint32_t>(crc32_z(
          0, reinterpret_cast<const Bytef*>(out.data() + 4), out.size() - 4));
      std::memcpy(&out[0], &crc, 4);
      REQUIRE(db->Put(wo, key, out).ok());
    };
    SECTION("a flipped bit in a clock (the manifest's CRC covers them)") {
      // The clocks are serialized last (field 11); flip a bit of the last
      // clock's varint.
      value[value.size() - 1] ^= 0x01;
      REQUIRE(db->Put(wo, key, value).ok());
      expect = "snapshot j-1 step 20: manifest checksum mismatch";
    }
    SECTION("a clock below the step") {
      m.mutable_async_partitions(1)->set_clocks(2, 19);
      put(m);
      expect = "snapshot j-1 step 20 partition 3: clocks: a rank's clock 19 "
               "is below the snapshot's step";
    }
    SECTION("too few clocks") {
      m.mutable_async_partitions(0)->mutable_clocks()->RemoveLast();
      put(m);
      expect = "snapshot j-1 step 20 partition 1: clocks: 2 of them, the job "
               "has 3 worker ranks";
    }
    SECTION("clocks of a partition not in the snapshot") {
      m.mutable_async_partitions(0)->set_partition_id(9);
      put(m);
      expect = "snapshot j-1 step 20 partition 9: clocks of a partition not "
               "in the snapshot";
    }
    SECTION("clocks given twice") {
      *m.add_async_partitions() = m.async_partitions(0);
      put(m);
      expect = "snapshot j-1 step 20 partition 1: clocks given twice";
    }
    SECTION("a negative update count") {
      m.mutable_async_partitions(1)->set_updates(-4);
      put(m);
      expect = "snapshot j-1 step 20 partition 3: clocks: update count -4 < 0";
    }
  }
  auto store = OpenStore(dir);
  auto read = store->Read("j-1", 20);
  CHECK(absl::IsDataLoss(read.status()));
  INFO(read.status().message());
  CHECK(Contains(read.status(), expect));
  // Recovery falls back to the older snapshot, clocks and all.
  std::vector<std::pair<int64_t, absl::Status>> skipped;
  auto newest = store->ReadNewestValid("j-1", &skipped);
  REQUIRE(newest.ok());
  CHECK(newest->manifest.step() == 10);
  CHECK(newest->partitions[1].clocks == std::vector<int64_t>{10, 11, 12});
  CHECK(skipped.size() == 1);
}

TEST_CASE("SnapshotStore: NOT_FOUND when no snapshot verifies", "[snapshot]") {
  const std::string dir = TempDir("none_valid");
  {
    auto store = OpenStore(dir);
    REQUIRE(store->Write(MakeSnapshot("j-1", 1, 2, 8, false)).ok());
    REQUIRE(store->Write(MakeSnapshot("j-1", 2, 2, 8, false)).ok());
  }
  {
    auto db = OpenRaw(dir);
    rocksdb::WriteOptions wo;
    REQUIRE(db->Delete(wo, SnapshotPartitionKey("j-1", 1, 0)).ok());
    REQUIRE(db->Delete(wo, SnapshotPartitionKey("j-1", 2, 1)).ok());
  }
  auto store = OpenStore(dir);
  std::vector<std::pair<int64_t, absl::Status>> skipped;
  auto r = store->ReadNewestValid("j-1", &skipped);
  CHECK(absl::IsNotFound(r.status()));
  INFO(r.status().message());
  CHECK(Contains(r.status(), "no valid snapshot of job j-1"));
  REQUIRE(skipped.size() == 2);
  CHECK(skipped[0].first == 2);
  CHECK(skipped[1].first == 1);
  CHECK(absl::IsNotFound(store->ReadNewestValid("j-9", nullptr).status()));
}

// Flips one byte at `fraction` of each file's size (deterministic).
void FlipByteAt(const fs::path& file, double fraction) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  const auto size = fs::file_size(file);
  REQUIRE(size > 0);
  const std::streamoff at = static_cast<std::streamoff>(size * fraction);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(at);
  f.write(&c, 1);
  REQUIRE(f.good());
}

// The newest (highest-numbered) file of RocksDB's with this extension.
fs::path NewestFile(const std::string& dir, const std::string& ext) {
  fs::path newest;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ext &&
        (newest.empty() || e.path().filename() > newest.filename())) {
      newest = e.path();
    }
  }
  return newest;
}

TEST_CASE("SnapshotStore: damaged database files never give garbage",
          "[snapshot]") {
  const std::string dir = TempDir("disk_damage");
  // Two snapshots of 16 partitions of 16 KiB (weights and velocity): with
  // RocksDB's 4 KiB blocks, the data blocks fill nearly all of each file.
  const ShardSnapshot s1 = MakeSnapshot("j-1", 1, 16, 2048, true);
  const ShardSnapshot s2 = MakeSnapshot("j-1", 2, 16, 2048, true);
  {
    auto store = OpenStore(dir);
    REQUIRE(store->Write(s1).ok());
    REQUIRE(store->Write(s2).ok());
  }
  // Both snapshots are in the write-ahead log now (closing does not flush).

  SECTION("a damaged write-ahead log loses the newest snapshot only") {
    const fs::path log = NewestFile(dir, ".log");
    REQUIRE(!log.empty());
    // s2 is the second half of the log; 3/4 of the way lands inside it.
    FlipByteAt(log, 0.75);
    auto store = SnapshotStore::Open(dir, SnapshotStoreOptions());
    if (!store.ok()) {
      WARN("Open refused the damaged log: " << store.status().message());
      return;
    }
    auto r2 = (*store)->Read("j-1", 2);
    CHECK(!r2.ok());
    auto newest = (*store)->ReadNewestValid("j-1", nullptr);
    REQUIRE(newest.ok());
    CHECK(newest->manifest.step() == 1);
    CHECK(SameData(*newest, s1));
  }
  SECTION("a damaged table file is DATA_LOSS for the snapshot in it") {
    // Reopening replays the log into a table file (.sst) holding both.
    { OpenStore(dir); }
    const fs::path sst = NewestFile(dir, ".sst");
    REQUIRE(!sst.empty());
    // Key order: manifests, then s1's partitions, then s2's; 3/4 of the way
    // is inside s2's data blocks.
    FlipByteAt(sst, 0.75);
    auto store = SnapshotStore::Open(dir, SnapshotStoreOptions());
    if (!store.ok()) {
      WARN("Open refused the damaged table: " << store.status().message());
      return;
    }
    auto r2 = (*store)->Read("j-1", 2);
    INFO(r2.status().message());
    CHECK(absl::IsDataLoss(r2.status()));
    auto r1 = (*store)->Read("j-1", 1);
    REQUIRE(r1.ok());
    CHECK(SameData(*r1, s1));
    std::vector<std::pair<int64_t, absl::Status>> skipped;
    auto newest = (*store)->ReadNewestValid("j-1", &skipped);
    REQUIRE(newest.ok());
    CHECK(newest->manifest.step() == 1);
    CHECK(SameData(*newest, s1));
    REQUIRE(skipped.size() == 1);
    CHECK(skipped[0].first == 2);
  }
}

TEST_CASE("SnapshotStore: ServerUid is created once and kept", "[snapshot]") {
  const std::string dir = TempDir("uid");
  std::string uid;
  {
    auto store = OpenStore(dir);
    auto a = store->ServerUid();
    REQUIRE(a.ok());
    uid = *a;
    CHECK(uid.size() == 16);
    CHECK(uid.find_first_not_of("0123456789abcdef") == std::string::npos);
    auto b = store->ServerUid();
    REQUIRE(b.ok());
    CHECK(*b == uid);
  }
  auto store = OpenStore(dir);
  auto c = store->ServerUid();
  REQUIRE(c.ok());
  CHECK(*c == uid);
  // Not a job.
  auto jobs = store->ListJobs();
  REQUIRE(jobs.ok());
  CHECK(jobs->empty());

  auto other = OpenStore(TempDir("uid_other"));
  auto d = other->ServerUid();
  REQUIRE(d.ok());
  CHECK(*d != uid);
}

TEST_CASE("SnapshotStore: Open names the path when it cannot open",
          "[snapshot]") {
  const std::string base = TempDir("open_errors");
  SECTION("the path is a regular file") {
    const std::string file = base + "/a_file";
    std::ofstream(file) << "x";
    auto store = SnapshotStore::Open(file, SnapshotStoreOptions());
    REQUIRE(!store.ok());
    INFO(store.status().message());
    CHECK(absl::IsFailedPrecondition(store.status()));
    CHECK(Contains(store.status(), file));
  }
  SECTION("the directory is held by another store") {
    auto first = OpenStore(base + "/db");
    auto second = SnapshotStore::Open(base + "/db", SnapshotStoreOptions());
    REQUIRE(!second.ok());
    INFO(second.status().message());
    CHECK(absl::IsUnavailable(second.status()));
    CHECK(Contains(second.status(), base + "/db"));
  }
  SECTION("keep_last < 1") {
    SnapshotStoreOptions options;
    options.keep_last = 0;
    CHECK(absl::IsInvalidArgument(
        SnapshotStore::Open(base + "/db", options).status()));
  }
  SECTION("an unwritable directory") {
    const std::string ro = base + "/read_only";
    fs::create_directories(ro);
    REQUIRE(chmod(ro.c_str(), 0500) == 0);
    if (geteuid() == 0) {
      WARN("running as root: directory permissions do not apply; skipped");
    } else {
      auto store =
          SnapshotStore::Open(ro + "/snapshots", SnapshotStoreOptions());
      REQUIRE(!store.ok());
      INFO(store.status().message());
      CHECK(absl::IsFailedPrecondition(store.status()));
      CHECK(Contains(store.status(), ro + "/snapshots"));
    }
    chmod(ro.c_str(), 0700);
  }
}

TEST_CASE("NewestCommonStep: the newest step every shard has", "[snapshot]") {
  CHECK(NewestCommonStep({{100, 200, 300}, {300, 200}}) == 300);
  CHECK(NewestCommonStep({{100, 200, 300}, {200, 100}}) == 200);
  CHECK(NewestCommonStep({{300, 100, 200}, {100, 200}, {200, 300}}) == 200);
  CHECK(NewestCommonStep({{5}}) == 5);
  CHECK(NewestCommonStep({{0}, {0, 0}}) == 0);
  CHECK(NewestCommonStep({{100, 200}, {}}) == std::nullopt);
  CHECK(NewestCommonStep({{100}, {200}}) == std::nullopt);
  CHECK(NewestCommonStep({}) == std::nullopt);
}

}  // namespace
}  // namespace psd
