// psd_ctl: a command-line client of psd_coordinator for people and scripts
// (the same calls grpcurl makes; see README "Drive it with grpcurl").
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <thread>
#include <iostream>
#include <map>
#include <set>
#include <tuple>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/proto.h"
#include "proto/embedding.grpc.pb.h"
#include "common/rpc.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/transport_security.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "worker/job_parameters.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070",
          "Coordinator address, host:port.");
ABSL_FLAG(int, timeout_s, 60,
          "wait-ready: give up after this many seconds. Other commands: the "
          "deadline of each call.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "export: the Fashion-MNIST files, to record the job's input "
          "normalisation (mean, std of the training images) in the export.");
ABSL_FLAG(int, servers, 1, "wait-ready: servers to wait for.");
ABSL_FLAG(int, workers, 1, "wait-ready: idle workers to wait for.");
ABSL_FLAG(std::vector<std::string>, add, {},
          "reshard: server ids to add to the job (comma-separated).");
ABSL_FLAG(std::vector<std::string>, drain, {},
          "reshard: server ids to drain from the job (comma-separated).");
ABSL_FLAG(int, reshard_timeout_s, 600,
          "reshard: give up waiting for the moves after this many seconds "
          "(they go on on the coordinator).");

namespace psd {
namespace {

constexpr char kUsage[] =
    "psd_ctl: control a psd cluster.\n"
    "  psd_ctl [--coordinator=HOST:PORT] COMMAND [ARGS]\n"
    "  With mutual TLS: --tls_ca_file=CA.pem --tls_cert_file=YOU.pem\n"
    "  --tls_key_file=YOU.key (a user, viewer or admin certificate), or\n"
    "  --tls_ca_file=CA.pem --token_file=FILE (a bearer token); see\n"
    "  docs/OPERATIONS.md \"Transport security\" and \"Users and tokens\".\n"
    "Commands:\n"
    "  submit FILE          submit a job config (text proto, or JSON if it\n"
    "                       starts with '{'); prints the job id\n"
    "  get JOB_ID           print the job's status as JSON\n"
    "  list                 print every job's status as JSON\n"
    "  cancel JOB_ID        cancel a pending or running job\n"
    "  watch JOB_ID         print progress until the job ends; exit 0 only\n"
    "                       if it SUCCEEDED\n"
    "  replicas JOB_ID      checksum of every replica of the job's shards;\n"
    "                       fails when they differ\n"
    "  export JOB_ID FILE   pull the job's parameters into a safetensors\n"
    "                       file and print their CRC-32 checksum; a sparse\n"
    "                       job's tables go to FILE's stem.TABLE.safetensors\n"
    "                       (ids I64 [n], rows F32 [n, dim]; see README)\n"
    "  tables JOB_ID        a sparse job's embedding tables (issue 25): per\n"
    "                       table its shards, rows, bytes over all replicas\n"
    "                       and a checksum of its rows (the sum of the\n"
    "                       shards' checksums); fails when two replicas of\n"
    "                       a shard differ\n"
    "  delete JOB_ID        forget a finished job and free its parameters\n"
    "                       on the servers\n"
    "  servers              print what each server holds, per job, as JSON\n"
    "  snapshots JOB_ID     print the job's snapshots on each of its servers\n"
    "  snapshot JOB_ID      snapshot a running job now (a few steps ahead);\n"
    "                       prints the step\n"
    "  reshard JOB_ID --add=ID,... --drain=ID,...\n"
    "                       add servers to a running job and drain others:\n"
    "                       prints the planned replica moves, then each as\n"
    "                       it lands (state transfer while the job trains);\n"
    "                       exit 0 once every move is done\n"
    "  view                 print the cluster view as JSON\n"
    "  wait-ready           wait until --servers servers and --workers idle\n"
    "                       workers have registered (up to --timeout_s)\n"
    "  health HOST:PORT     grpc.health.v1.Health/Check of any psd process\n"
    "                       (coordinator, server or worker), over TLS when\n"
    "                       the --tls_* flags are given: a Kubernetes exec\n"
    "                       probe; exit 0 only if it is SERVING\n";

std::chrono::milliseconds CallTimeout() {
  return std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s));
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = false;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "psd_ctl: %s: %s: %s\n", what.c_str(),
               absl::StatusCodeToString(
                   static_cast<absl::StatusCode>(status.error_code()))
                   .c_str(),
               status.error_message().c_str());
  return 1;
}

absl::StatusOr<JobStatus> GetJob(JobService::Stub* jobs, const std::string& id) {
  return GetJobStatus(jobs, id, CallTimeout());
}

std::string Clock(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

// Prints what changed in `status` since the last call: a line per finished
// epoch, a live line on a terminal, and a last line when the job ends.
// Returns the exit code once the job has ended, -1 while it runs.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(std::string id)
      : id_(std::move(id)), tty_(isatty(fileno(stdout))) {}

  int Print(const JobStatus& status) {
    const int epochs = status.config().epochs();
    for (; printed_epochs_ < status.epochs_size(); ++printed_epochs_) {
      const EpochResult& e = status.epochs(printed_epochs_);
      // A sparse job (issue 25) also reports its test log-loss and AUC.
      const std::string sparse =
          e.test_auc() > 0 ? absl::StrFormat("  test log-loss %.4f  AUC %.4f",
                                             e.test_log_loss(), e.test_auc())
                           : "";
      std::printf("%sepoch %d/%d  step %lld/%lld  train loss %.4f  "
                  "test accuracy %.4f%s  %.0f samples/s  elapsed %s  ETA %s\n",
                  tty_ ? "\r\033[K" : "", e.epoch() + 1, epochs,
                  static_cast<long long>((e.epoch() + 1) *
                                         status.steps_per_epoch()),
                  static_cast<long long>(status.total_steps()), e.train_loss(),
                  e.test_accuracy(), sparse.c_str(), status.samples_per_sec(),
                  Clock(e.elapsed_seconds()).c_str(),
                  Clock(status.eta_seconds()).c_str());
    }
    const JobState state = status.state();
    if (state == SUCCEEDED || state == FAILED || state == CANCELLED) {
      if (tty_) std::printf("\r\033[K");
      std::printf("job %s %s after %s", id_.c_str(), JobState_Name(state).c_str(),
                  Clock(status.elapsed_seconds()).c_str());
      if (state == SUCCEEDED && status.test_auc() > 0) {
        std::printf(": test accuracy %.4f, log-loss %.4f, AUC %.4f\n",
                    status.test_accuracy(), status.test_log_loss(),
                    status.test_auc());
      } else if (state == SUCCEEDED) {
        std::printf(": test accuracy %.4f\n", status.test_accuracy());
      } else {
        std::printf(": %s\n", status.error().c_str());
      }
      std::fflush(stdout);
      return state == SUCCEEDED ? 0 : 1;
    }
    if (tty_ && state == RUNNING) {
      std::printf("\r\033[Kepoch %d/%d  step %lld/%lld  loss %.4f  %.0f samples/s"
                  "  ETA %s",
                  status.epoch() + 1, epochs,
                  static_cast<long long>(status.step()),
                  static_cast<long long>(status.total_steps()), status.loss(),
                  status.samples_per_sec(), Clock(status.eta_seconds()).c_str());
    }
    std::fflush(stdout);
    return -1;
  }

 private:
  const std::string id_;
  const bool tty_;
  int printed_epochs_ = 0;
};

// Follows the job with the WatchJob stream; polls GetJob when the
// coordinator has no watch to spare.
int Watch(JobService::Stub* jobs, const std::string& id) {
  ProgressPrinter printer(id);
  grpc::ClientContext context;  // no deadline: a job may run for days
  GetJobRequest request;
  request.set_job_id(id);
  std::unique_ptr<grpc::ClientReader<JobStatus>> stream =
      jobs->WatchJob(&context, request);
  JobStatus status;
  while (stream->Read(&status)) {
    const int code = printer.Print(status);
    if (code >= 0) {
      context.TryCancel();
      return code;
    }
  }
  grpc::Status ended = stream->Finish();
  if (ended.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
    return Fail("watch " + id, ended);
  }
  while (true) {
    auto polled = GetJob(jobs, id);
    if (!polled.ok()) return Fail("watch " + id, ToGrpcStatus(polled.status()));
    const int code = printer.Print(*polled);
    if (code >= 0) return code;
    absl::SleepFor(absl::Milliseconds(500));
  }
}

// Prints the parameter checksum of every replica set; 1 when they differ.
int Replicas(JobService::Stub* jobs, const std::string& id) {
  auto status = GetJob(jobs, id);
  if (!status.ok()) return Fail("replicas", ToGrpcStatus(status.status()));
  int replicas = 1;
  for (const ShardReplicas& shard : status->shards()) {
    replicas = std::max(replicas, 1 + shard.backups_size());
  }
  std::set<uint32_t> sums;
  for (int r = 0; r < replicas; ++r) {
    int64_t step = 0;
    auto tensors = PullJobParameters(*status, r, CallTimeout(), &step);
    if (!tensors.ok()) return Fail("replicas", ToGrpcStatus(tensors.status()));
    const uint32_t sum = ParameterChecksum(*tensors);
    sums.insert(sum);
    std::printf("%s %d: step %lld checksum crc32:%08x\n",
                r == 0 ? "primaries" : "backups", r,
                static_cast<long long>(step), sum);
  }
  if (sums.size() != 1) {
    std::fprintf(stderr, "psd_ctl: replicas: the replicas of job %s differ\n",
                 id.c_str());
    return 1;
  }
  std::printf("all %d replica sets agree\n", replicas);
  return 0;
}

// The file of table `table` beside the dense part's `path`:
// "<path without .safetensors>.<table>.safetensors".
std::string TableExportPath(const std::string& path, const std::string& table) {
  constexpr absl::string_view kSuffix = ".safetensors";
  absl::string_view base = path;
  if (absl::EndsWith(base, kSuffix)) base.remove_suffix(kSuffix.size());
  return absl::StrCat(base, ".", table, kSuffix);
}

// One table of a sparse job exported (ExportTables).
struct ExportedTable {
  std::string path;
  int64_t rows = 0;
  int32_t dim = 0;
  uint32_t crc32 = 0;
};

// Reads shard `shard` of `table` from `address` (ExportRows) and appends
// its ids and rows to *ids / *rows; sets *spec from the first chunk.
absl::Status ReadShard(const std::string& address, const std::string& job_id,
                       const std::string& table, int32_t shard,
                       EmbeddingTableSpec* spec, std::vector<int64_t>* ids,
                       std::string* rows) {
  auto stub = EmbeddingServer::NewStub(MakeChannel(address));
  grpc::ClientContext call;
  call.set_deadline(DeadlineIn(CallTimeout()));
  ExportRowsRequest request;
  request.set_job_id(job_id);
  request.set_table(table);
  request.set_shard(shard);
  auto reader = stub->ExportRows(&call, request);
  ExportRowsResponse chunk;
  const size_t ids_before = ids->size(), rows_before = rows->size();
  int64_t total = -1;
  while (reader->Read(&chunk)) {
    if (total < 0) {
      *spec = chunk.spec();
      total = chunk.total_rows();
    }
    const int64_t n = chunk.row_ids_size();
    const int64_t want = n * spec->dim() * 4;
    if (spec->dim() <= 0 || chunk.rows().dtype() != FLOAT32 ||
        static_cast<int64_t>(chunk.rows().data().size()) != want) {
      call.TryCancel();
      reader->Finish();
      ids->resize(ids_before);
      rows->resize(rows_before);
      return absl::DataLossError(absl::StrCat(
          address, ": ExportRows of shard ", shard, " sent ",
          chunk.rows().data().size(), " bytes of rows for ", n,
          " ids of dim ", spec->dim()));
    }
    for (uint64_t id : chunk.row_ids()) ids->push_back(static_cast<int64_t>(id));
    rows->append(chunk.rows().data());
  }
  grpc::Status done = reader->Finish();
  const int64_t got = static_cast<int64_t>(ids->size() - ids_before);
  if (done.ok() && got != total) {
    done = grpc::Status(grpc::StatusCode::DATA_LOSS,
                        absl::StrCat("stream ended after ", got, " of ", total,
                                     " rows"));
  }
  if (!done.ok()) {
    ids->resize(ids_before);
    rows->resize(rows_before);
    return absl::Status(static_cast<absl::StatusCode>(done.error_code()),
                        absl::StrCat(address, ": ", done.error_message()));
  }
  return absl::OkStatus();
}

// Writes every embedding table of sparse job `job` beside `path`
// (TableExportPath): tensors "ids" (I64 [n], ascending) and "rows" (F32
// [n, dim], row i is ids[i]'s weights) holding every row some server
// holds, each shard read once from the first server holding it that
// answers (servers from GetClusterView, as `tables`); metadata: job_id,
// table, num_rows, dim, rows, and the table's initializer as JSON (the
// value of every row not listed). Prints one line per table.
absl::Status ExportTables(Coordinator::Stub* coordinator, const JobStatus& job,
                          const std::string& path) {
  ClusterView view;
  {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(CallTimeout()));
    grpc::Status status =
        coordinator->GetClusterView(&context, GetClusterViewRequest(), &view);
    if (!status.ok()) return FromGrpcStatus(status);
  }
  for (const EmbeddingTableSpec& table : job.config().model().tables()) {
    // Which registered servers hold which shards of the table.
    std::map<int32_t, std::vector<std::string>> holders;
    int32_t num_shards = 0;
    std::vector<std::string> errors;
    for (const ServerInfo& server : view.servers()) {
      auto stub = EmbeddingServer::NewStub(MakeChannel(server.address()));
      grpc::ClientContext call;
      call.set_deadline(DeadlineIn(CallTimeout()));
      TableStatusRequest request;
      request.set_job_id(job.job_id());
      request.set_table(table.name());
      TableStatusResponse response;
      grpc::Status got = stub->TableStatus(&call, request, &response);
      if (got.error_code() == grpc::StatusCode::NOT_FOUND) continue;
      if (!got.ok()) {
        errors.push_back(absl::StrCat(server.id(), ": ", got.error_message()));
        continue;
      }
      num_shards = response.spec().num_shards();
      for (int32_t shard : response.shards()) {
        holders[shard].push_back(server.address());
      }
    }
    if (num_shards == 0) {
      return absl::NotFoundError(absl::StrCat(
          "table ", table.name(), ": no registered server holds it",
          errors.empty() ? "" : " (", absl::StrJoin(errors, "; "),
          errors.empty() ? "" : ")"));
    }
    EmbeddingTableSpec spec;
    std::vector<int64_t> ids;
    std::string rows;
    for (int32_t shard = 0; shard < num_shards; ++shard) {
      absl::Status read = absl::NotFoundError("no registered server holds it");
      for (const std::string& address : holders[shard]) {
        read = ReadShard(address, job.job_id(), table.name(), shard, &spec,
                         &ids, &rows);
        if (read.ok()) break;
        errors.push_back(std::string(read.message()));
      }
      if (!read.ok()) {
        return absl::Status(read.code(), absl::StrCat(
            "table ", table.name(), " shard ", shard, ": no server gave its "
            "rows (", absl::StrJoin(errors, "; "), ")"));
      }
    }
    // Shards interleave ids: sort the whole table by id.
    const int64_t n = static_cast<int64_t>(ids.size());
    const size_t row_bytes = static_cast<size_t>(spec.dim()) * 4;
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    TypedTensor id_tensor{"ids", "I64", {n}, std::string(n * 8, '\0')};
    TypedTensor row_tensor{"rows", "F32", {n, spec.dim()},
                           std::string(n * row_bytes, '\0')};
    for (int64_t k = 0; k < n; ++k) {
      if (k > 0 && ids[order[k]] == ids[order[k - 1]]) {
        return absl::DataLossError(absl::StrCat(
            "table ", table.name(), ": row ", ids[order[k]],
            " was sent by two shards"));
      }
      std::memcpy(id_tensor.data.data() + k * 8, &ids[order[k]], 8);
      std::memcpy(row_tensor.data.data() + k * row_bytes,
                  rows.data() + order[k] * row_bytes, row_bytes);
    }
    std::string initializer;
    google::protobuf::util::JsonPrintOptions json;
    json.always_print_primitive_fields = true;
    json.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(spec.initializer(),
                                                      &initializer, json);
    std::map<std::string, std::string> metadata = {
        {"format", "psd-embedding-table-v1"},
        {"job_id", job.job_id()},
        {"table", table.name()},
        {"num_rows", absl::StrCat(spec.num_rows())},
        {"dim", absl::StrCat(spec.dim())},
        {"rows", absl::StrCat(n)},
        {"initializer", initializer},
    };
    std::vector<TypedTensor> tensors = {std::move(id_tensor),
                                        std::move(row_tensor)};
    const std::string file = TableExportPath(path, table.name());
    absl::Status written = WriteTypedSafetensors(file, tensors, metadata);
    if (!written.ok()) return written;
    // (Not "crc32:": scripts take the dense part's checksum by that.)
    std::printf("table %s: %lld rows of dim %d to %s (CRC-32 of ids and "
                "rows: %08x)\n",
                table.name().c_str(), static_cast<long long>(n), spec.dim(),
                file.c_str(), TypedTensorChecksum(tensors));
  }
  return absl::OkStatus();
}

int Export(JobService::Stub* jobs, Coordinator::Stub* coordinator,
           const std::string& id, const std::string& path) {
  auto status = GetJob(jobs, id);
  if (!status.ok()) {
    std::fprintf(stderr, "psd_ctl: export: %s\n", status.status().ToString().c_str());
    return 1;
  }
  int64_t step = 0;
  auto pulled = PullJobParameters(*status, 0, CallTimeout(), &step);
  if (!pulled.ok()) {
    std::fprintf(stderr, "psd_ctl: export: %s\n", pulled.status().ToString().c_str());
    return 1;
  }
  std::vector<NamedTensor> tensors = *std::move(pulled);
  std::string note;
  absl::Status written = WriteSafetensors(
      path, tensors,
      ExportMetadata(*status, step, absl::GetFlag(FLAGS_data_dir), &note));
  if (!written.ok()) {
    std::fprintf(stderr, "psd_ctl: export: %s\n", written.ToString().c_str());
    return 1;
  }
  if (!note.empty()) std::fprintf(stderr, "psd_ctl: export: %s\n", note.c_str());
  std::printf("exported %d tensors at step %lld to %s\nchecksum crc32:%08x\n",
              static_cast<int>(tensors.size()), static_cast<long long>(step),
              path.c_str(), ParameterChecksum(tensors));
  if (!status->config().model().tables().empty()) {
    absl::Status tables = ExportTables(coordinator, *status, path);
    if (!tables.ok()) {
      std::fprintf(stderr, "psd_ctl: export: %s\n", tables.ToString().c_str());
      return 1;
    }
  }
  return 0;
}

// tables: every registered server's TableStatus (with checksums) of each
// table of the job; one line per table.
int Tables(JobService::Stub* jobs, Coordinator::Stub* coordinator,
           const std::string& id) {
  auto job = GetJob(jobs, id);
  if (!job.ok()) return Fail("tables: get", ToGrpcStatus(job.status()));
  ClusterView view;
  {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(CallTimeout()));
    grpc::Status status =
        coordinator->GetClusterView(&context, GetClusterViewRequest(), &view);
    if (!status.ok()) return Fail("tables: cluster view", status);
  }
  if (job->config().model().tables().empty()) {
    std::fprintf(stderr, "psd_ctl: tables: job %s has no embedding tables\n",
                 id.c_str());
    return 1;
  }
  int code = 0;
  for (const EmbeddingTableSpec& table : job->config().model().tables()) {
    // shard -> (server id, checksum, rows) of each replica that answered.
    std::map<int32_t, std::vector<std::tuple<std::string, uint64_t, int64_t>>>
        shards;
    int64_t bytes = 0, evicted = 0, pending = 0;
    for (const ServerInfo& server : view.servers()) {
      auto stub = EmbeddingServer::NewStub(MakeChannel(server.address()));
      grpc::ClientContext call;
      call.set_deadline(DeadlineIn(CallTimeout()));
      TableStatusRequest request;
      request.set_job_id(id);
      request.set_table(table.name());
      request.set_checksum(true);
      TableStatusResponse response;
      grpc::Status got = stub->TableStatus(&call, request, &response);
      if (got.error_code() == grpc::StatusCode::NOT_FOUND) continue;
      if (!got.ok()) return Fail("tables: " + server.id(), got);
      bytes += response.bytes();
      evicted += response.evicted_rows();
      pending += response.pending_admission_rows();
      for (const TableShardStatus& s : response.shard_status()) {
        shards[s.shard()].emplace_back(server.id(), s.checksum(), s.rows());
      }
    }
    uint64_t checksum = 0;
    int64_t rows = 0;
    for (const auto& [shard, replicas] : shards) {
      for (const auto& [server, sum, n] : replicas) {
        if (sum != std::get<1>(replicas[0])) {
          std::fprintf(stderr,
                       "psd_ctl: tables: table %s shard %d: replica on %s has "
                       "checksum %016llx, on %s %016llx\n",
                       table.name().c_str(), shard, server.c_str(),
                       static_cast<unsigned long long>(sum),
                       std::get<0>(replicas[0]).c_str(),
                       static_cast<unsigned long long>(std::get<1>(replicas[0])));
          code = 1;
        }
      }
      checksum += std::get<1>(replicas[0]);
      rows += std::get<2>(replicas[0]);
    }
    std::printf("table %s: %zu shards held, %lld rows, %lld bytes on all "
                "replicas, checksum %016llx",
                table.name().c_str(), shards.size(), static_cast<long long>(rows),
                static_cast<long long>(bytes),
                static_cast<unsigned long long>(checksum));
    if (table.evict_after_steps() > 0 || table.admit_after_pushes() > 1) {
      // Summed over the replicas, as bytes.
      std::printf(" (all replicas: %lld rows evicted, %lld waiting for "
                  "admission)", static_cast<long long>(evicted),
                  static_cast<long long>(pending));
    }
    std::printf("\n");
  }
  return code;
}

int WaitReady(Coordinator::Stub* coordinator) {
  const absl::Time give_up =
      absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  grpc::Status last;
  int servers = 0, idle = 0;
  while (absl::Now() < give_up) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(2)));
    ClusterView view;
    last = coordinator->GetClusterView(&context, GetClusterViewRequest(), &view);
    if (last.ok()) {
      servers = view.servers_size();
      idle = 0;
      for (const WorkerInfo& w : view.workers()) idle += w.job_id().empty();
      if (servers >= absl::GetFlag(FLAGS_servers) &&
          idle >= absl::GetFlag(FLAGS_workers)) {
        std::printf("cluster ready: %d servers, %d idle workers (view epoch %lld)\n",
                    servers, idle, static_cast<long long>(view.epoch()));
        return 0;
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  std::fprintf(stderr,
               "psd_ctl: wait-ready: after %d s, %d/%d servers and %d/%d idle "
               "workers%s%s\n",
               absl::GetFlag(FLAGS_timeout_s), servers,
               absl::GetFlag(FLAGS_servers), idle, absl::GetFlag(FLAGS_workers),
               last.ok() ? "" : "; coordinator: ",
               last.ok() ? "" : last.error_message().c_str());
  return 1;
}

// health ADDRESS: the standard health check of a whole psd server, for
// Kubernetes exec probes (the native grpc: probe speaks no TLS). Under mutual
// TLS this presents the process's certificate, verifies the peer's chain
// against the CA and requires a psd SPIFFE ID of any role (the channels of
// common/rpc.h accept coordinators and servers only; a worker's port is
// probed too), not a host name: a probe dials 127.0.0.1. Prints
// "ADDRESS: SERVING (ID)"; 0 only when SERVING.
int Health(const std::string& address) {
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (const TlsOptions* tls = ConfiguredTls()) {
    grpc::experimental::TlsChannelCredentialsOptions options;
    const bool identity = !tls->cert_file.empty();  // else --tls_ca_file only
    options.set_certificate_provider(
        identity
            ? std::make_shared<
                  grpc::experimental::FileWatcherCertificateProvider>(
                  tls->key_file, tls->cert_file, tls->ca_file, tls->refresh_s)
            : std::make_shared<
                  grpc::experimental::FileWatcherCertificateProvider>(
                  tls->ca_file, tls->refresh_s));
    options.watch_root_certs();
    if (identity) options.watch_identity_key_cert_pairs();
    options.set_verify_server_certs(true);  // the chain, against the CA
    options.set_check_call_host(false);
    options.set_certificate_verifier(
        std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
    credentials = grpc::experimental::TlsCredentials(options);
  }
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(address, credentials, ChannelArguments()));
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(CallTimeout()));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(
      &context, grpc::health::v1::HealthCheckRequest(), &response);
  if (!status.ok()) return Fail("health " + address, status);
  std::string id;
  if (ConfiguredTls() != nullptr) {
    for (const grpc::string_ref& value :
         context.auth_context()->FindPropertyValues("peer_spiffe_id")) {
      id.assign(value.data(), value.size());
    }
    if (!ParseSpiffeId(id).has_value()) {
      std::fprintf(stderr,
                   "psd_ctl: health %s: the peer's certificate has no psd "
                   "identity (spiffe://psd/<role>[/<name>]): '%s'\n",
                   address.c_str(), id.c_str());
      return 1;
    }
  }
  const std::string serving =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
          response.status());
  std::printf("%s: %s%s\n", address.c_str(), serving.c_str(),
              id.empty() ? "" : absl::StrCat(" (", id, ")").c_str());
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    std::fprintf(stderr, "psd_ctl: health %s: %s\n", address.c_str(),
                 serving.c_str());
    return 1;
  }
  return 0;
}

// reshard: JobService.ReshardJob, then GetJob until its moves are done.
int Reshard(JobService::Stub* jobs, const std::string& job_id) {
  ReshardJobRequest request;
  request.set_job_id(job_id);
  for (const std::string& id : absl::GetFlag(FLAGS_add)) request.add_add_servers(id);
  for (const std::string& id : absl::GetFlag(FLAGS_drain)) {
    request.add_drain_servers(id);
  }
  ReshardJobResponse plan;
  {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(CallTimeout()));
    grpc::Status status = jobs->ReshardJob(&context, request, &plan);
    if (!status.ok()) return Fail("reshard", status);
  }
  std::printf("job %s: %d replica moves planned\n", job_id.c_str(),
              plan.moves_size());
  for (const ReplicaMove& m : plan.moves()) {
    std::printf("  shard %d: %s -> %s (%lld bytes of weights)\n", m.shard(),
                m.from_server().c_str(), m.to_server().c_str(),
                static_cast<long long>(m.bytes()));
  }
  std::fflush(stdout);
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::seconds(absl::GetFlag(FLAGS_reshard_timeout_s));
  int left = plan.moves_size();
  while (left > 0) {
    auto status = GetJob(jobs, job_id);
    if (!status.ok()) return Fail("reshard: get", ToGrpcStatus(status.status()));
    if (status->pending_moves_size() < left) {
      left = status->pending_moves_size();
      std::printf("job %s: %d of %d moves done (view epoch %lld, step %lld)\n",
                  job_id.c_str(), plan.moves_size() - left, plan.moves_size(),
                  static_cast<long long>(status->view_epoch()),
                  static_cast<long long>(status->step()));
      std::fflush(stdout);
    }
    if (left == 0) break;
    if (status->state() != RUNNING) {
      std::fprintf(stderr, "psd_ctl: reshard: job %s is %s with %d moves "
                   "not done\n", job_id.c_str(),
                   JobState_Name(status->state()).c_str(), left);
      return 1;
    }
    if (std::chrono::steady_clock::now() > give_up) {
      std::fprintf(stderr, "psd_ctl: reshard: %d moves not done after %d s "
                   "(--reshard_timeout_s); they go on\n", left,
                   absl::GetFlag(FLAGS_reshard_timeout_s));
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return 0;
}

int Main(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto channel = MakeChannel(absl::GetFlag(FLAGS_coordinator));
  auto jobs = JobService::NewStub(channel);
  auto coordinator = Coordinator::NewStub(channel);
  const std::string& command = args[0];
  auto need = [&](size_t n) {
    if (args.size() == n + 1) return true;
    std::fprintf(stderr, "psd_ctl %s: want %zu argument(s)\n%s", command.c_str(),
                 n, kUsage);
    return false;
  };
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(CallTimeout()));
  if (command == "submit") {
    if (!need(1)) return 2;
    auto config = LoadJobConfigFile(args[1]);
    if (!config.ok()) {
      std::fprintf(stderr, "psd_ctl: submit: %s\n", config.status().ToString().c_str());
      return 1;
    }
    SubmitJobResponse response;
    grpc::Status status = jobs->SubmitJob(&context, *config, &response);
    if (!status.ok()) return Fail("submit " + args[1], status);
    std::printf("%s\n", response.job_id().c_str());
    return 0;
  }
  if (command == "get") {
    if (!need(1)) return 2;
    auto status = GetJob(jobs.get(), args[1]);
    if (!status.ok()) return Fail("get", ToGrpcStatus(status.status()));
    std::printf("%s", ToJson(*status).c_str());
    return 0;
  }
  if (command == "list") {
    if (!need(0)) return 2;
    ListJobsResponse response;
    grpc::Status status = jobs->ListJobs(&context, ListJobsRequest(), &response);
    if (!status.ok()) return Fail("list", status);
    std::printf("%s", ToJson(response).c_str());
    return 0;
  }
  if (command == "cancel") {
    if (!need(1)) return 2;
    CancelJobRequest request;
    request.set_job_id(args[1]);
    JobStatus response;
    grpc::Status status = jobs->CancelJob(&context, request, &response);
    if (!status.ok()) return Fail("cancel", status);
    std::printf("job %s: %s\n", args[1].c_str(),
                JobState_Name(response.state()).c_str());
    return 0;
  }
  if (command == "watch") {
    if (!need(1)) return 2;
    return Watch(jobs.get(), args[1]);
  }
  if (command == "export") {
    if (!need(2)) return 2;
    return Export(jobs.get(), coordinator.get(), args[1], args[2]);
  }
  if (command == "tables") {
    if (!need(1)) return 2;
    return Tables(jobs.get(), coordinator.get(), args[1]);
  }
  if (command == "replicas") {
    if (!need(1)) return 2;
    return Replicas(jobs.get(), args[1]);
  }
  if (command == "delete") {
    if (!need(1)) return 2;
    DeleteJobRequest request;
    request.set_job_id(args[1]);
    DeleteJobResponse response;
    grpc::Status status = jobs->DeleteJob(&context, request, &response);
    if (!status.ok()) return Fail("delete", status);
    std::printf("job %s: deleted\n", args[1].c_str());
    return 0;
  }
  if (command == "servers") {
    if (!need(0)) return 2;
    ClusterView view;
    grpc::Status status =
        coordinator->GetClusterView(&context, GetClusterViewRequest(), &view);
    if (!status.ok()) return Fail("servers", status);
    for (const ServerInfo& server : view.servers()) {
      auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
      grpc::ClientContext call;
      call.set_deadline(DeadlineIn(CallTimeout()));
      ServerStatus held;
      grpc::Status got =
          stub->GetServerStatus(&call, GetServerStatusRequest(), &held);
      if (!got.ok()) return Fail("servers: " + server.id(), got);
      std::printf("%s (%s): %s", server.id().c_str(), server.address().c_str(),
                  ToJson(held).c_str());
    }
    return 0;
  }
  if (command == "snapshot") {
    if (!need(1)) return 2;
    SnapshotJobRequest request;
    request.set_job_id(args[1]);
    SnapshotJobResponse response;
    grpc::Status status = jobs->SnapshotJob(&context, request, &response);
    if (!status.ok()) return Fail("snapshot", status);
    std::printf("job %s: snapshot at step %lld\n", args[1].c_str(),
                static_cast<long long>(response.step()));
    return 0;
  }
  if (command == "reshard") {
    if (!need(1)) return 2;
    return Reshard(jobs.get(), args[1]);
  }
  if (command == "snapshots") {
    if (!need(1)) return 2;
    auto status = GetJob(jobs.get(), args[1]);
    if (!status.ok()) return Fail("snapshots", ToGrpcStatus(status.status()));
    for (const ServerInfo& server : status->servers()) {
      auto stub = ParameterServer::NewStub(MakeChannel(server.address()));
      grpc::ClientContext call;
      call.set_deadline(DeadlineIn(CallTimeout()));
      ListSnapshotsRequest request;
      request.set_job_id(args[1]);
      ListSnapshotsResponse list;
      grpc::Status got = stub->ListSnapshots(&call, request, &list);
      // NOT_FOUND: this server has none of the job (a replica rebuilt by
      // state transfer since, say); the others may.
      if (!got.ok() && got.error_code() != grpc::StatusCode::NOT_FOUND) {
        return Fail("snapshots: " + server.id(), got);
      }
      std::printf("%s (%s): %s", server.id().c_str(), server.address().c_str(),
                  ToJson(list).c_str());
    }
    return 0;
  }
  if (command == "view") {
    if (!need(0)) return 2;
    ClusterView view;
    grpc::Status status =
        coordinator->GetClusterView(&context, GetClusterViewRequest(), &view);
    if (!status.ok()) return Fail("view", status);
    std::printf("%s", ToJson(view).c_str());
    return 0;
  }
  if (command == "wait-ready") {
    if (!need(0)) return 2;
    return WaitReady(coordinator.get());
  }
  if (command == "health") {
    if (!need(1)) return 2;
    return Health(args[1]);
  }
  std::fprintf(stderr, "psd_ctl: unknown command \"%s\"\n%s", command.c_str(),
               kUsage);
  return 2;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(psd::kUsage);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  absl::Status security = psd::ConfigureTransportSecurityFromFlags(
      psd::PlaintextPolicy::kAllowQuietly);
  if (!security.ok()) {
    std::fprintf(stderr, "psd_ctl: %s\n", security.ToString().c_str());
    return 2;
  }
  return psd::Main(std::vector<std::string>(rest.begin() + 1, rest.end()));
}
