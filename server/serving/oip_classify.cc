// oip_classify: classifies the Fashion-MNIST test set through an Open
// Inference Protocol server (psd_serve), over gRPC or HTTP/JSON, and prints
// the accuracy, to check a served model against the accuracy its training
// job reported. Inputs are normalised exactly as the trainer does
// (worker/dataset.h: the training set's mean and std). Requests of --rows
// rows go out from --concurrency threads at once, so the server's dynamic
// batcher mixes them. It can also write the requests as OIP JSON bodies
// (--write_json) for curl and wrk.
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc.h"
#include "common/transport_security.h"
#include "inference.grpc.pb.h"
#include "server/serving/oip_json.h"
#include "worker/dataset.h"

ABSL_FLAG(std::string, server, "127.0.0.1:8001",
          "psd_serve's host:port (its gRPC port, or with --http its HTTP one).");
ABSL_FLAG(bool, http, false,
          "Use the OIP HTTP/JSON API (HTTPS with the --tls_* files) instead "
          "of gRPC.");
ABSL_FLAG(std::string, model_name, "", "The served model's name. Required.");
ABSL_FLAG(std::string, model_version, "", "The version to ask for (\"\": newest).");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder of the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz "
          "for the normalisation, t10k-*-ubyte.gz to classify).");
ABSL_FLAG(int32_t, offset, 0, "The first test image to classify.");
ABSL_FLAG(int32_t, limit, 0, "Classify N test images from --offset (0: all).");
ABSL_FLAG(int32_t, rows, 7, "Rows (images) per request.");
ABSL_FLAG(int32_t, concurrency, 8, "Requests in flight at once.");
ABSL_FLAG(int32_t, repeat, 1,
          "Passes over the images (e.g. to keep load on during a reload); "
          "the accuracy printed is the last pass's.");
ABSL_FLAG(std::string, stop_file, "",
          "With --repeat: stop after the pass during which this file "
          "appears; each pass done is logged to stderr (\"pass N done\").");
ABSL_FLAG(int32_t, timeout_s, 30, "Deadline of each call, in seconds.");
ABSL_FLAG(bool, print_classes, false,
          "Also print \"image I predicted P true T\" for every image.");
ABSL_FLAG(std::string, write_json, "",
          "Send nothing: write each request's OIP JSON body to "
          "DIR/request_<first image>.json and the true classes to "
          "DIR/labels (one per line) instead.");

namespace psd {
namespace {

// Sends one request over HTTP(S); fills `response` or returns why not.
std::string PostJson(httplib::Client* client, const std::string& path,
                     const inference::ModelInferRequest& request,
                     inference::ModelInferResponse* response) {
  auto result = client->Post(path.c_str(), serving::InferRequestJson(request),
                             "application/json");
  if (!result) return absl::StrCat("HTTP: ", httplib::to_string(result.error()));
  if (result->status != 200) {
    return absl::StrCat("HTTP ", result->status, ": ", result->body);
  }
  absl::Status parsed = serving::ParseInferResponseJson(result->body, response);
  return parsed.ok() ? "" : parsed.ToString();
}

std::unique_ptr<httplib::Client> HttpClient(const std::string& server) {
  const TlsOptions* tls = ConfiguredTls();
  std::unique_ptr<httplib::Client> client;
  if (tls == nullptr) {
    client = std::make_unique<httplib::Client>(absl::StrCat("http://", server));
  } else {
    // psd certificates carry IP:127.0.0.1 and DNS:localhost, which httplib
    // checks along with the chain.
    client = std::make_unique<httplib::Client>(absl::StrCat("https://", server),
                                               tls->cert_file, tls->key_file);
    client->set_ca_cert_path(tls->ca_file.c_str());
    client->enable_server_certificate_verification(true);
  }
  client->set_read_timeout(absl::GetFlag(FLAGS_timeout_s), 0);
  client->set_keep_alive(true);
  return client;
}

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const std::string model = absl::GetFlag(FLAGS_model_name);
  const int32_t rows_per_request = absl::GetFlag(FLAGS_rows);
  const int32_t concurrency = absl::GetFlag(FLAGS_concurrency);
  const int32_t offset = absl::GetFlag(FLAGS_offset);
  const int32_t limit = absl::GetFlag(FLAGS_limit);
  if (model.empty() || rows_per_request < 1 || concurrency < 1 || offset < 0 ||
      limit < 0 || absl::GetFlag(FLAGS_repeat) < 1) {
    std::fprintf(stderr,
                 "oip_classify: --model_name is required, --rows, --repeat and "
                 "--concurrency must be >= 1, --offset and --limit >= 0\n");
    return 2;
  }
  auto norm = ComputeNormalization(dir + "/train-images-idx3-ubyte.gz", 0);
  if (!norm.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", norm.status().ToString().c_str());
    return 1;
  }
  auto test = LoadDataset(dir + "/t10k-images-idx3-ubyte.gz",
                          dir + "/t10k-labels-idx1-ubyte.gz",
                          limit == 0 ? 0 : offset + limit, 10, *norm);
  if (!test.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", test.status().ToString().c_str());
    return 1;
  }
  const int32_t n = test->size, dim = test->dim;
  if (offset >= n) {
    std::fprintf(stderr, "oip_classify: --offset %d: only %d test images\n",
                 offset, n);
    return 2;
  }
  auto make_request = [&](int32_t start, int32_t rows) {
    inference::ModelInferRequest request;
    request.set_model_name(model);
    request.set_model_version(absl::GetFlag(FLAGS_model_version));
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
    return request;
  };

  if (const std::string out = absl::GetFlag(FLAGS_write_json); !out.empty()) {
    std::ofstream labels(out + "/labels");
    for (int32_t start = offset; start < n; start += rows_per_request) {
      const int32_t rows = std::min(rows_per_request, n - start);
      std::ofstream body(absl::StrCat(out, "/request_", start, ".json"));
      body << serving::InferRequestJson(make_request(start, rows));
      for (int32_t r = 0; r < rows; ++r) labels << test->labels[start + r] << "\n";
      if (!body || !labels) {
        std::fprintf(stderr, "oip_classify: cannot write to %s\n", out.c_str());
        return 1;
      }
    }
    return 0;
  }

  const bool http = absl::GetFlag(FLAGS_http);
  const std::string server = absl::GetFlag(FLAGS_server);
  auto stub = inference::GRPCInferenceService::NewStub(MakeChannel(server));
  const std::string version = absl::GetFlag(FLAGS_model_version);
  const std::string path =
      version.empty() ? absl::StrCat("/v2/models/", model, "/infer")
                      : absl::StrCat("/v2/models/", model, "/versions/", version,
                                     "/infer");
  std::vector<int64_t> predicted(n, -1);
  absl::Mutex mu;
  std::map<std::string, int64_t> versions;  // answers per model_version
  std::atomic<int64_t> correct{0};
  std::vector<std::string> errors(concurrency);
  const auto started = std::chrono::steady_clock::now();
  for (int32_t pass = 0; pass < absl::GetFlag(FLAGS_repeat); ++pass) {
    std::atomic<int32_t> next{offset};
    correct = 0;
    std::vector<std::thread> threads;
    for (int32_t t = 0; t < concurrency; ++t) {
      threads.emplace_back([&, t] {
        std::unique_ptr<httplib::Client> client;
        if (http) client = HttpClient(server);
        while (errors[t].empty()) {
          const int32_t start = next.fetch_add(rows_per_request);
          if (start >= n) return;
          const int32_t rows = std::min(rows_per_request, n - start);
          inference::ModelInferRequest request = make_request(start, rows);
          inference::ModelInferResponse response;
          std::vector<int64_t> classes(rows);
          if (http) {
            errors[t] = PostJson(client.get(), path, request, &response);
            if (!errors[t].empty()) {
              errors[t] = absl::StrCat("rows ", start, "..: ", errors[t]);
              return;
            }
            if (response.outputs_size() != 1 ||
                response.outputs(0).contents().int64_contents_size() != rows) {
              errors[t] = absl::StrCat("rows ", start, "..: malformed response");
              return;
            }
            const auto& c = response.outputs(0).contents().int64_contents();
            classes.assign(c.begin(), c.end());
          } else {
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
            std::memcpy(classes.data(), response.raw_output_contents(0).data(),
                        sizeof(int64_t) * rows);
          }
          int64_t right = 0;
          for (int32_t r = 0; r < rows; ++r) {
            right += classes[r] == test->labels[start + r];
            predicted[start + r] = classes[r];
          }
          correct += right;
          absl::MutexLock lock(&mu);
          ++versions[response.model_version()];
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
    if (const std::string stop = absl::GetFlag(FLAGS_stop_file); !stop.empty()) {
      std::fprintf(stderr, "pass %d done\n", pass + 1);
      if (std::ifstream(stop).good()) break;
    }
  }
  if (absl::GetFlag(FLAGS_print_classes)) {
    for (int32_t i = offset; i < n; ++i) {
      std::printf("image %d predicted %lld true %d\n", i,
                  static_cast<long long>(predicted[i]), test->labels[i]);
    }
  }
  const int32_t total = n - offset;
  std::printf("correct %lld of %d accuracy %.9g\n",
              static_cast<long long>(correct.load()), total,
              static_cast<double>(static_cast<float>(correct.load()) /
                                  static_cast<float>(total)));
  std::string seen;
  int64_t requests = 0;
  for (const auto& [v, count] : versions) {
    absl::StrAppend(&seen, " ", v, ":", count);
    requests += count;
  }
  std::printf("versions%s\n", seen.c_str());
  std::printf("requests_per_second %.1f\n",
              static_cast<double>(requests) /
                  std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                started).count());
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Classifies the Fashion-MNIST test set through psd_serve (OIP gRPC or "
      "HTTP/JSON).\n"
      "  oip_classify --server=HOST:PORT --model_name=NAME [--http] [--insecure]\n"
      "Prints \"correct C of N accuracy A\", \"versions V:answers...\" and "
      "\"requests_per_second R\" (the calls, without start-up); "
      "exit 1 on any failed call.\n"
      "  oip_classify --model_name=NAME --write_json=DIR [--offset --limit --rows]\n"
      "writes the requests as OIP JSON bodies instead.");
  absl::ParseCommandLine(argc, argv);
  absl::Status security =
      psd::ConfigureTransportSecurityFromFlags(psd::PlaintextPolicy::kAllowQuietly);
  if (!security.ok()) {
    std::fprintf(stderr, "oip_classify: %s\n", security.ToString().c_str());
    return 2;
  }
  return psd::Main();
}
