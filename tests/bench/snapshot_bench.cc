// Snapshot write benchmark: SnapshotStore::Write of one shard snapshot of
// N MiB of float32 parameters, as partitions of 1 MiB, each with a momentum
// slot (velocity) of the same size, so 2N MiB of data per snapshot plus a
// 24-byte header per partition.
//
// Times Write() until it returns (the WriteBatch built, one copy of the
// data; the write-ahead log written and fsync'ed; the memtable filled): what
// a snapshot thread waits for. The snapshot is built untimed. Two series,
// each the median of --reps writes, in seconds and GB/s (10^9 bytes per
// second of snapshot data, headers included):
//   fresh store:   each write into a new, empty store;
//   back-to-back:  --reps snapshots (steps 100, 200, ...) into one store, so
//                  from the second on RocksDB's flush of the previous
//                  memtable to a table file runs at the same time, and the
//                  third may wait for it (2 memtables at most).
//
// Run: bazel run -c opt //tests/bench:snapshot_bench -- --dir=/some/disk
// (.bazelrc builds with -O2 anyway). The 1 GiB case needs about 7 GB of
// memory in the fresh series (the snapshot, the WriteBatch and the memtable
// each hold a copy) and about 9 GB in the back-to-back one (two memtables
// can be full), and up to 13 GB of disk. Like psd_server, the benchmark
// calls psd::TuneAllocator() first: freed memory is reused, not returned.
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "common/proto.h"
#include "server/snapshot/snapshot_store.h"

ABSL_FLAG(std::string, dir, "",
          "Parent of the stores' directories (default: $TEST_TMPDIR or "
          "/tmp). Each repetition's store is deleted after it.");
ABSL_FLAG(std::string, sizes_mib, "100,1024",
          "Comma-separated parameter sizes in MiB (weights only; the "
          "velocity doubles the data).");
ABSL_FLAG(int, reps, 3, "Repetitions per size; the median is reported.");
ABSL_FLAG(bool, velocity, true, "Include a velocity slot per partition.");

namespace psd {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kPartitionFloats = (1 << 20) / sizeof(float);  // 1 MiB

ShardSnapshot MakeSnapshot(int64_t mib, bool velocity, uint32_t seed) {
  ShardSnapshot s;
  SnapshotManifest& m = s.manifest;
  m.set_job_id("bench-1");
  m.set_step(100);
  m.add_shards(0);
  Placement* placement = m.mutable_placement();
  placement->set_num_shards(1);
  ParameterSpec* spec = placement->add_parameters();
  spec->set_name("bench.weight");
  spec->add_shape(mib * kPartitionFloats);
  for (int64_t i = 0; i < mib; ++i) {
    Partition* p = placement->add_partitions();
    p->set_id(static_cast<int32_t>(i));
    p->set_offset(i * kPartitionFloats);
    p->set_num_elements(kPartitionFloats);
    PartitionSnapshot ps;
    ps.id = static_cast<int32_t>(i);
    ps.weights.resize(kPartitionFloats);
    for (float& w : ps.weights) {
      seed = seed * 1664525u + 1013904223u;
      w = static_cast<float>(static_cast<int32_t>(seed)) * 1e-9f;
    }
    if (velocity) {
      ps.slots = ps.weights;
      for (float& v : ps.slots) v *= 0.5f;
    }
    s.partitions.push_back(std::move(ps));
  }
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown CPU";
}

struct Timings {
  std::vector<double> seconds;  // per Write, in order
  int64_t bytes = 0;            // total_bytes of the last snapshot
};

// Opens a store at `dir`, writes make(0), make(1), ... make(n - 1) in order
// (each built untimed just before its write, each write timed), and closes
// the store.
absl::StatusOr<Timings> TimedWrite(
    const fs::path& dir, int n, const std::function<ShardSnapshot(int)>& make) {
  auto store = SnapshotStore::Open(dir.string(), SnapshotStoreOptions());
  if (!store.ok()) return store.status();
  Timings out;
  for (int i = 0; i < n; ++i) {
    ShardSnapshot s = make(i);
    const int64_t step = s.manifest.step();
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status st = (*store)->Write(std::move(s));
    const auto t1 = std::chrono::steady_clock::now();
    if (!st.ok()) return st;
    out.seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
    auto list = (*store)->List("bench-1");
    if (!list.ok()) return list.status();
    if (list->empty() || (*list)[0].step() != step) {
      return absl::InternalError("the snapshot is not listed");
    }
    out.bytes = (*list)[0].total_bytes();
  }
  return out;
}

int Run() {
  std::string parent = absl::GetFlag(FLAGS_dir);
  if (parent.empty()) {
    const char* tmp = std::getenv("TEST_TMPDIR");
    parent = tmp != nullptr ? tmp : "/tmp";
  }
  const fs::path base =
      fs::path(parent) / absl::StrCat("snapshot_bench.", getpid());
  std::vector<int64_t> sizes;
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_sizes_mib), ',')) {
    int64_t mib;
    if (!absl::SimpleAtoi(part, &mib) || mib < 1) {
      std::fprintf(stderr, "--sizes_mib: bad size \"%s\"\n",
                   std::string(part).c_str());
      return 2;
    }
    sizes.push_back(mib);
  }
  const int reps = absl::GetFlag(FLAGS_reps);
  const bool velocity = absl::GetFlag(FLAGS_velocity);
  if (reps < 1) {
    std::fprintf(stderr, "--reps: must be >= 1\n");
    return 2;
  }

  struct statvfs fsinfo;
  statvfs(parent.c_str(), &fsinfo);
  std::printf("machine: %s, %ld cores, %.1f GiB RAM; store under %s\n",
              CpuModel().c_str(), sysconf(_SC_NPROCESSORS_ONLN),
              static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                  sysconf(_SC_PAGE_SIZE) / (1 << 30),
              base.c_str());
  std::printf("%d repetitions per size, fresh store each; median reported\n\n",
              reps);
  std::printf(
      "| parameters | snapshot bytes | partitions | fresh store: "
      "write s | GB/s | back-to-back: write s | GB/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");

  for (int64_t mib : sizes) {
    int64_t bytes = 0;
    // Fresh: each repetition writes into a new, empty store.
    std::vector<double> fresh_s;
    for (int rep = 0; rep < reps; ++rep) {
      const fs::path dir = base / absl::StrCat(mib, "MiB.fresh.", rep);
      auto t = TimedWrite(dir, 1, [&](int) {
        return MakeSnapshot(mib, velocity, 12345u + rep);
      });
      if (!t.ok()) {
        std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
        return 1;
      }
      fresh_s.push_back(t->seconds[0]);
      bytes = t->bytes;
      fs::remove_all(dir);
      std::fprintf(stderr, "  %ld MiB fresh %d: write %.3f s\n",
                   static_cast<long>(mib), rep, fresh_s.back());
    }
    // Back-to-back: `reps` snapshots (steps 100, 200, ...) into one store;
    // from the second on, RocksDB flushes the previous memtable meanwhile.
    const fs::path dir = base / absl::StrCat(mib, "MiB.series");
    auto t = TimedWrite(dir, reps, [&](int rep) {
      ShardSnapshot s = MakeSnapshot(mib, velocity, 777u + rep);
      s.manifest.set_step(100 * (rep + 1));
      return s;
    });
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      return 1;
    }
    for (int rep = 0; rep < reps; ++rep) {
      std::fprintf(stderr, "  %ld MiB back-to-back %d: write %.3f s\n",
                   static_cast<long>(mib), rep, t->seconds[rep]);
    }
    fs::remove_all(dir);
    const double f = Median(fresh_s), b = Median(t->seconds);
    std::printf("| %ld MiB | %.1f MB | %ld | %.3f | %.2f | %.3f | %.2f |\n",
                static_cast<long>(mib), bytes / 1e6, static_cast<long>(mib), f,
                bytes / f / 1e9, b, bytes / b / 1e9);
    std::fflush(stdout);
  }
  fs::remove_all(base);
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  psd::TuneAllocator();  // as psd_server does
  absl::ParseCommandLine(argc, argv);
  return psd::Run();
}
