// CoordinatorState in-process, with a real parameter server (ParameterStore
// + ParameterService on 127.0.0.1:0) that the coordinator sets jobs up on
// over gRPC. Workers are only ids here: the coordinator never dials them, so
// the test plays their part (heartbeats, progress reports) by calling the
// state directly. Every wait polls the state with a bounded deadline.
#include "server/coordinator/coordinator_state.h"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/job_config.h"
#include "common/rpc.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"

namespace psd {
namespace {

constexpr absl::Duration kWaitLimit = absl::Seconds(10);

// MLP 784-[16]-10 on the first 1000 Fashion-MNIST examples.
JobConfig SmallConfig(int workers, const std::string& name = "coord-test") {
  JobConfig config;
  config.set_name(name);
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(16);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(5);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_dataset()->set_train_limit(1000);
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.1f);
  config.set_consistency(BSP);
  config.set_batch_size(10);
  config.set_epochs(1);
  config.set_workers(workers);
  config.set_seed(1);
  config.set_partition_bytes(4096);
  return config;
}

CoordinatorOptions FastOptions(int heartbeat_timeout_ms = 60000) {
  CoordinatorOptions options;
  options.schedule_interval_ms = 10;
  options.heartbeat_timeout_ms = heartbeat_timeout_ms;
  options.server_call_timeout_ms = 5000;
  return options;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Calls `step` then checks `done` every millisecond until `done` holds or
// `limit` passes. Returns whether `done` held.
bool PollUntil(const std::function<bool()>& done,
               const std::function<void()>& step = [] {},
               absl::Duration limit = kWaitLimit) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    step();
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  step();
  return done();
}

// A ParameterServer service that forwards to a real ParameterService, but
// can hold CreateJob calls until released: makes the coordinator's job
// set-up window as long as a test needs.
class GatedParameterService final
    : public ParameterServer::WithCallbackMethod_Push<
          ParameterServer::WithCallbackMethod_Pull<ParameterServer::Service>> {
 public:
  explicit GatedParameterService(ParameterService* inner) : inner_(inner) {}

  void Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  int waiting() {
    absl::MutexLock lock(&mu_);
    return waiting_;
  }
  int completed() {
    absl::MutexLock lock(&mu_);
    return completed_;
  }

  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const PushRequest* request,
                                 PushResponse* response) override {
    return inner_->Push(context, request, response);
  }
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const PullRequest* request,
                                 PullResponse* response) override {
    return inner_->Pull(context, request, response);
  }
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const CreateJobRequest* request,
                         CreateJobResponse* response) override {
    {
      absl::MutexLock lock(&mu_);
      ++waiting_;
      mu_.Await(absl::Condition(&open_));
      --waiting_;
    }
    grpc::Status status = inner_->CreateJob(context, request, response);
    absl::MutexLock lock(&mu_);
    ++completed_;
    return status;
  }
  grpc::Status DropJob(grpc::ServerContext* context,
                       const DropJobRequest* request,
                       DropJobResponse* response) override {
    return inner_->DropJob(context, request, response);
  }
  grpc::Status SetView(grpc::ServerContext* context,
                       const SetViewRequest* request,
                       SetViewResponse* response) override {
    return inner_->SetView(context, request, response);
  }
  grpc::Status GetServerStatus(grpc::ServerContext* context,
                               const GetServerStatusRequest* request,
                               ServerStatus* response) override {
    return inner_->GetServerStatus(context, request, response);
  }

 private:
  ParameterService* const inner_;
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int completed_ ABSL_GUARDED_BY(mu_) = 0;
};

// One parameter server (registered), a coordinator state (started), and
// helpers that play the workers.
class Cluster {
 public:
  explicit Cluster(CoordinatorOptions options)
      : service_(&store_), gated_(&service_), state(options) {
    auto started = StartRpcServer(RpcServerOptions{}, {&gated_});
    REQUIRE(started.ok());
    rpc_ = std::move(*started);
    server_address = absl::StrCat("127.0.0.1:", rpc_.port);
    parameter_server = ParameterServer::NewStub(MakeChannel(server_address));
    RegisterRequest request;
    request.set_address(server_address);
    request.set_protocol_version(PROTOCOL_VERSION_1);
    auto registered = state.RegisterServer(request);
    REQUIRE(registered.ok());
    server_id = registered->member_id();
    REQUIRE(state.Start().ok());
  }

  ~Cluster() {
    gated_.Open();
    rpc_.server->Shutdown(DeadlineIn(std::chrono::seconds(5)));
  }

  std::string AddWorker() {
    RegisterRequest request;
    request.set_address(absl::StrCat("worker.invalid:", ++workers_added_));
    request.set_protocol_version(PROTOCOL_VERSION_1);
    auto registered = state.RegisterWorker(request);
    REQUIRE(registered.ok());
    return registered->member_id();
  }

  HeartbeatResponse Heartbeat(const std::string& member_id) {
    HeartbeatRequest request;
    request.set_member_id(member_id);
    auto response = state.Heartbeat(request);
    INFO(member_id << ": " << response.status().ToString());
    REQUIRE(response.ok());
    return *response;
  }

  JobState State(const std::string& job_id) {
    auto job = state.GetJob(job_id);
    REQUIRE(job.ok());
    return job->state();
  }

  JobStatus Job(const std::string& job_id) {
    auto job = state.GetJob(job_id);
    REQUIRE(job.ok());
    return *job;
  }

  // The worker's entry in the cluster view, or null when it is not there.
  std::unique_ptr<WorkerInfo> ViewOf(const std::string& worker_id) {
    const ClusterView view = state.GetClusterView();
    for (const WorkerInfo& info : view.workers()) {
      if (info.id() == worker_id) return std::make_unique<WorkerInfo>(info);
    }
    return nullptr;
  }

  // Heartbeats the server and `workers` every millisecond until each worker
  // has received an assignment (bounded). Returns the assignments by worker
  // id; fails the test if a heartbeat says "cancelled" meanwhile.
  std::map<std::string, Assignment> HeartbeatUntilAssigned(
      const std::vector<std::string>& workers) {
    std::map<std::string, Assignment> assigned;
    bool cancelled = false;
    const bool all = PollUntil(
        [&] { return cancelled || assigned.size() == workers.size(); },
        [&] {
          Heartbeat(server_id);
          for (const std::string& w : workers) {
            HeartbeatResponse response = Heartbeat(w);
            if (response.cancelled()) cancelled = true;
            if (response.has_assignment() && !assigned.count(w)) {
              assigned[w] = response.assignment();
            }
          }
        });
    CHECK_FALSE(cancelled);
    INFO(assigned.size() << " of " << workers.size() << " workers assigned");
    REQUIRE(all);
    return assigned;
  }

  // Registers `n` workers, submits SmallConfig(n) and waits until it runs.
  // Returns the job id; `by_rank` gets the worker ids by rank.
  std::string StartJob(int n, std::vector<std::string>* by_rank) {
    std::vector<std::string> workers;
    for (int i = 0; i < n; ++i) workers.push_back(AddWorker());
    auto job_id = state.SubmitJob(SmallConfig(n));
    REQUIRE(job_id.ok());
    auto assigned = HeartbeatUntilAssigned(workers);
    by_rank->assign(n, "");
    for (const auto& [worker, assignment] : assigned) {
      REQUIRE(assignment.job_id() == *job_id);
      REQUIRE(assignment.rank() >= 0);
      REQUIRE(assignment.rank() < n);
      (*by_rank)[assignment.rank()] = worker;
    }
    REQUIRE(State(*job_id) == RUNNING);
    return *job_id;
  }

  absl::StatusOr<ReportProgressResponse> Report(
      const std::string& member_id, const std::string& job_id, int32_t rank,
      const std::function<void(ReportProgressRequest*)>& fill = {}) {
    ReportProgressRequest request;
    request.set_member_id(member_id);
    request.set_job_id(job_id);
    request.set_rank(rank);
    if (fill) fill(&request);
    return state.ReportProgress(request);
  }

  // Both ranks report done; the job must then be SUCCEEDED.
  void FinishJob(const std::string& job_id,
                 const std::vector<std::string>& by_rank) {
    for (size_t rank = 0; rank < by_rank.size(); ++rank) {
      auto response = Report(by_rank[rank], job_id, static_cast<int32_t>(rank),
                             [](ReportProgressRequest* r) { r->set_done(true); });
      REQUIRE(response.ok());
    }
    REQUIRE(State(job_id) == SUCCEEDED);
  }

  // A Pull of partition 0 at the latest step: the server holds the job.
  grpc::Status PullLatest(const std::string& job_id) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
    PullRequest request;
    request.set_job_id(job_id);
    request.set_latest(true);
    request.add_partition_ids(0);
    PullResponse response;
    return parameter_server->Pull(&context, request, &response);
  }

  GatedParameterService& gate() { return gated_; }

  std::string server_address;
  std::string server_id;
  std::unique_ptr<ParameterServer::Stub> parameter_server;

 private:
  ParameterStore store_;
  ParameterService service_;
  GatedParameterService gated_;
  RpcServer rpc_;
  int workers_added_ = 0;

 public:
  // Declared last: destroyed (scheduler stopped) before the server goes.
  CoordinatorState state;
};

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
}  // namespace psd
