// sparse_bench: sparse embedding pull/push throughput and latency against
// real psd_server processes over loopback (tests/bench/sparse_bench.sh
// starts them and passes --servers).
//
// Table: V = --num_rows (10^8) rows x --dim (64) float32, Adagrad, one shard
// per server. The rows touched come from a pool of --pool_rows distinct ids
// (SplitMix64Mix(k) mod V, k < pool), all created first by pushes of 100k
// rows ("push_create"). Then, for each batch size B in --batches: a call is
// EmbeddingClient::Pull or Push of B distinct ids (a random window of a
// shuffled pool), cut by the client into calls of at most 1 MiB of rows
// (4096 rows at d = 64) to each server, all in flight at once. Each call is
// timed on the client's steady clock; printed: calls, rows/s (rows of all
// calls / their summed time), MB/s of row payload (10^6 bytes), and the
// p50 and p99 latency of one call (nearest rank; with 50 calls p99 is the
// largest but one).
//
// Replication (--replication=1,2): the whole measurement is run once per
// R, in the same process against the same servers, on a fresh table
// ("bench_r<R>") each time: N = len(--servers) shards, shard s on servers
// s, s+1, ..., s+R-1 (mod N), the first the primary (so with R = 2 every
// push is forwarded to one backup before it is acknowledged). A table is
// dropped before the next R is measured.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "common/embedding_rows.h"
#include "worker/embedding_client.h"

ABSL_FLAG(std::string, servers, "", "Comma-separated host:port (required).");
ABSL_FLAG(int, dim, 64, "Row width d.");
ABSL_FLAG(uint64_t, num_rows, 100000000, "Table rows V.");
ABSL_FLAG(int, pool_rows, 1000000, "Distinct rows touched.");
ABSL_FLAG(std::string, batches, "1000,100000", "Batch sizes (row ids).");
ABSL_FLAG(int, calls_small, 500, "Calls per op for batches < 10,000.");
ABSL_FLAG(int, calls_large, 50, "Calls per op for batches >= 10,000.");
ABSL_FLAG(int64_t, max_call_bytes, 1 << 20, "EmbeddingClient max_call_bytes.");
ABSL_FLAG(bool, drop_table, true, "Drop the last table at the end.");
ABSL_FLAG(std::string, replication, "1",
          "Replicas per shard to measure, in this order (each <= the "
          "number of servers), e.g. 1,2.");

namespace psd {
namespace {

struct Result {
  double rows_per_s = 0, mb_per_s = 0, p50_ms = 0, p99_ms = 0;
  int calls = 0;
};

Result Summarize(const std::vector<double>& seconds, int64_t rows_per_call,
                 int dim) {
  std::vector<double> s = seconds;
  std::sort(s.begin(), s.end());
  const double total = std::accumulate(s.begin(), s.end(), 0.0);
  auto rank = [&s](double q) {
    size_t k = static_cast<size_t>(std::ceil(q * s.size()));
    return s[std::min(s.size() - 1, k > 0 ? k - 1 : 0)];
  };
  Result r;
  r.calls = static_cast<int>(s.size());
  r.rows_per_s = static_cast<double>(rows_per_call) * s.size() / total;
  r.mb_per_s = r.rows_per_s * dim * 4 / 1e6;
  r.p50_ms = rank(0.50) * 1e3;
  r.p99_ms = rank(0.99) * 1e3;
  return r;
}

int replication = 1;  // of the table being measured, for Print

void Print(const char* op, int64_t batch, const Result& r) {
  std::printf("%-12s %2d %8lld %6d %12.0f %9.1f %9.2f %9.2f\n", op,
              replication, static_cast<long long>(batch), r.calls,
              r.rows_per_s, r.mb_per_s, r.p50_ms, r.p99_ms);
  std::fflush(stdout);
}

int Run(const std::vector<std::string>& servers, int r, bool last);

int Main() {
  const std::vector<std::string> servers =
      absl::StrSplit(absl::GetFlag(FLAGS_servers), ',', absl::SkipEmpty());
  if (servers.empty()) {
    std::fprintf(stderr, "sparse_bench: --servers is required\n");
    return 2;
  }
  const std::vector<std::string> list =
      absl::StrSplit(absl::GetFlag(FLAGS_replication), ',', absl::SkipEmpty());
  for (size_t i = 0; i < list.size(); ++i) {
    const int r = std::atoi(list[i].c_str());
    if (r < 1 || r > static_cast<int>(servers.size())) {
      std::fprintf(stderr,
                   "sparse_bench: --replication: %s is not in [1, %zu]\n",
                   list[i].c_str(), servers.size());
      return 2;
    }
    if (int rc = Run(servers, r, i + 1 == list.size()); rc != 0) return rc;
  }
  return 0;
}

int Run(const std::vector<std::string>& servers, int r, bool last) {
  replication = r;
  std::vector<std::vector<std::string>> shards(servers.size());
  for (size_t s = 0; s < servers.size(); ++s) {
    for (int k = 0; k < r; ++k) {
      shards[s].push_back(servers[(s + k) % servers.size()]);
    }
  }
  const std::string table = absl::StrCat("bench_r", r);
  const int dim = absl::GetFlag(FLAGS_dim);
  const int pool_rows = absl::GetFlag(FLAGS_pool_rows);
  EmbeddingClientOptions options;
  options.max_call_bytes = absl::GetFlag(FLAGS_max_call_bytes);
  options.timeout_ms = 120000;
  auto created = EmbeddingClient::Create("bench", shards, options);
  if (!created.ok()) {
    std::fprintf(stderr, "sparse_bench: %s\n", created.status().ToString().c_str());
    return 2;
  }
  EmbeddingClient& client = **created;
  EmbeddingTableSpec spec;
  spec.set_name(table);
  spec.set_num_rows(absl::GetFlag(FLAGS_num_rows));
  spec.set_dim(dim);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  spec.mutable_optimizer()->set_learning_rate(0.01f);
  (void)client.DropTable(table);  // a leftover of an earlier run
  if (absl::Status s = client.CreateTable(spec); !s.ok()) {
    std::fprintf(stderr, "sparse_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<uint64_t> pool(pool_rows);
  for (int k = 0; k < pool_rows; ++k) {
    pool[k] = SplitMix64Mix(static_cast<uint64_t>(k)) % spec.num_rows();
  }
  std::sort(pool.begin(), pool.end());
  pool.erase(std::unique(pool.begin(), pool.end()), pool.end());
  std::mt19937_64 rng(42);
  std::shuffle(pool.begin(), pool.end(), rng);

  std::printf("sparse_bench: %zu server(s), %zu shard(s) x R = %d "
              "replica(s), V = %llu, d = %d, Adagrad, pool %zu rows, "
              "max_call_bytes %lld\n",
              servers.size(), shards.size(), r,
              static_cast<unsigned long long>(spec.num_rows()), dim,
              pool.size(), static_cast<long long>(options.max_call_bytes));
  std::printf("%-12s %2s %8s %6s %12s %9s %9s %9s\n", "op", "R", "batch",
              "calls", "rows/s", "MB/s", "p50_ms", "p99_ms");
  std::vector<float> rows, grads;
  // Create every pool row (first pushes), 100k at a time.
  {
    const int64_t b = std::min<int64_t>(100000, pool.size());
    grads.assign(b * dim, 1e-3f);
    std::vector<double> seconds;
    for (size_t start = 0; start + b <= pool.size(); start += b) {
      const auto t0 = std::chrono::steady_clock::now();
      absl::Status s = client.Push(
          table, absl::MakeConstSpan(pool.data() + start, b), grads);
      seconds.push_back(std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - t0)
                            .count());
      if (!s.ok()) {
        std::fprintf(stderr, "sparse_bench: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    Print("push_create", b, Summarize(seconds, b, dim));
  }
  const std::vector<std::string> batch_list =
      absl::StrSplit(absl::GetFlag(FLAGS_batches), ',', absl::SkipEmpty());
  for (const std::string& text : batch_list) {
    const int64_t b = std::min<int64_t>(std::stoll(text), pool.size());
    const int calls = b < 10000 ? absl::GetFlag(FLAGS_calls_small)
                                : absl::GetFlag(FLAGS_calls_large);
    std::uniform_int_distribution<size_t> window(0, pool.size() - b);
    grads.assign(b * dim, 1e-3f);
    for (bool pull : {true, false}) {
      std::vector<double> seconds;
      for (int c = 0; c < calls; ++c) {
        auto ids = absl::MakeConstSpan(pool.data() + window(rng), b);
        const auto t0 = std::chrono::steady_clock::now();
        absl::Status s = pull ? client.Pull(table, ids, &rows)
                              : client.Push(table, ids, grads);
        seconds.push_back(std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - t0)
                              .count());
        if (!s.ok()) {
          std::fprintf(stderr, "sparse_bench: %s\n", s.ToString().c_str());
          return 1;
        }
      }
      Print(pull ? "pull" : "push", b, Summarize(seconds, b, dim));
    }
  }
  auto status = client.Status(table);
  if (status.ok()) {
    // Each server once (with R > 1 a server holds several shards).
    int64_t held = 0, bytes = 0;
    std::vector<std::string> seen;
    for (int32_t s = 0; s < client.num_shards(); ++s) {
      const std::string& address = client.current_replica(s);
      if (std::find(seen.begin(), seen.end(), address) != seen.end()) {
        continue;
      }
      seen.push_back(address);
      held += (*status)[s].rows();
      bytes += (*status)[s].bytes();
    }
    std::printf("held (all servers, R copies of each row): %lld rows, %lld "
                "bytes accounted "
                "(%.1f B/row; row record %lld B)\n",
                static_cast<long long>(held), static_cast<long long>(bytes),
                held > 0 ? static_cast<double>(bytes) / held : 0.0,
                static_cast<long long>((*status)[0].row_bytes()));
  }
  if (!last || absl::GetFlag(FLAGS_drop_table)) (void)client.DropTable(table);
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  psd::TuneAllocator();  // reused buffers, no fresh mmaps (BUILDING.md)
  absl::ParseCommandLine(argc, argv);
  return psd::Main();
}
