// CoordinatorState's progress (job_progress.cc): workers' progress reports,
// the clocks and checks the servers report in heartbeats, and a rank's
// error. In-process, with a real parameter server: see test_cluster.h.
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "server/coordinator/test_cluster.h"

namespace psd {
namespace coordinator_test {
namespace {

TEST_CASE("CoordinatorState: progress aggregates over ranks and the job "
          "succeeds when every rank is done",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);

  auto r0 = cluster.Report(by_rank[0], job_id, 0, [](ReportProgressRequest* r) {
    r->set_step(7);
    r->set_loss(1.0f);
    r->set_samples_per_sec(100.0f);
  });
  REQUIRE(r0.ok());
  CHECK_FALSE(r0->cancelled());
  auto r1 = cluster.Report(by_rank[1], job_id, 1, [](ReportProgressRequest* r) {
    r->set_step(5);
    r->set_loss(2.0f);
    r->set_samples_per_sec(50.0f);
  });
  REQUIRE(r1.ok());
  CHECK_FALSE(r1->cancelled());

  JobStatus job = cluster.Job(job_id);
  CHECK(job.state() == RUNNING);
  CHECK(job.step() == 5);  // the slowest rank
  CHECK(job.samples_per_sec() == Approx(150.0f));
  CHECK(job.loss() == Approx(1.5f));
  CHECK(job.epochs_size() == 0);
  CHECK(job.eta_seconds() >= 0);

  // Rank 0 ends epoch 0 with a test accuracy.
  auto r2 = cluster.Report(by_rank[0], job_id, 0, [](ReportProgressRequest* r) {
    r->set_step(50);
    r->set_loss(0.5f);
    r->set_samples_per_sec(120.0f);
    r->set_has_test_accuracy(true);
    r->set_test_accuracy(0.75f);
  });
  REQUIRE(r2.ok());
  job = cluster.Job(job_id);
  CHECK(job.state() == RUNNING);
  REQUIRE(job.epochs_size() == 1);
  CHECK(job.epochs(0).epoch() == 0);
  CHECK(job.epochs(0).test_accuracy() == Approx(0.75f));
  CHECK(job.epochs(0).train_loss() == Approx(0.5f));
  CHECK(job.test_accuracy() == Approx(0.75f));
  CHECK(job.step() == 5);
  CHECK(job.loss() == Approx(1.25f));
  CHECK(job.samples_per_sec() == Approx(170.0f));

  // One rank done: still running. Both: succeeded.
  auto d0 = cluster.Report(by_rank[0], job_id, 0, [](ReportProgressRequest* r) {
    r->set_step(50);
    r->set_loss(0.5f);
    r->set_done(true);
  });
  REQUIRE(d0.ok());
  CHECK_FALSE(d0->cancelled());
  CHECK(cluster.State(job_id) == RUNNING);
  auto d1 = cluster.Report(by_rank[1], job_id, 1, [](ReportProgressRequest* r) {
    r->set_step(50);
    r->set_loss(0.7f);
    r->set_done(true);
  });
  REQUIRE(d1.ok());
  CHECK_FALSE(d1->cancelled());
  job = cluster.Job(job_id);
  CHECK(job.state() == SUCCEEDED);
  CHECK(job.error().empty());
  CHECK(job.step() == 50);
  CHECK(job.eta_seconds() == 0);

  // The workers are idle again.
  for (const std::string& w : by_rank) {
    HeartbeatResponse response = cluster.Heartbeat(w);
    CHECK_FALSE(response.has_assignment());
    CHECK_FALSE(response.cancelled());
    auto info = cluster.ViewOf(w);
    REQUIRE(info != nullptr);
    CHECK(info->job_id().empty());
  }
}

TEST_CASE("CoordinatorState: the job status shows the clocks and staleness "
          "the servers report",
          "[coordinator][consistency]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  CHECK(cluster.Job(job_id).worker_clocks().empty());  // none reported yet

  auto report = [&](std::vector<int64_t> clocks, int64_t max_staleness,
                    std::vector<int64_t> counts) {
    HeartbeatRequest request;
    request.set_member_id(cluster.server_id);
    JobClocks* job = request.add_job_clocks();
    job->set_job_id(job_id);
    for (int64_t c : clocks) job->add_worker_clocks(c);
    job->set_max_staleness(max_staleness);
    for (int64_t n : counts) job->add_staleness_counts(n);
    JobClocks* unknown = request.add_job_clocks();  // ignored
    unknown->set_job_id("no-such-job");
    REQUIRE(cluster.state.Heartbeat(request).ok());
  };
  report({7, 5}, 2, {3, 4, 1});
  JobStatus job = cluster.Job(job_id);
  REQUIRE(job.worker_clocks_size() == 2);
  CHECK(job.worker_clocks(0) == 7);
  CHECK(job.worker_clocks(1) == 5);
  CHECK(job.max_staleness() == 2);
  REQUIRE(job.staleness_counts_size() == 3);
  CHECK(job.staleness_counts(1) == 4);
  // The largest staleness seen is kept; the clocks are the latest.
  report({9, 9}, 1, {5, 5, 1});
  job = cluster.Job(job_id);
  CHECK(job.worker_clocks(0) == 9);
  CHECK(job.max_staleness() == 2);
  CHECK(job.staleness_counts(0) == 5);
  // A report with the wrong number of ranks is not used.
  report({1, 1, 1}, 0, {});
  CHECK(cluster.Job(job_id).worker_clocks().empty());
}

TEST_CASE("CoordinatorState: the job status shows the newest step the "
          "primaries' replica checks verified, and it only grows",
          "[coordinator][replica_check]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  CHECK(cluster.Job(job_id).replicas_verified_step() == 0);
  auto report = [&](int64_t verified) {
    HeartbeatRequest request;
    request.set_member_id(cluster.server_id);
    JobClocks* job = request.add_job_clocks();
    job->set_job_id(job_id);
    job->add_worker_clocks(verified);
    job->add_worker_clocks(verified);
    job->set_replicas_verified_step(verified);
    REQUIRE(cluster.state.Heartbeat(request).ok());
  };
  report(20);
  CHECK(cluster.Job(job_id).replicas_verified_step() == 20);
  // A primary that reports less (a newly promoted one, say) lowers nothing.
  report(10);
  CHECK(cluster.Job(job_id).replicas_verified_step() == 20);
  report(30);
  CHECK(cluster.Job(job_id).replicas_verified_step() == 30);
}

TEST_CASE("CoordinatorState: a rank's error fails the job with its reason",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);

  auto failed = cluster.Report(by_rank[1], job_id, 1, [](ReportProgressRequest* r) {
    r->set_error("gradient is NaN at step 3");
  });
  REQUIRE(failed.ok());
  CHECK(failed->cancelled());
  const JobStatus job = cluster.Job(job_id);
  CHECK(job.state() == FAILED);
  INFO(job.error());
  CHECK(Contains(job.error(), "gradient is NaN at step 3"));
  CHECK(Contains(job.error(), "rank 1"));
  CHECK(Contains(job.error(), by_rank[1]));

  // The other rank is told to stop, by its next report and its heartbeat.
  auto other = cluster.Report(by_rank[0], job_id, 0, [](ReportProgressRequest* r) {
    r->set_step(4);
  });
  REQUIRE(other.ok());
  CHECK(other->cancelled());
  HeartbeatResponse beat = cluster.Heartbeat(by_rank[0]);
  CHECK(beat.cancelled());
  CHECK_FALSE(beat.has_assignment());
  auto info = cluster.ViewOf(by_rank[0]);
  REQUIRE(info != nullptr);
  CHECK(info->job_id().empty());
  // Still failed, with the first reason.
  CHECK(cluster.State(job_id) == FAILED);
}

TEST_CASE("CoordinatorState: ReportProgress from a member that does not hold "
          "the rank is FAILED_PRECONDITION",
          "[coordinator]") {
  Cluster cluster(FastOptions());
  std::vector<std::string> by_rank;
  const std::string job_id = cluster.StartJob(2, &by_rank);
  const std::string idle = cluster.AddWorker();

  auto fill = [](ReportProgressRequest* r) {
    r->set_step(9);
    r->set_loss(3.0f);
    r->set_done(true);
  };
  struct Case {
    std::string member;
    int32_t rank;
  };
  const Case cases[] = {
      {by_rank[0], 1},         // another rank's
      {by_rank[1], 0},
      {idle, 0},               // a worker with no rank in the job
      {by_rank[0], 2},         // out of range
      {by_rank[0], -1},
  };
  for (const Case& c : cases) {
    INFO(c.member << " rank " << c.rank);
    auto response = cluster.Report(c.member, job_id, c.rank, fill);
    CHECK(response.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(response.status().message()), "rank"));
  }
  // A member the coordinator does not know (it restarted, say) is told to
  // register again: a transient ABORTED, not a refusal of its rank.
  auto unregistered = cluster.Report("worker-9999", job_id, 1, fill);
  CHECK(unregistered.status().code() == absl::StatusCode::kAborted);
  CHECK(Contains(std::string(unregistered.status().message()), "not registered"));
  auto error = cluster.Report(idle, job_id, 0, [](ReportProgressRequest* r) {
    r->set_error("not mine to fail");
  });
  CHECK(error.status().code() == absl::StatusCode::kFailedPrecondition);

  // None of them counted.
  const JobStatus job = cluster.Job(job_id);
  CHECK(job.state() == RUNNING);
  CHECK(job.step() == 0);
  CHECK(job.error().empty());

  // An unknown job is NOT_FOUND.
  auto unknown = cluster.Report(by_rank[0], "no-such-job-3", 0);
  CHECK(unknown.status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace coordinator_test
}  // namespace psd
