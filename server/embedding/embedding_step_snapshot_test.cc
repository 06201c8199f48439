// Step snapshots of BSP tables (issue 25: a sparse job's tables
// snapshotted with its dense part): EmbeddingStore::ScheduleStepCaptures
// captures each held shard exactly at clock k (k a multiple of the
// interval), EmbeddingStepWriter writes them, EmbeddingSnapshotStore::
// ReadStep and CreateTableRequest.restore_step read the one of a given
// step, and a table restored at step k trains on to the same bits as one
// never stopped.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/embedding_rows.h"
#include "server/embedding/embedding_service.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_step_writer.h"
#include "server/embedding/embedding_store.h"

namespace psd {
namespace {

constexpr char kJob[] = "job-s";
constexpr int32_t kShards = 2;
constexpr int32_t kDim = 4;
constexpr int32_t kRanks = 2;

EmbeddingTableSpec Spec() {
  EmbeddingTableSpec spec;
  spec.set_name("emb");
  spec.set_num_rows(1000);
  spec.set_dim(kDim);
  spec.set_num_shards(kShards);
  spec.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  spec.mutable_initializer()->set_seed(7);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  spec.mutable_optimizer()->set_learning_rate(0.05f);
  return spec;
}

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir =
      std::string(base != nullptr ? base : "/tmp") + "/embstep-" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

// Rank `rank`'s push of step `step` to shard `shard`: a function of the
// three (random rows of 80, with repeats).
void PushStep(EmbeddingStore& store, int64_t step, int32_t rank,
              int32_t shard) {
  std::mt19937 rng(static_cast<uint32_t>(step * 1000 + rank * 10 + shard));
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<uint64_t> ids;
  std::vector<float> grads;
  for (int k = 0; k < 40; ++k) {
    const uint64_t id = rng() % 80;
    if (ShardOfRow(id, kShards) != shard) continue;
    ids.push_back(id);
    for (int c = 0; c < kDim; ++c) grads.push_back(g(rng));
  }
  Tensor t;
  t.set_dtype(FLOAT32);
  t.add_shape(static_cast<int64_t>(ids.size()));
  t.add_shape(kDim);
  t.set_data(grads.data(), grads.size() * sizeof(float));
  auto r = store.PushBsp(kJob, "emb", ids, t, {step, rank, kRanks, shard},
                         {}, EmbeddingPushSource::kClient, nullptr);
  REQUIRE(r.ok());
}

// Steps [from, to): shard 1 of each step first, then shard 0, and shard 0
// of step s + 1 before shard 1 of step s completes where allowed, so the
// two shards' clocks pass each multiple at different pushes.
void Train(EmbeddingStore& store, int64_t from, int64_t to) {
  for (int64_t s = from; s < to; ++s) {
    PushStep(store, s, 0, 1);
    for (int32_t shard : {0, 1}) {
      for (int32_t rank = 0; rank < kRanks; ++rank) {
        if (shard == 1 && rank == 0) continue;
        PushStep(store, s, rank, shard);
      }
    }
  }
}

// Per shard: (rows, updates, checksum, clock).
std::vector<std::string> Sums(const EmbeddingStore& store) {
  auto status = store.Status(kJob, "emb", /*checksum=*/true);
  REQUIRE(status.ok());
  std::vector<std::string> out;
  for (const TableShardStatus& s : status->shard_status()) {
    out.push_back(std::to_string(s.rows()) + "/" + std::to_string(s.updates()) +
                  "/" + std::to_string(s.checksum()) + "/" +
                  std::to_string(s.bsp_clock()));
  }
  return out;
}

TEST_CASE("step captures: each is the table exactly at clock k",
          "[step-snapshot]") {
  EmbeddingStore store;
  std::vector<std::shared_ptr<EmbeddingTableCapture>> captures;
  store.SetStepCaptureSink([&](std::shared_ptr<EmbeddingTableCapture> c) {
    captures.push_back(std::move(c));
  });
  REQUIRE(*store.CreateTable(kJob, Spec(), {0, 1}));
  CHECK(absl::IsInvalidArgument(store.ScheduleStepCaptures(kJob, "emb", -1, 2)));
  CHECK(absl::IsNotFound(store.ScheduleStepCaptures(kJob, "nope", 3, 2)));
  REQUIRE(store.ScheduleStepCaptures(kJob, "emb", 3, 2).ok());
  Train(store, 0, 7);
  REQUIRE(captures.size() == 2);
  CHECK(captures[0]->step == 3);
  CHECK(captures[1]->step == 6);
  CHECK(captures[0]->keep_last == 2);
  const std::vector<std::string> at7 = Sums(store);

  // A store trained to step 3 only, and one restored from the capture of
  // step 3: the same rows, counts, checksums and clocks.
  EmbeddingStore reference;
  REQUIRE(*reference.CreateTable(kJob, Spec(), {0, 1}));
  Train(reference, 0, 3);
  EmbeddingStore restored;
  REQUIRE(*restored.Restore(*captures[0], {0, 1}) > 0);
  CHECK(Sums(restored) == Sums(reference));
  // Trained on from step 3, it ends where the undisturbed run did; a push
  // of a step before 3 is a duplicate there.
  Train(restored, 3, 7);
  CHECK(Sums(restored) == at7);
}

TEST_CASE("step snapshots: written in the background, read by step",
          "[step-snapshot]") {
  const std::string dir = TempDir("writer");
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  EmbeddingStore store;
  EmbeddingStepWriter writer(snapshots->get());
  store.SetStepCaptureSink([&](std::shared_ptr<EmbeddingTableCapture> c) {
    writer.Enqueue(std::move(c));
  });
  REQUIRE(*store.CreateTable(kJob, Spec(), {0, 1}));
  REQUIRE(store.ScheduleStepCaptures(kJob, "emb", 2, 3).ok());
  Train(store, 0, 9);  // steps 2, 4, 6, 8; keep 3
  writer.Flush();
  CHECK(writer.written() == 4);
  CHECK(writer.failed() == 0);
  auto gens = (*snapshots)->Generations(kJob, "emb");
  REQUIRE(gens.ok());
  CHECK(gens->size() == 3);
  auto at4 = (*snapshots)->ReadStep(kJob, "emb", 4);
  REQUIRE(at4.ok());
  CHECK(at4->manifest.step() == 4);
  CHECK(at4->manifest.metadata().at("step") == "4");
  auto gone = (*snapshots)->ReadStep(kJob, "emb", 2);  // beyond keep_last
  CHECK(absl::IsNotFound(gone.status()));
  CHECK(std::string(gone.status().message()).find("restore_step") !=
        std::string::npos);
  CHECK(absl::IsInvalidArgument(
      (*snapshots)->ReadStep(kJob, "emb", 0).status()));
  // Restored at step 4 (not the newest, 8): the table of a run stopped at 4.
  EmbeddingStore reference;
  REQUIRE(*reference.CreateTable(kJob, Spec(), {0, 1}));
  Train(reference, 0, 4);
  EmbeddingStore restored;
  REQUIRE(*restored.Restore(at4->capture, {0, 1}) > 0);
  CHECK(Sums(restored) == Sums(reference));
}

// Polls until the table has `n` generations (the service's writer is in
// the background).
void AwaitGenerations(EmbeddingSnapshotStore& snapshots, size_t n) {
  for (int i = 0; i < 500; ++i) {
    auto gens = snapshots.Generations(kJob, "emb");
    REQUIRE(gens.ok());
    if (gens->size() >= n) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FAIL("step snapshots were not written");
}

TEST_CASE("CreateTable: snapshot_every_steps and restore_step",
          "[step-snapshot]") {
  const std::string dir = TempDir("service");
  auto snapshots = EmbeddingSnapshotStore::Open(dir);
  REQUIRE(snapshots.ok());
  EmbeddingStore store;
  EmbeddingService service(&store, nullptr, {}, snapshots->get());
  CreateTableRequest create;
  create.set_job_id(kJob);
  *create.mutable_spec() = Spec();
  create.add_shards(0);
  create.add_shards(1);
  create.set_snapshot_every_steps(-1);
  CreateTableResponse response;
  grpc::Status status = service.CreateTable(nullptr, &create, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message().find("snapshot_every_steps") != std::string::npos);
  create.set_snapshot_every_steps(2);
  create.set_snapshot_keep_last(3);
  REQUIRE(service.CreateTable(nullptr, &create, &response).ok());
  Train(store, 0, 6);  // steps 2, 4, 6
  AwaitGenerations(**snapshots, 3);
  const std::vector<std::string> at6 = Sums(store);

  EmbeddingStore store2;
  EmbeddingService service2(&store2, nullptr, {}, snapshots->get());
  CreateTableRequest restore = create;
  restore.set_restore(true);
  restore.set_restore_step(3);
  status = service2.CreateTable(nullptr, &restore, &response);
  CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(status.error_message().find("restore_step") != std::string::npos);
  CreateTableRequest bad = create;
  bad.set_restore_step(2);  // without restore
  status = service2.CreateTable(nullptr, &bad, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  restore.set_restore_step(2);
  REQUIRE(service2.CreateTable(nullptr, &restore, &response).ok());
  CHECK(response.restored_metadata().at("step") == "2");
  // Trained on from step 2 with captures scheduled again: the same table
  // as the undisturbed run, and it writes step snapshots too.
  Train(store2, 2, 6);
  CHECK(Sums(store2) == at6);
}

}  // namespace
}  // namespace psd
