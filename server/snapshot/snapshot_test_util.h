// Helpers for the SnapshotStore tests (snapshot_store_test.cc and
// snapshot_damage_test.cc): temporary stores, made-up snapshots, and raw
// access to the RocksDB underneath.
#ifndef PSD_SERVER_SNAPSHOT_SNAPSHOT_TEST_UTIL_H_
#define PSD_SERVER_SNAPSHOT_SNAPSHOT_TEST_UTIL_H_

#include <rocksdb/db.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/proto.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {
namespace fs = std::filesystem;

// A fresh directory under $TEST_TMPDIR (or /tmp) for one test.
inline std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(base != nullptr ? base : "/tmp") /
                 absl::StrCat("snapshot_store_test.", getpid(), ".", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

inline std::unique_ptr<SnapshotStore> OpenStore(const std::string& dir,
                                         int keep_last = 3) {
  SnapshotStoreOptions options;
  options.keep_last = keep_last;
  auto store = SnapshotStore::Open(dir, options);
  REQUIRE(store.ok());
  return *std::move(store);
}

// A job of `num_partitions` partitions of `elements` floats each, all on
// shard 0 (the placement need not come from BuildPlacement here).
inline ShardSnapshot MakeSnapshot(const std::string& job_id, int64_t step,
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

inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Same partitions, bit for bit.
inline bool SameData(const ShardSnapshot& a, const ShardSnapshot& b) {
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

inline std::vector<int64_t> ListedSteps(SnapshotStore& store, const std::string& job) {
  auto list = store.List(job);
  REQUIRE(list.ok());
  std::vector<int64_t> steps;
  for (const SnapshotInfo& info : *list) steps.push_back(info.step());
  return steps;
}

// Opens the store's RocksDB directly (the store must be closed).
inline std::unique_ptr<rocksdb::DB> OpenRaw(const std::string& dir) {
  rocksdb::Options options;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return std::unique_ptr<rocksdb::DB>(db);
}

inline int CountKeys(rocksdb::DB* db, const std::string& prefix) {
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

inline bool Contains(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

inline ShardSnapshot MakeAsyncSnapshot(const std::string& job_id, int64_t step) {
  ShardSnapshot s = MakeSnapshot(job_id, step, 4, 64, true);
  s.manifest.mutable_config()->set_workers(3);
  s.partitions[1].clocks = {step, step + 1, step + 2};
  s.partitions[1].updates = 3 * step + 2;
  s.partitions[3].clocks = {step + 1, step, step};
  s.partitions[3].updates = 3 * step + 1;
  return s;
}

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_SNAPSHOT_TEST_UTIL_H_
