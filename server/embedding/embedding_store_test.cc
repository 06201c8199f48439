#include "server/embedding/embedding_store.h"

#include <malloc.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/embedding_rows.h"
#include "server/ps/optimizer.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-1";

EmbeddingTableSpec Spec(uint64_t rows, int32_t dim, int32_t shards,
                        OptimizerSpec::Kind kind = OptimizerSpec::ADAGRAD,
                        float lr = 0.1f) {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(rows);
  spec.set_dim(dim);
  spec.set_num_shards(shards);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  spec.mutable_initializer()->set_seed(1234);
  spec.mutable_optimizer()->set_kind(kind);
  spec.mutable_optimizer()->set_learning_rate(lr);
  return spec;
}

Tensor Grads(const std::vector<float>& values, int64_t n, int64_t dim) {
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(n);
  t.add_shape(dim);
  t.set_data(values.data(), values.size() * sizeof(float));
  return t;
}

std::vector<float> PullRows(const EmbeddingStore& store,
                            const std::vector<uint64_t>& ids,
                            const std::string& table = "emb") {
  std::string out;
  absl::Status status = store.Pull(kJob, table, ids, &out);
  REQUIRE(status.ok());
  std::vector<float> rows(out.size() / 4);
  std::memcpy(rows.data(), out.data(), out.size());
  return rows;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// From the sanitizers' <sanitizer/allocator_interface.h>, which gcc 12 does
// not ship.
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#endif

// Heap bytes in use, as glibc counts them (small blocks + mmapped ones).

int64_t HeapInUse() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Under --config=asan/tsan malloc is the sanitizer's, and mallinfo2()
  // reports nothing: ask the sanitizer's allocator instead.
  return static_cast<int64_t>(__sanitizer_get_current_allocated_bytes());
#else
  struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
#endif
}

TEST_CASE("Pull: rows never pushed have their seeded initial values, on "
          "any shard count",
          "[embedding]") {
  const uint64_t kRows = 100000000;  // V = 10^8
  EmbeddingStore one;
  REQUIRE(*one.CreateTable(kJob, Spec(kRows, 8, 1), {0}));
  EmbeddingStore shard0, shard1;
  REQUIRE(*shard0.CreateTable(kJob, Spec(kRows, 8, 2), {0}));
  REQUIRE(*shard1.CreateTable(kJob, Spec(kRows, 8, 2), {1}));
  const std::vector<uint64_t> ids = {0, 1, 12345, 99999999, 4242424242 % kRows};
  std::vector<float> whole = PullRows(one, ids);
  EmbeddingTableSpec full = WithTableDefaults(Spec(kRows, 8, 1));
  for (size_t i = 0; i < ids.size(); ++i) {
    std::vector<float> want(8);
    InitialRow(full.initializer(), 8, ids[i], want.data());
    std::vector<float> got(whole.begin() + 8 * i, whole.begin() + 8 * (i + 1));
    CHECK(got == want);
    const EmbeddingStore& holder =
        ShardOfRow(ids[i], 2) == 0 ? shard0 : shard1;
    CHECK(PullRows(holder, {ids[i]}) == want);
  }
  // Pulls allocate nothing.
  CHECK(one.Status(kJob, "emb")->rows() == 0);
  CHECK(one.bytes() == 0);
}

TEST_CASE("Memory follows rows touched: 1000 rows of a 10^8-row table",
          "[embedding]") {
  EmbeddingStore store;
  const int dim = 64;
  REQUIRE(*store.CreateTable(kJob, Spec(100000000, dim, 1), {0}));
  auto status = store.Status(kJob, "emb");
  const int64_t row_bytes = status->row_bytes();
  CHECK(row_bytes == 8 + 4 * dim * 2);  // count + weights + Adagrad's s
  // Pull 100,000 rows: nothing is held.
  std::vector<uint64_t> many(100000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = i * 997;
  PullRows(store, many);
  CHECK(store.bytes() == 0);
  // Push 1000 distinct rows spread over the id range.
  std::vector<uint64_t> ids(1000);
  for (int i = 0; i < 1000; ++i) ids[i] = 99991ULL * i;
  std::vector<float> g(ids.size() * dim, 0.01f);
  auto pushed = store.Push(kJob, "emb", ids, Grads(g, ids.size(), dim));
  REQUIRE(pushed.ok());
  CHECK(pushed->rows_created == 1000);
  status = store.Status(kJob, "emb");
  CHECK(status->rows() == 1000);
  const int64_t bytes = status->bytes();
  INFO("bytes held for 1000 rows: " << bytes);
  CHECK(bytes >= 1000 * row_bytes);
  // Row storage, the partly filled last chunk of each of the 8 stripes,
  // and the maps: well under 1.5 x the rows themselves.
  CHECK(bytes <= 1000 * row_bytes * 3 / 2);
  CHECK(store.bytes() == bytes);
  // The same rows again: no growth.
  REQUIRE(store.Push(kJob, "emb", ids, Grads(g, ids.size(), dim)).ok());
  CHECK(store.Status(kJob, "emb")->bytes() == bytes);
  REQUIRE(store.DropTable(kJob, "emb").ok());
  CHECK(store.bytes() == 0);
}

TEST_CASE("Memory accounting matches the heap (200,000 rows, d = 64, "
          "Adagrad)",
          "[embedding]") {
  const int dim = 64;
  const int64_t rows = 200000;
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, Spec(100000000, dim, 1), {0}));
  std::vector<uint64_t> ids(10000);
  std::vector<float> g(ids.size() * dim, 0.01f);
  Tensor grads = Grads(g, ids.size(), dim);
  const int64_t heap_before = HeapInUse();
  for (int64_t b = 0; b < rows / 10000; ++b) {
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = (b * 10000 + i) * 499;
    REQUIRE(store.Push(kJob, "emb", ids, grads).ok());
  }
  const int64_t heap = HeapInUse() - heap_before;
  const int64_t held = store.bytes();
  const int64_t row_bytes = store.Status(kJob, "emb")->row_bytes();
  std::printf(
      "embedding memory, %lld rows, d=%d, Adagrad: row %lld B; accounted "
      "%.1f B/row; heap (mallinfo2) %.1f B/row\n",
      static_cast<long long>(rows), dim, static_cast<long long>(row_bytes),
      static_cast<double>(held) / rows, static_cast<double>(heap) / rows);
  CHECK(held >= rows * row_bytes);
  CHECK(static_cast<double>(heap) == Approx(static_cast<double>(held)).epsilon(0.1));
}

TEST_CASE("Push: Adagrad on one row against hand-computed values",
          "[embedding]") {
  EmbeddingTableSpec spec = Spec(1000, 2, 1, OptimizerSpec::ADAGRAD, 0.1f);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::ZERO);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  // s = 0 + g^2, w = 0 - 0.1 g / sqrt(s):
  //   g1 = [0.5, -1]: s = [0.25, 1],  w = [-0.1, 0.1]
  //   g2 = [0.5, 1]:  s = [0.5, 2],   w = [-0.1 - 0.05 / sqrt(0.5),
  //                                         0.1 - 0.1 / sqrt(2)]
  //                                     = [-0.17071068, 0.02928932]
  REQUIRE(store.Push(kJob, "emb", {7}, Grads({0.5f, -1.0f}, 1, 2)).ok());
  std::vector<float> w = PullRows(store, {7});
  CHECK(w[0] == Approx(-0.1).margin(1e-6));
  CHECK(w[1] == Approx(0.1).margin(1e-6));
  REQUIRE(store.Push(kJob, "emb", {7}, Grads({0.5f, 1.0f}, 1, 2)).ok());
  w = PullRows(store, {7});
  CHECK(w[0] == Approx(-0.17071068).margin(1e-6));
  CHECK(w[1] == Approx(0.02928932).margin(1e-6));
  // Row 8 was never pushed: still its initial zeros.
  CHECK(PullRows(store, {8}) == std::vector<float>{0.0f, 0.0f});
}

TEST_CASE("Push: Adam uses each row's own update count", "[embedding]") {
  EmbeddingTableSpec spec = Spec(1000, 1, 1, OptimizerSpec::ADAM, 0.1f);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::ZERO);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  // Row 1, g = 1 then g = -1 (beta1 0.9, beta2 0.999, eps 1e-8):
  //   k=1: m = 0.1, u = 0.001; step = 0.1 / 0.1 = 1, sqrt(u)/sqrt(0.001) = 1
  //        w = -0.1 (up to eps)
  //   k=2: m = 0.09 - 0.1 = -0.01, u = 0.000999 + 0.001 = 0.001999,
  //        1 - 0.9^2 = 0.19, sqrt(u) / sqrt(1 - 0.999^2) = 1
  //        w = -0.1 + (0.1 / 0.19) * 0.01 = -0.1 + 1/190 = -0.09473684
  REQUIRE(store.Push(kJob, "emb", {1}, Grads({1.0f}, 1, 1)).ok());
  CHECK(PullRows(store, {1})[0] == Approx(-0.1).margin(1e-6));
  REQUIRE(store.Push(kJob, "emb", {1}, Grads({-1.0f}, 1, 1)).ok());
  CHECK(PullRows(store, {1})[0] == Approx(-0.09473684).margin(1e-6));
  // Row 2's first update is at k = 1 although row 1 had two: it moves by
  // lr exactly (with a global k = 3 it would move by about 0.073).
  REQUIRE(store.Push(kJob, "emb", {2}, Grads({1.0f}, 1, 1)).ok());
  CHECK(PullRows(store, {2})[0] == Approx(-0.1).margin(1e-6));
  // And ApplyOptimizer on a row is what the store did.
  float w = 0.0f, slots[2] = {0.0f, 0.0f};
  const float g = 1.0f;
  ApplyOptimizer(WithTableDefaults(spec).optimizer(), 0, &g, 1, &w, slots);
  CHECK(PullRows(store, {2})[0] == w);
}

TEST_CASE("Push: duplicate row ids in one push are summed, one update",
          "[embedding]") {
  EmbeddingTableSpec spec = Spec(100, 2, 1, OptimizerSpec::ADAM, 0.1f);
  EmbeddingStore a, b;
  REQUIRE(*a.CreateTable(kJob, spec, {0}));
  REQUIRE(*b.CreateTable(kJob, spec, {0}));
  auto pa = a.Push(kJob, "emb", {5, 9, 5, 5},
                   Grads({1, 2, 10, 20, 3, 4, 5, 6}, 4, 2));
  REQUIRE(pa.ok());
  CHECK(pa->rows_updated == 2);
  CHECK(pa->rows_created == 2);
  auto pb = b.Push(kJob, "emb", {9, 5}, Grads({10, 20, 9, 12}, 2, 2));
  REQUIRE(pb.ok());
  CHECK(PullRows(a, {5, 9}) == PullRows(b, {5, 9}));
  // One update each: a second push is k = 2 on both.
  REQUIRE(a.Push(kJob, "emb", {5}, Grads({1, 1}, 1, 2)).ok());
  REQUIRE(b.Push(kJob, "emb", {5}, Grads({1, 1}, 1, 2)).ok());
  CHECK(PullRows(a, {5}) == PullRows(b, {5}));
}

TEST_CASE("Push: concurrent pushes to disjoint rows all land",
          "[embedding]") {
  EmbeddingTableSpec spec = Spec(1000000, 4, 1, OptimizerSpec::SGD, 1.0f);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::ZERO);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  // Catch2's assertions are not thread-safe: the threads count failed
  // pushes, and the main thread checks the count.
  std::atomic<int> failed_pushes{0};
  auto worker = [&store, &failed_pushes](uint64_t first) {
    std::vector<uint64_t> ids(100);
    for (int i = 0; i < 100; ++i) ids[i] = first + 2 * i;  // even or odd
    std::vector<float> g(ids.size() * 4, 1.0f);
    for (int round = 0; round < 50; ++round) {
      if (!store.Push(kJob, "emb", ids, Grads(g, ids.size(), 4)).ok()) {
        ++failed_pushes;
      }
    }
  };
  std::thread t1(worker, 0), t2(worker, 1);
  t1.join();
  t2.join();
  REQUIRE(failed_pushes == 0);
  std::vector<uint64_t> all(200);
  for (int i = 0; i < 200; ++i) all[i] = i;
  for (float v : PullRows(store, all)) CHECK(v == -50.0f);
  CHECK(store.Status(kJob, "emb")->rows() == 200);
}

TEST_CASE("Push: a keyed push is applied once per (client, sequence)",
          "[embedding][dedup]") {
  EmbeddingTableSpec spec = Spec(100, 2, 1, OptimizerSpec::SGD, 1.0f);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::ZERO);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  const Tensor g = Grads({1, 2}, 1, 2);
  auto first = store.Push(kJob, "emb", {7}, g, {"client-a", 0});
  REQUIRE(first.ok());
  CHECK_FALSE(first->duplicate);
  // The retry: acknowledged, not applied.
  auto retry = store.Push(kJob, "emb", {7}, g, {"client-a", 0});
  REQUIRE(retry.ok());
  CHECK(retry->duplicate);
  CHECK(retry->rows_updated == 0);
  CHECK(PullRows(store, {7}) == std::vector<float>{-1, -2});
  // Another sequence, another client, or no key: applied.
  REQUIRE(!store.Push(kJob, "emb", {7}, g, {"client-a", 1})->duplicate);
  REQUIRE(!store.Push(kJob, "emb", {7}, g, {"client-b", 0})->duplicate);
  REQUIRE(!store.Push(kJob, "emb", {7}, g)->duplicate);
  REQUIRE(!store.Push(kJob, "emb", {7}, g)->duplicate);
  CHECK(PullRows(store, {7}) == std::vector<float>{-5, -10});
  // A refused push is not remembered: sent again valid, it applies.
  EmbeddingPushKey key{"client-c", 0};
  CHECK(store.Push(kJob, "emb", {500}, g, key).status().code() ==
        absl::StatusCode::kInvalidArgument);
  REQUIRE(!store.Push(kJob, "emb", {8}, g, key)->duplicate);
  // Past the window of 1024 sequences a client's oldest are forgotten, and
  // a retry of one is refused rather than applied again.
  for (uint64_t seq = 2; seq < 1030; ++seq) {
    REQUIRE(!store.Push(kJob, "emb", {9}, g, {"client-a", seq})->duplicate);
  }
  auto old = store.Push(kJob, "emb", {9}, g, {"client-a", 1});
  CHECK(old.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(old.status().message().rfind("sequence: 1 of client \"client-a\"", 0) ==
        0);
  CHECK(store.Push(kJob, "emb", {9}, g, {"client-a", 1029})->duplicate);
}

TEST_CASE("Push: concurrent retries of one keyed push apply it once",
          "[embedding][dedup]") {
  EmbeddingTableSpec spec = Spec(100, 1, 1, OptimizerSpec::SGD, 1.0f);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::ZERO);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  std::vector<std::thread> threads;
  std::atomic<int> applied{0};
  std::atomic<int> failed_pushes{0};  // Catch2 asserts on the main thread only
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (uint64_t seq = 0; seq < 200; ++seq) {
        auto r = store.Push(kJob, "emb", {3}, Grads({1}, 1, 1), {"c", seq});
        if (!r.ok()) {
          ++failed_pushes;
        } else if (!r->duplicate) {
          ++applied;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  REQUIRE(failed_pushes == 0);
  CHECK(applied == 200);
  CHECK(PullRows(store, {3}) == std::vector<float>{-200});
}

TEST_CASE("Bad input: clear errors, nothing applied", "[embedding]") {
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, Spec(1000, 2, 2), {0}));
  uint64_t mine = 0, other = 0;
  while (ShardOfRow(mine, 2) != 0) ++mine;
  while (ShardOfRow(other, 2) != 1) ++other;

  SECTION("unknown job and table: NOT_FOUND") {
    std::string out;
    absl::Status s = store.Pull("nope", "emb", {mine}, &out);
    CHECK(s.code() == absl::StatusCode::kNotFound);
    CHECK(s.message().find("job_id") != std::string::npos);
    s = store.Pull(kJob, "nope", {mine}, &out);
    CHECK(s.code() == absl::StatusCode::kNotFound);
    CHECK(s.message().find("table") != std::string::npos);
    CHECK(store.Status(kJob, "nope").status().code() ==
          absl::StatusCode::kNotFound);
    CHECK(store.DropTable(kJob, "nope").code() == absl::StatusCode::kNotFound);
  }
  SECTION("row id out of range: INVALID_ARGUMENT naming row_ids[i]") {
    auto r = store.Push(kJob, "emb", {mine, 1000}, Grads({1, 1, 1, 1}, 2, 2));
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("row_ids[1]: 1000 is out of range") !=
          std::string::npos);
    std::string out;
    CHECK(store.Pull(kJob, "emb", {1ULL << 40}, &out).code() ==
          absl::StatusCode::kInvalidArgument);
  }
  SECTION("a row of another shard: FAILED_PRECONDITION") {
    auto r = store.Push(kJob, "emb", {other}, Grads({1, 1}, 1, 2));
    CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(r.status().message().find("row_ids[0]") != std::string::npos);
  }
  SECTION("NaN and Inf gradients: INVALID_ARGUMENT naming the element") {
    auto r = store.Push(kJob, "emb", {mine, mine + 2},
                        Grads({1, 1, 1, std::nanf("")}, 2, 2));
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("gradients.data: element 3") !=
          std::string::npos);
    r = store.Push(kJob, "emb", {mine},
                   Grads({INFINITY, 1}, 1, 2));
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("inf") != std::string::npos);
  }
  SECTION("wrong dtype, shape or size") {
    Tensor t = Grads({1, 1}, 1, 2);
    t.set_dtype(DTYPE_UNSPECIFIED);
    auto r = store.Push(kJob, "emb", {mine}, t);
    CHECK(r.status().message().find("gradients.dtype") != std::string::npos);
    r = store.Push(kJob, "emb", {mine}, Grads({1, 1}, 2, 1));
    CHECK(r.status().message().find("gradients.shape") != std::string::npos);
    t = Grads({1, 1}, 1, 2);
    t.set_data("abc");
    r = store.Push(kJob, "emb", {mine}, t);
    CHECK(r.status().message().find("gradients.data: must hold 8 bytes") !=
          std::string::npos);
  }
  auto status = store.Status(kJob, "emb");
  CHECK(status->rows() == 0);
  CHECK(status->pushes() == 0);
}

TEST_CASE("CreateTable: validation, idempotence, conflicts",
          "[embedding]") {
  EmbeddingStore store;
  EmbeddingTableSpec spec = Spec(1000, 4, 2);
  auto bad = spec;
  bad.set_dim(0);
  CHECK(store.CreateTable(kJob, bad, {0}).status().message().rfind(
            "spec.dim:", 0) == 0);
  bad = spec;
  bad.set_num_rows(0);
  CHECK(store.CreateTable(kJob, bad, {0}).status().message().rfind(
            "spec.num_rows:", 0) == 0);
  bad = spec;
  bad.mutable_optimizer()->set_learning_rate(0);
  CHECK(store.CreateTable(kJob, bad, {0}).status().message().rfind(
            "spec.optimizer.learning_rate:", 0) == 0);
  bad = spec;
  bad.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  CHECK(store.CreateTable(kJob, bad, {0}).status().message().rfind(
            "spec.optimizer.schedule.kind:", 0) == 0);
  bad = spec;
  bad.set_name("a b");
  CHECK(store.CreateTable(kJob, bad, {0}).status().message().rfind(
            "spec.name:", 0) == 0);
  CHECK(store.CreateTable(kJob, spec, {2}).status().message().rfind(
            "shards[0]:", 0) == 0);
  CHECK(store.CreateTable(kJob, spec, {0, 0}).status().message().rfind(
            "shards[1]:", 0) == 0);
  CHECK(store.CreateTable("", spec, {0}).status().message().rfind(
            "job_id:", 0) == 0);
  REQUIRE(*store.CreateTable(kJob, spec, {0}));
  CHECK(*store.CreateTable(kJob, spec, {0}) == false);
  CHECK(store.CreateTable(kJob, spec, {1}).status().code() ==
        absl::StatusCode::kAlreadyExists);
  auto other = spec;
  other.set_dim(8);
  CHECK(store.CreateTable(kJob, other, {0}).status().code() ==
        absl::StatusCode::kAlreadyExists);
  // The same name in another job is another table.
  CHECK(*store.CreateTable("job-2", other, {0}));
}

TEST_CASE("max_bytes: a push that needs more refuses and applies nothing",
          "[embedding]") {
  EmbeddingStoreOptions options;
  options.max_bytes = 64 << 10;
  EmbeddingStore store(options);
  REQUIRE(*store.CreateTable(kJob, Spec(1 << 30, 64, 1), {0}));
  std::vector<uint64_t> ids(1000);
  for (int i = 0; i < 1000; ++i) ids[i] = i;
  std::vector<float> g(ids.size() * 64, 1.0f);
  auto r = store.Push(kJob, "emb", ids, Grads(g, ids.size(), 64));
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(store.Status(kJob, "emb")->rows() == 0);
  CHECK(store.bytes() == 0);
  // A small push fits.
  REQUIRE(store.Push(kJob, "emb", {1, 2}, Grads(std::vector<float>(128, 1.0f), 2, 64)).ok());
}

TableShardReplicas Replicas(int32_t shard, std::vector<std::string> addresses,
                            int32_t self) {
  TableShardReplicas r;
  r.set_shard(shard);
  for (const std::string& a : addresses) r.add_replicas(a);
  r.set_self(self);
  return r;
}

// The first row id >= from on `shard` of `shards`.
uint64_t RowOnShard(int32_t shard, int32_t shards, uint64_t from = 0) {
  while (ShardOfRow(from, shards) != shard) ++from;
  return from;
}

TEST_CASE("EmbeddingStore: a client push to a primary names its backups; a "
          "forwarded one applies once and names none",
          "[embedding][replication]") {
  EmbeddingStore primary, backup;
  const EmbeddingTableSpec spec = Spec(1000, 2, 1, OptimizerSpec::SGD, 1.0f);
  REQUIRE(*primary.CreateTable(kJob, spec, {0},
                               {Replicas(0, {"p:1", "b:2", "c:3"}, 0)}));
  REQUIRE(*backup.CreateTable(kJob, spec, {0},
                              {Replicas(0, {"p:1", "b:2", "c:3"}, 1)}));
  const Tensor g = Grads({1, 1}, 1, 2);
  auto pushed = primary.Push(kJob, "emb", {7}, g, {"client", 0});
  REQUIRE(pushed.ok());
  CHECK(pushed->shard == 0);
  CHECK(pushed->forward_to == std::vector<std::string>{"b:2", "c:3"});
  CHECK_FALSE(pushed->promoted);
  // The forward, twice (a re-forward): applied once, no targets, no
  // promotion.
  for (bool duplicate : {false, true}) {
    auto forwarded = backup.Push(kJob, "emb", {7}, g, {"client", 0},
                                 EmbeddingPushSource::kReplica);
    REQUIRE(forwarded.ok());
    CHECK(forwarded->duplicate == duplicate);
    CHECK(forwarded->forward_to.empty());
  }
  CHECK(PullRows(backup, {7}) == PullRows(primary, {7}));
  auto status = backup.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  REQUIRE(status->shard_status_size() == 1);
  CHECK(status->shard_status(0).role() == TableShardStatus::BACKUP);
  CHECK(status->shard_status(0).forward_to_size() == 0);
  CHECK(status->shard_status(0).updates() == 1);
  CHECK(status->replicated() == 1);
  auto primary_status = primary.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(primary_status.ok());
  CHECK(primary_status->shard_status(0).role() == TableShardStatus::PRIMARY);
  CHECK(primary_status->shard_status(0).checksum() ==
        status->shard_status(0).checksum());
  CHECK(primary_status->shard_status(0).checksum() != 0);
  // A retry of the client's push on the primary: a duplicate, still with
  // its targets (it must wait for the forward).
  pushed = primary.Push(kJob, "emb", {7}, g, {"client", 0});
  REQUIRE(pushed.ok());
  CHECK(pushed->duplicate);
  CHECK(pushed->forward_to.size() == 2);
}

TEST_CASE("EmbeddingStore: a client push promotes a backup, which then "
          "forwards to every other replica",
          "[embedding][replication]") {
  EmbeddingStore backup;
  const EmbeddingTableSpec spec = Spec(1000, 2, 1, OptimizerSpec::SGD, 1.0f);
  REQUIRE(*backup.CreateTable(kJob, spec, {0},
                              {Replicas(0, {"p:1", "b:2", "c:3"}, 1)}));
  auto pushed =
      backup.Push(kJob, "emb", {7}, Grads({1, 1}, 1, 2), {"client", 3});
  REQUIRE(pushed.ok());
  CHECK(pushed->promoted);
  CHECK(pushed->forward_to == std::vector<std::string>{"p:1", "c:3"});
  // A backup that fails a forward is dropped for good and reported.
  CHECK(backup.DropReplica(kJob, "emb", 0, "p:1", "UNAVAILABLE: down"));
  CHECK_FALSE(backup.DropReplica(kJob, "emb", 0, "p:1", "again"));
  pushed = backup.Push(kJob, "emb", {7}, Grads({1, 1}, 1, 2), {"client", 4});
  REQUIRE(pushed.ok());
  CHECK_FALSE(pushed->promoted);
  CHECK(pushed->forward_to == std::vector<std::string>{"c:3"});
  auto status = backup.Status(kJob, "emb");
  REQUIRE(status.ok());
  const TableShardStatus& shard = status->shard_status(0);
  CHECK(shard.role() == TableShardStatus::PRIMARY);
  CHECK(std::vector<std::string>(shard.forward_to().begin(),
                                 shard.forward_to().end()) ==
        std::vector<std::string>{"c:3"});
  REQUIRE(shard.dropped_size() == 1);
  CHECK(shard.dropped(0) == "p:1: UNAVAILABLE: down");
}

TEST_CASE("EmbeddingStore: replicated tables refuse bad replica sets, "
          "keyless client pushes and pushes over two shards",
          "[embedding][replication]") {
  EmbeddingStore store;
  const EmbeddingTableSpec spec = Spec(1000, 2, 2);
  auto bad = [&](std::vector<TableShardReplicas> replicas) {
    auto created = store.CreateTable(kJob, spec, {0}, replicas);
    REQUIRE_FALSE(created.ok());
    CHECK(created.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(created.status().message());
  };
  CHECK(bad({Replicas(1, {"a:1", "b:1"}, 0)}).rfind("replicas[0].shard:", 0) ==
        0);
  CHECK(bad({Replicas(0, {"a:1"}, 0)}).rfind("replicas[0].replicas: need 2",
                                             0) == 0);
  CHECK(bad({Replicas(0, {"a:1", "a:1"}, 0)})
            .rfind("replicas[0].replicas[1]: a:1 is listed twice", 0) == 0);
  CHECK(bad({Replicas(0, {"a:1", "b:1"}, 2)}).rfind("replicas[0].self:", 0) ==
        0);
  CHECK(bad({Replicas(0, {"a:1", "b:1"}, 0), Replicas(0, {"a:1", "b:1"}, 0)})
            .rfind("replicas[1].shard: shard 0 has two", 0) == 0);
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1},
                             {Replicas(0, {"a:1", "b:1"}, 0)}));
  CHECK_FALSE(*store.CreateTable(kJob, spec, {0, 1},
                                 {Replicas(0, {"a:1", "b:1"}, 0)}));
  auto other = store.CreateTable(kJob, spec, {0, 1},
                                 {Replicas(0, {"a:1", "c:1"}, 0)});
  CHECK(other.status().code() == absl::StatusCode::kAlreadyExists);
  const uint64_t r0 = RowOnShard(0, 2), r1 = RowOnShard(1, 2);
  auto keyless = store.Push(kJob, "emb", {r0}, Grads({1, 1}, 1, 2));
  CHECK(keyless.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(keyless.status().message().rfind("client_id: required", 0) == 0);
  auto mixed =
      store.Push(kJob, "emb", {r0, r1}, Grads({1, 1, 1, 1}, 2, 2), {"c", 0});
  CHECK(mixed.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(mixed.status().message().rfind("row_ids[1]:", 0) == 0);
  // The unreplicated shard 1 takes a keyless push, and forwards nothing.
  auto plain = store.Push(kJob, "emb", {r1}, Grads({1, 1}, 1, 2));
  REQUIRE(plain.ok());
  CHECK(plain->forward_to.empty());
  auto status = store.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  REQUIRE(status->shard_status_size() == 2);
  CHECK(status->shard_status(0).rows() == 0);
  CHECK(status->shard_status(1).rows() == 1);
  CHECK(status->shard_status(1).replicas_size() == 0);
}

TEST_CASE("EmbeddingStore: shard checksums match when the same pushes "
          "applied, and differ when one is missing or doubled",
          "[embedding][replication]") {
  const EmbeddingTableSpec spec = Spec(100000, 4, 1, OptimizerSpec::ADAGRAD);
  EmbeddingStore a, b, missing, doubled;
  for (EmbeddingStore* s : {&a, &b, &missing, &doubled}) {
    REQUIRE(*s->CreateTable(kJob, spec, {0}));
  }
  const Tensor g = Grads(std::vector<float>(3 * 4, 0.5f), 3, 4);
  for (int k = 0; k < 5; ++k) {
    const std::vector<uint64_t> ids = {uint64_t(k), uint64_t(k + 10),
                                       uint64_t(k + 20)};
    for (EmbeddingStore* s : {&a, &b, &missing, &doubled}) {
      if (s == &missing && k == 3) continue;
      REQUIRE(s->Push(kJob, "emb", ids, g).ok());
      if (s == &doubled && k == 3) REQUIRE(s->Push(kJob, "emb", ids, g).ok());
    }
  }
  auto sum = [](EmbeddingStore& s) {
    return s.Status(kJob, "emb", true)->shard_status(0).checksum();
  };
  CHECK(sum(a) == sum(b));
  CHECK(sum(a) != sum(missing));
  CHECK(sum(a) != sum(doubled));
}

}  // namespace
}  // namespace psd
