// psd_serve: serves a trained psd MLP (a `psd_ctl export` safetensors file)
// over the Open Inference Protocol (KServe v2) gRPC API, with dynamic
// batching (server/serving/batcher.h).
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_join.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/rpc.h"
#include "common/safetensors.h"
#include "kernels/kernels.h"
#include "server/serving/batcher.h"
#include "server/serving/inference_service.h"
#include "server/serving/mlp_model.h"

ABSL_FLAG(std::string, model_file, "",
          "The model to serve: a safetensors file written by `psd_ctl "
          "export` (layer{i}.weight [fan_in, fan_out], layer{i}.bias). "
          "Required.");
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

namespace psd {
namespace {

int Main() {
  const std::string file = absl::GetFlag(FLAGS_model_file);
  const std::string name = absl::GetFlag(FLAGS_model_name);
  if (file.empty() || name.empty()) {
    return StartupError(absl::InvalidArgumentError(
        "--model_file and --model_name are required (see --help)"));
  }
  serving::BatcherOptions batching;
  batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  batching.max_queue_delay_microseconds =
      absl::GetFlag(FLAGS_max_queue_delay_microseconds);
  batching.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  absl::Status valid = serving::DynamicBatcher::ValidateOptions(batching);
  if (!valid.ok()) {
    return StartupError(absl::InvalidArgumentError(absl::StrCat("--", valid.message())));
  }
  auto contents = ReadSafetensors(file);
  if (!contents.ok()) return StartupError(contents.status());
  auto model = serving::MlpModel::Create(
      std::move(contents->tensors),
      kernels::CreateCpuBackend(absl::GetFlag(FLAGS_blas_threads)),
      batching.max_batch_size);
  if (!model.ok()) {
    return StartupError(absl::Status(
        model.status().code(), absl::StrCat(file, ": ", model.status().message())));
  }
  serving::MlpModel* mlp = model->get();
  if (mlp->min_rows() == 0) {
    Log()->warn(
        "this BLAS gives a row different logits in batches of different "
        "sizes: every row runs alone (batch-independent, slower)");
  } else if (mlp->min_rows() > 1) {
    Log()->info(
        "batches of fewer than {} rows are padded to {} so that a row's "
        "logits do not depend on its batch (see server/serving/mlp_model.h)",
        mlp->min_rows(), mlp->min_rows());
  }
  serving::DynamicBatcher batcher(
      batching, mlp->input_dim(), mlp->num_classes(),
      [mlp](const float* x, int32_t rows, float* y) { mlp->Forward(x, rows, y); });
  serving::InferenceService service(
      {name, mlp->input_dim(), mlp->num_classes()}, &batcher);

  MetricsRegistry metrics;
  AddProcessMetrics(&metrics);
  auto metrics_server = ServeMetrics(&metrics);
  if (!metrics_server.ok()) return StartupError(metrics_server.status());
  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  auto rpc = StartRpcServer(rpc_options, {&service});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  std::string step = "?";
  if (auto it = contents->metadata.find("step"); it != contents->metadata.end()) {
    step = it->second;
  }
  Log()->info(
      "serving model {} (MLP [{}], step {}, from {}) over inference."
      "GRPCInferenceService on {}; batches of up to {} rows, {} us delay, "
      "queue {}",
      name, absl::StrJoin(mlp->layer_sizes(), ","), step, file,
      AdvertisedAddress(rpc_options.listen_address, rpc->port),
      batching.max_batch_size, batching.max_queue_delay_microseconds,
      batching.max_queue_size);
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(5));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"psd_serve", "serve",
       "Serves a trained psd model over the Open Inference Protocol "
       "(KServe v2, gRPC).\n"
       "  psd_serve --model_file=X.safetensors --model_name=NAME\n"
       "            [--listen=127.0.0.1:8001] [--port_file=F] [--insecure]\n"
       "            [--max_batch_size=64] [--max_queue_delay_microseconds=1000]\n"
       "            [--max_queue_size=1024]\n"
       "Loads the MLP that `psd_ctl export` wrote and answers\n"
       "inference.GRPCInferenceService (ServerLive, ServerReady,\n"
       "ServerMetadata, ModelReady, ModelMetadata, ModelInfer), plus gRPC\n"
       "health and reflection. Input \"input\" FP32 [batch, input_dim];\n"
       "outputs \"logits\" FP32 [batch, classes] and \"class\" INT64 [batch].\n"
       "Concurrent requests are batched (dynamic batching). Transport\n"
       "security: the --tls_* flags of every psd binary, or --insecure.\n"
       "SIGINT/SIGTERM shut it down gracefully."},
      psd::Main);
}
