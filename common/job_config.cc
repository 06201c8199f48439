#include "common/job_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/quote.h"
#include "common/sparse_config.h"
#include "common/sparse_model_spec.h"

namespace psd {
namespace {

// Collects the text-format parser's errors with their line and column.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (!errors_.empty()) errors_ += "; ";
    absl::StrAppend(&errors_, "line ", line + 1, ":", column + 1, ": ",
                    message);
  }
  const std::string& errors() const { return errors_; }

 private:
  std::string errors_;
};

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

const char* OptimizerKindName(OptimizerSpec::Kind kind) {
  switch (kind) {
    case OptimizerSpec::SGD:
      return "SGD";
    case OptimizerSpec::ADAGRAD:
      return "ADAGRAD";
    case OptimizerSpec::ADAM:
      return "ADAM";
    case OptimizerSpec::ADAMW:
      return "ADAMW";
    default:
      return "KIND_UNSPECIFIED";
  }
}

// INVALID_ARGUMENT "<field>: must be finite, got inf" for inf and nan.
absl::Status CheckFinite(const std::string& field, float value) {
  if (!std::isfinite(value)) {
    return Invalid(field, absl::StrCat("must be finite, got ", value));
  }
  return absl::OkStatus();
}

// Checks that `value` is at most `max_length` characters of
// [A-Za-z0-9_-]; "" passes.
absl::Status CheckIdentifier(const std::string& field, const std::string& value,
                             size_t max_length) {
  if (value.size() > max_length) {
    return Invalid(field, absl::StrCat("at most ", max_length,
                                       " characters, got ", value.size(), ": ",
                                       Quote(value)));
  }
  for (char ch : value) {
    if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_') {
      return Invalid(field, absl::StrCat("only [A-Za-z0-9_-] allowed, got ",
                                         Quote(value)));
    }
  }
  return absl::OkStatus();
}

// Checks that `value` is finite and in [0, 1).
absl::Status CheckUnitInterval(const std::string& field, float value) {
  if (absl::Status finite = CheckFinite(field, value); !finite.ok()) {
    return finite;
  }
  if (value < 0 || value >= 1) {
    return Invalid(field, absl::StrCat("must be in [0, 1), got ", value));
  }
  return absl::OkStatus();
}

// Everything of the OptimizerSpec but its schedule.
absl::Status ValidateOptimizer(const OptimizerSpec& o) {
  const OptimizerSpec::Kind kind = o.kind();
  if (kind != OptimizerSpec::SGD && kind != OptimizerSpec::ADAGRAD &&
      kind != OptimizerSpec::ADAM && kind != OptimizerSpec::ADAMW) {
    return Invalid("optimizer.kind",
                   absl::StrCat("must be SGD, ADAGRAD, ADAM or ADAMW, got ",
                                static_cast<int>(kind)));
  }
  const std::string name = OptimizerKindName(kind);
  const bool sgd = kind == OptimizerSpec::SGD;
  const bool adam = kind == OptimizerSpec::ADAM || kind == OptimizerSpec::ADAMW;
  const bool adagrad = kind == OptimizerSpec::ADAGRAD;
  for (const auto& [field, value] :
       {std::pair<const char*, float>{"optimizer.learning_rate",
                                      o.learning_rate()},
        {"optimizer.weight_decay", o.weight_decay()},
        {"optimizer.clip_value", o.clip_value()},
        {"optimizer.epsilon", o.epsilon()},
        {"optimizer.initial_accumulator_value",
         o.initial_accumulator_value()}}) {
    if (absl::Status finite = CheckFinite(field, value); !finite.ok()) {
      return finite;
    }
  }
  if (o.learning_rate() <= 0) {
    return Invalid("optimizer.learning_rate",
                   absl::StrCat("must be > 0, got ", o.learning_rate()));
  }
  if (o.weight_decay() < 0) {
    return Invalid("optimizer.weight_decay",
                   absl::StrCat("must be >= 0, got ", o.weight_decay()));
  }
  if (o.clip_value() < 0) {
    return Invalid(
        "optimizer.clip_value",
        absl::StrCat("must be >= 0 (0 = off), got ", o.clip_value()));
  }
  if (sgd) {
    absl::Status status = CheckUnitInterval("optimizer.momentum", o.momentum());
    if (!status.ok()) return status;
    if (o.nesterov() && o.momentum() == 0) {
      return Invalid("optimizer.nesterov", "requires momentum > 0, got 0");
    }
  } else {
    if (o.momentum() != 0) {
      return Invalid("optimizer.momentum",
                     absl::StrCat("only for SGD", adam ? " (set beta1)" : "",
                                  ", got ", o.momentum(), " with ", name));
    }
    if (o.nesterov()) {
      return Invalid("optimizer.nesterov",
                     absl::StrCat("only for SGD, got true with ", name));
    }
  }
  if (adam) {
    absl::Status status = CheckUnitInterval("optimizer.beta1", o.beta1());
    if (!status.ok()) return status;
    status = CheckUnitInterval("optimizer.beta2", o.beta2());
    if (!status.ok()) return status;
  } else {
    if (o.has_beta1()) {
      return Invalid("optimizer.beta1",
                     absl::StrCat("only for ADAM and ADAMW, got ", o.beta1(),
                                  " with ", name));
    }
    if (o.has_beta2()) {
      return Invalid("optimizer.beta2",
                     absl::StrCat("only for ADAM and ADAMW, got ", o.beta2(),
                                  " with ", name));
    }
  }
  if (sgd) {
    if (o.has_epsilon()) {
      return Invalid("optimizer.epsilon",
                     absl::StrCat("not used by SGD, got ", o.epsilon()));
    }
  } else if (o.epsilon() <= 0) {
    return Invalid("optimizer.epsilon",
                   absl::StrCat("must be > 0, got ", o.epsilon()));
  }
  if (adagrad) {
    if (o.initial_accumulator_value() < 0) {
      return Invalid(
          "optimizer.initial_accumulator_value",
          absl::StrCat("must be >= 0, got ", o.initial_accumulator_value()));
    }
  } else if (o.initial_accumulator_value() != 0) {
    return Invalid("optimizer.initial_accumulator_value",
                   absl::StrCat("only for ADAGRAD, got ",
                                o.initial_accumulator_value(), " with ", name));
  }
  return absl::OkStatus();
}

absl::Status ValidateSchedule(const OptimizerSpec& o) {
  const LearningRateSchedule& s = o.schedule();
  const LearningRateSchedule::Kind kind = s.kind();
  for (const auto& [field, value] :
       {std::pair<const char*, float>{"optimizer.schedule.gamma", s.gamma()},
        {"optimizer.schedule.min_learning_rate", s.min_learning_rate()}}) {
    if (absl::Status finite = CheckFinite(field, value); !finite.ok()) {
      return finite;
    }
  }
  if (kind != LearningRateSchedule::KIND_UNSPECIFIED &&
      kind != LearningRateSchedule::CONSTANT &&
      kind != LearningRateSchedule::STEP &&
      kind != LearningRateSchedule::COSINE) {
    return Invalid("optimizer.schedule.kind",
                   absl::StrCat("must be CONSTANT, STEP or COSINE, got ",
                                static_cast<int>(kind)));
  }
  if (kind == LearningRateSchedule::STEP) {
    if (s.step_size() < 1) {
      return Invalid(
          "optimizer.schedule.step_size",
          absl::StrCat("must be >= 1 for STEP, got ", s.step_size()));
    }
    if (s.gamma() <= 0 || s.gamma() > 1) {
      return Invalid("optimizer.schedule.gamma",
                     absl::StrCat("must be in (0, 1], got ", s.gamma()));
    }
  } else {
    if (s.step_size() != 0) {
      return Invalid("optimizer.schedule.step_size",
                     absl::StrCat("only for STEP, got ", s.step_size()));
    }
    if (s.gamma() != 0) {
      return Invalid("optimizer.schedule.gamma",
                     absl::StrCat("only for STEP, got ", s.gamma()));
    }
  }
  if (kind == LearningRateSchedule::COSINE) {
    if (s.decay_steps() < 1) {
      return Invalid(
          "optimizer.schedule.decay_steps",
          absl::StrCat("must be >= 1, got ", s.decay_steps(),
                       " (0 = the job's total updates, filled in by "
                       "ApplyJobConfigDefaults; is the job empty, or do its "
                       "parameter_groups mix BSP with ASP/SSP, which make "
                       "updates at different rates? Then set it)"));
    }
    if (s.min_learning_rate() < 0 ||
        s.min_learning_rate() > o.learning_rate()) {
      return Invalid(
          "optimizer.schedule.min_learning_rate",
          absl::StrCat("must be in [0, learning_rate ", o.learning_rate(),
                       "], got ", s.min_learning_rate()));
    }
  } else {
    if (s.decay_steps() != 0) {
      return Invalid("optimizer.schedule.decay_steps",
                     absl::StrCat("only for COSINE, got ", s.decay_steps()));
    }
    if (s.min_learning_rate() != 0) {
      return Invalid(
          "optimizer.schedule.min_learning_rate",
          absl::StrCat("only for COSINE, got ", s.min_learning_rate()));
    }
  }
  return absl::OkStatus();
}


}  // namespace

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text,
                                         const std::string& source) {
  JobConfig config;
  std::string trimmed(absl::StripLeadingAsciiWhitespace(text));
  if (!trimmed.empty() && trimmed[0] == '{') {
    auto status = google::protobuf::util::JsonStringToMessage(text, &config);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": not a valid JobConfig JSON: ", status.message().as_string()));
    }
    return config;
  }
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a valid JobConfig text proto: ", errors.errors()));
  }
  return config;
}

absl::StatusOr<JobConfig> LoadJobConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseJobConfig(text.str(), path);
}

namespace {

// A consistency model and its staleness; `field` is the path of the message
// holding them ("" for the job, "parameter_groups[i]." for a group).
absl::Status ValidateConsistency(const std::string& field,
                                 Consistency consistency, int32_t staleness) {
  if (consistency != BSP && consistency != ASP && consistency != SSP) {
    return Invalid(absl::StrCat(field, "consistency"),
                   absl::StrCat("must be BSP, ASP or SSP, got ",
                                static_cast<int>(consistency)));
  }
  if (consistency == SSP) {
    if (staleness < 0 || staleness > kMaxStaleness) {
      return Invalid(absl::StrCat(field, "staleness"),
                     absl::StrCat("must be in [0, ", kMaxStaleness,
                                  "] for SSP, got ", staleness));
    }
  } else if (staleness != 0) {
    return Invalid(absl::StrCat(field, "staleness"),
                   absl::StrCat("only for SSP, got ", staleness, " with ",
                                consistency == ASP ? "ASP" : "BSP"));
  }
  return absl::OkStatus();
}

// Every group names parameters of the model, each parameter at most once.
// REQUIRES: the model is valid.
absl::Status ValidateParameterGroups(const JobConfig& c) {
  std::map<std::string, int> group_of;  // parameter name -> group index
  std::vector<std::string> names;
  for (const ParameterSpec& p : ModelParameters(c.model())) {
    group_of[p.name()] = -1;
    names.push_back(p.name());
  }
  for (int i = 0; i < c.parameter_groups_size(); ++i) {
    const ParameterGroup& g = c.parameter_groups(i);
    const std::string field = absl::StrCat("parameter_groups[", i, "].");
    if (g.parameters().empty()) {
      return Invalid(absl::StrCat(field, "parameters"),
                     "at least one parameter name required");
    }
    for (int j = 0; j < g.parameters_size(); ++j) {
      const std::string path = absl::StrCat(field, "parameters[", j, "]");
      auto it = group_of.find(g.parameters(j));
      if (it == group_of.end()) {
        return Invalid(path, absl::StrCat("the model has no parameter \"",
                                          g.parameters(j), "\" (it has ",
                                          absl::StrJoin(names, ", "), ")"));
      }
      if (it->second >= 0) {
        return Invalid(path, absl::StrCat("\"", g.parameters(j),
                                          "\" is already in parameter_groups[",
                                          it->second, "]"));
      }
      it->second = i;
    }
    if (g.consistency() == CONSISTENCY_UNSPECIFIED) {
      return Invalid(absl::StrCat(field, "consistency"),
                     "required: BSP, ASP or SSP");
    }
    if (absl::Status status =
            ValidateConsistency(field, g.consistency(), g.staleness());
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

// ModelSpec of kind MLP: the layer sizes and the parameter count.
absl::Status ValidateMlp(const ModelSpec& m) {
  if (!m.parameters().empty()) {
    return Invalid("model.parameters", "only for kind EXTERNAL");
  }
  if (m.input_dim() <= 0) {
    return Invalid("model.input_dim",
                   absl::StrCat("must be >= 1, got ", m.input_dim()));
  }
  if (m.num_classes() < 2) {
    return Invalid("model.num_classes",
                   absl::StrCat("must be >= 2, got ", m.num_classes()));
  }
  if (m.hidden_sizes_size() > kMaxHiddenLayers) {
    return Invalid("model.hidden_sizes",
                   absl::StrCat("at most ", kMaxHiddenLayers, " layers, got ",
                                m.hidden_sizes_size()));
  }
  // Widths <= 2^16 and <= 64 layers: the count below cannot overflow.
  int64_t parameters = 0;
  int64_t fan_in = m.input_dim();
  for (int i = 0; i < m.hidden_sizes_size(); ++i) {
    if (m.hidden_sizes(i) <= 0) {
      return Invalid(absl::StrCat("model.hidden_sizes[", i, "]"),
                     absl::StrCat("must be at least 1, got ", m.hidden_sizes(i)));
    }
    if (m.hidden_sizes(i) > kMaxLayerWidth) {
      // Too big, not malformed: a size limit, like the one below.
      return absl::ResourceExhaustedError(absl::StrCat(
          "model.hidden_sizes[", i, "]: ", m.hidden_sizes(i),
          " is wider than the limit of ", kMaxLayerWidth, " units"));
    }
    parameters += (fan_in + 1) * m.hidden_sizes(i);
    fan_in = m.hidden_sizes(i);
  }
  parameters += (fan_in + 1) * m.num_classes();
  if (parameters > kMaxModelParameters) {
    return absl::ResourceExhaustedError(
        absl::StrCat("model.hidden_sizes: the model has ", parameters,
                     " parameters, more than the limit of ",
                     kMaxModelParameters, " per job"));
  }
  return absl::OkStatus();
}

// ModelSpec of kind EXTERNAL (issue 18): the listed parameters, and none of
// the MLP's fields.
absl::Status ValidateExternalModel(const ModelSpec& m) {
  if (m.input_dim() != 0) return Invalid("model.input_dim", "only for MLP");
  if (!m.hidden_sizes().empty()) {
    return Invalid("model.hidden_sizes", "only for MLP");
  }
  if (m.num_classes() != 0) return Invalid("model.num_classes", "only for MLP");
  if (m.parameters().empty()) {
    return Invalid("model.parameters",
                   "at least one parameter required for EXTERNAL");
  }
  if (m.parameters_size() > kMaxExternalParameters) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model.parameters: ", m.parameters_size(),
        " parameters, more than the limit of ", kMaxExternalParameters));
  }
  std::map<std::string, int> seen;
  int64_t elements = 0;
  for (int i = 0; i < m.parameters_size(); ++i) {
    const ParameterSpec& p = m.parameters(i);
    const std::string field = absl::StrCat("model.parameters[", i, "]");
    if (p.name().empty() || p.name().size() > kMaxParameterNameLength) {
      return Invalid(absl::StrCat(field, ".name"),
                     absl::StrCat("1 to ", kMaxParameterNameLength,
                                  " characters, got ", p.name().size()));
    }
    for (char ch : p.name()) {
      if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_' && ch != '.') {
        return Invalid(absl::StrCat(field, ".name"),
                       absl::StrCat("only [A-Za-z0-9_.-] allowed, got ",
                                    Quote(p.name())));
      }
    }
    if (auto [it, fresh] = seen.emplace(p.name(), i); !fresh) {
      return Invalid(absl::StrCat(field, ".name"),
                     absl::StrCat("\"", p.name(),
                                  "\" is also model.parameters[", it->second,
                                  "]"));
    }
    if (p.shape().empty() || p.shape_size() > kMaxParameterDims) {
      return Invalid(absl::StrCat(field, ".shape"),
                     absl::StrCat("1 to ", kMaxParameterDims,
                                  " dimensions for \"", p.name(), "\", got ",
                                  p.shape_size()));
    }
    int64_t n = 1;
    for (int d = 0; d < p.shape_size(); ++d) {
      if (p.shape(d) < 1 || p.shape(d) > kMaxModelParameters) {
        return Invalid(absl::StrCat(field, ".shape[", d, "]"),
                       absl::StrCat("must be in [1, ", kMaxModelParameters,
                                    "] for \"", p.name(), "\", got ",
                                    p.shape(d)));
      }
      n *= p.shape(d);  // <= 1e8 before each multiplication: no overflow
      if (n > kMaxModelParameters) break;
    }
    elements += n;
    if (elements > kMaxModelParameters) {
      return absl::ResourceExhaustedError(absl::StrCat(
          field, ": the model has more than the limit of ",
          kMaxModelParameters, " parameters per job"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

ParameterConsistency ConsistencyOf(const JobConfig& config,
                                   const std::string& parameter) {
  for (const ParameterGroup& g : config.parameter_groups()) {
    for (const std::string& name : g.parameters()) {
      if (name == parameter) return {g.consistency(), g.staleness()};
    }
  }
  return {config.consistency() == CONSISTENCY_UNSPECIFIED ? BSP
                                                          : config.consistency(),
          config.staleness()};
}

bool HasAsyncParameters(const JobConfig& config) {
  for (const ParameterSpec& p : ModelParameters(config.model())) {
    if (ConsistencyOf(config, p.name()).consistency != BSP) return true;
  }
  return false;
}

std::optional<int64_t> UpdatesPerStep(const JobConfig& config) {
  bool bsp = false, async = false;
  for (const ParameterSpec& p : ModelParameters(config.model())) {
    (ConsistencyOf(config, p.name()).consistency == BSP ? bsp : async) = true;
  }
  if (bsp && async) return std::nullopt;
  return async ? config.workers() : 1;
}

void ApplyJobConfigDefaults(JobConfig* config) {
  // First: the cosine horizon below is made of the ranks.
  if (config->workers() == 0 && config->max_workers() > 0) {
    config->set_workers(config->max_workers());
  }
  if (config->consistency() == CONSISTENCY_UNSPECIFIED) {
    config->set_consistency(BSP);
  }
  // Defaults inside a sub-message only when it is there, so that a missing
  // one is reported as such by ValidateJobConfig.
  if (config->has_optimizer()) {
    OptimizerSpec* o = config->mutable_optimizer();
    if (o->kind() == OptimizerSpec::KIND_UNSPECIFIED) {
      o->set_kind(OptimizerSpec::SGD);
    }
    // Only the fields the kind uses, so that an SGD config stays as it was.
    if (o->kind() == OptimizerSpec::ADAM || o->kind() == OptimizerSpec::ADAMW) {
      if (!o->has_beta1()) o->set_beta1(kDefaultBeta1);
      if (!o->has_beta2()) o->set_beta2(kDefaultBeta2);
      if (!o->has_epsilon()) o->set_epsilon(kDefaultAdamEpsilon);
    }
    if (o->kind() == OptimizerSpec::ADAGRAD && !o->has_epsilon()) {
      o->set_epsilon(kDefaultAdagradEpsilon);
    }
    if (o->has_schedule()) {
      LearningRateSchedule* s = o->mutable_schedule();
      if (s->kind() == LearningRateSchedule::STEP && s->gamma() == 0.0f) {
        s->set_gamma(kDefaultStepGamma);
      }
      // The cosine horizon defaults to the job's total steps, written into
      // the config so that servers (which see only the OptimizerSpec) use
      // the same T. Left 0 when the job's sizes are invalid (reported by
      // ValidateJobConfig).
      // A model past kMaxHiddenLayers is left to ValidateJobConfig, before
      // UpdatesPerStep allocates its parameter list.
      if (s->kind() == LearningRateSchedule::COSINE && s->decay_steps() == 0 &&
          config->workers() > 0 && config->batch_size() > 0 &&
          config->epochs() > 0 &&
          config->model().hidden_sizes_size() <= kMaxHiddenLayers &&
          config->model().parameters_size() <= kMaxExternalParameters) {
        // ASP/SSP: every worker's push is one update. Parameter groups that
        // mix BSP with ASP/SSP make updates at different rates: no default.
        const std::optional<int64_t> per_step = UpdatesPerStep(*config);
        const int64_t total =
            StepsPerEpoch(*config, TrainExamples(*config)) * config->epochs() *
            per_step.value_or(0);
        if (total > 0) s->set_decay_steps(total);
      }
    }
  }
  if (config->has_model() &&
      config->model().kind() == ModelSpec::KIND_UNSPECIFIED) {
    config->mutable_model()->set_kind(ModelSpec::MLP);
  }
  if (config->has_dataset() && config->dataset().name().empty()) {
    config->mutable_dataset()->set_name("fashion-mnist");
  }
  if (config->partition_bytes() == 0) {
    config->set_partition_bytes(kDefaultPartitionBytes);
  }
  ApplySparseDefaults(config);
}

absl::Status ValidateJobConfig(const JobConfig& c) {
  if (c.name().empty()) return Invalid("name", "required");
  if (absl::Status status = CheckIdentifier("name", c.name(), kMaxJobNameLength);
      !status.ok()) {
    return status;
  }
  if (!c.has_model()) return Invalid("model", "required");
  const ModelSpec& m = c.model();
  if (m.kind() == ModelSpec::EXTERNAL) {
    if (absl::Status status = ValidateExternalModel(m); !status.ok()) {
      return status;
    }
  } else if (m.kind() == ModelSpec::MLP) {
    if (absl::Status status = ValidateMlp(m); !status.ok()) return status;
  } else if (!IsSparseModel(m)) {
    return Invalid("model.kind",
                   absl::StrCat("MLP, EXTERNAL, SPARSE_LR or DLRM, got ",
                                static_cast<int>(m.kind())));
  }
  if (!c.has_dataset()) return Invalid("dataset", "required");
  if (IsSparseModel(m)) {
    if (absl::Status status = ValidateSparseJob(c); !status.ok()) return status;
  } else if (m.kind() == ModelSpec::EXTERNAL &&
             c.dataset().name() == "external") {
    if (c.dataset().train_limit() <= 0) {
      return Invalid("dataset.train_limit",
                     absl::StrCat("required for \"external\": the training "
                                  "set's size, >= 1, got ",
                                  c.dataset().train_limit()));
    }
  } else if (c.dataset().name() != "fashion-mnist") {
    return Invalid("dataset.name",
                   absl::StrCat(m.kind() == ModelSpec::EXTERNAL
                                    ? "\"fashion-mnist\" or \"external\""
                                    : "only \"fashion-mnist\" is supported",
                                ", got \"", c.dataset().name(), "\""));
  }
  if (c.dataset().train_limit() < 0) {
    return Invalid("dataset.train_limit", "must be >= 0");
  }
  if (c.dataset().test_limit() < 0) {
    return Invalid("dataset.test_limit", "must be >= 0");
  }
  if (m.kind() == ModelSpec::MLP) {
    if (m.input_dim() != 784) {
      return Invalid("model.input_dim",
                     absl::StrCat("fashion-mnist has 784 features, got ",
                                  m.input_dim()));
    }
    if (m.num_classes() != 10) {
      return Invalid("model.num_classes",
                     absl::StrCat("fashion-mnist has 10 classes, got ",
                                  m.num_classes()));
    }
  }
  if (!c.has_optimizer()) return Invalid("optimizer", "required");
  if (absl::Status status = ValidateOptimizer(c.optimizer()); !status.ok()) {
    return status;
  }
  if (absl::Status status = ValidateConsistency("", c.consistency(),
                                                c.staleness());
      !status.ok()) {
    return status;
  }
  if (absl::Status status = ValidateParameterGroups(c); !status.ok()) {
    return status;
  }
  for (const auto& [field, dtype] :
       {std::pair<const char*, DType>{"gradient_dtype", c.gradient_dtype()},
        {"parameter_dtype", c.parameter_dtype()}}) {
    if (dtype != DTYPE_UNSPECIFIED && dtype != FLOAT32 && dtype != BFLOAT16) {
      return Invalid(field, absl::StrCat("FLOAT32 or BFLOAT16, got ", dtype));
    }
  }
  if (c.batch_size() <= 0 || c.batch_size() > 65536) {
    return Invalid("batch_size",
                   absl::StrCat("must be in [1, 65536], got ", c.batch_size()));
  }
  if (c.epochs() <= 0 || c.epochs() > kMaxEpochs) {
    return Invalid("epochs", absl::StrCat("must be in [1, ", kMaxEpochs,
                                          "], got ", c.epochs()));
  }
  if (c.min_workers() != 0 || c.max_workers() != 0) {
    if (c.min_workers() < 1) {
      return Invalid("min_workers",
                     absl::StrCat("must be >= 1 when max_workers is set, got ",
                                  c.min_workers()));
    }
    if (c.max_workers() < c.min_workers() || c.max_workers() > 1024) {
      return Invalid("max_workers",
                     absl::StrCat("must be in [min_workers ", c.min_workers(),
                                  ", 1024], got ", c.max_workers()));
    }
    if (c.workers() != c.max_workers()) {
      return Invalid("workers",
                     absl::StrCat("must be 0 or max_workers (", c.max_workers(),
                                  ") when min_workers/max_workers are set, got ",
                                  c.workers()));
    }
  }
  if (c.workers() <= 0 || c.workers() > 1024) {
    return Invalid("workers",
                   absl::StrCat("must be in [1, 1024], got ", c.workers()));
  }
  // At most 60000 steps an epoch: no overflow.
  const int64_t total_steps =
      StepsPerEpoch(c, TrainExamples(c)) * int64_t{c.epochs()};
  if (total_steps > kMaxTotalSteps) {
    return Invalid("epochs",
                   absl::StrCat(c.epochs(), " epochs of ",
                                StepsPerEpoch(c, TrainExamples(c)),
                                " steps are ", total_steps,
                                " steps per worker, more than the limit of ",
                                kMaxTotalSteps));
  }
  // After the job's sizes, since COSINE's default horizon is made of them.
  if (absl::Status status = ValidateSchedule(c.optimizer()); !status.ok()) {
    return status;
  }
  if (c.snapshot().every_steps() < 0) {
    return Invalid("snapshot.every_steps",
                   absl::StrCat("must be >= 0, got ", c.snapshot().every_steps()));
  }
  if (c.snapshot().every_seconds() < 0) {
    return Invalid("snapshot.every_seconds",
                   absl::StrCat("must be >= 0, got ", c.snapshot().every_seconds()));
  }
  if (c.snapshot().keep_last() < 0) {
    return Invalid("snapshot.keep_last",
                   absl::StrCat("must be >= 0, got ", c.snapshot().keep_last()));
  }
  if (c.partition_bytes() < 4096) {
    return Invalid("partition_bytes",
                   absl::StrCat("must be >= 4096, got ", c.partition_bytes()));
  }
  return absl::OkStatus();
}

absl::Status CheckJobId(const std::string& field, const std::string& id) {
  return CheckIdentifier(field, id, kMaxJobIdLength);
}

std::vector<ParameterSpec> ModelParameters(const ModelSpec& model) {
  if (model.kind() == ModelSpec::EXTERNAL) {
    return {model.parameters().begin(), model.parameters().end()};
  }
  if (IsSparseModel(model)) return SparseModelParameters(model);
  std::vector<int64_t> sizes = {model.input_dim()};
  for (int h : model.hidden_sizes()) sizes.push_back(h);
  sizes.push_back(model.num_classes());
  std::vector<ParameterSpec> params;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    ParameterSpec weight;
    weight.set_name(absl::StrCat("layer", i, ".weight"));
    weight.add_shape(sizes[i]);
    weight.add_shape(sizes[i + 1]);
    params.push_back(weight);
    ParameterSpec bias;
    bias.set_name(absl::StrCat("layer", i, ".bias"));
    bias.add_shape(sizes[i + 1]);
    params.push_back(bias);
  }
  return params;
}

int OptimizerSlots(const OptimizerSpec& spec) {
  switch (spec.kind()) {
    case OptimizerSpec::ADAGRAD:
      return 1;
    case OptimizerSpec::ADAM:
    case OptimizerSpec::ADAMW:
      return 2;
    default:  // SGD
      return spec.momentum() != 0.0f ? 1 : 0;
  }
}

int64_t TrainExamples(const JobConfig& config) {
  const int64_t limit = config.dataset().train_limit();
  if (config.dataset().name() == "external" || IsSparseModel(config.model())) {
    return limit;
  }
  return limit > 0 ? std::min(limit, kFashionMnistTrainExamples)
                   : kFashionMnistTrainExamples;
}

int64_t StepsPerEpoch(const JobConfig& config, int64_t train_examples) {
  const int64_t smallest_shard = train_examples / config.workers();
  return smallest_shard / config.batch_size();
}

int32_t MinWorkers(const JobConfig& config) {
  return config.min_workers() > 0 ? config.min_workers() : config.workers();
}

int32_t MaxWorkers(const JobConfig& config) {
  return config.max_workers() > 0 ? config.max_workers() : config.workers();
}

bool IsElastic(const JobConfig& config) {
  return MinWorkers(config) < MaxWorkers(config);
}

}  // namespace psd
