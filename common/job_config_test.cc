#include "common/job_config.h"

#include <string>

#include <catch2/catch.hpp>
#include <google/protobuf/util/message_differencer.h>

namespace psd {
namespace {

JobConfig ValidConfig() {
  auto config = LoadJobConfigFile("deploy/jobs/fashion_mnist_mlp.textproto");
  REQUIRE(config.ok());
  ApplyJobConfigDefaults(&*config);
  return *config;
}

// The status message of validating `config`, "" when valid.
std::string Problem(const JobConfig& config) {
  absl::Status status = ValidateJobConfig(config);
  if (status.ok()) return "";
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  return std::string(status.message());
}

TEST_CASE("JobConfig: the quick-start job is valid in text and JSON",
          "[config]") {
  JobConfig text = ValidConfig();
  CHECK(Problem(text).empty());
  auto json = LoadJobConfigFile("deploy/jobs/fashion_mnist_mlp.json");
  REQUIRE(json.ok());
  ApplyJobConfigDefaults(&*json);
  CHECK(google::protobuf::util::MessageDifferencer::Equals(text, *json));
}

TEST_CASE("JobConfig: each required field, when missing, is named",
          "[config]") {
  struct Case {
    const char* field;
    void (*clear)(JobConfig*);
  };
  const Case cases[] = {
      {"name", [](JobConfig* c) { c->clear_name(); }},
      {"model", [](JobConfig* c) { c->clear_model(); }},
      {"model.input_dim", [](JobConfig* c) { c->mutable_model()->clear_input_dim(); }},
      {"model.num_classes",
       [](JobConfig* c) { c->mutable_model()->clear_num_classes(); }},
      {"dataset", [](JobConfig* c) { c->clear_dataset(); }},
      {"optimizer", [](JobConfig* c) { c->clear_optimizer(); }},
      {"optimizer.learning_rate",
       [](JobConfig* c) { c->mutable_optimizer()->clear_learning_rate(); }},
      {"batch_size", [](JobConfig* c) { c->clear_batch_size(); }},
      {"epochs", [](JobConfig* c) { c->clear_epochs(); }},
      {"workers", [](JobConfig* c) { c->clear_workers(); }},
  };
  for (const Case& c : cases) {
    JobConfig config = ValidConfig();
    c.clear(&config);
    INFO("cleared " << c.field);
    const std::string problem = Problem(config);
    CHECK(problem.rfind(std::string(c.field) + ":", 0) == 0);
  }
}

TEST_CASE("JobConfig: bad sizes and values are rejected with the field",
          "[config]") {
  JobConfig config = ValidConfig();
  config.mutable_model()->set_hidden_sizes(1, 0);
  CHECK(Problem(config) == "model.hidden_sizes[1]: must be in [1, 65536], got 0");

  config = ValidConfig();
  config.set_batch_size(-3);
  CHECK(Problem(config) == "batch_size: must be in [1, 65536], got -3");

  config = ValidConfig();
  config.mutable_optimizer()->set_momentum(1.5f);
  CHECK(Problem(config).rfind("optimizer.momentum:", 0) == 0);

  config = ValidConfig();
  config.mutable_model()->set_input_dim(100);
  CHECK(Problem(config).rfind("model.input_dim:", 0) == 0);

  config = ValidConfig();
  config.set_name("bad name/with slash");
  CHECK(Problem(config).rfind("name:", 0) == 0);

  config = ValidConfig();
  config.set_partition_bytes(16);
  CHECK(Problem(config).rfind("partition_bytes:", 0) == 0);

  config = ValidConfig();
  config.mutable_snapshot()->set_every_steps(-1);
  CHECK(Problem(config) == "snapshot.every_steps: must be >= 0, got -1");

  config = ValidConfig();
  config.mutable_snapshot()->set_keep_last(-2);
  CHECK(Problem(config) == "snapshot.keep_last: must be >= 0, got -2");
}

TEST_CASE("JobConfig: a syntax error points at its line", "[config]") {
  auto config = ParseJobConfig("name: \"x\"\nbatch_size: \"many\"\n", "job.txt");
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  CHECK(message.find("job.txt") != std::string::npos);
  CHECK(message.find("line 2") != std::string::npos);

  auto unknown = ParseJobConfig("name: \"x\"\nbatchsize: 3\n", "job.txt");
  REQUIRE_FALSE(unknown.ok());
  CHECK(std::string(unknown.status().message()).find("batchsize") !=
        std::string::npos);

  auto json = ParseJobConfig("{\"batchSize\": \"x\"}", "job.json");
  REQUIRE_FALSE(json.ok());
  CHECK(json.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("JobConfig: steps per epoch use the smallest shard", "[config]") {
  JobConfig config = ValidConfig();
  config.set_workers(3);
  config.set_batch_size(100);
  // 60000 / 3 = 20000 per rank -> 200 steps.
  CHECK(StepsPerEpoch(config, 60000) == 200);
  CHECK(StepsPerEpoch(config, 1000) == 3);
}

}  // namespace
}  // namespace psd
