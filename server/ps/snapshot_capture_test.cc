// ParameterStore snapshots of ASP/SSP partitions (snapshot step k: every
// rank's pushes of steps < k applied), of jobs mixing BSP and ASP groups,
// and their restore.
#include "server/ps/parameter_store.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "common/job_config.h"
#include "common/tensor.h"
#include "server/ps/parameter_store_test_util.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {
namespace store_test {
namespace {

// ---- Snapshots of ASP/SSP partitions (snapshot step k: every rank's pushes
// of steps < k applied) ----

// The partition's current state as the store holds it (CopyPartition).
InstallPartitionRequest Current(ParameterStore& store, int32_t id) {
  auto copy = store.CopyPartition(kJob, id);
  REQUIRE(copy.ok());
  return *copy;
}

// The snapshot's partition equals the store's current state of it: weights
// and slots bit for bit, clocks and update count (ASP/SSP) or no clocks.
void CheckCapturedNow(ParameterStore& store, const PartitionSnapshot& part,
                      bool async) {
  const InstallPartitionRequest now = Current(store, part.id);
  INFO("partition " << part.id);
  CHECK(now.weights().data() ==
        std::string(reinterpret_cast<const char*>(part.weights.data()),
                    4 * part.weights.size()));
  CHECK(now.slots().data() ==
        std::string(reinterpret_cast<const char*>(part.slots.data()),
                    4 * part.slots.size()));
  CHECK(!part.slots.empty());  // momentum: one slot
  if (async) {
    CHECK(part.clocks == std::vector<int64_t>(now.clocks().begin(),
                                              now.clocks().end()));
    CHECK(part.updates == now.step());
  } else {
    CHECK(part.clocks.empty());
  }
}

TEST_CASE("ParameterStore: an ASP job is captured when its slowest rank's "
          "clock reaches the snapshot step, with its clocks; restored, the "
          "pushes it holds are duplicates",
          "[store][asp][snapshot]") {
  std::vector<ShardSnapshot> captured;
  ParameterStoreOptions options;
  options.snapshot_sink = [&captured](ShardSnapshot s) {
    captured.push_back(std::move(s));
  };
  auto edit = [](JobConfig* c) {
    c->mutable_optimizer()->set_momentum(0.9f);
    c->mutable_snapshot()->set_every_steps(2);
  };
  AsyncFixture f(ASP, 2, 0, options, edit);
  const int partitions = f.shape.placement.partitions_size();
  // Rank 0 runs ahead to clock 3; rank 1 is at 1: the slowest is at 1.
  for (int64_t step : {0, 1, 2}) REQUIRE(f.Push(0, step).ok());
  REQUIRE(f.Push(1, 0).ok());
  CHECK(captured.empty());
  // A requested snapshot at a step the slowest rank has reached is refused.
  absl::Status late = f.store.RequestSnapshot(kJob, 1);
  CHECK(absl::IsFailedPrecondition(late));
  CHECK(Contains(late.message(), "slowest rank's clock"));
  REQUIRE(f.store.RequestSnapshot(kJob, 3).ok());
  // Rank 1's push of step 1 brings the slowest clock to 2: step 2 is due.
  REQUIRE(f.Push(1, 1).ok());
  REQUIRE(captured.size() == 1);
  const ShardSnapshot snap = captured[0];
  CHECK(snap.manifest.step() == 2);
  REQUIRE(static_cast<int>(snap.partitions.size()) == partitions);
  for (const PartitionSnapshot& part : snap.partitions) {
    CheckCapturedNow(f.store, part, /*async=*/true);
    CHECK(part.clocks == std::vector<int64_t>{3, 2});
    CHECK(part.updates == 5);
  }
  // The weights are those of the five pushes, rank 0's step 2 included.
  Params weights;
  for (const PartitionSnapshot& part : snap.partitions) {
    weights[part.id] = part.weights;
  }
  // (The reference applies plain SGD; compare with momentum through the
  // store itself instead: a fresh store given the same pushes.)
  AsyncFixture again(ASP, 2, 0, {}, edit);
  for (auto [rank, step] : std::vector<std::pair<int, int64_t>>{
           {0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}}) {
    REQUIRE(again.Push(rank, step).ok());
  }
  CHECK(Bitwise(weights, again.Latest()));
  // The requested step 3 comes when rank 1 reaches clock 3.
  REQUIRE(f.Push(1, 2).ok());
  REQUIRE(captured.size() == 2);
  CHECK(captured[1].manifest.step() == 3);
  CHECK(captured[1].partitions[0].clocks == std::vector<int64_t>{3, 3});

  // Restored at step 2 in a new store: every rank resumes at step 2.
  ParameterStore restored;
  REQUIRE(restored.Restore(snap, kEpoch).ok());
  for (const PartitionSnapshot& part : snap.partitions) {
    CheckCapturedNow(restored, part, /*async=*/true);
  }
  // Both ranks may read clock 2 at once.
  for (int rank : {0, 1}) {
    PullRequest pull = f.MakePull(rank, 2);
    PullResponse response;
    REQUIRE(restored.Pull(pull, absl::Now(), [] { return false; }, &response)
                .ok());
    CHECK(Bitwise(Fixture::Decode(response), weights));
  }
  // Rank 0 re-sends its step 2: a duplicate, not applied twice.
  auto dup = restored.Push(f.shape.MakePush(0, 2));
  REQUIRE(dup.ok());
  CHECK(dup->duplicate());
  // Rank 1's step 2 is new: applied as in the run never stopped.
  auto fresh = restored.Push(f.shape.MakePush(1, 2));
  REQUIRE(fresh.ok());
  CHECK_FALSE(fresh->duplicate());
  for (const Partition& part : f.shape.placement.partitions()) {
    const InstallPartitionRequest a = Current(restored, part.id());
    const InstallPartitionRequest b = Current(f.store, part.id());
    CHECK(a.weights().data() == b.weights().data());
    CHECK(a.slots().data() == b.slots().data());
    CHECK(a.step() == b.step());
    CHECK(std::vector<int64_t>(a.clocks().begin(), a.clocks().end()) ==
          std::vector<int64_t>{3, 3});
  }
  // A snapshot whose partitions lack their clocks is refused.
  ShardSnapshot stripped = snap;
  stripped.manifest.set_job_id("job-2");
  stripped.partitions[0].clocks.clear();
  absl::Status bad = restored.Restore(stripped, kEpoch);
  CHECK(absl::IsInvalidArgument(bad));
  CHECK(Contains(bad.message(), "is under ASP/SSP but has 0 worker clocks"));
}

TEST_CASE("ParameterStore: a job mixing BSP and ASP groups captures its BSP "
          "partitions at the step boundary and its ASP ones by the slowest "
          "clock, in one snapshot",
          "[store][asp][groups][snapshot]") {
  std::vector<ShardSnapshot> captured;
  ParameterStoreOptions options;
  options.snapshot_sink = [&captured](ShardSnapshot s) {
    captured.push_back(std::move(s));
  };
  Fixture shape(2);
  JobConfig config = Config(2, /*momentum=*/0.9f);
  ParameterGroup* group = config.add_parameter_groups();
  group->add_parameters("layer1.weight");
  group->add_parameters("layer1.bias");
  group->set_consistency(ASP);
  config.mutable_snapshot()->set_every_steps(2);
  ParameterStore store(options);
  REQUIRE(store.CreateJob(CreateRequest(config)).ok());
  const std::vector<ParameterSpec> specs = ModelParameters(config.model());
  std::set<int32_t> asp_ids;
  for (const Partition& part : shape.placement.partitions()) {
    if (specs[part.parameter()].name().rfind("layer1.", 0) == 0) {
      asp_ids.insert(part.id());
    }
  }
  REQUIRE(!asp_ids.empty());
  for (int64_t step : {0, 1}) {
    REQUIRE(store.Push(shape.MakePush(0, step)).ok());
    CHECK(captured.empty());
    REQUIRE(store.Push(shape.MakePush(1, step)).ok());
  }
  REQUIRE(captured.size() == 1);
  const ShardSnapshot snap = captured[0];
  CHECK(snap.manifest.step() == 2);
  REQUIRE(static_cast<int>(snap.partitions.size()) ==
          shape.placement.partitions_size());
  for (const PartitionSnapshot& part : snap.partitions) {
    const bool async = asp_ids.count(part.id) > 0;
    CheckCapturedNow(store, part, async);
    if (async) {
      CHECK(part.clocks == std::vector<int64_t>{2, 2});
      CHECK(part.updates == 4);
    }
  }
  // Restored: both ranks go on at step 2; a re-sent step 1 is a duplicate.
  ParameterStore restored;
  REQUIRE(restored.Restore(snap, kEpoch).ok());
  auto dup = restored.Push(shape.MakePush(0, 1));
  REQUIRE(dup.ok());
  CHECK(dup->duplicate());
  for (ParameterStore* s : {&store, &restored}) {
    REQUIRE(s->Push(shape.MakePush(0, 2)).ok());
    REQUIRE(s->Push(shape.MakePush(1, 2)).ok());
  }
  for (const Partition& part : shape.placement.partitions()) {
    const InstallPartitionRequest a = Current(restored, part.id());
    const InstallPartitionRequest b = Current(store, part.id());
    INFO("partition " << part.id());
    CHECK(a.weights().data() == b.weights().data());
    CHECK(a.slots().data() == b.slots().data());
    CHECK(a.step() == b.step());
  }
}

}  // namespace
}  // namespace store_test
}  // namespace psd
