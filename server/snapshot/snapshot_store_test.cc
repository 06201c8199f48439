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
#include "server/snapshot/snapshot_format.h"
#include "server/snapshot/snapshot_test_util.h"

namespace psd {
namespace {

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
