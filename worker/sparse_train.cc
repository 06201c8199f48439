// sparse_train: trains a sparse model against real psd_server processes
// over psd.v1.EmbeddingServer (proto/embedding.proto), and prints its loss
// and accuracy. A driver for sparse embedding tables (issue 7); it does not
// go through the coordinator's job scheduler: it is given the servers'
// addresses and makes its tables itself:
//   --servers=a,b             shard 0 on a, shard 1 on b (one replica each);
//   --servers=a,b --replication=2
//                             shard s on servers s, s+1, ... (mod N), the
//                             first the primary: here shard 0 on [a, b],
//                             shard 1 on [b, a];
//   --servers='a,b;c,d'       one group per shard, replicas primary first:
//                             shard 0 on [a, b], shard 1 on [c, d].
// With replicas, each client fails over on its own when a primary dies
// (worker/embedding_client.h); at the end, every replica's per-shard rows,
// update counts and checksums are printed ("replica ..." lines) and the
// failovers made ("failovers: N"), so a test can compare them with an
// undisturbed run: with --workers=1 the pushes come in a fixed order and
// the final rows are bitwise the same on every run.
//
// Data: no click or text-classification data set is packaged for Debian
// (the package lists were searched), so the data are GENERATED, with a
// known ground truth: worker/click_data.h's GeneratePlantedClicks (a
// planted logistic model over F = --fields categorical fields, no dense
// features; --planted_scale, --seed), like click logs.
//   * Field f's value v of an example is the feature id
//     FeatureRow(f, v, num_rows) = SplitMix64Mix((f + 1) * 2^40 + v) mod
//     num_rows (the hashing trick into a table of --num_rows rows, 10^8 by
//     default).
//   * Examples [0, train) train, [train, train + test) test.
//   The Bayes accuracy (predicting with the planted model) is printed as
//   the ceiling; the majority class's rate as the chance level.
//
// Model: embedding bag + linear. Table "emb" (num_rows x dim) holds the
// features' embeddings; table "dense" (1 row x (dim + 1)) holds the linear
// layer w and its bias b. logit = w . sum_f emb[id_f] + b, logistic loss,
// mean over the batch. Both tables use the same row-wise optimizer on the
// servers (Adagrad, --learning_rate). --workers threads train at once,
// each with its own EmbeddingClient, on examples i = worker (mod workers):
// asynchronous (ASP), as the servers apply each push when it arrives.
//
// Snapshots: --snapshot_every_epochs=N snapshots both tables on every
// server after every N-th epoch (metadata: the epoch and the untrained test
// log-loss, printed "snapshot: epoch E ..."); --resume restores them (each
// server its newest complete snapshot) and trains on from epoch E + 1.
// With --workers=1 the pushes come in a fixed order, so a resumed run
// ends with bitwise the rows of a run never stopped
// (tests/sparse_snapshot_test.sh).
//
// Exit status: 0 when the final test accuracy is at least --min_accuracy
// and the test log-loss went down; 1 otherwise; 2 for bad flags.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "common/transport_security.h"
#include "common/embedding_rows.h"
#include "worker/click_data.h"
#include "worker/embedding_client.h"

ABSL_FLAG(std::string, servers, "",
          "host:port of the psd_servers (required): comma-separated, server s "
          "holding shard s (see --replication); or one group per shard, "
          "groups separated by ';', replicas in a group by ',', primary "
          "first.");
ABSL_FLAG(int, replication, 1,
          "With a comma-separated --servers: replicas per shard R; shard s "
          "lives on servers s, s+1, ..., s+R-1 (mod N), the first the "
          "primary. 1 <= R <= N.");
ABSL_FLAG(std::string, job_id, "sparse-train", "Job id the tables belong to.");
ABSL_FLAG(int, fields, 8, "Categorical fields per example.");
ABSL_FLAG(int, dim, 8, "Embedding width d.");
ABSL_FLAG(uint64_t, num_rows, 100000000, "Rows V of the embedding table.");
ABSL_FLAG(int, train_examples, 200000, "Training examples.");
ABSL_FLAG(int, test_examples, 20000, "Test examples.");
ABSL_FLAG(int, batch_size, 256, "Examples per step and worker.");
ABSL_FLAG(int, epochs, 3, "Passes over the training examples.");
ABSL_FLAG(int, workers, 2, "Training threads, each its own client.");
ABSL_FLAG(double, learning_rate, 0.05, "Adagrad learning rate (servers).");
ABSL_FLAG(double, planted_scale, 0.8,
          "Standard deviation of the planted features' weights.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the data and of the tables' init.");
ABSL_FLAG(double, min_accuracy, 0.0,
          "Exit 1 when the final test accuracy is below this.");
ABSL_FLAG(bool, drop_tables, true, "Drop the tables at the end.");
ABSL_FLAG(int, snapshot_every_epochs, 0,
          "After every N-th epoch, snapshot both tables on every server "
          "(SnapshotTable: needs psd_server --data_dir), recording the epoch "
          "in the snapshots; 0 = never.");
ABSL_FLAG(bool, resume, false,
          "Restore both tables from the servers' newest snapshots "
          "(CreateTable restore) instead of creating them, and continue "
          "with the epoch after the one the snapshots were taken after, up "
          "to --epochs. The other flags must be those of the run that took "
          "the snapshots.");

namespace psd {
namespace {

struct Data {
  int fields = 0;
  uint64_t num_rows = 0;
  PlantedClicks clicks;

  // The feature id (row of table "emb") of field f of example i of `set`.
  uint64_t Feature(const ClickData& set, int64_t i, int f) const {
    return FeatureRow(f, set.values[i * fields + f], num_rows);
  }
};

struct Batch {
  std::vector<uint64_t> ids;  // [n, fields]
  std::vector<float> labels;  // [n]
};

void MakeBatch(const Data& data, const ClickData& set,
               const std::vector<int64_t>& examples, Batch* batch) {
  batch->ids.resize(examples.size() * data.fields);
  batch->labels.resize(examples.size());
  for (size_t b = 0; b < examples.size(); ++b) {
    for (int f = 0; f < data.fields; ++f) {
      batch->ids[b * data.fields + f] = data.Feature(set, examples[b], f);
    }
    batch->labels[b] = set.labels[examples[b]];
  }
}

// Forward pass: logits[b] = w . sum_f emb[b, f] + bias; bags[b] the sums.
void Forward(int fields, int dim, const std::vector<float>& emb,
             const std::vector<float>& dense, size_t n,
             std::vector<float>* bags, std::vector<float>* logits) {
  bags->assign(n * dim, 0.0f);
  logits->assign(n, 0.0f);
  for (size_t b = 0; b < n; ++b) {
    float* bag = bags->data() + b * dim;
    for (int f = 0; f < fields; ++f) {
      const float* e = emb.data() + (b * fields + f) * dim;
      for (int c = 0; c < dim; ++c) bag[c] += e[c];
    }
    float z = dense[dim];
    for (int c = 0; c < dim; ++c) z += dense[c] * bag[c];
    (*logits)[b] = z;
  }
}

double LogisticLoss(float z, float y) {
  // log(1 + exp(-z)) for y = 1, log(1 + exp(z)) for y = 0, stably.
  const double s = y > 0.5f ? -z : z;
  return s > 0 ? s + std::log1p(std::exp(-s)) : std::log1p(std::exp(s));
}

struct Eval {
  double loss = 0;
  double accuracy = 0;
};

// Evaluates on the test set.
absl::StatusOr<Eval> Evaluate(EmbeddingClient* client, const Data& data,
                              int dim) {
  const int64_t first = 0;
  const int64_t count = data.clicks.test.size;
  std::vector<float> dense;
  if (absl::Status s = client->Pull("dense", {0}, &dense); !s.ok()) return s;
  Eval eval;
  Batch batch;
  std::vector<float> emb, bags, logits;
  std::vector<int64_t> examples;
  for (int64_t start = first; start < first + count; start += 4096) {
    examples.clear();
    for (int64_t i = start; i < std::min(first + count, start + 4096); ++i) {
      examples.push_back(i);
    }
    MakeBatch(data, data.clicks.test, examples, &batch);
    if (absl::Status s = client->Pull("emb", batch.ids, &emb); !s.ok()) {
      return s;
    }
    Forward(data.fields, dim, emb, dense, examples.size(), &bags, &logits);
    for (size_t b = 0; b < examples.size(); ++b) {
      eval.loss += LogisticLoss(logits[b], batch.labels[b]);
      eval.accuracy += ((logits[b] > 0) == (batch.labels[b] > 0.5f)) ? 1 : 0;
    }
  }
  eval.loss /= count;
  eval.accuracy /= count;
  return eval;
}

// One worker's pass over its examples of one epoch. Returns the mean
// training log-loss of its batches (before each update).
absl::StatusOr<double> TrainEpoch(EmbeddingClient* client, const Data& data,
                                  int dim, int worker, int workers,
                                  int batch_size, int64_t train) {
  Batch batch;
  std::vector<float> emb, dense, bags, logits, grad_emb, grad_dense(dim + 1);
  std::vector<int64_t> examples;
  double loss = 0;
  int64_t seen = 0;
  const int fields = data.fields;
  for (int64_t i = worker; i < train;) {
    examples.clear();
    for (; i < train && static_cast<int>(examples.size()) < batch_size;
         i += workers) {
      examples.push_back(i);
    }
    MakeBatch(data, data.clicks.train, examples, &batch);
    const size_t n = examples.size();
    if (absl::Status s = client->Pull("dense", {0}, &dense); !s.ok()) return s;
    if (absl::Status s = client->Pull("emb", batch.ids, &emb); !s.ok()) return s;
    Forward(fields, dim, emb, dense, n, &bags, &logits);
    grad_emb.assign(n * fields * dim, 0.0f);
    std::fill(grad_dense.begin(), grad_dense.end(), 0.0f);
    for (size_t b = 0; b < n; ++b) {
      loss += LogisticLoss(logits[b], batch.labels[b]);
      const float p = 1.0f / (1.0f + std::exp(-logits[b]));
      const float delta = (p - batch.labels[b]) / static_cast<float>(n);
      for (int f = 0; f < fields; ++f) {
        float* g = grad_emb.data() + (b * fields + f) * dim;
        for (int c = 0; c < dim; ++c) g[c] = delta * dense[c];
      }
      for (int c = 0; c < dim; ++c) grad_dense[c] += delta * bags[b * dim + c];
      grad_dense[dim] += delta;
    }
    seen += static_cast<int64_t>(n);
    if (absl::Status s = client->Push("emb", batch.ids, grad_emb); !s.ok()) {
      return s;
    }
    if (absl::Status s = client->Push("dense", {0}, grad_dense); !s.ok()) {
      return s;
    }
  }
  return seen > 0 ? loss / seen : 0.0;
}

// --servers and --replication as the replicas of each shard.
absl::StatusOr<std::vector<std::vector<std::string>>> ParseServers(
    const std::string& text, int replication) {
  std::vector<std::vector<std::string>> shards;
  if (absl::StrContains(text, ';')) {
    if (replication != 1) {
      return absl::InvalidArgumentError(
          "--replication: only with a comma-separated --servers");
    }
    for (absl::string_view group : absl::StrSplit(text, ';', absl::SkipEmpty())) {
      shards.push_back(absl::StrSplit(group, ',', absl::SkipEmpty()));
    }
    return shards;
  }
  const std::vector<std::string> servers =
      absl::StrSplit(text, ',', absl::SkipEmpty());
  if (replication < 1 || replication > static_cast<int>(servers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replication: must be in [1, ", servers.size(),
                     "] (the number of servers), got ", replication));
  }
  for (size_t s = 0; s < servers.size(); ++s) {
    shards.emplace_back();
    for (int r = 0; r < replication; ++r) {
      shards.back().push_back(servers[(s + r) % servers.size()]);
    }
  }
  return shards;
}

// Prints every replica's status of `table`: role, rows, updates, checksum
// per shard it holds, and the backups it dropped.
void PrintReplicas(EmbeddingClient* client, const std::string& table,
                   const std::vector<std::vector<std::string>>& shards) {
  auto all = client->ReplicaStatus(table, /*checksum=*/true);
  for (size_t s = 0; s < all.size(); ++s) {
    for (size_t r = 0; r < all[s].size(); ++r) {
      const std::string& address = shards[s][r];
      if (!all[s][r].ok()) {
        std::printf("replica %s shard %zu %s: unreachable (%s)\n",
                    table.c_str(), s, address.c_str(),
                    std::string(all[s][r].status().message()).c_str());
        continue;
      }
      for (const TableShardStatus& st : all[s][r]->shard_status()) {
        if (st.shard() != static_cast<int32_t>(s)) continue;
        std::printf("replica %s shard %zu %s: %s rows %lld updates %lld "
                    "checksum %016llx dropped [%s]\n",
                    table.c_str(), s, address.c_str(),
                    TableShardStatus::Role_Name(st.role()).c_str(),
                    static_cast<long long>(st.rows()),
                    static_cast<long long>(st.updates()),
                    static_cast<unsigned long long>(st.checksum()),
                    absl::StrJoin(st.dropped(), "; ").c_str());
      }
    }
  }
}

int Main() {
  auto parsed = ParseServers(absl::GetFlag(FLAGS_servers),
                             absl::GetFlag(FLAGS_replication));
  if (!parsed.ok()) {
    std::fprintf(stderr, "sparse_train: %s\n",
                 std::string(parsed.status().message()).c_str());
    return 2;
  }
  const std::vector<std::vector<std::string>> shards = *std::move(parsed);
  if (shards.empty()) {
    std::fprintf(stderr, "sparse_train: --servers is required\n");
    return 2;
  }
  const int dim = absl::GetFlag(FLAGS_dim);
  const int workers = absl::GetFlag(FLAGS_workers);
  const int64_t train = absl::GetFlag(FLAGS_train_examples);
  const int64_t test = absl::GetFlag(FLAGS_test_examples);
  const int fields = absl::GetFlag(FLAGS_fields);
  if (dim < 1 || workers < 1 || train < 1 || test < 1 || fields < 1 ||
      absl::GetFlag(FLAGS_batch_size) < 1) {
    std::fprintf(stderr,
                 "sparse_train: --dim, --workers, --train_examples, "
                 "--test_examples, --fields and --batch_size must be >= 1\n");
    return 2;
  }
  Data data;
  data.fields = fields;
  data.num_rows = absl::GetFlag(FLAGS_num_rows);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (data.num_rows < 1) {
    std::fprintf(stderr, "sparse_train: --num_rows must be >= 1\n");
    return 2;
  }
  {
    PlantedClicksOptions options;
    options.fields = fields;
    options.dense = 0;
    options.train = train;
    options.test = test;
    options.planted_scale =
        static_cast<float>(absl::GetFlag(FLAGS_planted_scale));
    options.seed = seed;
    auto clicks = GeneratePlantedClicks(options);
    if (!clicks.ok()) {
      std::fprintf(stderr, "sparse_train: --%s\n",
                   std::string(clicks.status().message()).c_str());
      return 2;
    }
    data.clicks = *std::move(clicks);
  }

  const std::string job = absl::GetFlag(FLAGS_job_id);
  std::vector<std::unique_ptr<EmbeddingClient>> clients;
  for (int w = 0; w < workers; ++w) {
    auto client = EmbeddingClient::Create(job, shards);
    if (!client.ok()) {
      std::fprintf(stderr, "sparse_train: %s\n",
                   client.status().ToString().c_str());
      return 2;
    }
    clients.push_back(*std::move(client));
  }
  EmbeddingTableSpec emb;
  emb.set_name("emb");
  emb.set_num_rows(data.num_rows);
  emb.set_dim(dim);
  emb.mutable_initializer()->set_kind(EmbeddingInitializer::UNIFORM);
  emb.mutable_initializer()->set_seed(seed);
  emb.mutable_optimizer()->set_kind(OptimizerSpec::ADAGRAD);
  emb.mutable_optimizer()->set_learning_rate(
      static_cast<float>(absl::GetFlag(FLAGS_learning_rate)));
  EmbeddingTableSpec dense = emb;
  dense.set_name("dense");
  dense.set_num_rows(1);
  dense.set_dim(dim + 1);
  dense.mutable_initializer()->set_scale(
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim))));
  const bool resume = absl::GetFlag(FLAGS_resume);
  // With --resume: the epoch the snapshots were taken after, and the
  // untrained test log-loss of the run that took them.
  int resumed_epoch = 0;
  double resumed_first_loss = 0;
  for (const EmbeddingTableSpec& spec : {emb, dense}) {
    if (resume) {
      auto metadata = clients[0]->Restore(spec);
      if (!metadata.ok()) {
        std::fprintf(stderr, "sparse_train: restore table %s: %s\n",
                     spec.name().c_str(), metadata.status().ToString().c_str());
        return 1;
      }
      int epoch = -1;
      double first_loss = 0;
      auto e = metadata->find("epoch");
      auto l = metadata->find("first_test_logloss");
      if (e == metadata->end() || l == metadata->end() ||
          !absl::SimpleAtoi(e->second, &epoch) ||
          !absl::SimpleAtod(l->second, &first_loss) || epoch < 0 ||
          (spec.name() == "dense" && epoch != resumed_epoch)) {
        std::fprintf(stderr,
                     "sparse_train: restore table %s: its snapshot's metadata "
                     "(epoch \"%s\") is not from sparse_train or not from "
                     "the same epoch as table emb's (%d)\n",
                     spec.name().c_str(),
                     e == metadata->end() ? "" : e->second.c_str(),
                     resumed_epoch);
        return 1;
      }
      resumed_epoch = epoch;
      resumed_first_loss = first_loss;
      // The other clients learn the table's dim.
      for (size_t w = 1; w < clients.size(); ++w) {
        absl::Status s = clients[w]->CreateTable(spec);
        if (!s.ok()) {
          std::fprintf(stderr, "sparse_train: table %s: %s\n",
                       spec.name().c_str(), s.ToString().c_str());
          return 1;
        }
      }
      continue;
    }
    for (auto& client : clients) {
      absl::Status s = client->CreateTable(spec);
      if (!s.ok()) {
        std::fprintf(stderr, "sparse_train: create table %s: %s\n",
                     spec.name().c_str(), s.ToString().c_str());
        return 1;
      }
    }
  }
  if (resume) {
    std::printf("resumed: tables emb and dense restored from the snapshots "
                "taken after epoch %d\n",
                resumed_epoch);
  }
  // The servers' untouched rows are the seeded values computed here.
  if (!resume) {
    std::vector<uint64_t> sample;
    for (int64_t i = 0; i < std::min<int64_t>(64, test); ++i) {
      sample.push_back(data.Feature(data.clicks.test, i, 0));
    }
    std::vector<float> rows, want(dim);
    absl::Status s = clients[0]->Pull("emb", sample, &rows);
    if (!s.ok()) {
      std::fprintf(stderr, "sparse_train: %s\n", s.ToString().c_str());
      return 1;
    }
    const EmbeddingTableSpec full = WithTableDefaults(emb);
    int64_t mismatches = 0;
    for (size_t i = 0; i < sample.size(); ++i) {
      InitialRow(full.initializer(), dim, sample[i], want.data());
      if (!std::equal(want.begin(), want.end(), rows.begin() + i * dim)) {
        ++mismatches;
      }
    }
    std::printf("init check: %zu untouched rows pulled from %zu server(s), "
                "%lld differ from the seeded values\n",
                sample.size(), shards.size(),
                static_cast<long long>(mismatches));
    if (mismatches != 0) return 1;
  }

  // Reference levels on the test set.
  const double bayes = data.clicks.bayes_accuracy;
  const double majority = data.clicks.majority_rate;
  std::printf("data: generated (planted logistic model over %d hashed "
              "fields, V = %llu), %lld train / %lld test examples; "
              "chance (majority class) %.4f, Bayes accuracy (planted model) "
              "%.4f\n",
              fields, static_cast<unsigned long long>(data.num_rows),
              static_cast<long long>(train), static_cast<long long>(test),
              majority, bayes);

  auto first = Evaluate(clients[0].get(), data, dim);
  if (!first.ok()) {
    std::fprintf(stderr, "sparse_train: %s\n", first.status().ToString().c_str());
    return 1;
  }
  if (resume) {
    std::printf("epoch %d (restored): test logloss %.4f accuracy %.4f\n",
                resumed_epoch, first->loss, first->accuracy);
  } else {
    std::printf("epoch 0 (untrained): test logloss %.4f accuracy %.4f\n",
                first->loss, first->accuracy);
  }
  Eval last = *first;
  if (resume) first->loss = resumed_first_loss;
  const int snapshot_every = absl::GetFlag(FLAGS_snapshot_every_epochs);
  for (int epoch = resumed_epoch + 1; epoch <= absl::GetFlag(FLAGS_epochs);
       ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<absl::StatusOr<double>> losses(workers, 0.0);
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        losses[w] = TrainEpoch(clients[w].get(), data, dim, w, workers,
                               absl::GetFlag(FLAGS_batch_size), train);
      });
    }
    for (std::thread& t : threads) t.join();
    const double seconds = std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count();
    double train_loss = 0;
    for (const auto& l : losses) {
      if (!l.ok()) {
        std::fprintf(stderr, "sparse_train: %s\n", l.status().ToString().c_str());
        return 1;
      }
      train_loss += *l / workers;
    }
    auto eval = Evaluate(clients[0].get(), data, dim);
    if (!eval.ok()) {
      std::fprintf(stderr, "sparse_train: %s\n", eval.status().ToString().c_str());
      return 1;
    }
    last = *eval;
    std::printf("epoch %d: train logloss %.4f, test logloss %.4f accuracy "
                "%.4f (%.1f s, %.0f examples/s)\n",
                epoch, train_loss, last.loss, last.accuracy, seconds,
                train / seconds);
    std::fflush(stdout);
    if (snapshot_every > 0 && epoch % snapshot_every == 0) {
      // No push is in flight between epochs: every server's snapshot
      // holds the same pushes.
      const std::map<std::string, std::string> metadata = {
          {"epoch", absl::StrCat(epoch)},
          {"first_test_logloss", absl::StrFormat("%.17g", first->loss)}};
      for (const char* table : {"emb", "dense"}) {
        auto written = clients[0]->Snapshot(table, metadata);
        if (!written.ok()) {
          std::fprintf(stderr, "sparse_train: snapshot of table %s: %s\n",
                       table, written.status().ToString().c_str());
          return 1;
        }
        int64_t rows = 0, bytes = 0;
        double slowest = 0;
        for (const auto& [address, r] : *written) {
          rows += r.rows();
          bytes += r.bytes();
          slowest = std::max(slowest, r.seconds());
        }
        std::printf("snapshot: epoch %d, table %s: %lld rows, %lld bytes on "
                    "%zu server(s), slowest %.3f s\n",
                    epoch, table, static_cast<long long>(rows),
                    static_cast<long long>(bytes), written->size(), slowest);
      }
      std::fflush(stdout);
    }
  }
  auto status = clients[0]->Status("emb");
  if (status.ok()) {
    int64_t rows = 0, bytes = 0;
    for (const TableStatusResponse& s : *status) {
      rows += s.rows();
      bytes += s.bytes();
    }
    std::printf("table emb: %lld rows held over %zu server(s), %lld bytes "
                "(%.1f B/row; row record %lld B)\n",
                static_cast<long long>(rows), shards.size(),
                static_cast<long long>(bytes),
                rows > 0 ? static_cast<double>(bytes) / rows : 0.0,
                static_cast<long long>((*status)[0].row_bytes()));
  }
  int64_t failovers = 0;
  for (const auto& client : clients) failovers += client->failovers();
  std::printf("failovers: %lld\n", static_cast<long long>(failovers));
  bool replicated = false;
  for (const auto& replicas : shards) replicated |= replicas.size() > 1;
  if (replicated) {
    PrintReplicas(clients[0].get(), "emb", shards);
    PrintReplicas(clients[0].get(), "dense", shards);
  }
  std::fflush(stdout);
  if (absl::GetFlag(FLAGS_drop_tables)) {
    (void)clients[0]->DropTable("emb");
    (void)clients[0]->DropTable("dense");
  }
  const bool ok = last.accuracy >= absl::GetFlag(FLAGS_min_accuracy) &&
                  last.loss < first->loss;
  std::printf("%s: final test accuracy %.4f (min %.4f), logloss %.4f -> %.4f\n",
              ok ? "PASS" : "FAIL", last.accuracy,
              absl::GetFlag(FLAGS_min_accuracy), first->loss, last.loss);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  psd::TuneAllocator();  // reused buffers, no fresh mmaps (BUILDING.md)
  absl::SetProgramUsageMessage(
      "Trains an embedding-bag + linear model on generated click-like data\n"
      "against psd_servers' sparse embedding tables.\n"
      "  sparse_train --servers=HOST:PORT[,HOST:PORT...] [--replication=R]\n"
      "  sparse_train --servers='A1,A2;B1,B2' (replicas per shard)\n"
      "  [--epochs=3] [--snapshot_every_epochs=N] [--resume]");
  absl::ParseCommandLine(argc, argv);
  absl::Status security = psd::ConfigureTransportSecurityFromFlags(
      psd::PlaintextPolicy::kAllowQuietly);
  if (!security.ok()) {
    std::fprintf(stderr, "sparse_train: %s\n", security.ToString().c_str());
    return 2;
  }
  return psd::Main();
}
