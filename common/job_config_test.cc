#include "common/job_config.h"

#include <cmath>
#include <functional>
#include <vector>
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
  CHECK(Problem(config) == "model.hidden_sizes[1]: must be at least 1, got 0");

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

TEST_CASE("JobConfig: names, epochs, steps and the model's size are bounded",
          "[config]") {
  JobConfig config = ValidConfig();
  config.set_name(std::string(kMaxJobNameLength, 'a'));
  CHECK(Problem(config).empty());
  config.set_name(std::string(10 << 20, 'a'));
  const std::string long_name = Problem(config);
  CHECK(long_name.rfind("name: at most 128 characters, got 10485760: \"aaa",
                        0) == 0);
  CHECK(long_name.size() < 200);  // the name itself is not echoed
  config.set_name("line\nbreak");
  CHECK(Problem(config) ==
        "name: only [A-Za-z0-9_-] allowed, got \"line\\nbreak\"");

  config = ValidConfig();
  config.set_epochs(2147483647);
  CHECK(Problem(config) == "epochs: must be in [1, 10000], got 2147483647");
  // 10000 epochs of the whole set at batch 1 on one worker: 600 million
  // steps, past kMaxTotalSteps.
  config.set_epochs(10000);
  config.set_batch_size(1);
  config.set_workers(1);
  CHECK(Problem(config).rfind("epochs: 10000 epochs of 60000 steps are "
                              "600000000 steps per worker, more than",
                              0) == 0);

  // A million layers (a 1 MB request) is refused by its count, before any
  // per-layer work.
  config = ValidConfig();
  config.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  config.mutable_model()->mutable_hidden_sizes()->Resize(1000000, 1);
  ApplyJobConfigDefaults(&config);
  CHECK(Problem(config) == "model.hidden_sizes: at most 64 layers, got 1000000");
  // 64 layers of 65536 are each allowed, but not together.
  config = ValidConfig();
  config.mutable_model()->mutable_hidden_sizes()->Resize(kMaxHiddenLayers,
                                                         kMaxLayerWidth);
  absl::Status too_big = ValidateJobConfig(config);
  CHECK(too_big.code() == absl::StatusCode::kResourceExhausted);
  CHECK(too_big.message().rfind("model.hidden_sizes: the model has ", 0) == 0);
  config.mutable_model()->set_hidden_sizes(0, kMaxLayerWidth + 1);
  too_big = ValidateJobConfig(config);
  CHECK(too_big.code() == absl::StatusCode::kResourceExhausted);
  CHECK(too_big.message() ==
        "model.hidden_sizes[0]: 65537 is wider than the limit of 65536 units");
}

TEST_CASE("JobConfig: inf and nan are refused as not finite, naming the field",
          "[config]") {
  JobConfig config = ValidConfig();
  config.mutable_optimizer()->set_learning_rate(INFINITY);
  CHECK(Problem(config) == "optimizer.learning_rate: must be finite, got inf");
  config = ValidConfig();
  config.mutable_optimizer()->set_weight_decay(-INFINITY);
  CHECK(Problem(config) == "optimizer.weight_decay: must be finite, got -inf");
  config = ValidConfig();
  config.mutable_optimizer()->set_momentum(NAN);
  CHECK(Problem(config) == "optimizer.momentum: must be finite, got nan");
  // An enum value psd does not know names the field and the number.
  config = ValidConfig();
  config.mutable_model()->set_kind(static_cast<ModelSpec::Kind>(7));
  CHECK(Problem(config) == "model.kind: MLP, EXTERNAL, SPARSE_LR or DLRM, got 7");
}

TEST_CASE("JobConfig: a job id in a request is bounded and quoted",
          "[config]") {
  CHECK(CheckJobId("job_id", "").ok());
  CHECK(CheckJobId("job_id", "fashion-mnist-mlp-12").ok());
  absl::Status status = CheckJobId("job_id", std::string(1 << 20, 'j'));
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message())
            .rfind("job_id: at most 148 characters, got 1048576", 0) == 0);
  CHECK(status.message().size() < 200);
  CHECK(CheckJobId("job_id", "a/b").message() ==
        "job_id: only [A-Za-z0-9_-] allowed, got \"a/b\"");
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

JobConfig AdamConfig() {
  auto config = LoadJobConfigFile("deploy/jobs/fashion_mnist_adam.textproto");
  REQUIRE(config.ok());
  ApplyJobConfigDefaults(&*config);
  return *config;
}

TEST_CASE(
    "JobConfig: the Adam job is valid, its cosine horizon the job's "
    "total steps",
    "[config]") {
  JobConfig config = AdamConfig();
  CHECK(Problem(config).empty());
  const OptimizerSpec& o = config.optimizer();
  CHECK(o.kind() == OptimizerSpec::ADAM);
  CHECK(o.schedule().kind() == LearningRateSchedule::COSINE);
  // 60000 / 2 workers / 64 = 468 steps per epoch, 8 epochs.
  CHECK(o.schedule().decay_steps() == 468 * 8);
  CHECK(o.schedule().decay_steps() ==
        StepsPerEpoch(config, TrainExamples(config)) * config.epochs());
}

TEST_CASE("JobConfig: optimizer defaults are filled per kind, once",
          "[config]") {
  // An SGD config without the new fields is left exactly as it was.
  JobConfig sgd = ValidConfig();
  JobConfig again = sgd;
  ApplyJobConfigDefaults(&again);
  CHECK(google::protobuf::util::MessageDifferencer::Equals(sgd, again));
  CHECK_FALSE(sgd.optimizer().has_beta1());
  CHECK_FALSE(sgd.optimizer().has_epsilon());
  CHECK_FALSE(sgd.optimizer().has_schedule());

  for (auto kind : {OptimizerSpec::ADAM, OptimizerSpec::ADAMW}) {
    JobConfig config = ValidConfig();
    config.mutable_optimizer()->clear_momentum();
    config.mutable_optimizer()->set_kind(kind);
    ApplyJobConfigDefaults(&config);
    CHECK(config.optimizer().beta1() == 0.9f);
    CHECK(config.optimizer().beta2() == 0.999f);
    CHECK(config.optimizer().epsilon() == 1e-8f);
    CHECK(Problem(config).empty());
    JobConfig twice = config;
    ApplyJobConfigDefaults(&twice);
    CHECK(google::protobuf::util::MessageDifferencer::Equals(config, twice));
  }

  // An explicit 0 is kept (beta1 0 is a valid Adam).
  JobConfig zero = ValidConfig();
  zero.mutable_optimizer()->clear_momentum();
  zero.mutable_optimizer()->set_kind(OptimizerSpec::ADAM);
  zero.mutable_optimizer()->set_beta1(0.0f);
  ApplyJobConfigDefaults(&zero);
  CHECK(zero.optimizer().has_beta1());
  CHECK(zero.optimizer().beta1() == 0.0f);
  CHECK(Problem(zero).empty());

  JobConfig adagrad = ValidConfig();
  adagrad.mutable_optimizer()->clear_momentum();
  adagrad.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  ApplyJobConfigDefaults(&adagrad);
  CHECK(adagrad.optimizer().epsilon() == 1e-10f);
  CHECK_FALSE(adagrad.optimizer().has_beta1());
  CHECK(Problem(adagrad).empty());

  JobConfig step = ValidConfig();
  step.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::STEP);
  step.mutable_optimizer()->mutable_schedule()->set_step_size(100);
  ApplyJobConfigDefaults(&step);
  CHECK(step.optimizer().schedule().gamma() == 0.1f);
  CHECK(Problem(step).empty());

  // An explicit cosine horizon is kept.
  JobConfig cosine = ValidConfig();
  cosine.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  cosine.mutable_optimizer()->mutable_schedule()->set_decay_steps(1000);
  ApplyJobConfigDefaults(&cosine);
  CHECK(cosine.optimizer().schedule().decay_steps() == 1000);
  CHECK(Problem(cosine).empty());
}

TEST_CASE("JobConfig: the new optimizer fields parse from text and JSON",
          "[config]") {
  auto text = ParseJobConfig(
      "optimizer { kind: ADAMW beta1: 0 weight_decay: 0.01 clip_value: 1 "
      "schedule { kind: STEP step_size: 10 gamma: 0.5 } }",
      "job.txt");
  REQUIRE(text.ok());
  auto json = ParseJobConfig(
      "{\"optimizer\": {\"kind\": \"ADAMW\", \"beta1\": 0, \"weightDecay\": "
      "0.01, \"clipValue\": 1, \"schedule\": {\"kind\": \"STEP\", "
      "\"stepSize\": \"10\", \"gamma\": 0.5}}}",
      "job.json");
  REQUIRE(json.ok());
  CHECK(google::protobuf::util::MessageDifferencer::Equals(*text, *json));
  CHECK(json->optimizer().has_beta1());
  CHECK(json->optimizer().beta1() == 0.0f);
  CHECK_FALSE(json->optimizer().has_beta2());
}

TEST_CASE("JobConfig: bad optimizer values are rejected with the field",
          "[config]") {
  // Each case starts from a defaulted config of `kind` (momentum cleared
  // unless SGD), changes it, re-applies the defaults, and expects `problem`.
  struct Case {
    OptimizerSpec::Kind kind;
    void (*change)(OptimizerSpec*);
    const char* problem;
  };
  const Case cases[] = {
      {OptimizerSpec::ADAM, [](OptimizerSpec* o) { o->set_beta1(1.5f); },
       "optimizer.beta1: must be in [0, 1), got 1.5"},
      {OptimizerSpec::ADAM, [](OptimizerSpec* o) { o->set_beta1(1.0f); },
       "optimizer.beta1: must be in [0, 1), got 1"},
      {OptimizerSpec::ADAMW, [](OptimizerSpec* o) { o->set_beta2(-0.25f); },
       "optimizer.beta2: must be in [0, 1), got -0.25"},
      {OptimizerSpec::ADAM, [](OptimizerSpec* o) { o->set_epsilon(0.0f); },
       "optimizer.epsilon: must be > 0, got 0"},
      {OptimizerSpec::ADAGRAD,
       [](OptimizerSpec* o) { o->set_epsilon(std::nanf("")); },
       "optimizer.epsilon: must be finite, got nan"},
      {OptimizerSpec::ADAGRAD,
       [](OptimizerSpec* o) { o->set_initial_accumulator_value(-1.0f); },
       "optimizer.initial_accumulator_value: must be >= 0, got -1"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) { o->set_initial_accumulator_value(0.1f); },
       "optimizer.initial_accumulator_value: only for ADAGRAD, got 0.1 with "
       "ADAM"},
      {OptimizerSpec::ADAM, [](OptimizerSpec* o) { o->set_momentum(0.9f); },
       "optimizer.momentum: only for SGD (set beta1), got 0.9 with ADAM"},
      {OptimizerSpec::ADAGRAD, [](OptimizerSpec* o) { o->set_momentum(0.5f); },
       "optimizer.momentum: only for SGD, got 0.5 with ADAGRAD"},
      {OptimizerSpec::SGD, [](OptimizerSpec* o) { o->set_beta1(0.9f); },
       "optimizer.beta1: only for ADAM and ADAMW, got 0.9 with SGD"},
      {OptimizerSpec::ADAGRAD, [](OptimizerSpec* o) { o->set_beta2(0.9f); },
       "optimizer.beta2: only for ADAM and ADAMW, got 0.9 with ADAGRAD"},
      {OptimizerSpec::SGD, [](OptimizerSpec* o) { o->set_epsilon(1e-8f); },
       "optimizer.epsilon: not used by SGD, got 1e-08"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->set_momentum(0.0f);
         o->set_nesterov(true);
       },
       "optimizer.nesterov: requires momentum > 0, got 0"},
      {OptimizerSpec::ADAMW, [](OptimizerSpec* o) { o->set_nesterov(true); },
       "optimizer.nesterov: only for SGD, got true with ADAMW"},
      {OptimizerSpec::SGD, [](OptimizerSpec* o) { o->set_clip_value(-1.0f); },
       "optimizer.clip_value: must be >= 0 (0 = off), got -1"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) { o->set_weight_decay(-0.5f); },
       "optimizer.weight_decay: must be >= 0, got -0.5"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->set_kind(static_cast<OptimizerSpec::Kind>(9));
       },
       "optimizer.kind: must be SGD, ADAGRAD, ADAM or ADAMW, got 9"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(
             static_cast<LearningRateSchedule::Kind>(7));
       },
       "optimizer.schedule.kind: must be CONSTANT, STEP or COSINE, got 7"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
       },
       "optimizer.schedule.step_size: must be >= 1 for STEP, got 0"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
         o->mutable_schedule()->set_step_size(10);
         o->mutable_schedule()->set_gamma(1.5f);
       },
       "optimizer.schedule.gamma: must be in (0, 1], got 1.5"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
         o->mutable_schedule()->set_step_size(10);
         o->mutable_schedule()->set_gamma(-0.5f);
       },
       "optimizer.schedule.gamma: must be in (0, 1], got -0.5"},
      {OptimizerSpec::SGD,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
         o->mutable_schedule()->set_step_size(10);
         o->mutable_schedule()->set_decay_steps(100);
       },
       "optimizer.schedule.decay_steps: only for COSINE, got 100"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) { o->mutable_schedule()->set_step_size(10); },
       "optimizer.schedule.step_size: only for STEP, got 10"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
         o->mutable_schedule()->set_decay_steps(-5);
       },
       "optimizer.schedule.decay_steps: must be >= 1, got -5 (0 = the job's "
       "total updates, filled in by ApplyJobConfigDefaults; is the job empty, "
       "or do its parameter_groups mix BSP with ASP/SSP, which make updates "
       "at different rates? Then set it)"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
         o->mutable_schedule()->set_min_learning_rate(0.5f);
       },
       "optimizer.schedule.min_learning_rate: must be in [0, learning_rate "
       "0.02], got 0.5"},
      {OptimizerSpec::ADAM,
       [](OptimizerSpec* o) {
         o->mutable_schedule()->set_min_learning_rate(0.001f);
       },
       "optimizer.schedule.min_learning_rate: only for COSINE, got 0.001"},
  };
  for (const Case& c : cases) {
    JobConfig config = ValidConfig();
    OptimizerSpec* o = config.mutable_optimizer();
    if (c.kind != OptimizerSpec::SGD) o->clear_momentum();
    o->set_kind(c.kind);
    ApplyJobConfigDefaults(&config);
    REQUIRE(Problem(config).empty());
    c.change(o);
    ApplyJobConfigDefaults(&config);
    CHECK(Problem(config) == c.problem);
  }
}

TEST_CASE(
    "JobConfig: a bad job size is reported before the cosine horizon "
    "it would make",
    "[config]") {
  JobConfig config = ValidConfig();
  config.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  config.set_workers(0);
  ApplyJobConfigDefaults(&config);  // no division by zero
  CHECK(config.optimizer().schedule().decay_steps() == 0);
  CHECK(Problem(config) == "workers: must be in [1, 1024], got 0");

  // A job too small for one step has no horizon to default to.
  config = ValidConfig();
  config.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  config.mutable_dataset()->set_train_limit(100);
  ApplyJobConfigDefaults(&config);
  CHECK(config.optimizer().schedule().decay_steps() == 0);
  CHECK(Problem(config).rfind("optimizer.schedule.decay_steps:", 0) == 0);
}

TEST_CASE("JobConfig: ASP and SSP are accepted; staleness is validated and "
          "named",
          "[config][consistency]") {
  JobConfig config = ValidConfig();
  config.clear_snapshot();
  config.set_consistency(ASP);
  CHECK(Problem(config).empty());
  config.set_consistency(SSP);
  config.set_staleness(2);
  CHECK(Problem(config).empty());
  config.set_staleness(0);  // SSP with bound 0 is allowed
  CHECK(Problem(config).empty());
  config.set_staleness(-1);
  CHECK(Problem(config) == "staleness: must be in [0, 1000] for SSP, got -1");
  config.set_staleness(1001);
  CHECK(Problem(config) == "staleness: must be in [0, 1000] for SSP, got 1001");
  config.set_consistency(ASP);
  config.set_staleness(3);
  CHECK(Problem(config) == "staleness: only for SSP, got 3 with ASP");
  config.set_consistency(BSP);
  CHECK(Problem(config) == "staleness: only for SSP, got 3 with BSP");
  config.set_staleness(0);
  config.set_consistency(static_cast<Consistency>(7));
  CHECK(Problem(config) == "consistency: must be BSP, ASP or SSP, got 7");
  // Snapshots work under ASP/SSP too (snapshot step k: every rank's pushes
  // of steps < k applied, see SnapshotPolicy).
  config.set_consistency(ASP);
  config.mutable_snapshot()->set_every_steps(100);
  config.mutable_snapshot()->set_every_seconds(5);
  CHECK(Problem(config).empty());
  config.clear_snapshot();
  // Text format.
  auto parsed = ParseJobConfig("consistency: SSP staleness: 4", "inline");
  REQUIRE(parsed.ok());
  CHECK(parsed->consistency() == SSP);
  CHECK(parsed->staleness() == 4);
}

TEST_CASE("JobConfig: under ASP/SSP the cosine horizon counts every worker's "
          "push as an update",
          "[config][consistency]") {
  JobConfig config = ValidConfig();
  config.clear_snapshot();
  config.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  config.mutable_optimizer()->mutable_schedule()->set_decay_steps(0);
  JobConfig asp = config;
  asp.set_consistency(ASP);
  ApplyJobConfigDefaults(&config);
  ApplyJobConfigDefaults(&asp);
  const int64_t bsp_total =
      StepsPerEpoch(config, TrainExamples(config)) * config.epochs();
  CHECK(config.optimizer().schedule().decay_steps() == bsp_total);
  CHECK(asp.optimizer().schedule().decay_steps() == bsp_total * config.workers());
}

TEST_CASE("JobConfig: parameter groups set a consistency model per "
          "parameter; bad groups are named",
          "[config][consistency]") {
  JobConfig config = ValidConfig();  // BSP, layers 0 to 2
  config.clear_snapshot();
  auto parsed = ParseJobConfig(
      "parameter_groups { parameters: \"layer1.weight\" "
      "parameters: \"layer1.bias\" consistency: SSP staleness: 3 }",
      "inline");
  REQUIRE(parsed.ok());
  config.MergeFrom(*parsed);
  CHECK(Problem(config).empty());
  CHECK(ConsistencyOf(config, "layer0.weight").consistency == BSP);
  CHECK(ConsistencyOf(config, "layer1.bias").consistency == SSP);
  CHECK(ConsistencyOf(config, "layer1.bias").staleness == 3);
  CHECK(HasAsyncParameters(config));
  CHECK(!UpdatesPerStep(config).has_value());

  // A group covering every parameter decides for the whole model.
  JobConfig all_asp = ValidConfig();
  all_asp.clear_snapshot();
  ParameterGroup* g = all_asp.add_parameter_groups();
  for (const ParameterSpec& p : ModelParameters(all_asp.model())) {
    g->add_parameters(p.name());
  }
  g->set_consistency(ASP);
  CHECK(Problem(all_asp).empty());
  CHECK(UpdatesPerStep(all_asp) == all_asp.workers());
  g->set_consistency(BSP);
  all_asp.set_consistency(ASP);  // applies to no parameter
  CHECK(!HasAsyncParameters(all_asp));
  CHECK(UpdatesPerStep(all_asp) == 1);

  // Snapshots work with mixed groups too.
  JobConfig snap = config;
  snap.mutable_snapshot()->set_every_steps(10);
  CHECK(Problem(snap).empty());
  // Cosine's default horizon: none when the groups mix update rates.
  JobConfig cosine = config;
  cosine.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::COSINE);
  ApplyJobConfigDefaults(&cosine);
  CHECK(cosine.optimizer().schedule().decay_steps() == 0);
  CHECK(Problem(cosine).rfind("optimizer.schedule.decay_steps: must be >= 1",
                              0) == 0);

  JobConfig bad = config;
  bad.mutable_parameter_groups(0)->add_parameters("layer9.weight");
  CHECK(Problem(bad) ==
        "parameter_groups[0].parameters[2]: the model has no parameter "
        "\"layer9.weight\" (it has layer0.weight, layer0.bias, "
        "layer1.weight, layer1.bias, layer2.weight, layer2.bias)");
  bad = config;
  bad.add_parameter_groups()->add_parameters("layer1.bias");
  bad.mutable_parameter_groups(1)->set_consistency(ASP);
  CHECK(Problem(bad) ==
        "parameter_groups[1].parameters[0]: \"layer1.bias\" is already in "
        "parameter_groups[0]");
  bad = config;
  bad.add_parameter_groups()->set_consistency(ASP);
  CHECK(Problem(bad) ==
        "parameter_groups[1].parameters: at least one parameter name required");
  bad = config;
  bad.mutable_parameter_groups(0)->clear_consistency();
  CHECK(Problem(bad) ==
        "parameter_groups[0].consistency: required: BSP, ASP or SSP");
  bad = config;
  bad.mutable_parameter_groups(0)->set_staleness(1001);
  CHECK(Problem(bad) ==
        "parameter_groups[0].staleness: must be in [0, 1000] for SSP, got 1001");
  bad.mutable_parameter_groups(0)->set_consistency(ASP);
  CHECK(Problem(bad) ==
        "parameter_groups[0].staleness: only for SSP, got 1001 with ASP");
}

// Issue 18: a model defined outside psd (psd.torch) lists its parameters.
JobConfig ExternalConfig() {
  JobConfig config = ValidConfig();
  ModelSpec* m = config.mutable_model();
  m->Clear();
  m->set_kind(ModelSpec::EXTERNAL);
  ParameterSpec* conv = m->add_parameters();
  conv->set_name("conv1.weight");
  for (int d : {8, 1, 3, 3}) conv->add_shape(d);
  ParameterSpec* bias = m->add_parameters();
  bias->set_name("conv1.bias");
  bias->add_shape(8);
  config.mutable_dataset()->set_name("external");
  config.mutable_dataset()->set_train_limit(1000);
  return config;
}

TEST_CASE("JobConfig: an EXTERNAL model lists its parameters, which place "
          "as listed; bad ones are named",
          "[config]") {
  JobConfig config = ExternalConfig();
  CHECK(Problem(config).empty());
  const std::vector<ParameterSpec> params = ModelParameters(config.model());
  REQUIRE(params.size() == 2);
  CHECK(params[0].name() == "conv1.weight");
  CHECK(params[0].shape_size() == 4);
  CHECK(TrainExamples(config) == 1000);
  CHECK(StepsPerEpoch(config, TrainExamples(config)) ==
        1000 / config.workers() / config.batch_size());
  // Fashion-MNIST with an external model keeps its 60,000 examples.
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_dataset()->set_train_limit(0);
  CHECK(Problem(config).empty());
  CHECK(TrainExamples(config) == kFashionMnistTrainExamples);

  struct Case {
    std::function<void(JobConfig*)> edit;
    const char* problem;
  };
  const std::vector<Case> cases = {
      {[](JobConfig* c) { c->mutable_model()->clear_parameters(); },
       "model.parameters: at least one parameter required for EXTERNAL"},
      {[](JobConfig* c) { c->mutable_model()->set_input_dim(784); },
       "model.input_dim: only for MLP"},
      {[](JobConfig* c) { c->mutable_model()->set_num_classes(10); },
       "model.num_classes: only for MLP"},
      {[](JobConfig* c) {
         c->mutable_model()->mutable_parameters(1)->set_name("conv1.weight");
       },
       "model.parameters[1].name: \"conv1.weight\" is also "
       "model.parameters[0]"},
      {[](JobConfig* c) {
         c->mutable_model()->mutable_parameters(1)->set_name("a b");
       },
       "model.parameters[1].name: only [A-Za-z0-9_.-] allowed, got \"a b\""},
      {[](JobConfig* c) { c->mutable_model()->mutable_parameters(1)->set_name(""); },
       "model.parameters[1].name: 1 to 256 characters, got 0"},
      {[](JobConfig* c) {
         c->mutable_model()->mutable_parameters(0)->set_shape(2, 0);
       },
       "model.parameters[0].shape[2]: must be in [1, 100000000] for "
       "\"conv1.weight\", got 0"},
      {[](JobConfig* c) {
         c->mutable_model()->mutable_parameters(1)->clear_shape();
       },
       "model.parameters[1].shape: 1 to 8 dimensions for \"conv1.bias\", "
       "got 0"},
      {[](JobConfig* c) { c->mutable_dataset()->set_train_limit(0); },
       "dataset.train_limit: required for \"external\": the training set's "
       "size, >= 1, got 0"},
      {[](JobConfig* c) { c->mutable_dataset()->set_name("cifar"); },
       "dataset.name: \"fashion-mnist\" or \"external\", got \"cifar\""},
  };
  for (const Case& c : cases) {
    JobConfig bad = ExternalConfig();
    c.edit(&bad);
    CHECK(Problem(bad) == c.problem);
  }
  // The MLP keeps its fields to itself, and "external" data is not for it.
  JobConfig mlp = ValidConfig();
  *mlp.mutable_model()->add_parameters() = config.model().parameters(0);
  CHECK(Problem(mlp) == "model.parameters: only for kind EXTERNAL");
  mlp = ValidConfig();
  mlp.mutable_dataset()->set_name("external");
  CHECK(Problem(mlp) ==
        "dataset.name: only \"fashion-mnist\" is supported, got \"external\"");
  // Too many elements is a size limit.
  JobConfig big = ExternalConfig();
  big.mutable_model()->mutable_parameters(0)->set_shape(0, 100000000);
  CHECK(ValidateJobConfig(big).code() == absl::StatusCode::kResourceExhausted);
}

TEST_CASE("JobConfig: gradient_dtype is FLOAT32 or BFLOAT16", "[config]") {
  JobConfig config = ValidConfig();
  for (DType ok : {DTYPE_UNSPECIFIED, FLOAT32, BFLOAT16}) {
    config.set_gradient_dtype(ok);
    CHECK(Problem(config).empty());
  }
  config.set_gradient_dtype(static_cast<DType>(9));
  CHECK(Problem(config).rfind("gradient_dtype: ", 0) == 0);
}

TEST_CASE("JobConfig: parameter_dtype is FLOAT32 or BFLOAT16", "[config]") {
  JobConfig config = ValidConfig();
  for (DType ok : {DTYPE_UNSPECIFIED, FLOAT32, BFLOAT16}) {
    config.set_parameter_dtype(ok);
    CHECK(Problem(config).empty());
  }
  config.set_parameter_dtype(static_cast<DType>(9));
  CHECK(Problem(config).rfind("parameter_dtype: FLOAT32 or BFLOAT16", 0) == 0);
}

}  // namespace
TEST_CASE("JobConfig: elastic sizes (min_workers, max_workers)", "[config]") {
  // A fixed-size config: both bounds are `workers`.
  JobConfig fixed = ValidConfig();
  ApplyJobConfigDefaults(&fixed);
  CHECK(MinWorkers(fixed) == fixed.workers());
  CHECK(MaxWorkers(fixed) == fixed.workers());
  CHECK_FALSE(IsElastic(fixed));
  CHECK(fixed.min_workers() == 0);  // left as it was

  // Elastic: workers defaults to max_workers (the job's ranks).
  JobConfig elastic = ValidConfig();
  elastic.clear_workers();
  elastic.set_min_workers(1);
  elastic.set_max_workers(4);
  ApplyJobConfigDefaults(&elastic);
  CHECK(elastic.workers() == 4);
  CHECK(Problem(elastic).empty());
  CHECK(IsElastic(elastic));
  CHECK(MinWorkers(elastic) == 1);

  struct Case {
    int32_t workers, min, max;
    const char* problem;
  };
  const Case cases[] = {
      {0, 3, 2, "max_workers: must be in [min_workers 3, 1024], got 2"},
      {0, 0, 2, "min_workers: must be >= 1 when max_workers is set, got 0"},
      {0, 2, 0, "max_workers: must be in [min_workers 2, 1024], got 0"},
      {0, -1, 2, "min_workers: must be >= 1 when max_workers is set, got -1"},
      {0, 1, 2000, "max_workers: must be in [min_workers 1, 1024], got 2000"},
      {3, 1, 4,
       "workers: must be 0 or max_workers (4) when min_workers/max_workers "
       "are set, got 3"},
  };
  for (const Case& c : cases) {
    JobConfig config = ValidConfig();
    config.set_workers(c.workers);
    config.set_min_workers(c.min);
    config.set_max_workers(c.max);
    ApplyJobConfigDefaults(&config);
    CHECK(Problem(config) == c.problem);
  }
}

}  // namespace psd
