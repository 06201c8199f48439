// oip_classify: classifies the Fashion-MNIST test set through an Open
// Inference Protocol server (psd_serve) and prints the accuracy, to check a
// served model against the accuracy its training job reported. Inputs are
// normalised exactly as the trainer does (worker/dataset.h: the training
// set's mean and std). Requests of --rows rows go out from --concurrency
// threads at once, so the server's dynamic batcher mixes them.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/rpc.h"
#include "common/transport_security.h"
#include "inference.grpc.pb.h"
#include "worker/dataset.h"

ABSL_FLAG(std::string, server, "127.0.0.1:8001", "psd_serve's host:port.");
ABSL_FLAG(std::string, model_name, "", "The served model's name. Required.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder of the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz "
          "for the normalisation, t10k-*-ubyte.gz to classify).");
ABSL_FLAG(int32_t, limit, 0, "Classify the first N test images (0: all).");
ABSL_FLAG(int32_t, rows, 7, "Rows (images) per request.");
ABSL_FLAG(int32_t, concurrency, 8, "Requests in flight at once.");
ABSL_FLAG(int32_t, timeout_s, 30, "Deadline of each call, in seconds.");

namespace psd {
namespace {

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const std::string model = absl::GetFlag(FLAGS_model_name);
  const int32_t rows_per_request = absl::GetFlag(FLAGS_rows);
  const int32_t concurrency = absl::GetFlag(FLAGS_concurrency);
  if (model.empty() || rows_per_request < 1 || concurrency < 1) {
    std::fprintf(stderr,
                 "oip_classify: --model_name is required, --rows and "
                 "--concurrency must be >= 1\n");
    return 2;
  }
  auto norm = ComputeNormalization(dir + "/train-images-idx3-ubyte.gz", 0);
  if (!norm.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", norm.status().ToString().c_str());
    return 1;
  }
  auto test = LoadDataset(dir + "/t10k-images-idx3-ubyte.gz",
                          dir + "/t10k-labels-idx1-ubyte.gz",
                          absl::GetFlag(FLAGS_limit), 10, *norm);
  if (!test.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", test.status().ToString().c_str());
    return 1;
  }
  auto stub = inference::GRPCInferenceService::NewStub(
      MakeChannel(absl::GetFlag(FLAGS_server)));
  const int32_t n = test->size, dim = test->dim;
  std::atomic<int32_t> next{0};
  std::atomic<int64_t> correct{0};
  std::vector<std::string> errors(concurrency);
  std::vector<std::thread> threads;
  for (int32_t t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      while (errors[t].empty()) {
        const int32_t start = next.fetch_add(rows_per_request);
        if (start >= n) return;
        const int32_t rows = std::min(rows_per_request, n - start);
        inference::ModelInferRequest request;
        request.set_model_name(model);
        request.set_id(absl::StrCat(start));
        auto* input = request.add_inputs();
        input->set_name("input");
        input->set_datatype("FP32");
        input->add_shape(rows);
        input->add_shape(dim);
        request.add_raw_input_contents()->assign(
            reinterpret_cast<const char*>(test->features.data() + size_t(start) * dim),
            sizeof(float) * rows * dim);
        request.add_outputs()->set_name("class");
        inference::ModelInferResponse response;
        grpc::ClientContext context;
        context.set_deadline(
            DeadlineIn(std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s))));
        grpc::Status status = stub->ModelInfer(&context, request, &response);
        if (!status.ok()) {
          errors[t] = absl::StrCat("rows ", start, "..: ", status.error_message(),
                                   " (code ", status.error_code(), ")");
          return;
        }
        if (response.raw_output_contents_size() != 1 ||
            response.raw_output_contents(0).size() != sizeof(int64_t) * rows) {
          errors[t] = absl::StrCat("rows ", start, "..: malformed response");
          return;
        }
        std::vector<int64_t> classes(rows);
        std::memcpy(classes.data(), response.raw_output_contents(0).data(),
                    sizeof(int64_t) * rows);
        int64_t right = 0;
        for (int32_t r = 0; r < rows; ++r) {
          right += classes[r] == test->labels[start + r];
        }
        correct += right;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) {
    if (!e.empty()) {
      std::fprintf(stderr, "oip_classify: %s\n", e.c_str());
      return 1;
    }
  }
  std::printf("correct %lld of %d accuracy %.9g\n",
              static_cast<long long>(correct.load()), n,
              static_cast<double>(static_cast<float>(correct.load()) /
                                  static_cast<float>(n)));
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Classifies the Fashion-MNIST test set through psd_serve (OIP gRPC).\n"
      "  oip_classify --server=HOST:PORT --model_name=NAME [--insecure]\n"
      "Prints \"correct C of N accuracy A\"; exit 1 on any failed call.");
  absl::ParseCommandLine(argc, argv);
  absl::Status security =
      psd::ConfigureTransportSecurityFromFlags(psd::PlaintextPolicy::kAllowQuietly);
  if (!security.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", security.ToString().c_str());
    return 2;
  }
  return psd::Main();
}
