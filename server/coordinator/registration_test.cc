// CoordinatorState's membership (registration.cc) and the cluster view
// (views.cc): a worker whose heartbeats stop loses its rank to an idle one,
// and the view shows a rank only while the worker holds it. In-process,
// with a real parameter server: see test_cluster.h.
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "server/coordinator/test_cluster.h"

namespace psd {
namespace coordinator_test {
namespace {

TEST_CASE("CoordinatorState: a worker that stops heartbeating gives its "
          "rank to an idle worker, which resumes from the servers",
          "[coordinator]") {
  Cluster cluster(FastOptions(/*heartbeat_timeout_ms=*/300));
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  const std::string alive = by_rank[0];
  const std::string silent = by_rank[1];
  const int64_t epoch_before = cluster.state.GetClusterView().epoch();

  // Only the server and rank 0 keep heartbeating.
  const bool expired = PollUntil(
      [&] { return cluster.ViewOf(silent) == nullptr; },
      [&] {
        cluster.Heartbeat(cluster.server_id);
        CHECK_FALSE(cluster.Heartbeat(alive).cancelled());
      });
  REQUIRE(expired);
  CHECK(cluster.state.GetClusterView().epoch() > epoch_before);
  CHECK(cluster.State(job_id) == RUNNING);  // the step waits for rank 1

  // The silent worker must register again.
  HeartbeatRequest request;
  request.set_member_id(silent);
  CHECK(cluster.state.Heartbeat(request).status().code() ==
        absl::StatusCode::kNotFound);

  // A new worker takes rank 1 and reads its step from the servers; rank 0
  // keeps its own assignment.
  const std::string replacement = cluster.AddWorker();
  HeartbeatResponse given;
  const bool assigned = PollUntil(
      [&] {
        given = cluster.Heartbeat(replacement);
        return given.has_assignment();
      },
      [&] {
        cluster.Heartbeat(cluster.server_id);
        cluster.Heartbeat(alive);
      });
  REQUIRE(assigned);
  CHECK(given.assignment().job_id() == job_id);
  CHECK(given.assignment().rank() == 1);
  CHECK(given.assignment().resume_from_servers());
  const HeartbeatResponse first = cluster.Heartbeat(alive);
  CHECK(first.assignment().rank() == 0);
  CHECK_FALSE(first.assignment().resume_from_servers());
  CHECK(cluster.State(job_id) == RUNNING);
}

// Issue 19 (docs/SCALING.md): a heartbeat's answer does not carry the whole
// assignment again while the worker holds the current one.
TEST_CASE("CoordinatorState: a worker holding its job's current assignment "
          "gets assignment_held instead of the assignment; an older one "
          "brings the whole assignment",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  const Assignment full = cluster.Heartbeat(by_rank[0]).assignment();
  REQUIRE(full.job_id() == job_id);

  HeartbeatRequest request;
  request.set_member_id(by_rank[0]);
  request.set_held_job_id(job_id);
  request.set_held_view_epoch(full.view_epoch());
  request.set_held_membership_epoch(full.membership_epoch());
  absl::StatusOr<HeartbeatResponse> held = cluster.state.Heartbeat(request);
  REQUIRE(held.ok());
  CHECK(held->assignment_held());
  CHECK_FALSE(held->has_assignment());
  CHECK_FALSE(held->cancelled());

  // An older membership epoch (issue 16: ranks changed hands since): the
  // whole assignment.
  request.set_held_membership_epoch(full.membership_epoch() - 1);
  absl::StatusOr<HeartbeatResponse> moved = cluster.state.Heartbeat(request);
  REQUIRE(moved.ok());
  CHECK_FALSE(moved->assignment_held());
  CHECK(moved->assignment().membership_epoch() == full.membership_epoch());
  request.set_held_membership_epoch(full.membership_epoch());

  // An older epoch, another job, or none: the whole assignment.
  for (const auto& [job, epoch] :
       std::vector<std::pair<std::string, int64_t>>{
           {job_id, full.view_epoch() - 1}, {"other-1", full.view_epoch()},
           {"", 0}}) {
    request.set_held_job_id(job);
    request.set_held_view_epoch(epoch);
    absl::StatusOr<HeartbeatResponse> sent = cluster.state.Heartbeat(request);
    REQUIRE(sent.ok());
    CHECK_FALSE(sent->assignment_held());
    CHECK(sent->assignment().job_id() == job_id);
    CHECK(sent->assignment().rank() == 0);
    CHECK(sent->assignment().view_epoch() == full.view_epoch());
  }

}

TEST_CASE("CoordinatorState: the cluster view shows a rank only while the "
          "worker holds it",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  for (int rank = 0; rank < 2; ++rank) {
    auto info = cluster.ViewOf(by_rank[rank]);
    REQUIRE(info != nullptr);
    CHECK(info->job_id() == job_id);
    CHECK(info->has_rank());  // rank 0 included
    CHECK(info->rank() == rank);
  }
  const std::string idle = cluster.AddWorker();
  auto never = cluster.ViewOf(idle);
  REQUIRE(never != nullptr);
  CHECK_FALSE(never->has_rank());

  cluster.FinishJob(job_id, by_rank);
  for (const std::string& w : by_rank) cluster.Heartbeat(w);
  for (const std::string& w : by_rank) {
    auto info = cluster.ViewOf(w);
    REQUIRE(info != nullptr);
    CHECK(info->job_id().empty());
    CHECK_FALSE(info->has_rank());  // not its last job's rank 1
  }
}

}  // namespace
}  // namespace coordinator_test
}  // namespace psd
