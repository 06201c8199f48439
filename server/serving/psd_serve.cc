// psd_serve: serves a trained psd MLP (a `psd_ctl export` safetensors file)
// over the Open Inference Protocol (KServe v2) gRPC API, with dynamic
// batching (server/serving/batcher.h).
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/rpc.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/transport_security.h"
#include "server/serving/http_server.h"
#include "server/serving/inference_service.h"
#include "server/serving/model_versions.h"
#include "server/serving/serving_metrics.h"
#include "worker/job_parameters.h"

ABSL_FLAG(std::string, model_file, "",
          "The model to serve: a safetensors file written by `psd_ctl "
          "export` (layer{i}.weight [fan_in, fan_out], layer{i}.bias). "
          "Required unless --coordinator and --job are given.");
ABSL_FLAG(std::string, model_name, "",
          "The model's name in OIP requests (model_name). Required.");
ABSL_FLAG(std::string, listen, "127.0.0.1:8001",
          "Address to serve gRPC on; port 0 lets the OS choose.");
ABSL_FLAG(std::string, port_file, "",
          "Write the bound gRPC port to this file once serving.");
ABSL_FLAG(int32_t, max_batch_size, 64,
          "Most rows in one batch (Triton's max_batch_size); a request with "
          "more rows is refused with INVALID_ARGUMENT.");
ABSL_FLAG(int64_t, max_queue_delay_microseconds, 1000,
          "How long the oldest queued request waits for others to join its "
          "batch; 0: run at once with whatever is queued.");
ABSL_FLAG(int32_t, max_queue_size, 1024,
          "Most requests waiting for a batch; more get RESOURCE_EXHAUSTED.");
ABSL_FLAG(int32_t, blas_threads, 0,
          "OpenBLAS threads (0: OpenBLAS's default).");
ABSL_FLAG(std::string, http_listen, "",
          "Address to serve the OIP HTTP/JSON API on (HTTPS with the --tls_* "
          "certificates, plain HTTP only with --insecure); empty: no HTTP.");
ABSL_FLAG(std::string, http_port_file, "",
          "Write the bound HTTP port to this file (before --port_file).");
ABSL_FLAG(int32_t, grpc_threads, 256,
          "Most gRPC handler threads: a call waiting for its batch holds one, "
          "so more concurrent calls than this (less a few for polling) get "
          "RESOURCE_EXHAUSTED from gRPC.");
ABSL_FLAG(int32_t, http_threads, 64,
          "HTTP handler threads: one per open keep-alive connection.");
ABSL_FLAG(double, poll_s, 0,
          "With --model_file: check the file every this many seconds and "
          "load it as a new version when its contents changed; 0: never.");
ABSL_FLAG(std::string, coordinator, "",
          "Load the model from a psd cluster instead of a file: the "
          "coordinator's host:port (with --job).");
ABSL_FLAG(std::string, job, "",
          "With --coordinator: the finished job whose parameters to serve.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "With --job: the Fashion-MNIST files, to report the job's input "
          "normalisation in ModelMetadata as `psd_ctl export` records it.");
ABSL_FLAG(int32_t, pull_timeout_s, 60,
          "With --coordinator: deadline of the GetJob call and the pull.");

namespace psd {
namespace {

// What the model file looked like when last read.
struct FileStamp {
  int64_t mtime_ns = -1;
  int64_t size = -1;
  bool operator==(const FileStamp& o) const {
    return mtime_ns == o.mtime_ns && size == o.size;
  }
};

FileStamp StampOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return {};
  return {int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
          int64_t{st.st_size}};
}

absl::StatusOr<std::string> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::UnavailableError(absl::StrCat(path, ": cannot read"));
  }
  return bytes.str();
}

// Loads the model file as a new version unless its contents hash to
// `*hash` (a touched but unchanged file); updates *hash.
absl::Status LoadFile(const std::string& path, serving::ModelVersions* versions,
                      size_t* hash, serving::ServingMetrics* metrics) {
  PSD_ASSIGN_OR_RETURN(std::string bytes, ReadBytes(path));
  const size_t h = absl::HashOf(bytes);
  if (h == *hash) return absl::OkStatus();
  auto contents = ParseSafetensors(bytes);
  if (!contents.ok()) {
    return absl::Status(contents.status().code(),
                        absl::StrCat(path, ": ", contents.status().message()));
  }
  PSD_ASSIGN_OR_RETURN(auto version,
                       versions->Load(*std::move(contents), "file " + path));
  *hash = h;
  metrics->RecordLoad();
  auto step = version->metadata.find("step");
  Log()->info("loaded version {} from {} (step {})", version->version, path,
              step == version->metadata.end() ? "?" : step->second);
  return absl::OkStatus();
}

// Pulls the finished job's parameters from the cluster's servers (the code
// path of psd_ctl export) and loads them as a new version.
absl::Status LoadJob(const std::string& coordinator, const std::string& job,
                     serving::ModelVersions* versions,
                     serving::ServingMetrics* metrics) {
  const std::chrono::milliseconds timeout =
      std::chrono::seconds(absl::GetFlag(FLAGS_pull_timeout_s));
  auto stub = JobService::NewStub(MakeChannel(coordinator));
  PSD_ASSIGN_OR_RETURN(JobStatus status, GetJobStatus(stub.get(), job, timeout));
  if (status.state() != SUCCEEDED) {
    return absl::FailedPreconditionError(
        absl::StrCat("--job ", job, ": ", JobState_Name(status.state()),
                     "; psd_serve serves a finished (SUCCEEDED) job"));
  }
  int64_t step = 0;
  PSD_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors,
                       PullJobParameters(status, 0, timeout, &step));
  std::string note;
  SafetensorsContents contents{
      std::move(tensors),
      ExportMetadata(status, step, absl::GetFlag(FLAGS_data_dir), &note)};
  if (!note.empty()) Log()->warn("{}", note);
  PSD_ASSIGN_OR_RETURN(
      auto version,
      versions->Load(std::move(contents),
                     absl::StrCat("job ", job, " on ", coordinator)));
  metrics->RecordLoad();
  Log()->info("loaded version {} from job {} on {} (step {})",
              version->version, job, coordinator, step);
  return absl::OkStatus();
}

int Main() {
  const std::string file = absl::GetFlag(FLAGS_model_file);
  const std::string name = absl::GetFlag(FLAGS_model_name);
  const std::string coordinator = absl::GetFlag(FLAGS_coordinator);
  const std::string job = absl::GetFlag(FLAGS_job);
  if (name.empty() || file.empty() == coordinator.empty() ||
      coordinator.empty() != job.empty()) {
    return StartupError(absl::InvalidArgumentError(
        "--model_name and either --model_file or --coordinator with --job "
        "are required (see --help)"));
  }
  const double poll_s = absl::GetFlag(FLAGS_poll_s);
  if (poll_s < 0 || (poll_s > 0 && file.empty())) {
    return StartupError(absl::InvalidArgumentError(
        "--poll_s: want >= 0, and only with --model_file"));
  }
  serving::ModelLoadOptions load;
  load.blas_threads = absl::GetFlag(FLAGS_blas_threads);
  serving::BatcherOptions& batching = load.batching;
  batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  batching.max_queue_delay_microseconds =
      absl::GetFlag(FLAGS_max_queue_delay_microseconds);
  batching.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  absl::Status valid = serving::DynamicBatcher::ValidateOptions(batching);
  if (!valid.ok()) {
    return StartupError(absl::InvalidArgumentError(absl::StrCat("--", valid.message())));
  }

  MetricsRegistry registry;
  AddProcessMetrics(&registry);
  serving::ModelVersions versions(load);
  serving::ServingMetrics metrics(&registry, &versions);
  versions.set_batch_observer(
      [&metrics](int32_t rows) { metrics.RecordBatch(rows); });

  // The first version, before serving: a server that answers is ready.
  size_t hash = 0;
  FileStamp stamp = StampOf(file);
  absl::Status loaded = file.empty()
                            ? LoadJob(coordinator, job, &versions, &metrics)
                            : LoadFile(file, &versions, &hash, &metrics);
  if (!loaded.ok()) return StartupError(loaded);
  const std::shared_ptr<const serving::ModelVersion> first = versions.Get("");
  const serving::ModelVersion& info = *first;
  if (info.model->min_rows() == 0) {
    Log()->warn(
        "this BLAS gives a row different logits in batches of different "
        "sizes: every row runs alone (batch-independent, slower)");
  } else if (info.model->min_rows() > 1) {
    Log()->info(
        "batches of fewer than {} rows are padded to {} so that a row's "
        "logits do not depend on its batch (see server/serving/mlp_model.h)",
        info.model->min_rows(), info.model->min_rows());
  }
  serving::InferenceService service(name, &versions, &metrics);

  auto metrics_server = ServeMetrics(&registry);
  if (!metrics_server.ok()) return StartupError(metrics_server.status());
  std::unique_ptr<serving::HttpServer> http;
  if (const std::string listen = absl::GetFlag(FLAGS_http_listen); !listen.empty()) {
    std::optional<serving::HttpServer::Tls> tls;
    if (const TlsOptions* t = ConfiguredTls(); t != nullptr) {
      tls = serving::HttpServer::Tls{t->ca_file, t->cert_file, t->key_file};
    }
    auto started = serving::HttpServer::Start(
        listen, &service, absl::GetFlag(FLAGS_http_threads), tls);
    if (!started.ok()) return StartupError(started.status());
    http = *std::move(started);
    Log()->info("serving the OIP HTTP/JSON API on {}://{}",
                tls.has_value() ? "https" : "http",
                AdvertisedAddress(listen, http->port()));
    if (const std::string f = absl::GetFlag(FLAGS_http_port_file); !f.empty()) {
      absl::Status written = WriteFileAtomically(f, absl::StrCat(http->port()));
      if (!written.ok()) return StartupError(written);
    }
  }
  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  rpc_options.max_threads = absl::GetFlag(FLAGS_grpc_threads);
  if (rpc_options.max_threads < 2) {
    return StartupError(absl::InvalidArgumentError("--grpc_threads: want >= 2"));
  }
  auto rpc = StartRpcServer(rpc_options, {&service});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  Log()->info(
      "serving model {} (MLP [{}], version {}, from {}) over inference."
      "GRPCInferenceService on {}; batches of up to {} rows, {} us delay, "
      "queue {}",
      name, absl::StrJoin(info.model->layer_sizes(), ","), info.version,
      info.source, AdvertisedAddress(rpc_options.listen_address, rpc->port),
      batching.max_batch_size, batching.max_queue_delay_microseconds,
      batching.max_queue_size);

  // Watches the model file: a changed file loads in the background (this
  // thread) while the current version keeps serving, then is swapped in.
  absl::Notification stop;
  std::thread watcher;
  if (poll_s > 0) {
    watcher = std::thread([&] {
      FileStamp failed;  // the stamp of a file that did not load (logged once)
      while (!stop.WaitForNotificationWithTimeout(absl::Seconds(poll_s))) {
        const FileStamp now = StampOf(file);
        if (now == stamp || now == failed) continue;
        absl::Status reloaded = LoadFile(file, &versions, &hash, &metrics);
        if (reloaded.ok()) {
          stamp = now;
        } else {
          failed = now;
          Log()->warn("{}: not loaded, still serving version {}: {}", file,
                      versions.newest_number(), reloaded.ToString());
        }
      }
    });
  }
  const int code = ServeUntilShutdownSignal(
      &*rpc, absl::GetFlag(FLAGS_port_file), std::chrono::seconds(5));
  stop.Notify();
  if (watcher.joinable()) watcher.join();
  http.reset();
  return code;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"psd_serve", "serve",
       "Serves a trained psd model over the Open Inference Protocol "
       "(KServe v2: gRPC, and HTTP/JSON with --http_listen).\n"
       "  psd_serve --model_name=NAME --model_file=X.safetensors [--poll_s=2]\n"
       "  psd_serve --model_name=NAME --coordinator=HOST:PORT --job=JOB\n"
       "            [--listen=127.0.0.1:8001] [--port_file=F]\n"
       "            [--http_listen=127.0.0.1:8000] [--http_port_file=F]\n"
       "            [--max_batch_size=64] [--max_queue_delay_microseconds=1000]\n"
       "            [--max_queue_size=1024] [--insecure | --tls_*]\n"
       "Loads the MLP that `psd_ctl export` wrote (or pulls a finished job's\n"
       "parameters from the cluster) and answers\n"
       "inference.GRPCInferenceService (ServerLive, ServerReady,\n"
       "ServerMetadata, ModelReady, ModelMetadata, ModelInfer), plus gRPC\n"
       "health and reflection, and the same over HTTP (/v2/...). Input\n"
       "\"input\" FP32 [batch, input_dim]; outputs \"logits\" FP32\n"
       "[batch, classes] and \"class\" INT64 [batch]. Concurrent requests\n"
       "are batched (dynamic batching). With --poll_s a changed model file\n"
       "is loaded as the next version without dropping a request. Transport\n"
       "security: the --tls_* flags of every psd binary (HTTPS too), or\n"
       "--insecure. SIGINT/SIGTERM shut it down gracefully."},
      psd::Main);
}
