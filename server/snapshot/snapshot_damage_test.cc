// SnapshotStore under damage: a snapshot whose records, manifest, clocks or
// database files are damaged reads as DATA_LOSS naming what is wrong, is
// skipped for an older one, and never gives garbage.
#include <rocksdb/db.h>
#include <zlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/proto.h"
#include "server/snapshot/snapshot_format.h"
#include "server/snapshot/snapshot_store.h"
#include "server/snapshot/snapshot_test_util.h"

namespace psd {
namespace {

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

}  // namespace
}  // namespace psd
