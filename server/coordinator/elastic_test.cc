// Elastic jobs (issue 16) in CoordinatorState: ranks spread over the
// workers, moved at step boundaries (released, then given on from that
// step), a leaving worker's ranks going to the others, and the pause below
// min_workers. The workers are played by the test (test_cluster.h).
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "server/coordinator/test_cluster.h"

namespace psd {
namespace coordinator_test {
namespace {

JobConfig ElasticConfig(int min_workers, int max_workers) {
  JobConfig config = SmallConfig(0, "elastic");
  config.set_workers(0);
  config.set_min_workers(min_workers);
  config.set_max_workers(max_workers);
  return config;
}

// The worker's ranks as its heartbeat says (Assignment.ranks), after
// heartbeating everyone until `done` holds of them.
struct Ranks {
  std::vector<int32_t> ranks;
  std::map<int32_t, int64_t> starts;
  int64_t membership_epoch = 0;
};
Ranks RanksOf(const HeartbeatResponse& response) {
  Ranks r;
  r.ranks.assign(response.assignment().ranks().begin(),
                 response.assignment().ranks().end());
  r.starts.insert(response.assignment().rank_start_steps().begin(),
                  response.assignment().rank_start_steps().end());
  r.membership_epoch = response.assignment().membership_epoch();
  return r;
}

TEST_CASE("CoordinatorState: an elastic job grows by moving a rank at a step "
          "boundary, and a leaving worker's ranks go to the others",
          "[coordinator][elastic]") {
  Cluster cluster(FastOptions());
  const std::string a = cluster.AddWorker();
  absl::StatusOr<std::string> job_id =
      cluster.state.SubmitJob(ElasticConfig(1, 3));
  REQUIRE(job_id.ok());
  cluster.HeartbeatUntilAssigned({a});
  REQUIRE(cluster.State(*job_id) == RUNNING);
  Ranks first = RanksOf(cluster.Heartbeat(a));
  CHECK(first.ranks == std::vector<int32_t>{0, 1, 2});
  CHECK(first.starts == std::map<int32_t, int64_t>{{0, 0}, {1, 0}, {2, 0}});

  // A second worker joins: one of a's ranks is to be released (no longer
  // listed); b holds nothing until a releases it.
  const std::string b = cluster.AddWorker();
  Ranks shrunk, joined;
  REQUIRE(PollUntil([&] { return shrunk.ranks.size() == 2; }, [&] {
    cluster.Heartbeat(cluster.server_id);
    shrunk = RanksOf(cluster.Heartbeat(a));
    joined = RanksOf(cluster.Heartbeat(b));
  }));
  CHECK(shrunk.membership_epoch > first.membership_epoch);
  CHECK(joined.ranks.empty());
  int32_t moved = -1;
  for (int32_t r : {0, 1, 2}) {
    if (std::find(shrunk.ranks.begin(), shrunk.ranks.end(), r) ==
        shrunk.ranks.end()) {
      moved = r;
    }
  }
  REQUIRE(moved >= 0);
  // Released at step 5: b takes it from there.
  REQUIRE(cluster.Report(a, *job_id, moved, [](ReportProgressRequest* p) {
                   p->set_released(true);
                   p->set_step(5);
                 }).ok());
  joined = RanksOf(cluster.Heartbeat(b));
  CHECK(joined.ranks == std::vector<int32_t>{moved});
  CHECK(joined.starts.at(moved) == 5);
  // a no longer holds it: its progress for it is refused.
  CHECK(cluster.Report(a, *job_id, moved).status().code() ==
        absl::StatusCode::kFailedPrecondition);

  // a leaves (SIGTERM): its ranks, released at step 9, go to b.
  for (int32_t r : shrunk.ranks) {
    REQUIRE(cluster.Report(a, *job_id, r, [](ReportProgressRequest* p) {
                     p->set_released(true);
                     p->set_leaving(true);
                     p->set_step(9);
                   }).ok());
  }
  Ranks all;
  REQUIRE(PollUntil([&] { return all.ranks.size() == 3; }, [&] {
    cluster.Heartbeat(cluster.server_id);
    all = RanksOf(cluster.Heartbeat(b));
  }));
  for (int32_t r : shrunk.ranks) CHECK(all.starts.at(r) == 9);
  CHECK(all.starts.at(moved) == 5);
  // a gets nothing more, even when it stays around.
  CHECK_FALSE(cluster.Heartbeat(a).has_assignment());

  const JobStatus status = cluster.Job(*job_id);
  std::vector<std::string> history;
  for (const MembershipChange& c : status.membership_history()) {
    history.push_back(MembershipChange::Kind_Name(c.kind()) + " " +
                      c.worker_id());
  }
  CHECK(history == std::vector<std::string>{"JOINED " + a, "JOINED " + b,
                                            "LEFT " + a});
  REQUIRE(status.workers_size() == 1);
  CHECK(status.workers(0).worker_id() == b);
  CHECK(status.workers(0).ranks_size() == 3);
  CHECK(status.membership_epoch() == all.membership_epoch);
  CHECK(status.state() == RUNNING);
}

TEST_CASE("CoordinatorState: an elastic job below min_workers pauses, saying "
          "so, and goes on when a worker registers",
          "[coordinator][elastic]") {
  Cluster cluster(FastOptions(/*heartbeat_timeout_ms=*/300));
  const std::string a = cluster.AddWorker();
  const std::string b = cluster.AddWorker();
  absl::StatusOr<std::string> job_id =
      cluster.state.SubmitJob(ElasticConfig(2, 4));
  REQUIRE(job_id.ok());
  cluster.HeartbeatUntilAssigned({a, b});
  CHECK(RanksOf(cluster.Heartbeat(a)).ranks.size() == 2);

  // b dies (no heartbeats): 1 worker, fewer than 2.
  REQUIRE(PollUntil(
      [&] { return !cluster.Job(*job_id).paused_reason().empty(); },
      [&] {
        cluster.Heartbeat(cluster.server_id);
        cluster.Heartbeat(a);
      }));
  const JobStatus paused = cluster.Job(*job_id);
  CHECK(paused.paused_reason() ==
        "paused: 1 worker(s), fewer than min_workers 2; waiting for idle "
        "workers");
  CHECK(paused.state() == RUNNING);
  CHECK(RanksOf(cluster.Heartbeat(a)).ranks.size() == 2);  // b's stay free

  // A new worker: the job goes on, b's ranks resuming where the servers
  // are (-1).
  const std::string c = cluster.AddWorker();
  Ranks taken;
  REQUIRE(PollUntil([&] { return taken.ranks.size() == 2; }, [&] {
    cluster.Heartbeat(cluster.server_id);
    cluster.Heartbeat(a);
    taken = RanksOf(cluster.Heartbeat(c));
  }));
  for (const auto& [rank, start] : taken.starts) CHECK(start == -1);
  const JobStatus resumed = cluster.Job(*job_id);
  CHECK(resumed.paused_reason().empty());
  std::set<std::string> died;
  for (const MembershipChange& change : resumed.membership_history()) {
    if (change.kind() == MembershipChange::DIED) died.insert(change.worker_id());
  }
  CHECK(died == std::set<std::string>{b});
}

}  // namespace
}  // namespace coordinator_test
}  // namespace psd
