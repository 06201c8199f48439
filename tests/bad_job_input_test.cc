// Bad input to the coordinator over real gRPC (JobService and the
// membership API): a coordinator and a parameter server in this process on
// 127.0.0.1:0, driven through the generated stubs. Every bad request gets
// the documented status code and a message naming the problem, and the
// coordinator keeps serving with its state unchanged.
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/rpc.h"
#include "common/tensor.h"
#include "tests/bad_input_lib.h"
#include "tests/in_process_cluster.h"
#include "tests/resident_memory.h"

namespace psd {
namespace {
grpc::Status Submit(InProcessCluster& cluster, const JobConfig& config,
                    SubmitJobResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  return cluster.jobs->SubmitJob(&context, config, response);
}

TEST_CASE("JobService: a bad config is refused with INVALID_ARGUMENT naming "
          "the field",
          "[bad_input][coordinator]") {
  InProcessCluster cluster;
  struct Case {
    const char* prefix;
    void (*spoil)(JobConfig*);
  };
  const Case cases[] = {
      {"batch_size:", [](JobConfig* c) { c->clear_batch_size(); }},
      {"batch_size:", [](JobConfig* c) { c->set_batch_size(-1); }},
      // Larger than the training set over the workers.
      {"batch_size:", [](JobConfig* c) { c->set_batch_size(40000); }},
      {"model.hidden_sizes[1]:",
       [](JobConfig* c) { c->mutable_model()->set_hidden_sizes(1, 0); }},
      {"model.hidden_sizes[0]:",
       [](JobConfig* c) { c->mutable_model()->set_hidden_sizes(0, 0); }},
      {"model.input_dim:",
       [](JobConfig* c) { c->mutable_model()->set_input_dim(100); }},
      {"model.num_classes:",
       [](JobConfig* c) { c->mutable_model()->set_num_classes(1); }},
      {"name:", [](JobConfig* c) { c->clear_name(); }},
      {"name:", [](JobConfig* c) { c->set_name("has space"); }},
      {"dataset.name:",
       [](JobConfig* c) { c->mutable_dataset()->set_name("mnist"); }},
      {"dataset.train_limit:",
       [](JobConfig* c) { c->mutable_dataset()->set_train_limit(-5); }},
      {"optimizer.learning_rate:",
       [](JobConfig* c) { c->mutable_optimizer()->set_learning_rate(0); }},
      {"optimizer.learning_rate:",
       [](JobConfig* c) {
         c->mutable_optimizer()->set_learning_rate(
             std::numeric_limits<float>::quiet_NaN());
       }},
      {"optimizer.momentum:",
       [](JobConfig* c) { c->mutable_optimizer()->set_momentum(1.0f); }},
      {"optimizer.weight_decay:",
       [](JobConfig* c) { c->mutable_optimizer()->set_weight_decay(-1.0f); }},
      {"epochs:", [](JobConfig* c) { c->set_epochs(0); }},
      {"workers:", [](JobConfig* c) { c->set_workers(0); }},
      {"workers:", [](JobConfig* c) { c->set_workers(5000); }},
      {"partition_bytes:", [](JobConfig* c) { c->set_partition_bytes(100); }},
      {"epochs:", [](JobConfig* c) { c->set_epochs(2147483647); }},
      {"optimizer.learning_rate: must be finite, got inf",
       [](JobConfig* c) {
         c->mutable_optimizer()->set_learning_rate(
             std::numeric_limits<float>::infinity());
       }},
      // A 1 MB request of a million layers.
      {"model.hidden_sizes: at most 64 layers",
       [](JobConfig* c) {
         c->mutable_model()->mutable_hidden_sizes()->Resize(1000000, 1);
       }},
      {"consistency: must be BSP, ASP or SSP, got 9",
       [](JobConfig* c) { c->set_consistency(static_cast<Consistency>(9)); }},
  };
  for (const Case& c : cases) {
    JobConfig config = ValidConfig();
    c.spoil(&config);
    INFO("want " << c.prefix);
    SubmitJobResponse response;
    grpc::Status status = Submit(cluster, config, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    INFO("got " << status.error_message());
    CHECK(StartsWith(status.error_message(), c.prefix));
  }
  // Too big, not malformed: RESOURCE_EXHAUSTED, naming the field and the
  // limit, before any server allocates anything.
  for (const auto& [sizes, says] :
       std::vector<std::pair<std::vector<int32_t>, std::string>>{
           {{100000, 100000},
            "model.hidden_sizes[0]: 100000 is wider than the limit of 65536 "
            "units"},
           {{60000, 60000},
            "model.hidden_sizes: the model has 3647760010 parameters, more "
            "than the limit of 100000000 per job"}}) {
    JobConfig config = ValidConfig();
    config.mutable_model()->clear_hidden_sizes();
    for (int32_t width : sizes) config.mutable_model()->add_hidden_sizes(width);
    SubmitJobResponse response;
    grpc::Status status = Submit(cluster, config, &response);
    CHECK(status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    CHECK(status.error_message() == says);
  }
  // An empty config names the first field.
  SubmitJobResponse response;
  grpc::Status status = Submit(cluster, JobConfig(), &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(), "name:"));

  // None of them was queued; a valid one still is.
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    ListJobsResponse listed;
    REQUIRE(cluster.jobs->ListJobs(&context, ListJobsRequest(), &listed).ok());
    CHECK(listed.jobs_size() == 0);
  }
  status = Submit(cluster, ValidConfig(), &response);
  REQUIRE(status.ok());
  CHECK(StartsWith(response.job_id(), "bad-input-"));
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  GetJobRequest get;
  get.set_job_id(response.job_id());
  JobStatus job;
  REQUIRE(cluster.jobs->GetJob(&context, get, &job).ok());
  CHECK(job.state() == PENDING);
}

TEST_CASE("JobService: a 10 MB name or job id is refused with INVALID_ARGUMENT "
          "naming the field, and the coordinator keeps serving",
          "[bad_input][coordinator]") {
  InProcessCluster cluster;
  const std::string huge(10 << 20, 'n');
  JobConfig config = ValidConfig();
  config.set_name(huge);
  SubmitJobResponse submitted;
  grpc::Status status = Submit(cluster, config, &submitted);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(StartsWith(status.error_message(),
                   "name: at most 128 characters, got 10485760"));
  CHECK(status.error_message().size() < 1000);  // not echoed back whole
  // The coordinator keeps nothing of them (an accepted 10 MB name once grew
  // it by 500+ MB). Client and server share this process, so the first
  // calls leave the allocator's free lists holding their transient 10 MB
  // buffers: ten calls warm it up, ten more must add (almost) nothing.
  auto submit_ten = [&] {
    for (int i = 0; i < 10; ++i) {
      CHECK(Submit(cluster, config, &submitted).error_code() ==
            grpc::StatusCode::INVALID_ARGUMENT);
    }
  };
  submit_ten();
  const int64_t before = ResidentBytes();
  REQUIRE(before > 0);
  submit_ten();
  CHECK(ResidentBytes() - before < (40 << 20));
  {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    GetJobRequest request;
    request.set_job_id(huge);
    JobStatus job;
    status = cluster.jobs->GetJob(&context, request, &job);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(StartsWith(status.error_message(), "job_id: at most 148 characters"));
    CHECK(status.error_message().size() < 1000);
  }
  // Nothing was queued, and ListJobs answers within a standard client's
  // 4 MB limit.
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  ListJobsResponse listed;
  REQUIRE(cluster.jobs->ListJobs(&context, ListJobsRequest(), &listed).ok());
  CHECK(listed.jobs_size() == 0);
  REQUIRE(Submit(cluster, ValidConfig(), &submitted).ok());
}

TEST_CASE("JobService: GetJob and CancelJob of an unknown job are NOT_FOUND",
          "[bad_input][coordinator]") {
  InProcessCluster cluster;
  for (const std::string id : {"", "no-such-job-1"}) {
    INFO("job id \"" << id << "\"");
    {
      grpc::ClientContext context;
      context.set_deadline(Deadline());
      GetJobRequest request;
      request.set_job_id(id);
      JobStatus response;
      grpc::Status status = cluster.jobs->GetJob(&context, request, &response);
      CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
      CHECK(Contains(status.error_message(), "job_id"));
    }
    {
      grpc::ClientContext context;
      context.set_deadline(Deadline());
      CancelJobRequest request;
      request.set_job_id(id);
      JobStatus response;
      grpc::Status status = cluster.jobs->CancelJob(&context, request, &response);
      CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
      CHECK(Contains(status.error_message(), "job_id"));
    }
  }
}

TEST_CASE("Coordinator: a peer with another protocol version, or no address, "
          "is refused; an unknown member's heartbeat is NOT_FOUND",
          "[bad_input][coordinator]") {
  InProcessCluster cluster;
  for (bool server : {true, false}) {
    INFO((server ? "RegisterServer" : "RegisterWorker"));
    RegisterRequest request;
    request.set_address("127.0.0.1:1");
    request.set_protocol_version(PROTOCOL_VERSION_UNSPECIFIED);
    RegisterResponse response;
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    grpc::Status status =
        server ? cluster.coordinator->RegisterServer(&context, request, &response)
               : cluster.coordinator->RegisterWorker(&context, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(StartsWith(status.error_message(), "protocol_version:"));

    request.set_protocol_version(static_cast<ProtocolVersion>(7));
    grpc::ClientContext context2;
    context2.set_deadline(Deadline());
    status = server
                 ? cluster.coordinator->RegisterServer(&context2, request, &response)
                 : cluster.coordinator->RegisterWorker(&context2, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);

    request.set_protocol_version(PROTOCOL_VERSION_1);
    request.clear_address();
    grpc::ClientContext context3;
    context3.set_deadline(Deadline());
    status = server
                 ? cluster.coordinator->RegisterServer(&context3, request, &response)
                 : cluster.coordinator->RegisterWorker(&context3, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(Contains(status.error_message(), "address"));
  }
  {
    HeartbeatRequest request;
    request.set_member_id("w-12345");
    HeartbeatResponse response;
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    grpc::Status status =
        cluster.coordinator->Heartbeat(&context, request, &response);
    CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(StartsWith(status.error_message(), "member_id:"));
  }
  // Nothing joined.
  GetClusterViewRequest request;
  ClusterView view;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  REQUIRE(cluster.coordinator->GetClusterView(&context, request, &view).ok());
  CHECK(view.servers_size() == 0);
  CHECK(view.workers_size() == 0);
}

}  // namespace
}  // namespace psd
