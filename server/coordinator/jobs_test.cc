// CoordinatorState's job table (jobs.cc): cancelling jobs, running, finished,
// pending or unknown. In-process, with a real parameter server: see
// test_cluster.h.
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/coordinator/test_cluster.h"

namespace psd {
namespace coordinator_test {
namespace {

TEST_CASE("CoordinatorState: the submitter is recorded, and jobs are "
          "bounded by max_jobs",
          "[coordinator]") {
  CoordinatorOptions options = FastOptions();
  options.max_jobs = 2;
  CoordinatorState state(options);
  auto first = state.SubmitJob(SmallConfig(2), "user/alice");
  REQUIRE(first.ok());
  CHECK(state.GetJob(*first)->submitted_by() == "user/alice");
  REQUIRE(state.SubmitJob(SmallConfig(2)).ok());
  auto third = state.SubmitJob(SmallConfig(2));
  REQUIRE_FALSE(third.ok());
  CHECK(third.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(third.status().message(), "--max_jobs 2"));
  // Deleting a finished one makes room.
  REQUIRE(state.CancelJob(*first).ok());
  REQUIRE(state.DeleteJob(*first).ok());
  CHECK(state.SubmitJob(SmallConfig(2)).ok());
}

TEST_CASE("CoordinatorState: cancel", "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  REQUIRE(cluster.PullLatest(job_id).ok());

  SECTION("a running job is cancelled, its workers told, the server drops it") {
    auto cancelled = cluster.state.CancelJob(job_id);
    REQUIRE(cancelled.ok());
    CHECK(cancelled->state() == CANCELLED);
    CHECK(cluster.State(job_id) == CANCELLED);
    for (const std::string& w : by_rank) {
      HeartbeatResponse response = cluster.Heartbeat(w);
      CHECK(response.cancelled());
      CHECK_FALSE(response.has_assignment());
      // And then it is idle.
      response = cluster.Heartbeat(w);
      CHECK_FALSE(response.cancelled());
      CHECK_FALSE(response.has_assignment());
      auto info = cluster.ViewOf(w);
      REQUIRE(info != nullptr);
      CHECK(info->job_id().empty());
    }
    grpc::Status pulled = cluster.PullLatest(job_id);
    INFO(pulled.error_message());
    CHECK(pulled.error_code() == grpc::StatusCode::NOT_FOUND);
    // Reports after the cancel are told to stop too.
    auto report = cluster.Report(by_rank[0], job_id, 0);
    REQUIRE(report.ok());
    CHECK(report->cancelled());
    // Cancelling again changes nothing.
    auto again = cluster.state.CancelJob(job_id);
    REQUIRE(again.ok());
    CHECK(again->state() == CANCELLED);
  }

  SECTION("a finished job keeps its state") {
    cluster.FinishJob(job_id, by_rank);
    auto cancelled = cluster.state.CancelJob(job_id);
    REQUIRE(cancelled.ok());
    CHECK(cancelled->state() == SUCCEEDED);
    CHECK(cancelled->error().empty());
    CHECK(cluster.State(job_id) == SUCCEEDED);
    for (const std::string& w : by_rank) {
      CHECK_FALSE(cluster.Heartbeat(w).cancelled());
    }
  }

  SECTION("a pending job is cancelled and never starts") {
    auto pending = cluster.state.SubmitJob(SmallConfig(2));
    REQUIRE(pending.ok());
    auto cancelled = cluster.state.CancelJob(*pending);
    REQUIRE(cancelled.ok());
    CHECK(cancelled->state() == CANCELLED);
    cluster.FinishJob(job_id, by_rank);
    // Workers free, but the cancelled job is not started on them.
    for (int i = 0; i < 50; ++i) {
      for (const std::string& w : by_rank) {
        CHECK_FALSE(cluster.Heartbeat(w).has_assignment());
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    CHECK(cluster.State(*pending) == CANCELLED);
  }

  SECTION("an unknown job is NOT_FOUND") {
    auto unknown = cluster.state.CancelJob("no-such-job-7");
    CHECK(unknown.status().code() == absl::StatusCode::kNotFound);
    CHECK(cluster.State(job_id) == RUNNING);
  }
}

}  // namespace
}  // namespace coordinator_test
}  // namespace psd
