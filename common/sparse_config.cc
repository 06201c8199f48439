#include "common/sparse_config.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job_config.h"
#include "common/sparse_model_spec.h"

namespace psd {
namespace {

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// Checks MLP widths: 0 or 1 (min_layers) to kMaxSparseMlpLayers layers,
// each in [1, kMaxSparseMlpWidth].
absl::Status CheckWidths(const std::string& field,
                         const google::protobuf::RepeatedField<int32_t>& widths,
                         int min_layers) {
  if (widths.size() < min_layers || widths.size() > kMaxSparseMlpLayers) {
    return Invalid(field, absl::StrCat(min_layers, " to ", kMaxSparseMlpLayers,
                                       " layers, got ", widths.size()));
  }
  for (int i = 0; i < widths.size(); ++i) {
    if (widths[i] < 1 || widths[i] > kMaxSparseMlpWidth) {
      return Invalid(absl::StrCat(field, "[", i, "]"),
                     absl::StrCat("must be in [1, ", kMaxSparseMlpWidth,
                                  "], got ", widths[i]));
    }
  }
  return absl::OkStatus();
}

// A relative path inside the worker's --data_dir: no "..", not absolute.
absl::Status CheckDataFile(const std::string& field, const std::string& path) {
  if (path.empty()) return Invalid(field, "required for \"criteo\"");
  if (path.size() > 1024 || path[0] == '/' || absl::StrContains(path, "..")) {
    return Invalid(field, absl::StrCat("a relative path under the worker's "
                                       "--data_dir without \"..\", got \"",
                                       path.substr(0, 64), "\""));
  }
  return absl::OkStatus();
}

}  // namespace

EmbeddingTableSpec WithTableDefaults(EmbeddingTableSpec spec) {
  if (spec.dim() > 0 && spec.initializer().scale() == 0.0f) {
    spec.mutable_initializer()->set_scale(static_cast<float>(
        1.0 / std::sqrt(static_cast<double>(spec.dim()))));
  }
  if (spec.initializer().kind() == EmbeddingInitializer::KIND_UNSPECIFIED) {
    spec.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  }
  // The optimizer's per-kind defaults, through the job config's code.
  JobConfig wrapper;
  *wrapper.mutable_optimizer() = spec.optimizer();
  ApplyJobConfigDefaults(&wrapper);
  *spec.mutable_optimizer() = wrapper.optimizer();
  return spec;
}

absl::Status ValidateTableSpec(const EmbeddingTableSpec& spec,
                               const std::string& prefix) {
  const std::string p = prefix.empty() ? "" : prefix + ".";
  if (spec.name().empty() || spec.name().size() > 128) {
    return Invalid(p + "name", absl::StrCat("must have 1 to 128 characters, got ",
                                            spec.name().size()));
  }
  for (char ch : spec.name()) {
    if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_' && ch != '.') {
      return Invalid(p + "name", absl::StrCat("only [A-Za-z0-9_.-] allowed, got \"",
                                              spec.name(), "\""));
    }
  }
  if (spec.num_rows() < 1 || spec.num_rows() > kMaxEmbeddingRows) {
    return Invalid(p + "num_rows", absl::StrCat("must be in [1, 2^62], got ",
                                                spec.num_rows()));
  }
  if (spec.dim() < 1 || spec.dim() > kMaxEmbeddingDim) {
    return Invalid(p + "dim", absl::StrCat("must be in [1, ", kMaxEmbeddingDim,
                                           "], got ", spec.dim()));
  }
  if (spec.num_shards() < 1 || spec.num_shards() > kMaxEmbeddingShards) {
    return Invalid(p + "num_shards",
                   absl::StrCat("must be in [1, ", kMaxEmbeddingShards,
                                "], got ", spec.num_shards()));
  }
  const EmbeddingInitializer& init = spec.initializer();
  if (init.kind() != EmbeddingInitializer::KIND_UNSPECIFIED &&
      init.kind() != EmbeddingInitializer::ZERO &&
      init.kind() != EmbeddingInitializer::UNIFORM &&
      init.kind() != EmbeddingInitializer::NORMAL) {
    return Invalid(p + "initializer.kind",
                   absl::StrCat("unknown kind ", init.kind()));
  }
  if (!std::isfinite(init.scale()) || init.scale() < 0.0f) {
    return Invalid(p + "initializer.scale",
                   absl::StrCat("must be finite and >= 0, got ", init.scale()));
  }
  if (spec.admit_after_pushes() < 0 || spec.admit_after_pushes() > 1000000) {
    return Invalid(p + "admit_after_pushes",
                   absl::StrCat("must be in [0, 1000000], got ",
                                spec.admit_after_pushes()));
  }
  if (spec.evict_after_steps() < 0 || spec.evict_after_steps() > 1000000000) {
    return Invalid(p + "evict_after_steps",
                   absl::StrCat("must be in [0, 10^9], got ",
                                spec.evict_after_steps()));
  }
  if (spec.cache_staleness_steps() < 0 || spec.cache_staleness_steps() > 1000) {
    return Invalid(p + "cache_staleness_steps",
                   absl::StrCat("must be in [0, 1000], got ",
                                spec.cache_staleness_steps()));
  }
  if (spec.cache_rows() < 0 || spec.cache_rows() > 100000000) {
    return Invalid(p + "cache_rows", absl::StrCat("must be in [0, 10^8], got ",
                                                  spec.cache_rows()));
  }
  if (!spec.has_optimizer()) return Invalid(p + "optimizer", "required");
  const LearningRateSchedule::Kind schedule = spec.optimizer().schedule().kind();
  if (schedule != LearningRateSchedule::KIND_UNSPECIFIED &&
      schedule != LearningRateSchedule::CONSTANT) {
    return Invalid(p + "optimizer.schedule.kind",
                   "sparse tables support only CONSTANT (rows are updated at "
                   "their own pace, so there is no common step)");
  }
  // The optimizer is checked by the job config's validation, on a minimal
  // valid job carrying it; its errors start with "optimizer.".
  JobConfig wrapper;
  wrapper.set_name("embedding");
  wrapper.mutable_model()->set_kind(ModelSpec::MLP);
  wrapper.mutable_model()->set_input_dim(784);
  wrapper.mutable_model()->set_num_classes(10);
  wrapper.mutable_dataset()->set_name("fashion-mnist");
  *wrapper.mutable_optimizer() = spec.optimizer();
  wrapper.set_consistency(BSP);
  wrapper.set_batch_size(1);
  wrapper.set_epochs(1);
  wrapper.set_workers(1);
  ApplyJobConfigDefaults(&wrapper);
  absl::Status status = ValidateJobConfig(wrapper);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(p, status.message()));
  }
  return absl::OkStatus();
}


bool IsSparseModel(const ModelSpec& model) {
  return model.kind() == ModelSpec::SPARSE_LR || model.kind() == ModelSpec::DLRM;
}

void ApplySparseDefaults(JobConfig* config) {
  if (!config->has_model() || !IsSparseModel(config->model())) return;
  for (EmbeddingTableSpec& table : *config->mutable_model()->mutable_tables()) {
    if (!table.has_optimizer() && config->has_optimizer()) {
      const OptimizerSpec& job = config->optimizer();
      OptimizerSpec* o = table.mutable_optimizer();
      o->set_kind(job.kind());
      o->set_learning_rate(job.learning_rate());
      o->set_weight_decay(job.weight_decay());
      if (job.has_epsilon()) o->set_epsilon(job.epsilon());
      if (job.has_beta1()) o->set_beta1(job.beta1());
      if (job.has_beta2()) o->set_beta2(job.beta2());
      o->set_initial_accumulator_value(job.initial_accumulator_value());
    }
    if (table.has_optimizer()) table = WithTableDefaults(table);
  }
}

absl::Status ValidateSparseJob(const JobConfig& c) {
  const ModelSpec& m = c.model();
  const bool dlrm = m.kind() == ModelSpec::DLRM;
  const char* kind = dlrm ? "DLRM" : "SPARSE_LR";
  if (m.input_dim() != 0) return Invalid("model.input_dim", "only for MLP");
  if (!m.hidden_sizes().empty()) {
    return Invalid("model.hidden_sizes", "only for MLP");
  }
  if (m.num_classes() != 0) return Invalid("model.num_classes", "only for MLP");
  if (!m.parameters().empty()) {
    return Invalid("model.parameters", "only for EXTERNAL");
  }
  if (m.tables().empty() || m.tables_size() > kMaxSparseTables) {
    return Invalid("model.tables",
                   absl::StrCat("1 to ", kMaxSparseTables, " tables for ",
                                kind, ", got ", m.tables_size()));
  }
  std::map<std::string, int> table_index;
  std::vector<bool> read(m.tables_size(), false);
  for (int i = 0; i < m.tables_size(); ++i) {
    const EmbeddingTableSpec& t = m.tables(i);
    const std::string field = absl::StrCat("model.tables[", i, "]");
    if (t.num_shards() != 0) {
      return Invalid(absl::StrCat(field, ".num_shards"),
                     absl::StrCat("must be 0 in a job (the coordinator shards "
                                  "tables over the job's servers), got ",
                                  t.num_shards()));
    }
    EmbeddingTableSpec placed = t;
    placed.set_num_shards(1);
    if (absl::Status status = ValidateTableSpec(placed, field); !status.ok()) {
      return status;
    }
    if (auto [it, fresh] = table_index.emplace(t.name(), i); !fresh) {
      return Invalid(absl::StrCat(field, ".name"),
                     absl::StrCat("\"", t.name(), "\" is also model.tables[",
                                  it->second, "]"));
    }
    if (!dlrm && t.dim() != 1) {
      return Invalid(absl::StrCat(field, ".dim"),
                     absl::StrCat("must be 1 for SPARSE_LR (a weight per "
                                  "feature), got ", t.dim()));
    }
    if (dlrm && t.dim() != m.tables(0).dim()) {
      return Invalid(absl::StrCat(field, ".dim"),
                     absl::StrCat("DLRM's tables share one dim (their dot "
                                  "products interact): model.tables[0].dim "
                                  "is ", m.tables(0).dim(), ", got ", t.dim()));
    }
  }
  if (m.fields().empty() || m.fields_size() > kMaxSparseFields) {
    return Invalid("model.fields", absl::StrCat("1 to ", kMaxSparseFields,
                                                " fields, got ", m.fields_size()));
  }
  std::map<std::string, int> field_index;
  for (int i = 0; i < m.fields_size(); ++i) {
    const SparseField& f = m.fields(i);
    const std::string field = absl::StrCat("model.fields[", i, "]");
    if (f.name().empty() || f.name().size() > 128) {
      return Invalid(absl::StrCat(field, ".name"),
                     absl::StrCat("1 to 128 characters, got ", f.name().size()));
    }
    for (char ch : f.name()) {
      if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_' && ch != '.') {
        return Invalid(absl::StrCat(field, ".name"),
                       "only [A-Za-z0-9_.-] allowed");
      }
    }
    if (auto [it, fresh] = field_index.emplace(f.name(), i); !fresh) {
      return Invalid(absl::StrCat(field, ".name"),
                     absl::StrCat("field \"", f.name(),
                                  "\" is mapped twice: also model.fields[",
                                  it->second, "]"));
    }
    auto table = table_index.find(f.table());
    if (table == table_index.end()) {
      std::vector<std::string> names;
      for (const auto& [name, index] : table_index) names.push_back(name);
      return Invalid(absl::StrCat(field, ".table"),
                     absl::StrCat("no table \"", f.table().substr(0, 128),
                                  "\" (tables: ", absl::StrJoin(names, ", "),
                                  ")"));
    }
    read[table->second] = true;
  }
  for (int i = 0; i < m.tables_size(); ++i) {
    if (!read[i]) {
      return Invalid(absl::StrCat("model.tables[", i, "]"),
                     absl::StrCat("no field reads table \"", m.tables(i).name(),
                                  "\""));
    }
  }
  if (dlrm) {
    if (m.num_dense_features() < 1 ||
        m.num_dense_features() > kMaxDenseFeatures) {
      return Invalid("model.num_dense_features",
                     absl::StrCat("must be in [1, ", kMaxDenseFeatures,
                                  "] for DLRM, got ", m.num_dense_features()));
    }
    if (absl::Status s = CheckWidths("model.bottom_mlp", m.bottom_mlp(), 1);
        !s.ok()) {
      return s;
    }
    if (m.bottom_mlp(m.bottom_mlp_size() - 1) != m.tables(0).dim()) {
      return Invalid(
          absl::StrCat("model.bottom_mlp[", m.bottom_mlp_size() - 1, "]"),
          absl::StrCat("the bottom MLP's last width must equal the tables' "
                       "dim ", m.tables(0).dim(), ", got ",
                       m.bottom_mlp(m.bottom_mlp_size() - 1)));
    }
    if (absl::Status s = CheckWidths("model.top_mlp", m.top_mlp(), 0); !s.ok()) {
      return s;
    }
  } else {
    if (m.num_dense_features() != 0) {
      return Invalid("model.num_dense_features", "only for DLRM");
    }
    if (!m.bottom_mlp().empty()) return Invalid("model.bottom_mlp", "only for DLRM");
    if (!m.top_mlp().empty()) return Invalid("model.top_mlp", "only for DLRM");
  }
  int64_t parameters = 0;
  for (const ParameterSpec& p : SparseModelParameters(m)) {
    int64_t n = 1;
    for (int64_t d : p.shape()) n *= d;  // widths <= 4096, inputs <= ~33000
    parameters += n;
  }
  if (parameters > kMaxModelParameters) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model.top_mlp: the dense part has ", parameters,
        " parameters, more than the limit of ", kMaxModelParameters));
  }

  const DatasetSpec& d = c.dataset();
  if (d.name() == "planted-clicks") {
    if (d.train_limit() < 1) {
      return Invalid("dataset.train_limit",
                     absl::StrCat("required for \"planted-clicks\": training "
                                  "examples to generate, >= 1, got ",
                                  d.train_limit()));
    }
    if (d.test_limit() < 1) {
      return Invalid("dataset.test_limit",
                     absl::StrCat("required for \"planted-clicks\": test "
                                  "examples to generate, >= 1, got ",
                                  d.test_limit()));
    }
    if (!std::isfinite(d.planted_scale()) || d.planted_scale() < 0) {
      return Invalid("dataset.planted_scale",
                     absl::StrCat("must be finite and >= 0, got ",
                                  d.planted_scale()));
    }
    if (!d.train_file().empty()) {
      return Invalid("dataset.train_file", "only for \"criteo\"");
    }
    if (!d.test_file().empty()) {
      return Invalid("dataset.test_file", "only for \"criteo\"");
    }
  } else if (d.name() == "criteo") {
    if (d.train_limit() < 1) {
      return Invalid("dataset.train_limit",
                     absl::StrCat("required for \"criteo\": the training "
                                  "examples the job reads from train_file, "
                                  ">= 1, got ", d.train_limit()));
    }
    if (d.test_limit() < 0) return Invalid("dataset.test_limit", "must be >= 0");
    if (absl::Status s = CheckDataFile("dataset.train_file", d.train_file());
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckDataFile("dataset.test_file", d.test_file());
        !s.ok()) {
      return s;
    }
    if (d.planted_scale() != 0) {
      return Invalid("dataset.planted_scale", "only for \"planted-clicks\"");
    }
    if (m.fields_size() != kCriteoFields) {
      return Invalid("model.fields",
                     absl::StrCat("\"criteo\" has ", kCriteoFields,
                                  " categorical fields, got ", m.fields_size()));
    }
    if (dlrm && m.num_dense_features() != kCriteoDenseFeatures) {
      return Invalid("model.num_dense_features",
                     absl::StrCat("\"criteo\" has ", kCriteoDenseFeatures,
                                  " integer features, got ",
                                  m.num_dense_features()));
    }
  } else {
    return Invalid("dataset.name",
                   absl::StrCat("\"planted-clicks\" or \"criteo\" for ", kind,
                                ", got \"", d.name().substr(0, 64), "\""));
  }
  if (c.consistency() != BSP && c.consistency() != ASP) {
    return Invalid("consistency",
                   absl::StrCat("BSP or ASP for ", kind,
                                " (rows have no SSP rule)"));
  }
  if (!c.parameter_groups().empty()) {
    return Invalid("parameter_groups", absl::StrCat("not supported for ", kind));
  }
  if (c.min_workers() != 0 || c.max_workers() != 0) {
    return Invalid("min_workers", absl::StrCat("elastic workers are not "
                                               "supported for ", kind, " yet"));
  }
  return absl::OkStatus();
}

int64_t TableRowBytes(const EmbeddingTableSpec& spec) {
  return 8 + 4 * int64_t{spec.dim()} * (1 + OptimizerSlots(spec.optimizer()));
}

absl::Status CheckTablesFit(const JobConfig& config, int64_t cluster_bytes,
                            int32_t replicas) {
  if (!IsSparseModel(config.model()) || cluster_bytes <= 0) {
    return absl::OkStatus();
  }
  // long double: num_rows may be 2^62, times row bytes and replicas.
  long double total = 0;
  for (int i = 0; i < config.model().tables_size(); ++i) {
    const EmbeddingTableSpec& t = config.model().tables(i);
    const long double bytes = static_cast<long double>(t.num_rows()) *
                              TableRowBytes(t) * std::max(replicas, 1);
    total += bytes;
    if (total > static_cast<long double>(cluster_bytes)) {
      return Invalid(
          absl::StrCat("model.tables[", i, "].num_rows"),
          absl::StrCat("table \"", t.name(), "\" (", t.num_rows(), " rows x ",
                       TableRowBytes(t), " bytes x ", replicas,
                       " replicas) does not fit the cluster's stated table "
                       "memory of ", cluster_bytes, " bytes (psd_server "
                       "--embedding_max_bytes, summed over the job's servers)",
                       i > 0 ? " with the tables before it" : ""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<std::string>>> TableReplicas(
    const Assignment& assignment) {
  if (!assignment.table_replicas().empty()) {
    std::vector<std::vector<std::string>> replicas(
        assignment.table_replicas_size());
    for (const TableShardAddresses& t : assignment.table_replicas()) {
      if (t.shard() < 0 || t.shard() >= assignment.table_replicas_size() ||
          !replicas[t.shard()].empty() || t.replicas().empty()) {
        return Invalid(absl::StrCat("assignment.table_replicas[", t.shard(), "]"),
                       "shards must be 0 .. n-1, each once, with replicas");
      }
      replicas[t.shard()].assign(t.replicas().begin(), t.replicas().end());
    }
    return replicas;
  }
  std::map<std::string, std::string> address;
  for (const ServerInfo& s : assignment.servers()) address[s.id()] = s.address();
  std::vector<std::vector<std::string>> replicas(assignment.shards_size());
  for (const ShardReplicas& r : assignment.shards()) {
    const std::string field = absl::StrCat("assignment.shards[", r.shard(), "]");
    if (r.shard() < 0 || r.shard() >= assignment.shards_size() ||
        !replicas[r.shard()].empty()) {
      return Invalid(field, "shards must be 0 .. n-1, each once");
    }
    std::vector<std::string> ids = {r.primary()};
    ids.insert(ids.end(), r.backups().begin(), r.backups().end());
    for (const std::string& id : ids) {
      auto it = address.find(id);
      if (it == address.end()) {
        return Invalid(field, absl::StrCat("server \"", id.substr(0, 64),
                                           "\" is not in assignment.servers"));
      }
      replicas[r.shard()].push_back(it->second);
    }
  }
  return replicas;
}

EmbeddingTableSpec PlacedTable(const Assignment& assignment, int index) {
  EmbeddingTableSpec spec =
      WithTableDefaults(assignment.config().model().tables(index));
  spec.set_num_shards(assignment.table_replicas().empty()
                          ? assignment.shards_size()
                          : assignment.table_replicas_size());
  return spec;
}

}  // namespace psd
