// Replication between two ParameterStores wired by hand (no processes): a
// primary's step becomes pullable only once its backup applied it, both end
// bitwise equal, and every message from an older view is fenced.
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "server/ps/parameter_store.h"

namespace psd {
namespace {

constexpr char kJob[] = "repl-1";
constexpr int kWorkers = 2;

JobConfig Config() {
  JobConfig config;
  config.set_name("repl");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(3);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.1f);
  config.mutable_optimizer()->set_momentum(0.9f);
  config.set_consistency(BSP);
  config.set_batch_size(4);
  config.set_epochs(1);
  config.set_workers(kWorkers);
  config.set_seed(1);
  config.set_partition_bytes(8192);
  return config;
}

// A primary ("p" at addr-p) and its backup ("b" at addr-b) of shard 0; the
// primary's replication calls queue up in `sent` until delivered.
struct Pair {
  // `check_every`: the primary's replica_check_every_steps; `corrupt_at`:
  // the backup's test_corrupt_backup_at_step.
  explicit Pair(int64_t check_every = 100,
                std::optional<int64_t> corrupt_at = std::nullopt,
                int64_t backup_stall_ms = 10000)
      : primary(Options(check_every, backup_stall_ms)),
        backup(BackupOptions(corrupt_at)) {
    auto placement_or = BuildPlacement(ModelParameters(config.model()),
                                       config.partition_bytes(), 1);
    REQUIRE(placement_or.ok());
    placement = *placement_or;
    CreateJobRequest create;
    create.set_job_id(kJob);
    *create.mutable_config() = config;
    *create.mutable_placement() = placement;
    create.add_shards(0);
    create.set_view_epoch(2);
    auto created = primary.CreateJob(create);
    INFO(created.status().ToString());
    REQUIRE(created.ok());
    REQUIRE(backup.CreateJob(create).ok());
    REQUIRE(SetView(&primary, "p", 2, {"b"}).ok());
    REQUIRE(SetView(&backup, "b", 2, {"b"}).ok());
  }

  ParameterStoreOptions Options(int64_t check_every, int64_t backup_stall_ms) {
    ParameterStoreOptions options;
    options.backup_stall_ms = backup_stall_ms;
    options.replicate = [this](ReplicationTask task) {
      sent.push_back(std::move(task));
    };
    options.replica_check_every_steps = check_every;
    return options;
  }

  static ParameterStoreOptions BackupOptions(std::optional<int64_t> corrupt_at) {
    ParameterStoreOptions options;
    options.test_corrupt_backup_at_step = corrupt_at;
    return options;
  }

  static absl::Status SetView(ParameterStore* store, const std::string& self,
                              int64_t epoch, std::vector<std::string> backups) {
    SetViewRequest request;
    request.set_job_id(kJob);
    request.set_server_id(self);
    JobView* view = request.mutable_view();
    view->set_epoch(epoch);
    ShardReplicas* shard = view->add_shards();
    shard->set_shard(0);
    shard->set_primary("p");
    for (const std::string& b : backups) shard->add_backups(b);
    for (const char* id : {"p", "b"}) {
      ServerInfo* info = view->add_servers();
      info->set_id(id);
      info->set_address(std::string("addr-") + id);
    }
    return store->SetView(request);
  }

  PushRequest MakePush(int rank, int64_t step, int64_t epoch) {
    PushRequest push;
    push.set_job_id(kJob);
    push.set_worker_rank(rank);
    push.set_step(step);
    push.set_view_epoch(epoch);
    for (const Partition& part : placement.partitions()) {
      std::vector<float> g(part.num_elements());
      for (size_t k = 0; k < g.size(); ++k) {
        g[k] = 0.01f * std::sin(static_cast<float>(k + 5 * rank + 11 * step));
      }
      PartitionTensor* out = push.add_gradients();
      out->set_partition_id(part.id());
      EncodeFloat32(g.data(), part.num_elements(), out->mutable_tensor());
    }
    return push;
  }

  // Delivers every queued replication call to the backup.
  void Deliver() {
    while (!sent.empty()) {
      ReplicationTask task = std::move(sent.front());
      sent.pop_front();
      absl::Status status = backup.Replicate(*task.request).status();
      REQUIRE_FALSE(primary.OnReplicated(task, status).has_value());
    }
  }

  // The job's parameters on `store` (any role), by partition.
  std::map<int32_t, std::string> Latest(ParameterStore* store) {
    PullRequest pull;
    pull.set_job_id(kJob);
    pull.set_latest(true);
    for (const Partition& part : placement.partitions()) {
      pull.add_partition_ids(part.id());
    }
    PullResponse response;
    REQUIRE(store->Pull(pull, absl::Now() + absl::Seconds(5), [] { return false; },
                        &response)
                .ok());
    std::map<int32_t, std::string> bytes;
    for (const PartitionTensor& p : response.parameters()) {
      bytes[p.partition_id()] = p.tensor().data();
    }
    return bytes;
  }

  // A pull of `step` on the primary answered at once?
  absl::Status PullNow(int64_t step, int64_t epoch) {
    PullRequest pull;
    pull.set_job_id(kJob);
    pull.set_step(step);
    pull.set_view_epoch(epoch);
    for (const Partition& part : placement.partitions()) {
      pull.add_partition_ids(part.id());
    }
    PullResponse response;
    return primary.Pull(pull, absl::Now() + absl::Milliseconds(50),
                        [] { return false; }, &response);
  }

  JobConfig config = Config();
  Placement placement;
  std::deque<ReplicationTask> sent;
  ParameterStore primary;
  ParameterStore backup;
};

TEST_CASE("Replication: a step is pullable only once the backup has it, "
          "and the replicas end bitwise equal",
          "[replication]") {
  Pair pair;
  for (int64_t step = 0; step < 3; ++step) {
    for (int rank = 0; rank < kWorkers; ++rank) {
      REQUIRE(pair.primary.Push(pair.MakePush(rank, step, 2)).ok());
    }
    // One call to the backup carries the step's partitions (the last push
    // started all their updates); the step waits for it.
    REQUIRE(pair.sent.size() == 1);
    CHECK(pair.sent.front().request->gradients_size() ==
          pair.placement.partitions_size());
    CHECK(pair.PullNow(step + 1, 2).code() ==
          absl::StatusCode::kDeadlineExceeded);
    // A retried push while the step is replicated changes nothing.
    auto again = pair.primary.Push(pair.MakePush(0, step, 2));
    REQUIRE(again.ok());
    CHECK(again->duplicate());
    pair.Deliver();
    CHECK(pair.PullNow(step + 1, 2).ok());
    CHECK(pair.Latest(&pair.primary) == pair.Latest(&pair.backup));
  }
  // A replication call delivered twice is acknowledged as a duplicate.
  REQUIRE(pair.primary.Push(pair.MakePush(0, 3, 2)).ok());
  REQUIRE(pair.primary.Push(pair.MakePush(1, 3, 2)).ok());
  ReplicationTask first = pair.sent.front();
  pair.Deliver();
  auto duplicate = pair.backup.Replicate(*first.request);
  REQUIRE(duplicate.ok());
  CHECK(duplicate->duplicate());
  CHECK(pair.Latest(&pair.primary) == pair.Latest(&pair.backup));
}

TEST_CASE("Replication: messages of an older view are fenced", "[replication]") {
  Pair pair;
  // Pushes go to the primary only, in its epoch.
  CHECK(pair.backup.Push(pair.MakePush(0, 0, 2)).status().code() ==
        absl::StatusCode::kAborted);
  CHECK(pair.primary.Push(pair.MakePush(0, 0, 1)).status().code() ==
        absl::StatusCode::kAborted);
  CHECK(pair.primary.Push(pair.MakePush(0, 0, 3)).status().code() ==
        absl::StatusCode::kUnavailable);

  // The backup moves to epoch 3 (say it was promoted elsewhere): the old
  // primary's replication is refused, so its step never completes.
  REQUIRE(Pair::SetView(&pair.backup, "b", 3, {}).ok());
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 0, 2)).ok());
  }
  ReplicationTask task = pair.sent.front();
  absl::Status refused = pair.backup.Replicate(*task.request).status();
  CHECK(refused.code() == absl::StatusCode::kAborted);
  // Still awaited: the caller retries, in the primary's (old) epoch.
  auto retry = pair.primary.OnReplicated(task, refused);
  REQUIRE(retry.has_value());
  CHECK(*retry == 2);
  CHECK(pair.PullNow(1, 2).code() == absl::StatusCode::kDeadlineExceeded);
  // An older view is refused too.
  CHECK(Pair::SetView(&pair.primary, "p", 1, {"b"}).code() ==
        absl::StatusCode::kAborted);

  // A server the coordinator forgot takes nothing until a view says so.
  pair.primary.FenceAll();
  CHECK(pair.primary.Push(pair.MakePush(0, 0, 2)).status().code() ==
        absl::StatusCode::kAborted);
}

TEST_CASE("Replication: a view without the backup completes the step",
          "[replication]") {
  Pair pair;
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 0, 2)).ok());
  }
  REQUIRE_FALSE(pair.sent.empty());
  // The backup died: the coordinator's next view has no backup.
  REQUIRE(Pair::SetView(&pair.primary, "p", 4, {}).ok());
  CHECK(pair.PullNow(1, 4).ok());
  // The calls still queued are settled: no retry.
  for (const ReplicationTask& task : pair.sent) {
    CHECK_FALSE(pair.primary
                    .OnReplicated(task, absl::UnavailableError("backup down"))
                    .has_value());
  }
}

// Issue 23 item 5: a backup the coordinator sees alive but that does not
// answer its primary never holds the step: past backup_stall_ms it is
// reported (once), the coordinator's next view drops it, and the step
// completes.
TEST_CASE("Replication: a backup that has not applied a step for "
          "backup_stall_ms is reported once, and a view without it completes "
          "the step",
          "[replication][stall]") {
  Pair pair(/*check_every=*/100, std::nullopt, /*backup_stall_ms=*/1000);
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 0, 2)).ok());
  }
  REQUIRE_FALSE(pair.sent.empty());
  const ReplicationTask task = pair.sent.front();
  const absl::Status timeout = absl::DeadlineExceededError("Deadline Exceeded");
  // Within the bound: retried, not reported.
  CHECK(pair.primary.OnReplicated(task, timeout).has_value());
  CHECK(pair.primary.TakeBackupFailures().empty());
  absl::SleepFor(absl::Milliseconds(1100));
  CHECK(pair.primary.OnReplicated(task, timeout).has_value());
  CHECK(pair.primary.OnReplicated(task, timeout).has_value());
  std::vector<BackupFailure> failures = pair.primary.TakeBackupFailures();
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].address() == "addr-b");
  CHECK(failures[0].shard() == 0);
  CHECK(failures[0].error().rfind("has not applied step 0 for ", 0) == 0);
  CHECK(failures[0].step() == 0);
  CHECK(failures[0].stalled_ms() >= 1000);
  CHECK(failures[0].error().find("(DEADLINE_EXCEEDED: Deadline Exceeded)") !=
        std::string::npos);
  CHECK(pair.PullNow(1, 2).code() == absl::StatusCode::kDeadlineExceeded);
  // The coordinator's answer: a view without the backup.
  REQUIRE(Pair::SetView(&pair.primary, "p", 4, {}).ok());
  CHECK(pair.PullNow(1, 4).ok());
}

TEST_CASE("Replication: a joining backup catches up by state transfer while "
          "steps go on",
          "[replication]") {
  Pair pair;
  // Step 0 with no backup in the view.
  REQUIRE(Pair::SetView(&pair.primary, "p", 3, {}).ok());
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 0, 3)).ok());
  }
  REQUIRE(pair.sent.empty());

  // A new server joins: created joining, so it serves and takes nothing.
  ParameterStore joiner;
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = pair.config;
  *create.mutable_placement() = pair.placement;
  create.add_shards(0);
  create.set_view_epoch(3);
  create.set_joining(true);
  REQUIRE(joiner.CreateJob(create).ok());

  // Step 1's pushes arrive; the joiner is added before the step completes.
  REQUIRE(pair.primary.Push(pair.MakePush(0, 1, 3)).ok());
  auto ids = pair.primary.AddJoiner(kJob, 0, "addr-j");
  REQUIRE(ids.ok());
  REQUIRE(pair.primary.Push(pair.MakePush(1, 1, 3)).ok());
  // Replication reaching the joiner before its state is retried.
  REQUIRE_FALSE(pair.sent.empty());
  CHECK(joiner.Replicate(*pair.sent.front().request).status().code() ==
        absl::StatusCode::kUnavailable);
  // The transfer: each partition's state (at step 1, the step in flight not
  // applied yet), then the replication of step 1.
  for (int32_t id : *ids) {
    auto copy = pair.primary.CopyPartition(kJob, id);
    REQUIRE(copy.ok());
    CHECK(copy->step() == 1);
    REQUIRE(joiner.InstallPartition(*copy).ok());
  }
  while (!pair.sent.empty()) {
    ReplicationTask task = std::move(pair.sent.front());
    pair.sent.pop_front();
    REQUIRE_FALSE(
        pair.primary.OnReplicated(task, joiner.Replicate(*task.request).status())
            .has_value());
  }
  CHECK(pair.PullNow(2, 3).ok());
  CHECK(pair.Latest(&pair.primary) == pair.Latest(&joiner));
  // The state of a primary is never replaced by a transfer.
  auto copy = pair.primary.CopyPartition(kJob, ids->front());
  REQUIRE(copy.ok());
  CHECK(pair.primary.InstallPartition(*copy).code() ==
        absl::StatusCode::kFailedPrecondition);
}

// The replica check's numbers on `store`'s status of the job.
int64_t VerifiedStep(ParameterStore* store) {
  const ServerStatus status = store->Status();
  for (const ServerJobStatus& job : status.jobs()) {
    if (job.job_id() == kJob) return job.replicas_verified_step();
  }
  return -1;
}

// Runs one BSP step on the pair (both ranks push) and delivers its
// replication; returns the backup's answers that were not OK.
std::vector<absl::Status> RunStep(Pair* pair, int64_t step, int64_t epoch) {
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair->primary.Push(pair->MakePush(rank, step, epoch)).ok());
  }
  std::vector<absl::Status> refused;
  while (!pair->sent.empty()) {
    ReplicationTask task = std::move(pair->sent.front());
    pair->sent.pop_front();
    absl::Status status = pair->backup.Replicate(*task.request).status();
    const bool retry = pair->primary.OnReplicated(task, status).has_value();
    CHECK(retry == !status.ok());
    if (!status.ok()) refused.push_back(status);
  }
  return refused;
}

TEST_CASE("Replica check: replicas that agree are verified every N steps, "
          "on both sides",
          "[replication][replica_check]") {
  Pair pair(/*check_every=*/3);
  for (int64_t step = 0; step < 7; ++step) {
    CHECK(RunStep(&pair, step, 2).empty());
    // The checksums travel only with steps 3 and 6 (the state after 3 and
    // 6 updates).
    const int64_t want = step >= 6 ? 6 : step >= 3 ? 3 : 0;
    CHECK(VerifiedStep(&pair.primary) == want);
    CHECK(VerifiedStep(&pair.backup) == want);
  }
  CHECK(pair.backup.ReplicaChecks().checks ==
        2 * pair.placement.partitions_size());
  CHECK(pair.backup.ReplicaChecks().mismatches == 0);
  CHECK(pair.Latest(&pair.primary) == pair.Latest(&pair.backup));
}

TEST_CASE("Replication: the updates one push completes share a Replicate "
          "call only between shards with the same backups",
          "[replication]") {
  // Two shards led by "p": shard 0 backed up by "a" and "b", shard 1 by
  // "b" alone. One push of every partition completes every update (1
  // worker); each backup must get exactly its shards' partitions.
  JobConfig config = Config();
  config.set_workers(1);
  auto placement = BuildPlacement(ModelParameters(config.model()),
                                  config.partition_bytes(), 2);
  REQUIRE(placement.ok());
  std::map<int32_t, int32_t> shard_of;
  for (const Partition& part : placement->partitions()) {
    shard_of[part.id()] = part.shard();
  }
  std::vector<ReplicationTask> sent;
  ParameterStoreOptions options;
  options.replicate = [&sent](ReplicationTask task) {
    sent.push_back(std::move(task));
  };
  ParameterStore primary(options);
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = config;
  *create.mutable_placement() = *placement;
  create.add_shards(0);
  create.add_shards(1);
  create.set_view_epoch(2);
  REQUIRE(primary.CreateJob(create).ok());
  SetViewRequest view_request;
  view_request.set_job_id(kJob);
  view_request.set_server_id("p");
  JobView* view = view_request.mutable_view();
  view->set_epoch(2);
  const std::vector<std::vector<std::string>> backups = {{"a", "b"}, {"b"}};
  for (int s = 0; s < 2; ++s) {
    ShardReplicas* shard = view->add_shards();
    shard->set_shard(s);
    shard->set_primary("p");
    for (const std::string& b : backups[s]) shard->add_backups(b);
  }
  for (const char* id : {"p", "a", "b"}) {
    ServerInfo* info = view->add_servers();
    info->set_id(id);
    info->set_address(std::string("addr-") + id);
  }
  REQUIRE(primary.SetView(view_request).ok());

  PushRequest push;
  push.set_job_id(kJob);
  push.set_worker_rank(0);
  push.set_step(0);
  push.set_view_epoch(2);
  for (const Partition& part : placement->partitions()) {
    PartitionTensor* g = push.add_gradients();
    g->set_partition_id(part.id());
    std::vector<float> values(part.num_elements(), 0.5f);
    EncodeFloat32(values.data(), part.num_elements(), g->mutable_tensor());
  }
  REQUIRE(primary.Push(push).ok());
  std::map<std::string, std::multiset<int32_t>> got;  // address -> partitions
  for (const ReplicationTask& task : sent) {
    for (const PartitionTensor& g : task.request->gradients()) {
      got[task.address].insert(g.partition_id());
    }
  }
  std::map<std::string, std::multiset<int32_t>> want;
  for (const auto& [id, shard] : shard_of) {
    for (const std::string& b : backups[shard]) want["addr-" + b].insert(id);
  }
  CHECK(got == want);
  // Fewer calls than partitions-times-backups (shard 0's share a call).
  CHECK(sent.size() < static_cast<size_t>(placement->partitions_size()) * 2);
}

TEST_CASE("Replica check: a backup whose weights are changed behind its "
          "primary's back is found at the next check step, reported, and "
          "repaired by state transfer",
          "[replication][replica_check]") {
  // The backup changes its weights when it reaches step 2 (the test hook);
  // the next check is at step 3.
  Pair pair(/*check_every=*/3, /*corrupt_at=*/2);
  CHECK(RunStep(&pair, 0, 2).empty());
  CHECK(RunStep(&pair, 1, 2).empty());
  CHECK(pair.Latest(&pair.primary) != pair.Latest(&pair.backup));
  CHECK(RunStep(&pair, 2, 2).empty());  // no check at step 2: unnoticed
  CHECK(pair.backup.ReplicaChecks().mismatches == 0);

  // Step 3 carries the checksums: every partition is refused (each was
  // changed), naming the job, shard, partition, step and both checksums.
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 3, 2)).ok());
  }
  REQUIRE(pair.sent.size() == 1);
  const ReplicationTask task = pair.sent.front();
  REQUIRE(task.request->checksums_size() == pair.placement.partitions_size());
  const absl::Status refused = pair.backup.Replicate(*task.request).status();
  CHECK(refused.code() == absl::StatusCode::kDataLoss);
  const std::string message(refused.message());
  INFO(message);
  CHECK(message.find("replica check: job \"repl-1\", shard 0, partition " +
                     std::to_string(task.request->gradients(0).partition_id()) +
                     " at step 3") != std::string::npos);
  CHECK(message.find("its primary's crc32:") != std::string::npos);
  // The primary keeps the step (retry) and reports the backup to the
  // coordinator, which takes it out of the view.
  CHECK(pair.primary.OnReplicated(task, refused).has_value());
  std::vector<BackupFailure> failures = pair.primary.TakeBackupFailures();
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].shard() == 0);
  CHECK(failures[0].address() == "addr-b");
  CHECK(failures[0].error() == message);
  CHECK(failures[0].step() == 3);
  CHECK(failures[0].stalled_ms() == 0);  // a refusal, not a stall
  // A retry is refused the same way, counted once.
  CHECK(pair.backup.Replicate(*task.request).status() == refused);
  CHECK(pair.backup.ReplicaChecks().mismatches == 1);
  CHECK(pair.PullNow(4, 2).code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(VerifiedStep(&pair.primary) == 0);

  // The coordinator's repair: a view without the backup completes the
  // step; the backup is created again as joining and gets the primary's
  // state by transfer; a view with it follows.
  REQUIRE(Pair::SetView(&pair.primary, "p", 3, {}).ok());
  REQUIRE(Pair::SetView(&pair.backup, "b", 3, {}).ok());
  CHECK(pair.PullNow(4, 3).ok());
  pair.sent.clear();
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = pair.config;
  *create.mutable_placement() = pair.placement;
  create.add_shards(0);
  create.set_view_epoch(3);
  create.set_joining(true);
  REQUIRE(pair.backup.CreateJob(create).ok());
  auto ids = pair.primary.AddJoiner(kJob, 0, "addr-b");
  REQUIRE(ids.ok());
  for (int32_t id : *ids) {
    auto copy = pair.primary.CopyPartition(kJob, id);
    REQUIRE(copy.ok());
    REQUIRE(pair.backup.InstallPartition(*copy).ok());
  }
  REQUIRE(Pair::SetView(&pair.primary, "p", 4, {"b"}).ok());
  REQUIRE(Pair::SetView(&pair.backup, "b", 4, {"b"}).ok());
  for (int64_t step = 4; step < 7; ++step) CHECK(RunStep(&pair, step, 4).empty());
  CHECK(VerifiedStep(&pair.primary) == 6);
  CHECK(pair.backup.ReplicaChecks().mismatches == 1);
  CHECK(pair.Latest(&pair.primary) == pair.Latest(&pair.backup));
}

TEST_CASE("Replica check: a malformed list of checksums is refused",
          "[replication][replica_check]") {
  Pair pair(/*check_every=*/1);
  CHECK(RunStep(&pair, 0, 2).empty());
  CHECK(RunStep(&pair, 1, 2).empty());  // checked (step 0 never is)
  CHECK(VerifiedStep(&pair.backup) == 1);
  for (int rank = 0; rank < kWorkers; ++rank) {
    REQUIRE(pair.primary.Push(pair.MakePush(rank, 2, 2)).ok());
  }
  REQUIRE_FALSE(pair.sent.empty());
  ReplicateRequest twice = *pair.sent.front().request;
  twice.add_checksums(0);
  CHECK(pair.backup.Replicate(twice).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace psd
