// CoordinatorState's scheduler (job_scheduler.cc): starting jobs on idle
// workers, set-up on the servers, backfill and pending reasons. In-process,
// with a real parameter server: see test_cluster.h.
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/job_config.h"
#include "server/coordinator/test_cluster.h"

namespace psd {
namespace coordinator_test {
namespace {

TEST_CASE("CoordinatorState: a job starts once enough workers are idle; "
          "heartbeats during set-up keep the reservation",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  const std::string first = cluster.AddWorker();
  auto job_id = cluster.state.SubmitJob(SmallConfig(2));
  REQUIRE(job_id.ok());

  // One idle worker of two: the job waits (watched for 20 scheduler passes).
  const absl::Time watch_end = absl::Now() + absl::Milliseconds(200);
  while (absl::Now() < watch_end) {
    HeartbeatResponse response = cluster.Heartbeat(first);
    REQUIRE_FALSE(response.has_assignment());
    REQUIRE_FALSE(response.cancelled());
    REQUIRE(cluster.State(*job_id) == PENDING);
    absl::SleepFor(absl::Milliseconds(1));
  }

  // A second worker: heartbeats every millisecond from both, through the
  // servers' set-up, until both have their rank.
  const std::string second = cluster.AddWorker();
  auto assigned = cluster.HeartbeatUntilAssigned({first, second});
  REQUIRE(assigned.size() == 2);
  const Assignment& a = assigned[first];
  const Assignment& b = assigned[second];
  CHECK(a.job_id() == *job_id);
  CHECK(b.job_id() == *job_id);
  CHECK(std::set<int32_t>{a.rank(), b.rank()} == std::set<int32_t>{0, 1});

  const JobStatus job = cluster.Job(*job_id);
  CHECK(job.state() == RUNNING);
  CHECK(job.error().empty());
  CHECK(job.total_steps() == job.steps_per_epoch());
  CHECK(job.steps_per_epoch() == 1000 / 2 / 10);

  // The placement covers every element of every parameter of the model,
  // on the one server.
  const std::vector<ParameterSpec> parameters =
      ModelParameters(job.config().model());
  const Placement& placement = a.placement();
  REQUIRE(placement.parameters_size() == static_cast<int>(parameters.size()));
  CHECK(placement.num_shards() == 1);
  std::vector<int64_t> covered(parameters.size(), 0);
  for (const Partition& p : placement.partitions()) {
    REQUIRE(p.parameter() >= 0);
    REQUIRE(p.parameter() < static_cast<int>(parameters.size()));
    CHECK(p.shard() == 0);
    CHECK(p.offset() == covered[p.parameter()]);  // contiguous, in order
    covered[p.parameter()] += p.num_elements();
  }
  for (size_t i = 0; i < parameters.size(); ++i) {
    INFO("parameter " << parameters[i].name());
    CHECK(placement.parameters(i).name() == parameters[i].name());
    int64_t elements = 1;
    for (int64_t d : parameters[i].shape()) elements *= d;
    CHECK(covered[i] == elements);
  }
  REQUIRE(a.servers_size() == 1);
  CHECK(a.servers(0).id() == cluster.server_id);
  CHECK(a.servers(0).address() == cluster.server_address);
  REQUIRE(a.shards_size() == 1);
  CHECK(a.shards(0).primary() == cluster.server_id);

  // The view shows both workers holding their ranks.
  for (const std::string& w : {first, second}) {
    auto info = cluster.ViewOf(w);
    REQUIRE(info != nullptr);
    CHECK(info->job_id() == *job_id);
    CHECK(info->rank() == assigned[w].rank());
  }

  // The server really holds the job.
  grpc::Status pulled = cluster.PullLatest(*job_id);
  INFO(pulled.error_message());
  CHECK(pulled.ok());
}

TEST_CASE("CoordinatorState: heartbeats while the server is still creating "
          "the job keep the reservation",
          "[coordinator]") {
  // The same regression as above, made deterministic: CreateJob is held on
  // the server while both workers heartbeat.
  Cluster cluster(FastOptions());
  cluster.gate().Close();
  const std::string first = cluster.AddWorker();
  const std::string second = cluster.AddWorker();
  auto job_id = cluster.state.SubmitJob(SmallConfig(2));
  REQUIRE(job_id.ok());
  REQUIRE(PollUntil([&] { return cluster.gate().waiting() == 1; }));
  for (int i = 0; i < 20; ++i) {
    for (const std::string& w : {first, second}) {
      HeartbeatResponse response = cluster.Heartbeat(w);
      CHECK_FALSE(response.cancelled());
      CHECK_FALSE(response.has_assignment());
      auto info = cluster.ViewOf(w);
      REQUIRE(info != nullptr);
      CHECK(info->job_id() == *job_id);
    }
    CHECK(cluster.State(*job_id) == PENDING);
  }
  cluster.gate().Open();
  auto assigned = cluster.HeartbeatUntilAssigned({first, second});
  CHECK(std::set<int32_t>{assigned[first].rank(), assigned[second].rank()} ==
        std::set<int32_t>{0, 1});
  CHECK(cluster.State(*job_id) == RUNNING);
}

TEST_CASE("CoordinatorState: a job cancelled while the server is creating it "
          "does not stay on the server",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  cluster.gate().Close();
  const std::string first = cluster.AddWorker();
  const std::string second = cluster.AddWorker();
  auto job_id = cluster.state.SubmitJob(SmallConfig(2));
  REQUIRE(job_id.ok());
  REQUIRE(PollUntil([&] { return cluster.gate().waiting() == 1; }));
  auto cancelled = cluster.state.CancelJob(*job_id);
  REQUIRE(cancelled.ok());
  CHECK(cancelled->state() == CANCELLED);
  cluster.gate().Open();
  REQUIRE(PollUntil([&] { return cluster.gate().completed() == 1; }));
  // The coordinator has seen CreateJob return (it takes its lock after).
  for (const std::string& w : {first, second}) {
    CHECK(cluster.Heartbeat(w).cancelled());
  }
  CHECK(cluster.State(*job_id) == CANCELLED);
  // Let the scheduler finish its pass over the set-up before looking.
  const bool dropped = PollUntil(
      [&] {
        return cluster.PullLatest(*job_id).error_code() ==
               grpc::StatusCode::NOT_FOUND;
      },
      [] {}, absl::Seconds(2));
  CHECK(dropped);
}

TEST_CASE("CoordinatorState: a job asking for more workers than are "
          "registered does not hold up a later one that fits (backfill), and "
          "says why it waits",
          "[coordinator][scheduling]") {
  Cluster cluster(FastOptions());
  const std::string first = cluster.AddWorker();
  auto job_a = cluster.state.SubmitJob(SmallConfig(2, "job-a"));
  auto job_b = cluster.state.SubmitJob(SmallConfig(1, "job-b"));
  REQUIRE(job_a.ok());
  REQUIRE(job_b.ok());

  // A needs 2 workers and 1 is registered: B, submitted later, starts.
  auto assigned = cluster.HeartbeatUntilAssigned({first});
  CHECK(assigned[first].job_id() == *job_b);
  CHECK(cluster.State(*job_b) == RUNNING);
  CHECK(cluster.Job(*job_b).pending_reason().empty());
  JobStatus a = cluster.Job(*job_a);
  CHECK(a.state() == PENDING);
  INFO(a.pending_reason());
  CHECK(Contains(a.pending_reason(), "waiting for 2 workers; 1 registered"));
}

TEST_CASE("CoordinatorState: a job goes only to workers that train its "
          "model kind (a PyTorch client does not get an MLP job)",
          "[coordinator][scheduling]") {
  Cluster cluster(FastOptions());
  const std::string torch = cluster.AddWorker({ModelSpec::EXTERNAL});
  auto job = cluster.state.SubmitJob(SmallConfig(1, "mlp"));
  REQUIRE(job.ok());
  for (int i = 0; i < 5; ++i) {
    CHECK_FALSE(cluster.Heartbeat(torch).has_assignment());
    absl::SleepFor(absl::Milliseconds(20));
  }
  JobStatus waiting = cluster.Job(*job);
  CHECK(waiting.state() == PENDING);
  INFO(waiting.pending_reason());
  CHECK(Contains(waiting.pending_reason(),
                 "waiting for 1 workers; 0 registered that train MLP models "
                 "(1 others do not)"));
  const std::string mlp = cluster.AddWorker({ModelSpec::MLP});
  auto assigned = cluster.HeartbeatUntilAssigned({mlp});
  CHECK(assigned[mlp].job_id() == *job);
  CHECK_FALSE(cluster.Heartbeat(torch).has_assignment());
}

TEST_CASE("CoordinatorState: a job the registered workers could run keeps "
          "its turn: later jobs wait behind it (never starved), saying so",
          "[coordinator][scheduling]") {
  Cluster cluster(FastOptions());
  const std::string first = cluster.AddWorker();
  auto job_b = cluster.state.SubmitJob(SmallConfig(1, "job-b"));
  REQUIRE(job_b.ok());
  auto assigned = cluster.HeartbeatUntilAssigned({first});
  REQUIRE(assigned[first].job_id() == *job_b);

  // A needs both workers, one of which runs B: A waits for it to be idle,
  // and C, which one idle worker would fit, waits behind A.
  const std::string second = cluster.AddWorker();
  auto job_a = cluster.state.SubmitJob(SmallConfig(2, "job-a"));
  auto job_c = cluster.state.SubmitJob(SmallConfig(1, "job-c"));
  REQUIRE(job_a.ok());
  REQUIRE(job_c.ok());
  REQUIRE(PollUntil([&] {
    return !cluster.Job(*job_c).pending_reason().empty() &&
           !cluster.Job(*job_a).pending_reason().empty();
  }));
  const absl::Time watch_end = absl::Now() + absl::Milliseconds(200);
  while (absl::Now() < watch_end) {
    CHECK_FALSE(cluster.Heartbeat(second).has_assignment());
    REQUIRE(cluster.State(*job_a) == PENDING);
    REQUIRE(cluster.State(*job_c) == PENDING);
    absl::SleepFor(absl::Milliseconds(1));
  }
  const JobStatus a = cluster.Job(*job_a);
  const JobStatus c = cluster.Job(*job_c);
  INFO(a.pending_reason() << " / " << c.pending_reason());
  CHECK(Contains(a.pending_reason(),
                 "waits for 2 idle workers; 1 of the 2 registered are idle"));
  CHECK(Contains(c.pending_reason(), "behind job \"" + *job_a + "\""));

  // B ends: A gets both workers; C then waits for one to be idle.
  cluster.FinishJob(*job_b, {first});
  auto both = cluster.HeartbeatUntilAssigned({first, second});
  for (const auto& [worker, assignment] : both) {
    CHECK(assignment.job_id() == *job_a);
  }
  CHECK(cluster.State(*job_a) == RUNNING);
  CHECK(cluster.Job(*job_a).pending_reason().empty());
  REQUIRE(PollUntil([&] {
    return Contains(cluster.Job(*job_c).pending_reason(), "waits for 1 idle");
  }));
  CHECK(cluster.State(*job_c) == PENDING);
}

TEST_CASE("CoordinatorState: a job waiting for servers says so",
          "[coordinator][scheduling]") {
  CoordinatorOptions options = FastOptions();
  options.replication_factor = 2;  // one server registered
  Cluster cluster(options);
  cluster.AddWorker();
  auto job = cluster.state.SubmitJob(SmallConfig(1));
  REQUIRE(job.ok());
  REQUIRE(PollUntil(
      [&] { return !cluster.Job(*job).pending_reason().empty(); }));
  INFO(cluster.Job(*job).pending_reason());
  CHECK(Contains(cluster.Job(*job).pending_reason(),
                 "waiting for 2 server(s) (replication factor 2); 1 "
                 "registered"));
  CHECK(cluster.State(*job) == PENDING);
}

// One slow server (its CreateJob held past the call deadline), attempts
// bounded small.
CoordinatorOptions SlowStartOptions(int attempts) {
  CoordinatorOptions options = FastOptions();
  options.server_call_timeout_ms = 200;
  options.control_call_budget_ms = 300;
  options.job_start_attempts = attempts;
  options.job_start_backoff_ms = 50;
  return options;
}

TEST_CASE("CoordinatorState: a job whose only server answers late waits, "
          "saying why, and starts once it answers in time",
          "[coordinator][scheduling][start]") {
  Cluster cluster(SlowStartOptions(/*attempts=*/100));
  const std::string worker = cluster.AddWorker();
  cluster.gate().Close();
  auto job = cluster.state.SubmitJob(SmallConfig(1));
  REQUIRE(job.ok());
  const std::string expected = "start attempt 1 failed: creating shards on "
                               "server " + cluster.server_id;
  REQUIRE(PollUntil([&] {
    return Contains(cluster.Job(*job).pending_reason(), expected);
  }, [&] { cluster.Heartbeat(worker); }));
  const JobStatus pending = cluster.Job(*job);
  INFO(pending.pending_reason());
  CHECK(pending.state() == PENDING);
  CHECK(Contains(pending.pending_reason(), "Deadline Exceeded"));
  CHECK(Contains(pending.pending_reason(), "trying again on every server"));

  cluster.gate().Open();
  auto assigned = cluster.HeartbeatUntilAssigned({worker});
  REQUIRE(assigned.size() == 1);
  CHECK(cluster.State(*job) == RUNNING);
  CHECK(cluster.Job(*job).pending_reason().empty());
  // The attempt that ran holds the job on the server, whatever the late
  // CreateJob and DropJob calls of the failed ones did.
  REQUIRE(PollUntil([&] { return cluster.gate().waiting() == 0; }));
  CHECK(cluster.PullLatest(*job).ok());
  CHECK(assigned[worker].view_epoch() == cluster.Job(*job).view_epoch());
}

TEST_CASE("CoordinatorState: a job that cannot start fails after "
          "job_start_attempts, naming every attempt",
          "[coordinator][scheduling][start]") {
  Cluster cluster(SlowStartOptions(/*attempts=*/2));
  const std::string worker = cluster.AddWorker();
  cluster.gate().Close();
  auto job = cluster.state.SubmitJob(SmallConfig(1));
  REQUIRE(job.ok());
  REQUIRE(PollUntil([&] { return cluster.State(*job) == FAILED; },
                    [&] { cluster.Heartbeat(worker); }));
  const std::string error = cluster.Job(*job).error();
  INFO(error);
  CHECK(Contains(error, "could not start in 2 attempts"));
  CHECK(Contains(error, "attempt 1: creating shards on server " +
                            cluster.server_id));
  CHECK(Contains(error, "attempt 2: creating shards on server " +
                            cluster.server_id));
  // The late CreateJob calls, released now, are refused (their attempts'
  // drops came first): the server holds nothing of the job.
  const int gated = cluster.gate().waiting();
  CHECK(gated >= 2);
  cluster.gate().Open();
  REQUIRE(PollUntil([&] { return cluster.gate().completed() >= gated; }));
  // (A release that beat its attempt's drop is dropped by it.)
  CHECK(PollUntil([&] {
    return cluster.PullLatest(*job).error_code() == grpc::StatusCode::NOT_FOUND;
  }));
}

}  // namespace
}  // namespace coordinator_test
}  // namespace psd
