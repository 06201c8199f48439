// EmbeddingStore's BSP pushes (PushBsp), admission and eviction (issue 25).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/embedding_rows.h"
#include "server/embedding/embedding_store.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-b";
constexpr int32_t kShards = 2;
constexpr int32_t kDim = 4;

EmbeddingTableSpec Spec(OptimizerSpec::Kind kind = OptimizerSpec::ADAM) {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(1000);
  spec.set_dim(kDim);
  spec.set_num_shards(kShards);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  spec.mutable_initializer()->set_seed(7);
  spec.mutable_optimizer()->set_kind(kind);
  spec.mutable_optimizer()->set_learning_rate(0.05f);
  return spec;
}

Tensor Grads(const std::vector<float>& values, int64_t n) {
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(n);
  t.add_shape(kDim);
  t.set_data(values.data(), values.size() * sizeof(float));
  return t;
}

std::string Pull(const EmbeddingStore& store, const std::vector<uint64_t>& ids) {
  std::string out;
  REQUIRE(store.Pull(kJob, "emb", ids, &out).ok());
  return out;
}

std::vector<uint64_t> AllIds() {
  std::vector<uint64_t> ids(1000);
  for (uint64_t i = 0; i < 1000; ++i) ids[i] = i;
  return ids;
}

// One rank's push of one step to one shard.
struct RankPush {
  int64_t step;
  int32_t rank;
  int32_t shard;
  std::vector<uint64_t> ids;
  std::vector<float> grads;
};

// pushes[step][rank][shard]: random rows (with repeats) of 60 hot ids.
std::vector<RankPush> MakePushes(int steps, int ranks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint64_t> row(0, 59);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<RankPush> all;
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < ranks; ++r) {
      std::vector<RankPush> by_shard(kShards);
      for (int32_t sh = 0; sh < kShards; ++sh) {
        by_shard[sh] = {s, r, sh, {}, {}};
      }
      const int n = 5 + static_cast<int>(rng() % 20);
      for (int k = 0; k < n; ++k) {
        const uint64_t id = row(rng);
        RankPush& p = by_shard[ShardOfRow(id, kShards)];
        p.ids.push_back(id);
        for (int c = 0; c < kDim; ++c) p.grads.push_back(g(rng));
      }
      for (RankPush& p : by_shard) all.push_back(std::move(p));
    }
  }
  return all;
}

absl::StatusOr<EmbeddingBspResult> Send(EmbeddingStore& store,
                                        const RankPush& p, int32_t ranks) {
  return store.PushBsp(kJob, "emb", p.ids,
                       Grads(p.grads, static_cast<int64_t>(p.ids.size())),
                       {p.step, p.rank, ranks, p.shard}, {"c", 0},
                       EmbeddingPushSource::kClient, nullptr);
}

// Runs the pushes step by step, each step's pushes in an order shuffled
// by `seed` (or all of a step from `ranks` threads when threads is true).
std::string Run(const std::vector<RankPush>& pushes, int steps, int ranks,
                uint32_t seed, bool threads,
                EmbeddingTableSpec spec = Spec()) {
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1}));
  std::mt19937 rng(seed);
  for (int s = 0; s < steps; ++s) {
    std::vector<const RankPush*> step;
    for (const RankPush& p : pushes) {
      if (p.step == s) step.push_back(&p);
    }
    std::shuffle(step.begin(), step.end(), rng);
    if (!threads) {
      for (const RankPush* p : step) REQUIRE(Send(store, *p, ranks).ok());
      continue;
    }
    std::vector<std::thread> pool;
    std::atomic<int> failed{0};
    for (int r = 0; r < ranks; ++r) {
      pool.emplace_back([&, r] {
        for (const RankPush* p : step) {
          if (p->rank == r && !Send(store, *p, ranks).ok()) ++failed;
        }
      });
    }
    for (std::thread& t : pool) t.join();
    REQUIRE(failed.load() == 0);
  }
  for (int32_t sh = 0; sh < kShards; ++sh) {
    auto status = store.Status(kJob, "emb");
    REQUIRE(status.ok());
    REQUIRE(status->shard_status(sh).bsp_clock() == steps);
  }
  return Pull(store, AllIds());
}

TEST_CASE("BSP: one step is the mean over ranks in rank order, one update",
          "[bsp]") {
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, Spec(OptimizerSpec::SGD), {0, 1}));
  const uint64_t id = 5;
  const int32_t shard = ShardOfRow(id, kShards);
  const std::string before = Pull(store, {id});
  std::vector<float> g0 = {1e8f, 1.0f, -3.0f, 0.25f};
  std::vector<float> g1 = {-1e8f, 2.0f, 3.0f, 0.5f};
  std::vector<float> g2 = {1.0f, 3.0f, 0.1f, 0.125f};
  // Arrival order 2, 0, 1; rank 1 also pushes an empty push to the
  // other shard, like every rank.
  for (int32_t r : {2, 0, 1}) {
    const std::vector<float>& g = r == 0 ? g0 : r == 1 ? g1 : g2;
    auto result = store.PushBsp(kJob, "emb", {id}, Grads(g, 1),
                                {0, r, 3, shard}, {}, EmbeddingPushSource::kClient,
                                nullptr);
    REQUIRE(result.ok());
    CHECK(result->outcome == (r == 1 ? EmbeddingBspResult::Outcome::kApplied
                                     : EmbeddingBspResult::Outcome::kWaiting));
  }
  std::vector<float> w(kDim);
  std::memcpy(w.data(), before.data(), kDim * 4);
  const std::string after = Pull(store, {id});
  std::vector<float> got(kDim);
  std::memcpy(got.data(), after.data(), kDim * 4);
  for (int c = 0; c < kDim; ++c) {
    const float mean = ((g0[c] + g1[c]) + g2[c]) * (1.0f / 3.0f);
    const float want = w[c] - 0.05f * mean;
    CHECK(got[c] == want);  // bitwise: (1e8 - 1e8) + 1 = 1, not 0
  }
  auto status = store.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  CHECK(status->shard_status(shard).bsp_clock() == 1);
  CHECK(status->shard_status(shard).updates() == 1);
  CHECK(status->shard_status(1 - shard).bsp_clock() == 0);
}

TEST_CASE("BSP: final rows are bitwise identical whatever the arrival order "
          "and threads",
          "[bsp]") {
  const int kSteps = 12, kRanks = 4;
  const std::vector<RankPush> pushes = MakePushes(kSteps, kRanks, 99);
  const std::string reference = Run(pushes, kSteps, kRanks, 1, false);
  for (uint32_t seed : {2u, 3u, 4u}) {
    CHECK(Run(pushes, kSteps, kRanks, seed, false) == reference);
  }
  for (uint32_t seed : {5u, 6u}) {
    CHECK(Run(pushes, kSteps, kRanks, seed, true) == reference);
  }
  // And it is not the initial table.
  EmbeddingStore fresh;
  REQUIRE(*fresh.CreateTable(kJob, Spec(), {0, 1}));
  CHECK(Pull(fresh, AllIds()) != reference);
}

TEST_CASE("BSP: a second (step, rank) is a duplicate, the first kept; an "
          "applied step is a duplicate",
          "[bsp]") {
  const uint64_t id = 11;
  const int32_t shard = ShardOfRow(id, kShards);
  auto run = [&](bool with_duplicate) {
    EmbeddingStore store;
    REQUIRE(*store.CreateTable(kJob, Spec(), {0, 1}));
    auto first = store.PushBsp(kJob, "emb", {id}, Grads({1, 2, 3, 4}, 1),
                               {0, 0, 2, shard}, {},
                               EmbeddingPushSource::kClient, nullptr);
    REQUIRE(first.ok());
    if (with_duplicate) {
      auto waiter = std::make_shared<EmbeddingBspWaiter>();
      auto dup = store.PushBsp(kJob, "emb", {id}, Grads({9, 9, 9, 9}, 1),
                               {0, 0, 2, shard}, {},
                               EmbeddingPushSource::kClient, waiter);
      REQUIRE(dup.ok());
      CHECK(dup->duplicate);
      CHECK(waiter->duplicate);
      CHECK(dup->outcome == EmbeddingBspResult::Outcome::kWaiting);
    }
    auto last = store.PushBsp(kJob, "emb", {}, Grads({}, 0), {0, 1, 2, shard},
                              {}, EmbeddingPushSource::kClient, nullptr);
    REQUIRE(last.ok());
    REQUIRE(last->outcome == EmbeddingBspResult::Outcome::kApplied);
    CHECK(last->waiters.size() == (with_duplicate ? 3u : 2u));
    CHECK(last->rows_updated == 1);
    // Step 0 again: a duplicate, answered at once, nothing changes.
    const std::string rows = Pull(store, {id});
    auto again = store.PushBsp(kJob, "emb", {id}, Grads({5, 5, 5, 5}, 1),
                               {0, 1, 2, shard}, {},
                               EmbeddingPushSource::kClient, nullptr);
    REQUIRE(again.ok());
    CHECK(again->duplicate);
    CHECK(again->outcome == EmbeddingBspResult::Outcome::kAnswer);
    CHECK(Pull(store, {id}) == rows);
    return rows;
  };
  CHECK(run(true) == run(false));
}

TEST_CASE("BSP: refused pushes name the field and change nothing", "[bsp]") {
  EmbeddingStore store;
  REQUIRE(store.CreateTable(kJob, Spec(), {0}).ok());
  // (A table holding shard 0 only.)
  uint64_t id = 0;
  while (ShardOfRow(id, kShards) != 0) ++id;
  REQUIRE(store.PushBsp(kJob, "emb", {id}, Grads({1, 1, 1, 1}, 1),
                        {0, 0, 2, 0}, {}, EmbeddingPushSource::kClient, nullptr)
              .ok());
  auto before = store.Status(kJob, "emb", true);
  REQUIRE(before.ok());
  const std::string rows = Pull(store, {id});
  auto expect = [&](absl::StatusOr<EmbeddingBspResult> r, absl::StatusCode code,
                    const std::string& field) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == code);
    CHECK(r.status().message().find(field) != absl::string_view::npos);
  };
  auto push = [&](std::vector<uint64_t> ids, std::vector<float> g,
                  EmbeddingBspTag tag, int64_t n = -1) {
    return store.PushBsp(kJob, "emb", ids,
                         Grads(g, n >= 0 ? n : static_cast<int64_t>(ids.size())),
                         tag, {}, EmbeddingPushSource::kClient, nullptr);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  expect(push({id}, {1, 1, 1, 1}, {-1, 1, 2, 0}),
         absl::StatusCode::kInvalidArgument, "step:");
  expect(push({id}, {1, 1, 1, 1}, {0, 2, 2, 0}),
         absl::StatusCode::kInvalidArgument, "rank:");
  expect(push({id}, {1, 1, 1, 1}, {0, -1, 2, 0}),
         absl::StatusCode::kInvalidArgument, "rank:");
  expect(push({id}, {1, 1, 1, 1}, {0, 1, 0, 0}),
         absl::StatusCode::kInvalidArgument, "num_ranks:");
  expect(push({id}, {1, 1, 1, 1}, {0, 1, 3, 0}),
         absl::StatusCode::kInvalidArgument, "num_ranks:");
  expect(push({id}, {1, 1, 1, 1}, {0, 1, 2, 5}),
         absl::StatusCode::kInvalidArgument, "shard:");
  expect(push({}, {}, {0, 1, 2, 1}), absl::StatusCode::kFailedPrecondition,
         "shard:");
  expect(push({id}, {1, 1, 1, 1}, {3, 1, 2, 0}),
         absl::StatusCode::kFailedPrecondition, "step:");
  expect(push({5000}, {1, 1, 1, 1}, {0, 1, 2, 0}),
         absl::StatusCode::kInvalidArgument, "row_ids[0]");
  expect(push({id}, {1, 1, 1}, {0, 1, 2, 0}), absl::StatusCode::kInvalidArgument,
         "gradients.");
  expect(push({id}, {1, nan, 1, 1}, {0, 1, 2, 0}),
         absl::StatusCode::kInvalidArgument, "gradients.data");
  auto after = store.Status(kJob, "emb", true);
  REQUIRE(after.ok());
  after->set_pulls(before->pulls());
  CHECK(after->SerializeAsString() == before->SerializeAsString());
  CHECK(after->shard_status(0).bsp_waiting_ranks_size() == 1);
  CHECK(Pull(store, {id}) == rows);
  // The step then completes normally.
  auto done = push({id}, {1, 1, 1, 1}, {0, 1, 2, 0});
  REQUIRE(done.ok());
  CHECK(done->outcome == EmbeddingBspResult::Outcome::kApplied);
}

TEST_CASE("BSP failover: the backup, fed merged steps, then re-sent the "
          "unacknowledged pushes, ends bitwise as an undisturbed run",
          "[bsp]") {
  const int kSteps = 10, kRanks = 3, kKillAt = 6;
  const std::vector<RankPush> pushes = MakePushes(kSteps, kRanks, 7);
  const std::string reference = Run(pushes, kSteps, kRanks, 1, false);
  TableShardReplicas r0, r1;
  for (TableShardReplicas* r : {&r0, &r1}) {
    r->add_replicas("p:1");
    r->add_replicas("b:1");
  }
  r0.set_shard(0);
  r1.set_shard(1);
  EmbeddingStore primary, backup;
  r0.set_self(0);
  r1.set_self(0);
  REQUIRE(*primary.CreateTable(kJob, Spec(), {0, 1}, {r0, r1}));
  r0.set_self(1);
  r1.set_self(1);
  REQUIRE(*backup.CreateTable(kJob, Spec(), {0, 1}, {r0, r1}));
  std::mt19937 rng(3);
  for (int s = 0; s < kSteps; ++s) {
    std::vector<const RankPush*> step;
    for (const RankPush& p : pushes) {
      if (p.step == s) step.push_back(&p);
    }
    std::shuffle(step.begin(), step.end(), rng);
    // At kKillAt the primary gets half of the step's pushes, then dies;
    // the clients re-send everything unacknowledged to the backup.
    EmbeddingStore& target = s < kKillAt ? primary : backup;
    if (s == kKillAt) {
      for (size_t k = 0; k < step.size() / 2; ++k) {
        auto r = Send(primary, *step[k], kRanks);
        REQUIRE(r.ok());
        REQUIRE(r->outcome == EmbeddingBspResult::Outcome::kWaiting);
      }
    }
    for (const RankPush* p : step) {
      auto r = Send(target, *p, kRanks);
      REQUIRE(r.ok());
      if (r->outcome != EmbeddingBspResult::Outcome::kApplied) continue;
      if (s < kKillAt) {
        REQUIRE(r->forward_to == std::vector<std::string>{"b:1"});
        // The forward (ReplicateRows), twice: the second is a duplicate.
        for (int twice = 0; twice < 2; ++twice) {
          auto f = backup.PushBsp(
              kJob, "emb", r->merged_ids,
              Grads(r->merged_grads,
                    static_cast<int64_t>(r->merged_ids.size())),
              {r->step, -1, kRanks, r->shard}, {},
              EmbeddingPushSource::kReplica, nullptr);
          REQUIRE(f.ok());
          CHECK(f->duplicate == (twice == 1));
        }
        CHECK(primary.FinishBspStep(kJob, "emb", r->shard, r->step).size() ==
              static_cast<size_t>(kRanks));
      } else {
        // The promoted backup forwards to the dead primary, once per
        // shard (then drops it).
        if (r->forward_to.empty()) continue;
        CHECK(r->forward_to == std::vector<std::string>{"p:1"});
        CHECK(backup.DropReplica(kJob, "emb", r->shard, "p:1", "dead"));
        CHECK(backup.FinishBspStep(kJob, "emb", r->shard, r->step).size() ==
              static_cast<size_t>(kRanks));
      }
    }
  }
  CHECK(Pull(backup, AllIds()) == reference);
}

TEST_CASE("Admission: a row is created on its admit_after_pushes-th push",
          "[admission]") {
  EmbeddingTableSpec spec = Spec(OptimizerSpec::SGD);
  spec.set_admit_after_pushes(3);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1}));
  const std::string initial = Pull(store, {42});
  for (int k = 0; k < 2; ++k) {
    auto r = store.Push(kJob, "emb", {42}, Grads({1, 1, 1, 1}, 1));
    REQUIRE(r.ok());
    CHECK(r->rows_updated == 0);
    CHECK(Pull(store, {42}) == initial);
  }
  auto status = store.Status(kJob, "emb");
  CHECK(status->rows() == 0);
  CHECK(status->pending_admission_rows() == 1);
  CHECK(status->unadmitted_pushes() == 2);
  auto r = store.Push(kJob, "emb", {42}, Grads({1, 2, 3, 4}, 1));
  REQUIRE(r.ok());
  CHECK(r->rows_created == 1);
  std::vector<float> w(kDim), got(kDim);
  std::memcpy(w.data(), initial.data(), kDim * 4);
  const std::string after = Pull(store, {42});
  std::memcpy(got.data(), after.data(), kDim * 4);
  for (int c = 0; c < kDim; ++c) CHECK(got[c] == w[c] - 0.05f * (c + 1));
  status = store.Status(kJob, "emb");
  CHECK(status->rows() == 1);
  CHECK(status->pending_admission_rows() == 0);
  // Validation.
  spec.set_admit_after_pushes(2000000);
  spec.set_name("bad");
  auto bad = store.CreateTable(kJob, spec, {0});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("spec.admit_after_pushes") !=
        absl::string_view::npos);
}

TEST_CASE("Eviction under BSP: rows idle for evict_after_steps steps go, "
          "bytes come back, the same on a replica fed merged steps",
          "[eviction]") {
  EmbeddingTableSpec spec = Spec(OptimizerSpec::SGD);
  spec.set_evict_after_steps(4);  // scans every step
  spec.set_admit_after_pushes(2);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1}));
  uint64_t a = 0;
  while (ShardOfRow(a, kShards) != 0) ++a;
  uint64_t b = a + 1;
  while (ShardOfRow(b, kShards) != 0) ++b;
  const std::string initial_a = Pull(store, {a});
  auto step = [&](int64_t s, std::vector<uint64_t> ids) {
    std::vector<float> g(ids.size() * kDim, 0.5f);
    auto r = store.PushBsp(kJob, "emb", ids,
                           Grads(g, static_cast<int64_t>(ids.size())),
                           {s, 0, 1, 0}, {}, EmbeddingPushSource::kClient,
                           nullptr);
    REQUIRE(r.ok());
    REQUIRE(r->outcome == EmbeddingBspResult::Outcome::kApplied);
  };
  step(0, {a, b});  // counted (admission 2)
  step(1, {a, b});  // created
  for (int64_t s = 2; s < 6; ++s) step(s, {b});
  auto status = store.Status(kJob, "emb");
  CHECK(status->rows() == 1);  // a: last pushed at 1, evicted at step 5
  CHECK(status->evicted_rows() == 1);
  CHECK(status->step() == 6);
  CHECK(Pull(store, {a}) == initial_a);
  const int64_t bytes = status->bytes();
  for (int64_t s = 6; s < 10; ++s) step(s, {});
  status = store.Status(kJob, "emb");
  CHECK(status->rows() == 0);
  CHECK(status->evicted_rows() == 2);
  CHECK(status->bytes() < bytes);
  // A later push creates it anew, subject to admission.
  step(10, {a});
  CHECK(store.Status(kJob, "emb")->rows() == 0);
  step(11, {a});
  CHECK(store.Status(kJob, "emb")->rows() == 1);
}

TEST_CASE("Eviction under ASP follows the highest PushRowsRequest.step",
          "[eviction]") {
  EmbeddingTableSpec spec = Spec(OptimizerSpec::SGD);
  spec.set_evict_after_steps(8);  // scans every 2 steps
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1}));
  auto push = [&](uint64_t id, int64_t step) {
    REQUIRE(store.Push(kJob, "emb", {id}, Grads({1, 1, 1, 1}, 1), {},
                       EmbeddingPushSource::kClient, step)
                .ok());
  };
  push(1, 1);
  push(2, 1);
  for (int64_t s = 2; s <= 12; ++s) push(2, s);
  auto status = store.Status(kJob, "emb");
  CHECK(status->step() == 12);
  CHECK(status->rows() == 1);
  CHECK(status->evicted_rows() == 1);
  // Unset step: no clock, nothing evicted.
  push(3, 0);
  CHECK(store.Status(kJob, "emb")->rows() == 2);
  REQUIRE_FALSE(store.Push(kJob, "emb", {1}, Grads({1, 1, 1, 1}, 1), {},
                           EmbeddingPushSource::kClient, -1)
                    .ok());
}

TEST_CASE("Capture and Restore keep BSP clocks, num_ranks and admission "
          "counts",
          "[bsp]") {
  EmbeddingTableSpec spec = Spec();
  spec.set_admit_after_pushes(2);
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, spec, {0, 1}));
  for (int64_t s = 0; s < 3; ++s) {
    for (int32_t sh = 0; sh < kShards; ++sh) {
      std::vector<uint64_t> ids;
      for (uint64_t id = 0; id < 40; ++id) {
        if (ShardOfRow(id, kShards) == sh && (id % 3 != 0 || s == 0)) {
          ids.push_back(id);
        }
      }
      std::vector<float> g(ids.size() * kDim, 0.25f);
      REQUIRE(store.PushBsp(kJob, "emb", ids,
                            Grads(g, static_cast<int64_t>(ids.size())),
                            {s, 0, 1, sh}, {}, EmbeddingPushSource::kClient,
                            nullptr)
                  .ok());
    }
  }
  auto capture = store.Capture(kJob, "emb");
  REQUIRE(capture.ok());
  CHECK(capture->bsp_num_ranks == 1);
  CHECK(capture->bsp_clocks.size() == 2u);
  CHECK(!capture->admission.empty());
  EmbeddingStore restored;
  REQUIRE(restored.Restore(*capture, {0, 1}).ok());
  auto a = store.Status(kJob, "emb", true);
  auto b = restored.Status(kJob, "emb", true);
  for (int32_t sh = 0; sh < kShards; ++sh) {
    CHECK(b->shard_status(sh).bsp_clock() == 3);
    CHECK(b->shard_status(sh).checksum() == a->shard_status(sh).checksum());
  }
  CHECK(b->pending_admission_rows() == a->pending_admission_rows());
  // The next step is 3 on both and gives the same rows.
  for (EmbeddingStore* s : {&store, &restored}) {
    for (int32_t sh = 0; sh < kShards; ++sh) {
      std::vector<uint64_t> ids;
      for (uint64_t id = 0; id < 40; ++id) {
        if (ShardOfRow(id, kShards) == sh) ids.push_back(id);
      }
      std::vector<float> g(ids.size() * kDim, -0.5f);
      auto r = s->PushBsp(kJob, "emb", ids,
                          Grads(g, static_cast<int64_t>(ids.size())),
                          {3, 0, 1, sh}, {}, EmbeddingPushSource::kClient,
                          nullptr);
      REQUIRE(r.ok());
      CHECK(r->outcome == EmbeddingBspResult::Outcome::kApplied);
    }
  }
  CHECK(Pull(store, AllIds()) == Pull(restored, AllIds()));
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

TEST_CASE("BSP: a merged step from another primary answers the calls of that "
          "step buffered here and clears them",
          "[bsp]") {
  EmbeddingStore store;
  REQUIRE(*store.CreateTable(kJob, Spec(OptimizerSpec::SGD), {0, 1}));
  uint64_t id = 0;
  while (ShardOfRow(id, kShards) != 0) ++id;
  auto waiter = std::make_shared<EmbeddingBspWaiter>();
  auto buffered = store.PushBsp(kJob, "emb", {id}, Grads({9, 9, 9, 9}, 1),
                                {0, 0, 2, 0}, {}, EmbeddingPushSource::kClient,
                                waiter);
  REQUIRE(buffered.ok());
  REQUIRE(buffered->outcome == EmbeddingBspResult::Outcome::kWaiting);
  auto merged = store.PushBsp(kJob, "emb", {id}, Grads({1, 1, 1, 1}, 1),
                              {0, -1, 2, 0}, {}, EmbeddingPushSource::kReplica,
                              nullptr);
  REQUIRE(merged.ok());
  CHECK(merged->outcome == EmbeddingBspResult::Outcome::kAnswer);
  REQUIRE(merged->waiters.size() == 1u);
  CHECK(merged->waiters[0] == waiter);
  auto status = store.Status(kJob, "emb");
  CHECK(status->shard_status(0).bsp_clock() == 1);
  CHECK(status->shard_status(0).bsp_waiting_ranks_size() == 0);
  // Step 1 then needs both ranks again (rank 0's step-0 push is gone).
  auto r0 = store.PushBsp(kJob, "emb", {}, Grads({}, 0), {1, 0, 2, 0}, {},
                          EmbeddingPushSource::kClient, nullptr);
  REQUIRE(r0.ok());
  CHECK(r0->outcome == EmbeddingBspResult::Outcome::kWaiting);
  // A merged step must be rank -1 from a replica, never from a client.
  auto bad = store.PushBsp(kJob, "emb", {}, Grads({}, 0), {1, -1, 2, 0}, {},
                           EmbeddingPushSource::kClient, nullptr);
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace psd
