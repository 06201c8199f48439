#include "common/sparse_config.h"

#include <functional>
#include <string>

#include <catch2/catch.hpp>

#include "common/job_config.h"

namespace psd {
namespace {

JobConfig Load(const std::string& path) {
  auto config = LoadJobConfigFile(path);
  REQUIRE(config.ok());
  ApplyJobConfigDefaults(&*config);
  return *config;
}

// The message of validating `config` after `edit`, "" when valid.
std::string Problem(const std::string& path,
                    const std::function<void(JobConfig*)>& edit) {
  JobConfig config = Load(path);
  edit(&config);
  absl::Status status = ValidateJobConfig(config);
  return status.ok() ? "" : std::string(status.message());
}

const char kDlrm[] = "deploy/jobs/planted_dlrm.textproto";
const char kLr[] = "deploy/jobs/planted_lr.textproto";

TEST_CASE("Sparse jobs: the shipped DLRM and LR jobs are valid", "[sparse]") {
  CHECK(Problem(kDlrm, [](JobConfig*) {}).empty());
  CHECK(Problem(kLr, [](JobConfig*) {}).empty());
}

TEST_CASE("Sparse jobs: the dense part's parameters", "[sparse]") {
  const JobConfig dlrm = Load(kDlrm);
  std::vector<ParameterSpec> p = ModelParameters(dlrm.model());
  // bottom 4 -> 16 -> 8; top (8 + 9 * 8 / 2 = 44) -> 32 -> 1.
  REQUIRE(p.size() == 8);
  CHECK(p[0].name() == "bottom0.weight");
  CHECK(p[0].shape(0) == 4);
  CHECK(p[0].shape(1) == 16);
  CHECK(p[3].name() == "bottom1.bias");
  CHECK(p[4].name() == "top0.weight");
  CHECK(p[4].shape(0) == 44);
  CHECK(p[4].shape(1) == 32);
  CHECK(p[7].name() == "top1.bias");
  CHECK(p[7].shape(0) == 1);
  const JobConfig lr = Load(kLr);
  p = ModelParameters(lr.model());
  REQUIRE(p.size() == 1);
  CHECK(p[0].name() == "bias");
  CHECK(TrainExamples(lr) == 100000);
}

TEST_CASE("Sparse jobs: a table without an optimizer gets the job's",
          "[sparse]") {
  JobConfig config = Load(kLr);
  config.mutable_model()->mutable_tables(0)->clear_optimizer();
  config.mutable_optimizer()->mutable_schedule()->set_kind(
      LearningRateSchedule::STEP);
  config.mutable_optimizer()->mutable_schedule()->set_step_size(10);
  ApplyJobConfigDefaults(&config);
  const OptimizerSpec& o = config.model().tables(0).optimizer();
  CHECK(o.kind() == OptimizerSpec::ADAGRAD);
  CHECK(o.learning_rate() == 0.1f);
  CHECK(o.epsilon() == 1e-10f);
  CHECK_FALSE(o.has_schedule());  // rows have no common step
  CHECK(ValidateJobConfig(config).ok());
}

TEST_CASE("Sparse jobs: invalid configs name the field", "[sparse]") {
  struct Case {
    const char* path;
    std::function<void(JobConfig*)> edit;
    const char* starts;
  };
  const Case cases[] = {
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_tables(1)->set_dim(0); },
       "model.tables[1].dim"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_tables(1)->set_dim(4); },
       "model.tables[1].dim: DLRM's tables share one dim"},
      {kLr, [](JobConfig* c) { c->mutable_model()->mutable_tables(0)->set_dim(2); },
       "model.tables[0].dim: must be 1 for SPARSE_LR"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_fields(3)->set_table("ads"); },
       "model.fields[3].table: no table \"ads\""},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_fields(5)->set_name("f1"); },
       "model.fields[5].name: field \"f1\" is mapped twice"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_tables(0)->set_num_shards(4); },
       "model.tables[0].num_shards"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->mutable_tables(1)->set_name("users"); },
       "model.tables[1].name"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->set_bottom_mlp(1, 4); },
       "model.bottom_mlp[1]"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->set_num_dense_features(0); },
       "model.num_dense_features"},
      {kDlrm, [](JobConfig* c) { c->mutable_model()->add_top_mlp(0); },
       "model.top_mlp[1]"},
      {kLr, [](JobConfig* c) { c->mutable_model()->add_bottom_mlp(8); },
       "model.bottom_mlp: only for DLRM"},
      {kLr, [](JobConfig* c) { c->mutable_model()->set_input_dim(784); },
       "model.input_dim"},
      {kLr, [](JobConfig* c) { c->mutable_model()->mutable_tables(0)->set_evict_after_steps(-1); },
       "model.tables[0].evict_after_steps"},
      {kLr, [](JobConfig* c) { c->mutable_model()->mutable_tables(0)->set_num_rows(0); },
       "model.tables[0].num_rows"},
      {kLr, [](JobConfig* c) { c->mutable_dataset()->set_name("fashion-mnist"); },
       "dataset.name"},
      {kLr, [](JobConfig* c) { c->mutable_dataset()->set_test_limit(0); },
       "dataset.test_limit"},
      {kLr, [](JobConfig* c) {
         c->mutable_dataset()->set_name("criteo");
         c->mutable_dataset()->set_train_file("../etc/passwd");
       },
       "dataset.train_file"},
      {kLr, [](JobConfig* c) {
         c->mutable_dataset()->set_name("criteo");
         c->mutable_dataset()->set_train_file("criteo/train.txt");
         c->mutable_dataset()->set_test_file("criteo/test.txt");
       },
       "model.fields: \"criteo\" has 26"},
      {kLr, [](JobConfig* c) { c->set_consistency(SSP); c->set_staleness(2); },
       "consistency"},
      {kLr, [](JobConfig* c) { c->set_min_workers(1); c->set_max_workers(2); },
       "min_workers"},
  };
  for (const Case& c : cases) {
    INFO(c.starts);
    const std::string problem = Problem(c.path, c.edit);
    CHECK(problem.rfind(c.starts, 0) == 0);
    INFO(problem);
  }
}

TEST_CASE("Sparse jobs: tables must fit the cluster's stated memory",
          "[sparse]") {
  const JobConfig config = Load(kDlrm);
  // A row: 8 + 4 * 8 * (1 + 1 Adagrad slot) = 72 bytes; two tables of 10^6
  // rows at R=2: 288 MB.
  CHECK(TableRowBytes(config.model().tables(0)) == 72);
  CHECK(CheckTablesFit(config, 288'000'000, 2).ok());
  CHECK(CheckTablesFit(config, 0, 2).ok());  // no bound stated
  absl::Status status = CheckTablesFit(config, 287'999'999, 2);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).rfind("model.tables[1].num_rows", 0) == 0);
  status = CheckTablesFit(config, 100'000'000, 2);
  CHECK(std::string(status.message()).rfind("model.tables[0].num_rows", 0) == 0);
}

}  // namespace
}  // namespace psd
