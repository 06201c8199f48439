// The ASP and SSP rules through ParameterStore (issue 7: consistency
// models): pushes applied on arrival, per-rank clocks and dedup, the SSP
// staleness bound, parameter groups, and replication of ASP updates.
#include "server/ps/parameter_store.h"

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/tensor.h"
#include "server/ps/optimizer.h"
#include "server/ps/parameter_store_test_util.h"

namespace psd {
namespace store_test {
namespace {

// ---- ASP and SSP (issue 7: consistency models) ----

// The parameters after applying `pushes` (rank, step) one by one, each
// gradient scaled by 1/workers, as single SGD updates (the ASP rule).
Params AspReference(const AsyncFixture& f,
                    const std::vector<std::pair<int, int64_t>>& pushes) {
  Params params = Initial(f.config, f.shape.placement);
  const float scale = 1.0f / static_cast<float>(f.config.workers());
  int64_t update = 0;
  for (const auto& [rank, step] : pushes) {
    for (auto& [id, w] : params) {
      std::vector<float> g(w.size());
      for (size_t k = 0; k < g.size(); ++k) {
        g[k] = Grad(rank, step, id, static_cast<int64_t>(k)) * scale;
      }
      ApplyOptimizer(f.config.optimizer(), update, g.data(),
                     static_cast<int64_t>(w.size()), w.data(), nullptr);
    }
    ++update;
  }
  return params;
}

TEST_CASE("ParameterStore: ASP applies each push on arrival, scaled by "
          "1/workers, and a pull does not wait for other ranks",
          "[store][asp]") {
  AsyncFixture f(ASP, 2);
  REQUIRE(f.Push(0, 0).ok());
  int64_t step = 0;
  Params after_one = f.Latest(&step);
  CHECK(step == 1);  // applied without rank 1's push
  CHECK(Bitwise(after_one, AspReference(f, {{0, 0}})));
  // Rank 0 pulls for its step 1 at once, and pushes it: rank 1 has pushed
  // nothing yet.
  PullResponse response;
  REQUIRE(f.PullFor(0, 1, absl::Seconds(5), &response).ok());
  CHECK(response.clock() == 1);
  CHECK(Bitwise(Fixture::Decode(response), after_one));
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(1, 0).ok());
  Params got = f.Latest(&step);
  CHECK(step == 3);
  CHECK(Bitwise(got, AspReference(f, {{0, 0}, {0, 1}, {1, 0}})));
  ServerJobStatus status = f.JobStatus();
  CHECK(status.consistency() == "ASP");
  REQUIRE(status.worker_clocks_size() == 2);
  CHECK(status.worker_clocks(0) == 2);
  CHECK(status.worker_clocks(1) == 1);
  // The pull at clock 1 read while rank 1 was at clock 0: staleness 1.
  CHECK(status.max_staleness() == 1);
  REQUIRE(status.staleness_counts_size() == 16);
  CHECK(status.staleness_counts(1) == 1);
}

TEST_CASE("ParameterStore: parameter groups: each partition follows its "
          "parameter's consistency model",
          "[store][asp][groups]") {
  // The job is BSP; layer1.weight and layer1.bias form an ASP group.
  Fixture bsp(2);  // the same job all under BSP, for reference
  JobConfig config = Config(2);
  ParameterGroup* group = config.add_parameter_groups();
  group->add_parameters("layer1.weight");
  group->add_parameters("layer1.bias");
  group->set_consistency(ASP);
  ParameterStore store;
  REQUIRE(store.CreateJob(CreateRequest(config)).ok());
  const std::vector<ParameterSpec> specs = ModelParameters(config.model());
  std::set<int32_t> asp_ids;
  for (const Partition& part : bsp.placement.partitions()) {
    if (specs[part.parameter()].name().rfind("layer1.", 0) == 0) {
      asp_ids.insert(part.id());
    }
  }
  REQUIRE(!asp_ids.empty());
  REQUIRE(asp_ids.size() < static_cast<size_t>(bsp.placement.partitions_size()));
  auto latest = [&] {
    PullResponse response;
    REQUIRE(store
                .Pull(bsp.MakePull(0, /*latest=*/true),
                      absl::Now() + absl::Seconds(60), [] { return false; },
                      &response)
                .ok());
    return Fixture::Decode(response);
  };
  const Params initial = Initial(config, bsp.placement);

  // Rank 0's push: applied at once to the ASP partitions only.
  REQUIRE(store.Push(bsp.MakePush(0, 0)).ok());
  Params got = latest();
  for (const auto& [id, values] : got) {
    const bool changed =
        std::memcmp(values.data(), initial.at(id).data(),
                    values.size() * sizeof(float)) != 0;
    CHECK(changed == (asp_ids.count(id) > 0));
  }
  // Its pull of step 1 waits for the BSP partitions (rank 1's push).
  PullResponse response;
  absl::Status waited = store.Pull(bsp.MakePull(1), absl::Now(),
                                   [] { return false; }, &response);
  CHECK(waited.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(waited.message(), "waiting for other workers' pushes"));

  REQUIRE(store.Push(bsp.MakePush(1, 0)).ok());
  REQUIRE(store.Pull(bsp.MakePull(1), absl::Now() + absl::Seconds(5),
                     [] { return false; }, &response)
              .ok());
  CHECK(response.clock() == 1);
  CHECK(response.step() == 1);  // BSP partitions: 1 step; ASP ones: 2 updates
  // BSP partitions as in the all-BSP job; ASP ones as two ASP updates.
  bsp.PushOk(0, 0);
  bsp.PushOk(1, 0);
  const Params all_bsp = bsp.Latest();
  AsyncFixture reference(ASP, 2);
  const Params asp = AspReference(reference, {{0, 0}, {1, 0}});
  got = Fixture::Decode(response);
  for (const auto& [id, values] : got) {
    const Params& want = asp_ids.count(id) ? asp : all_bsp;
    CHECK(Bitwise({{id, values}}, {{id, want.at(id)}}));
  }
  ServerStatus status = store.Status();
  REQUIRE(status.jobs_size() == 1);
  CHECK(status.jobs(0).consistency() == "BSP; ASP: layer1.weight, layer1.bias");
  REQUIRE(status.jobs(0).worker_clocks_size() == 2);
  CHECK(status.jobs(0).worker_clocks(0) == 1);
  CHECK(status.jobs(0).worker_clocks(1) == 1);
  CHECK(status.jobs(0).staleness_counts_size() == 16);
}

TEST_CASE("ParameterStore: an ASP pull waits for the rank's own previous "
          "push only (read-my-writes)",
          "[store][asp]") {
  AsyncFixture f(ASP, 2);
  PullResponse response;
  absl::Status status = f.PullFor(0, 1, absl::ZeroDuration(), &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(status.message(), "rank 0's own push of step 0"));
  REQUIRE(f.Push(0, 0).ok());
  CHECK(f.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
}

TEST_CASE("ParameterStore: under ASP and SSP a retried push is acknowledged "
          "and never applied twice, and a push ahead is refused",
          "[store][asp][ssp][dedup]") {
  for (Consistency mode : {ASP, SSP}) {
    INFO("mode " << mode);
    AsyncFixture f(mode, 2, /*staleness=*/mode == SSP ? 3 : 0);
    auto first = f.Push(1, 0);
    REQUIRE(first.ok());
    CHECK_FALSE(first->duplicate());
    Params once = f.Latest();
    auto again = f.Push(1, 0);
    REQUIRE(again.ok());
    CHECK(again->duplicate());
    int64_t step = 0;
    CHECK(Bitwise(f.Latest(&step), once));
    CHECK(step == 1);
    // Rank 1's next step is 1: 2 is a gap.
    auto ahead = f.Push(1, 2);
    CHECK(ahead.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(StartsWith(ahead.status().message(), "step: 2 from rank 1"));
    REQUIRE(f.Push(1, 1).ok());
    CHECK(f.Push(1, 1)->duplicate());
    CHECK(f.Push(1, 0)->duplicate());
    f.Latest(&step);
    CHECK(step == 2);
  }
}

TEST_CASE("ParameterStore: an SSP pull waits until the slowest rank is "
          "within the staleness bound",
          "[store][ssp]") {
  AsyncFixture f(SSP, 3, /*staleness=*/1);
  // Rank 0 runs ahead: clock 0 and 1 readable at once (bound 1).
  PullResponse response;
  REQUIRE(f.PullFor(0, 0, absl::ZeroDuration(), &response).ok());
  REQUIRE(f.Push(0, 0).ok());
  REQUIRE(f.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(1, 0).ok());
  // Clock 2 needs every rank at >= 1; rank 2 is at 0.
  absl::Notification answered;
  absl::Status result;
  PullResponse waited;
  f.store.PullAsync(f.store.NewPullId(), f.MakePull(0, 2), &waited,
                    [&](absl::Status status) {
                      result = status;
                      answered.Notify();
                    });
  CHECK_FALSE(answered.HasBeenNotified());
  REQUIRE(f.Push(2, 0).ok());  // rank 2 reaches clock 1
  REQUIRE(answered.HasBeenNotified());
  REQUIRE(result.ok());
  CHECK(waited.clock() == 2);
  CHECK(waited.step() == 4);  // 4 pushes applied
  ServerJobStatus status = f.JobStatus();
  CHECK(status.consistency() == "SSP(s=1)");
  CHECK(status.max_staleness() == 1);
  REQUIRE(status.worker_clocks_size() == 3);
  CHECK(status.worker_clocks(0) == 2);
  CHECK(status.worker_clocks(1) == 1);
  CHECK(status.worker_clocks(2) == 1);
}

TEST_CASE("ParameterStore: an SSP pull past its deadline ends with "
          "DEADLINE_EXCEEDED naming the bound and the slowest rank",
          "[store][ssp]") {
  AsyncFixture f(SSP, 3, /*staleness=*/1);
  REQUIRE(f.Push(0, 0).ok());
  REQUIRE(f.Push(0, 1).ok());
  REQUIRE(f.Push(2, 0).ok());
  PullResponse response;
  absl::Status status =
      f.PullFor(0, 2, absl::Milliseconds(50), &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(status.message(), "SSP staleness bound 1"));
  CHECK(Contains(status.message(), "rank 0 at clock 2"));
  CHECK(Contains(status.message(), "slowest is rank 1 at clock 0"));
  // The expired pull is gone: a later push answers nothing and works.
  REQUIRE(f.Push(1, 0).ok());
  CHECK(f.PullFor(0, 2, absl::ZeroDuration(), &response).ok());
}

TEST_CASE("ParameterStore: SSP workers running at different speeds never "
          "read beyond the staleness bound",
          "[store][ssp]") {
  constexpr int kWorkers = 3;
  constexpr int kStaleness = 2;
  constexpr int64_t kSteps = 30;
  AsyncFixture f(SSP, kWorkers, kStaleness);
  std::vector<std::thread> threads;
  std::vector<absl::Status> errors(kWorkers);
  for (int rank = 0; rank < kWorkers; ++rank) {
    threads.emplace_back([&, rank] {
      for (int64_t c = 0; c < kSteps; ++c) {
        PullResponse response;
        absl::Status status = f.PullFor(rank, c, absl::Seconds(30), &response);
        if (!status.ok()) {
          errors[rank] = status;
          return;
        }
        auto pushed = f.Push(rank, c);
        if (!pushed.ok()) {
          errors[rank] = pushed.status();
          return;
        }
        // Rank 2 is slow.
        if (rank == 2) absl::SleepFor(absl::Milliseconds(2));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& e : errors) REQUIRE(e.ok());
  ServerJobStatus status = f.JobStatus();
  CHECK(status.max_staleness() <= kStaleness);
  int64_t pulls = 0;
  for (int64_t n : status.staleness_counts()) pulls += n;
  CHECK(pulls == kWorkers * kSteps);
  for (int64_t c : status.worker_clocks()) CHECK(c == kSteps);
  int64_t step = 0;
  f.Latest(&step);
  CHECK(step == kWorkers * kSteps);
}

// Replication under ASP: the primary's updates go to its backup first; pushes
// arriving meanwhile are aggregated into the next update; the backup stays
// bitwise equal, with the same dedup table (clocks).
TEST_CASE("ParameterStore: ASP updates are replicated before they are "
          "visible, queued pushes aggregate, and the backup stays bitwise "
          "equal",
          "[store][asp][replication]") {
  std::vector<ReplicationTask> sent;
  ParameterStoreOptions options;
  options.replicate = [&sent](ReplicationTask task) {
    sent.push_back(std::move(task));
  };
  AsyncFixture primary(ASP, 3, 0, options);
  AsyncFixture backup(ASP, 3);
  for (auto [store, id] : {std::pair{&primary.store, "p"},
                           std::pair{&backup.store, "b"}}) {
    SetViewRequest view;
    view.set_job_id(kJob);
    view.set_server_id(id);
    view.mutable_view()->set_epoch(kEpoch);
    ShardReplicas* shard = view.mutable_view()->add_shards();
    shard->set_shard(0);
    shard->set_primary("p");
    shard->add_backups("b");
    ServerInfo* p = view.mutable_view()->add_servers();
    p->set_id("p");
    p->set_address("P:1");
    ServerInfo* b = view.mutable_view()->add_servers();
    b->set_id("b");
    b->set_address("B:1");
    REQUIRE(store->SetView(view).ok());
  }
  const int partitions = primary.shape.placement.partitions_size();
  // Delivers every task sent so far to the backup and acknowledges it.
  auto deliver = [&] {
    std::vector<ReplicationTask> tasks;
    tasks.swap(sent);
    for (const ReplicationTask& task : tasks) {
      CHECK(task.address == "B:1");
      auto replicated = backup.store.Replicate(*task.request);
      REQUIRE(replicated.ok());
      CHECK(primary.store.OnReplicated(task, absl::OkStatus()) == std::nullopt);
    }
    return tasks;
  };
  REQUIRE(primary.Push(0, 0).ok());
  REQUIRE(static_cast<int>(sent.size()) == partitions);
  CHECK(sent[0].request->step() == 0);
  CHECK(std::vector<int64_t>(sent[0].request->clocks().begin(),
                             sent[0].request->clocks().end()) ==
        std::vector<int64_t>{1, 0, 0});
  // Not visible before the backup has it: rank 0's pull of clock 1 waits.
  PullResponse response;
  CHECK(primary.PullFor(0, 1, absl::ZeroDuration(), &response).code() ==
        absl::StatusCode::kDeadlineExceeded);
  int64_t step = -1;
  primary.Latest(&step);
  CHECK(step == 0);
  // Ranks 1 and 2 push while it is replicated: queued, one update.
  REQUIRE(primary.Push(2, 0).ok());
  REQUIRE(primary.Push(1, 0).ok());
  CHECK(primary.Push(1, 0)->duplicate());  // queued counts as taken
  CHECK(static_cast<int>(sent.size()) == partitions);
  std::vector<ReplicationTask> first = deliver();
  // The first update is applied; the aggregate of ranks 2 and 1 is sent.
  REQUIRE(static_cast<int>(sent.size()) == partitions);
  CHECK(sent[0].request->step() == 1);
  CHECK(std::vector<int64_t>(sent[0].request->clocks().begin(),
                             sent[0].request->clocks().end()) ==
        std::vector<int64_t>{1, 1, 1});
  REQUIRE(primary.PullFor(0, 1, absl::ZeroDuration(), &response).ok());
  CHECK(primary.PullFor(1, 1, absl::ZeroDuration(), &response).code() ==
        absl::StatusCode::kDeadlineExceeded);
  deliver();
  CHECK(sent.empty());
  REQUIRE(primary.PullFor(1, 1, absl::ZeroDuration(), &response).ok());
  Params p = primary.Latest(&step);
  CHECK(step == 2);
  int64_t backup_step = -1;
  CHECK(Bitwise(backup.Latest(&backup_step), p));
  CHECK(backup_step == 2);
  // The aggregate is (g2 + g1) / 3, summed in arrival order, as one update.
  Params expected = AspReference(primary, {{0, 0}});
  for (auto& [id, w] : expected) {
    std::vector<float> g(w.size());
    for (size_t k = 0; k < g.size(); ++k) {
      g[k] = Grad(2, 0, id, static_cast<int64_t>(k)) * (1.0f / 3.0f);
      g[k] += Grad(1, 0, id, static_cast<int64_t>(k)) * (1.0f / 3.0f);
    }
    ApplyOptimizer(primary.config.optimizer(), 1, g.data(),
                   static_cast<int64_t>(w.size()), w.data(), nullptr);
  }
  CHECK(Bitwise(p, expected));
  // A replication retried after it was applied is a duplicate on the backup.
  auto again = backup.store.Replicate(*first[0].request);
  REQUIRE(again.ok());
  CHECK(again->duplicate());
  // The backup has the dedup table: promoted, it refuses rank 1's step 0
  // again as a duplicate and takes step 1.
  SetViewRequest promote;
  promote.set_job_id(kJob);
  promote.set_server_id("b");
  promote.mutable_view()->set_epoch(kEpoch);
  ShardReplicas* shard = promote.mutable_view()->add_shards();
  shard->set_shard(0);
  shard->set_primary("b");
  REQUIRE(backup.store.SetView(promote).ok());
  CHECK(backup.Push(1, 0)->duplicate());
  CHECK_FALSE(backup.Push(1, 1)->duplicate());
  ServerJobStatus status = backup.JobStatus();
  REQUIRE(status.worker_clocks_size() == 3);
  CHECK(status.worker_clocks(1) == 2);
}

}  // namespace
}  // namespace store_test
}  // namespace psd
