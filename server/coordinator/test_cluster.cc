#include "server/coordinator/test_cluster.h"

#include <catch2/catch.hpp>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"

namespace psd {
namespace coordinator_test {

JobConfig SmallConfig(int workers, const std::string& name) {
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

CoordinatorOptions FastOptions(int heartbeat_timeout_ms) {
  CoordinatorOptions options;
  options.schedule_interval_ms = 10;
  options.heartbeat_timeout_ms = heartbeat_timeout_ms;
  options.server_call_timeout_ms = 5000;
  return options;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

bool PollUntil(const std::function<bool()>& done,
               const std::function<void()>& step, absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    step();
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  step();
  return done();
}

void GatedParameterService::Close() {
  absl::MutexLock lock(&mu_);
  open_ = false;
}

void GatedParameterService::Open() {
  absl::MutexLock lock(&mu_);
  open_ = true;
}

int GatedParameterService::waiting() {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

int GatedParameterService::completed() {
  absl::MutexLock lock(&mu_);
  return completed_;
}

grpc::ServerUnaryReactor* GatedParameterService::Push(
    grpc::CallbackServerContext* context, const PushRequest* request,
    PushResponse* response) {
  return inner_->Push(context, request, response);
}

grpc::ServerUnaryReactor* GatedParameterService::Pull(
    grpc::CallbackServerContext* context, const PullRequest* request,
    PullResponse* response) {
  return inner_->Pull(context, request, response);
}

grpc::Status GatedParameterService::CreateJob(grpc::ServerContext* context,
                                              const CreateJobRequest* request,
                                              CreateJobResponse* response) {
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

grpc::Status GatedParameterService::DropJob(grpc::ServerContext* context,
                                            const DropJobRequest* request,
                                            DropJobResponse* response) {
  return inner_->DropJob(context, request, response);
}

grpc::Status GatedParameterService::SetView(grpc::ServerContext* context,
                                            const SetViewRequest* request,
                                            SetViewResponse* response) {
  return inner_->SetView(context, request, response);
}

grpc::Status GatedParameterService::GetServerStatus(
    grpc::ServerContext* context, const GetServerStatusRequest* request,
    ServerStatus* response) {
  return inner_->GetServerStatus(context, request, response);
}

Cluster::Cluster(CoordinatorOptions options)
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

Cluster::~Cluster() {
  gated_.Open();
  rpc_.server->Shutdown(DeadlineIn(std::chrono::seconds(5)));
}

std::string Cluster::AddWorker(std::vector<ModelSpec::Kind> model_kinds) {
  RegisterRequest request;
  request.set_address(absl::StrCat("worker.invalid:", ++workers_added_));
  request.set_protocol_version(PROTOCOL_VERSION_1);
  for (ModelSpec::Kind kind : model_kinds) request.add_model_kinds(kind);
  auto registered = state.RegisterWorker(request);
  REQUIRE(registered.ok());
  return registered->member_id();
}

HeartbeatResponse Cluster::Heartbeat(const std::string& member_id) {
  HeartbeatRequest request;
  request.set_member_id(member_id);
  auto response = state.Heartbeat(request);
  INFO(member_id << ": " << response.status().ToString());
  REQUIRE(response.ok());
  return *response;
}

JobState Cluster::State(const std::string& job_id) {
  auto job = state.GetJob(job_id);
  REQUIRE(job.ok());
  return job->state();
}

JobStatus Cluster::Job(const std::string& job_id) {
  auto job = state.GetJob(job_id);
  REQUIRE(job.ok());
  return *job;
}

std::unique_ptr<WorkerInfo> Cluster::ViewOf(const std::string& worker_id) {
  const ClusterView view = state.GetClusterView();
  for (const WorkerInfo& info : view.workers()) {
    if (info.id() == worker_id) return std::make_unique<WorkerInfo>(info);
  }
  return nullptr;
}

std::map<std::string, Assignment> Cluster::HeartbeatUntilAssigned(
    const std::vector<std::string>& workers) {
  std::map<std::string, Assignment> assigned;
  bool cancelled = false;
  const bool all =
      PollUntil([&] { return cancelled || assigned.size() == workers.size(); },
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

std::string Cluster::StartJob(int n, std::vector<std::string>* by_rank) {
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

absl::StatusOr<ReportProgressResponse> Cluster::Report(
    const std::string& member_id, const std::string& job_id, int32_t rank,
    const std::function<void(ReportProgressRequest*)>& fill) {
  ReportProgressRequest request;
  request.set_member_id(member_id);
  request.set_job_id(job_id);
  request.set_rank(rank);
  if (fill) fill(&request);
  return state.ReportProgress(request);
}

void Cluster::FinishJob(const std::string& job_id,
                        const std::vector<std::string>& by_rank) {
  for (size_t rank = 0; rank < by_rank.size(); ++rank) {
    auto response = Report(by_rank[rank], job_id, static_cast<int32_t>(rank),
                           [](ReportProgressRequest* r) { r->set_done(true); });
    REQUIRE(response.ok());
  }
  REQUIRE(State(job_id) == SUCCEEDED);
}

grpc::Status Cluster::PullLatest(const std::string& job_id) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
  PullRequest request;
  request.set_job_id(job_id);
  request.set_latest(true);
  request.add_partition_ids(0);
  PullResponse response;
  return parameter_server->Pull(&context, request, &response);
}

}  // namespace coordinator_test
}  // namespace psd
