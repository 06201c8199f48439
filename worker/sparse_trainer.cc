#include "worker/sparse_trainer.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/process.h"
#include "common/sparse_config.h"
#include "common/status.h"
#include "worker/click_data.h"
#include "worker/dataset.h"
#include "worker/embedding_client.h"
#include "worker/ps_client.h"
#include "worker/row_cache.h"
#include "worker/sparse_model.h"

namespace psd {
namespace {

// Examples evaluated per call at an epoch's end.
constexpr int32_t kEvalBatch = 1024;

double SecondsBetween(std::chrono::steady_clock::time_point a,
                      std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct SparseData {
  ClickData train, test;
};

absl::StatusOr<SparseData> LoadData(const JobConfig& config,
                                    const std::string& data_dir) {
  const DatasetSpec& d = config.dataset();
  SparseData data;
  if (d.name() == "planted-clicks") {
    PlantedClicksOptions o;
    o.fields = config.model().fields_size();
    o.dense = config.model().num_dense_features();
    o.train = d.train_limit();
    o.test = d.test_limit();
    if (d.planted_scale() > 0) o.planted_scale = d.planted_scale();
    o.seed = config.seed();
    PSD_ASSIGN_OR_RETURN(PlantedClicks planted, GeneratePlantedClicks(o));
    // tests/sparse_job_test.sh reads this line.
    Log()->info("planted-clicks: {} train, {} test examples; Bayes test "
                "log-loss {:.4f}, AUC {:.4f}, accuracy {:.4f}",
                planted.train.size, planted.test.size, planted.bayes_log_loss,
                planted.bayes_auc, planted.bayes_accuracy);
    data.train = std::move(planted.train);
    data.test = std::move(planted.test);
  } else {
    PSD_ASSIGN_OR_RETURN(data.train,
                         ReadCriteoTsv(absl::StrCat(data_dir, "/", d.train_file()),
                                       d.train_limit()));
    PSD_ASSIGN_OR_RETURN(data.test,
                         ReadCriteoTsv(absl::StrCat(data_dir, "/", d.test_file()),
                                       d.test_limit()));
    if (data.train.size < d.train_limit()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset.train_limit: the job reads ", d.train_limit(),
          " examples, ", d.train_file(), " has ", data.train.size));
    }
  }
  if (data.train.num_fields != config.model().fields_size() ||
      data.test.num_fields != config.model().fields_size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model.fields: ", config.model().fields_size(), " fields, the data have ",
        data.train.num_fields));
  }
  // DLRM reads the dense features; SPARSE_LR ignores them.
  if (config.model().kind() == ModelSpec::DLRM &&
      (data.train.num_dense != config.model().num_dense_features() ||
       data.test.num_dense != config.model().num_dense_features())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model.num_dense_features: ", config.model().num_dense_features(),
        ", the data have ", data.train.num_dense));
  }
  return data;
}

// A batch's rows, table by table: each table's ids are those its fields
// read, field after field (the k-th field reading table t has its n ids at
// [k n, (k + 1) n) of t's ids), so a field's rows and gradients are one
// contiguous [n, dim] block of its table's.
class SparseBatch {
 public:
  SparseBatch(const ModelSpec& model, int32_t max_batch) : model_(model) {
    for (const EmbeddingTableSpec& t : model.tables()) {
      tables_.push_back(Table{t.name(), t.num_rows(), t.dim(), {}, {}, {}, {}});
    }
    for (int f = 0; f < model.fields_size(); ++f) {
      for (size_t t = 0; t < tables_.size(); ++t) {
        if (tables_[t].name == model.fields(f).table()) {
          slot_.push_back({static_cast<int32_t>(t),
                           static_cast<int32_t>(tables_[t].fields.size())});
          tables_[t].fields.push_back(f);
        }
      }
    }
    dense_.resize(static_cast<size_t>(max_batch) *
                  std::max(model.num_dense_features(), 0));
    labels_.resize(max_batch);
  }

  // Takes examples idx[0..n) of `data`.
  void Gather(const ClickData& data, const int32_t* idx, int32_t n) {
    n_ = n;
    const int32_t dense = model_.kind() == ModelSpec::DLRM ? data.num_dense : 0;
    for (int32_t b = 0; b < n; ++b) {
      const int64_t e = idx[b];
      labels_[b] = data.labels[e];
      std::copy_n(data.dense.data() + e * data.num_dense, dense,
                  dense_.data() + static_cast<size_t>(b) * dense);
    }
    for (Table& t : tables_) {
      t.ids.resize(t.fields.size() * n);
      for (size_t k = 0; k < t.fields.size(); ++k) {
        const int32_t f = t.fields[k];
        for (int32_t b = 0; b < n; ++b) {
          t.ids[k * n + b] = FeatureRow(
              f, data.values[static_cast<size_t>(idx[b]) * data.num_fields + f],
              t.num_rows);
        }
      }
    }
  }

  // Pulls every table's rows; at `step` through the worker row cache of
  // tables that have one (EmbeddingClient::PullAt), -1: from the servers.
  absl::Status Pull(EmbeddingClient* client, int64_t step = -1) {
    for (Table& t : tables_) {
      PSD_RETURN_IF_ERROR(step < 0 ? client->Pull(t.name, t.ids, &t.rows)
                                   : client->PullAt(t.name, t.ids, step, &t.rows));
    }
    return absl::OkStatus();
  }

  // Pushes every table's gradients times `scale`; under BSP (`bsp` set) to
  // every shard, also a table no row of this batch is in.
  absl::Status Push(EmbeddingClient* client, const BspTag* bsp, int64_t step,
                    float scale) {
    for (Table& t : tables_) {
      if (scale != 1.0f) {
        for (float& g : t.grads) g *= scale;
      }
      PSD_RETURN_IF_ERROR(client->Push(t.name, t.ids, t.grads, bsp, step));
    }
    return absl::OkStatus();
  }

  std::vector<const float*> FieldRows() const {
    std::vector<const float*> out;
    for (const auto& [t, k] : slot_) {
      out.push_back(tables_[t].rows.data() +
                    static_cast<size_t>(k) * n_ * tables_[t].dim);
    }
    return out;
  }

  std::vector<float*> FieldGrads() {
    std::vector<float*> out;
    for (Table& t : tables_) t.grads.assign(t.ids.size() * t.dim, 0.0f);
    for (const auto& [t, k] : slot_) {
      out.push_back(tables_[t].grads.data() +
                    static_cast<size_t>(k) * n_ * tables_[t].dim);
    }
    return out;
  }

  const float* dense() const { return dense_.empty() ? nullptr : dense_.data(); }
  const float* labels() const { return labels_.data(); }
  int64_t rows_in_batch() const {
    int64_t rows = 0;
    for (const Table& t : tables_) rows += static_cast<int64_t>(t.ids.size());
    return rows;
  }

 private:
  struct Table {
    std::string name;
    uint64_t num_rows;
    int32_t dim;
    std::vector<int32_t> fields;  // the model's fields reading it, in order
    std::vector<uint64_t> ids;
    std::vector<float> rows;
    std::vector<float> grads;
  };
  const ModelSpec& model_;
  std::vector<Table> tables_;
  // Per model field: (table index, position among the table's fields).
  std::vector<std::pair<int32_t, int32_t>> slot_;
  std::vector<float> dense_;
  std::vector<float> labels_;
  int32_t n_ = 0;
};

struct Evaluation {
  double log_loss = 0, auc = 0, accuracy = 0;
};

// The model's test log-loss, AUC and accuracy with the dense parameters
// `params` and the tables as the servers hold them now.
absl::StatusOr<Evaluation> Evaluate(const ModelSpec& model, SparseModel* net,
                                    const std::vector<const float*>& params,
                                    const ClickData& test,
                                    EmbeddingClient* tables) {
  SparseBatch batch(model, kEvalBatch);
  std::vector<float> p(test.size);
  std::vector<int32_t> idx(kEvalBatch);
  for (int64_t start = 0; start < test.size; start += kEvalBatch) {
    const int32_t n =
        static_cast<int32_t>(std::min<int64_t>(kEvalBatch, test.size - start));
    for (int32_t b = 0; b < n; ++b) idx[b] = static_cast<int32_t>(start + b);
    batch.Gather(test, idx.data(), n);
    PSD_RETURN_IF_ERROR(batch.Pull(tables));
    net->Predict(params, batch.dense(), batch.FieldRows(), n, p.data() + start);
  }
  Evaluation e;
  e.log_loss = LogLoss(p, test.labels);
  e.auc = Auc(p, test.labels);
  e.accuracy = Accuracy(p, test.labels);
  return e;
}

}  // namespace

absl::Status TrainSparseRank(const Assignment& assignment,
                             const TrainerOptions& options,
                             const ProgressSink& report,
                             const std::atomic<bool>* cancel) {
  const JobConfig& config = assignment.config();
  const ModelSpec& model = config.model();
  const int32_t rank = assignment.rank();
  const int32_t workers = config.workers();
  const int32_t batch_size = config.batch_size();
  PSD_ASSIGN_OR_RETURN(SparseData data, LoadData(config, options.data_dir));
  if (data.train.size < TrainExamples(config)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the training set has ", data.train.size, " examples; the job expects ",
        TrainExamples(config)));
  }
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<SparseModel> net,
                       SparseModel::Create(model, std::max(batch_size, kEvalBatch)));

  ParameterClientOptions client_options;
  client_options.pull_timeout_ms = options.pull_timeout_ms;
  client_options.cancel = cancel;
  client_options.views = options.views;
  client_options.pull_with_push = false;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ParameterClient> dense,
                       ParameterClient::Create(assignment, client_options));
  PSD_ASSIGN_OR_RETURN(std::vector<std::vector<std::string>> replicas,
                       TableReplicas(assignment));
  EmbeddingClientOptions table_options;
  // A BSP push waits for every rank's: as long as a dense pull may.
  table_options.timeout_ms = options.pull_timeout_ms;
  // The rank's dedup identity, with sequences numbered from the step (see
  // the push below): the worker that replaces this one after a crash
  // sends the same keys for the same step. (BSP pushes are deduplicated
  // by (step, rank) anyway.)
  table_options.client_id = absl::StrCat("rank-", rank);
  PSD_ASSIGN_OR_RETURN(
      std::unique_ptr<EmbeddingClient> tables,
      EmbeddingClient::Create(assignment.job_id(), replicas, table_options));
  const bool bsp = config.consistency() == BSP;
  // The worker row cache: ASP only (a BSP job always pulls from the
  // servers, so the cache never changes its results).
  int cached_tables = 0;
  for (const EmbeddingTableSpec& t : model.tables()) {
    if (!bsp && t.cache_staleness_steps() > 0) {
      PSD_RETURN_IF_ERROR(
          tables->EnableCache(t.name(), t.cache_staleness_steps(), t.cache_rows()));
      ++cached_tables;
    }
  }
  // Cache answers so far, for the metrics' increments.
  int64_t cache_hits = 0, cache_misses = 0;
  auto count_cache = [&] {
    int64_t hits = 0, misses = 0;
    for (const EmbeddingTableSpec& t : model.tables()) {
      if (const RowCache* c = tables->cache(t.name())) {
        hits += c->hits();
        misses += c->misses();
      }
    }
    if (TrainerMetrics* m = options.metrics) {
      m->row_cache_hits->Increment(hits - cache_hits);
      m->row_cache_misses->Increment(misses - cache_misses);
    }
    cache_hits = hits;
    cache_misses = misses;
  };

  std::vector<std::vector<float>> params(dense->parameter_sizes().size());
  std::vector<std::vector<float>> grads(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].resize(dense->parameter_sizes()[i]);
    grads[i].resize(dense->parameter_sizes()[i]);
  }
  std::vector<float*> param_out, grad_out;
  std::vector<const float*> param_in;
  for (size_t i = 0; i < params.size(); ++i) {
    param_out.push_back(params[i].data());
    param_in.push_back(params[i].data());
    grad_out.push_back(grads[i].data());
  }

  const int64_t steps_per_epoch = StepsPerEpoch(config, TrainExamples(config));
  const int64_t total_steps = steps_per_epoch * config.epochs();
  const std::vector<int32_t> shard = ShardIndices(
      static_cast<int32_t>(TrainExamples(config)), rank, workers);
  SparseBatch batch(model, batch_size);

  ProgressWindow progress(assignment, rank, report);

  PSD_ASSIGN_OR_RETURN(const int64_t start_step,
                       StartStep(assignment, dense.get(), param_out, total_steps));
  Log()->info("job {} rank {}/{}: sparse {} model, {} tables on {} shard(s), "
              "{} steps per epoch, {} epochs, from step {}",
              assignment.job_id(), rank, workers,
              model.kind() == ModelSpec::DLRM ? "DLRM" : "SPARSE_LR",
              model.tables_size(), replicas.size(), steps_per_epoch,
              config.epochs(), start_step);
  if (start_step == total_steps) {
    progress.request().set_done(true);
    progress.Send(config.epochs() - 1, total_steps);
    return absl::OkStatus();
  }
  const absl::Time train_start = absl::Now();
  for (int32_t epoch = static_cast<int32_t>(start_step / steps_per_epoch);
       epoch < config.epochs(); ++epoch) {
    const std::vector<int32_t> order =
        EpochOrder(shard, config.seed(), epoch, rank);
    progress.StartEpoch();
    const int64_t first = std::max<int64_t>(0, start_step - epoch * steps_per_epoch);
    for (int64_t i = first; i < steps_per_epoch; ++i) {
      if (cancel->load()) return absl::CancelledError("job cancelled");
      const int64_t step = epoch * steps_per_epoch + i;
      const auto start = std::chrono::steady_clock::now();
      PSD_RETURN_IF_ERROR(dense->Pull(step, false, param_out));
      batch.Gather(data.train, order.data() + i * batch_size, batch_size);
      PSD_RETURN_IF_ERROR(batch.Pull(tables.get(), cached_tables > 0 ? step : -1));
      const auto pulled = std::chrono::steady_clock::now();
      if (options.on_step_batch) {
        options.on_step_batch(assignment, epoch, step,
                              order.data() + i * batch_size, batch_size);
      }
      const float loss = net->ForwardBackward(
          param_in, batch.dense(), batch.FieldRows(), batch.labels(),
          batch_size, grad_out, batch.FieldGrads());
      const auto computed = std::chrono::steady_clock::now();
      // Rows first, then the dense part (see the header).
      const BspTag tag{step, rank, workers};
      tables->set_next_sequence(static_cast<uint64_t>(step) << 20);
      PSD_RETURN_IF_ERROR(batch.Push(tables.get(), bsp ? &tag : nullptr, step,
                                     bsp ? 1.0f : 1.0f / workers));
      PSD_RETURN_IF_ERROR(dense->Push(step, grads));
      const auto pushed = std::chrono::steady_clock::now();
      if (TrainerMetrics* m = options.metrics) {
        m->ObserveStep(SecondsBetween(start, pulled),
                       SecondsBetween(pulled, computed),
                       SecondsBetween(computed, pushed),
                       SecondsBetween(start, pushed), batch_size);
        m->rows_pulled->Increment(batch.rows_in_batch());
        m->rows_pushed->Increment(batch.rows_in_batch());
      }
      if (cached_tables > 0) count_cache();
      progress.AddStep(loss, batch_size);
      if ((step + 1) % options.progress_every_steps == 0 &&
          progress.Send(epoch, step + 1)) {
        return absl::CancelledError("job cancelled");
      }
    }
    const int64_t end_step = (epoch + 1) * steps_per_epoch;
    if (rank == 0) {
      // The parameters after the epoch: under BSP every rank's rows of the
      // epoch are applied (this rank's last push returned), and the dense
      // pull of end_step waits for every rank's dense push.
      PSD_RETURN_IF_ERROR(dense->Pull(end_step, false, param_out));
      PSD_ASSIGN_OR_RETURN(
          Evaluation e, Evaluate(model, net.get(), param_in, data.test, tables.get()));
      ReportProgressRequest& r = progress.request();
      r.set_has_test_accuracy(true);
      r.set_test_accuracy(static_cast<float>(e.accuracy));
      r.set_test_log_loss(static_cast<float>(e.log_loss));
      r.set_test_auc(static_cast<float>(e.auc));
      // tests/sparse_job_test.sh reads this line.
      Log()->info("job {}: epoch {} done, train loss {:.4f}, test log-loss "
                  "{:.4f}, AUC {:.4f}, accuracy {:.4f}",
                  assignment.job_id(), epoch,
                  progress.mean_loss(), e.log_loss,
                  e.auc, e.accuracy);
    }
    if (epoch + 1 == config.epochs()) progress.request().set_done(true);
    if (progress.Send(epoch, end_step) && !progress.request().done()) {
      return absl::CancelledError("job cancelled");
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - train_start);
  Log()->info("job {} rank {}: trained {} steps in {:.3f} s ({:.2f} steps/s, "
              "{:.0f} samples/s), {} table failover(s), row cache {} hits, "
              "{} misses",
              assignment.job_id(), rank, total_steps - start_step, seconds,
              seconds > 0 ? (total_steps - start_step) / seconds : 0.0,
              seconds > 0 ? (total_steps - start_step) * batch_size / seconds : 0.0,
              tables->failovers(), cache_hits, cache_misses);
  return absl::OkStatus();
}

}  // namespace psd
