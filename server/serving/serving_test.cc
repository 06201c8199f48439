// psd_serve's parts in one process: the model against the training code,
// the dynamic batcher (batched outputs bit for bit those of unbatched calls,
// a full queue refused) and the OIP service over a real gRPC channel (bad
// requests answered with a status naming the field).
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/rpc.h"
#include "inference.grpc.pb.h"
#include "kernels/kernels.h"
#include "server/serving/batcher.h"
#include "server/serving/inference_service.h"
#include "server/serving/http_server.h"
#include "server/serving/mlp_model.h"
#include "server/serving/model_versions.h"
#include "server/serving/oip_json.h"
#include "server/serving/serving_metrics.h"
#include "worker/mlp.h"

namespace psd::serving {
namespace {

constexpr int32_t kInput = 784;
constexpr int32_t kClasses = 10;

// The short job's MLP 784-256-128-10 with random parameters (scaled so
// that the logits vary), as psd_ctl export names them.
std::vector<NamedTensor> RandomMlp(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<int64_t> sizes = {kInput, 256, 128, kClasses};
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    NamedTensor w{absl::StrCat("layer", i, ".weight"), {sizes[i], sizes[i + 1]}, {}};
    NamedTensor b{absl::StrCat("layer", i, ".bias"), {sizes[i + 1]}, {}};
    const float scale = 1.0f / std::sqrt(static_cast<float>(sizes[i]));
    for (int64_t k = 0; k < sizes[i] * sizes[i + 1]; ++k) {
      w.values.push_back(normal(rng) * scale);
    }
    for (int64_t k = 0; k < sizes[i + 1]; ++k) b.values.push_back(0.1f * normal(rng));
    tensors.push_back(std::move(w));
    tensors.push_back(std::move(b));
  }
  return tensors;
}

std::vector<float> RandomRows(int32_t rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(rows) * kInput);
  for (float& v : x) v = normal(rng);
  return x;
}

std::unique_ptr<MlpModel> Model(uint32_t seed = 1) {
  auto model = MlpModel::Create(RandomMlp(seed), kernels::CreateCpuBackend(), 64);
  REQUIRE(model.ok());
  return *std::move(model);
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_CASE("MlpModel: predicts what the training code's Mlp predicts",
          "[serving]") {
  const std::vector<NamedTensor> tensors = RandomMlp(7);
  auto model = Model(7);
  INFO("min_rows " << model->min_rows());
  CHECK(model->layer_sizes() == std::vector<int32_t>{kInput, 256, 128, kClasses});
  const int32_t n = 300;
  const std::vector<float> x = RandomRows(n, 3);
  std::vector<float> logits(size_t(n) * kClasses);
  // In chunks of 64 rows, as the trainer's CountCorrect evaluates.
  for (int32_t start = 0; start < n; start += 64) {
    const int32_t rows = std::min(64, n - start);
    model->Forward(x.data() + size_t(start) * kInput, rows,
                   logits.data() + size_t(start) * kClasses);
  }
  std::vector<int32_t> labels(n);
  for (int32_t r = 0; r < n; ++r) {
    const float* row = logits.data() + size_t(r) * kClasses;
    labels[r] = static_cast<int32_t>(std::max_element(row, row + kClasses) - row);
  }
  auto backend = kernels::CreateCpuBackend();
  Mlp trainer({kInput, 256, 128, kClasses}, 64, backend.get());
  std::vector<const float*> params;
  for (const NamedTensor& t : tensors) params.push_back(t.values.data());
  // Every served class is the one the trainer's evaluation predicts.
  CHECK(trainer.CountCorrect(params, x.data(), labels.data(), n) == n);
}

TEST_CASE("MlpModel: a malformed export is INVALID_ARGUMENT naming the tensor",
          "[serving]") {
  auto error = [](std::vector<NamedTensor> tensors) {
    auto model = MlpModel::Create(std::move(tensors), kernels::CreateCpuBackend(), 8);
    REQUIRE_FALSE(model.ok());
    CHECK(model.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(model.status().message());
  };
  std::vector<NamedTensor> t = RandomMlp(1);
  CHECK_THAT(error({}), Catch::Contains("layer0.weight: missing"));
  std::vector<NamedTensor> no_bias = t;
  no_bias.erase(no_bias.begin() + 3);  // layer1.bias
  CHECK_THAT(error(no_bias), Catch::Contains("layer1.bias: missing"));
  std::vector<NamedTensor> bad_chain = t;
  bad_chain[2].shape = {128, 256};  // layer1.weight, same element count
  CHECK_THAT(error(bad_chain), Catch::Contains("layer1.weight: shape [128,256], want fan_in 256"));
  std::vector<NamedTensor> bad_bias = t;
  bad_bias[1].shape = {16, 16};
  CHECK_THAT(error(bad_bias), Catch::Contains("layer0.bias: shape [16,16], want [256]"));
  std::vector<NamedTensor> extra = t;
  extra.push_back({"embedding", {1}, {0.0f}});
  CHECK_THAT(error(extra), Catch::Contains("embedding: not a parameter"));
}

TEST_CASE("DynamicBatcher: batched outputs are bit for bit the unbatched ones",
          "[serving][batcher]") {
  auto model = Model();
  // Requests of 1 to 5 rows, 40 of them, each alone through the model.
  std::vector<std::vector<float>> inputs, alone;
  for (int i = 0; i < 40; ++i) {
    const int32_t rows = 1 + i % 5;
    inputs.push_back(RandomRows(rows, 100 + i));
    alone.emplace_back(size_t(rows) * kClasses);
    model->Forward(inputs.back().data(), rows, alone.back().data());
  }
  BatcherOptions options;
  options.max_batch_size = 16;
  options.max_queue_delay_microseconds = 20000;  // long: batches fill up
  MlpModel* mlp = model.get();
  DynamicBatcher batcher(options, kInput, kClasses,
                         [mlp](const float* x, int32_t rows, float* y) {
                           mlp->Forward(x, rows, y);
                         });
  std::vector<std::vector<float>> batched(inputs.size());
  std::vector<absl::Status> statuses(inputs.size());
  std::vector<std::thread> callers;
  for (size_t i = 0; i < inputs.size(); ++i) {
    callers.emplace_back([&, i] {
      const int32_t rows = static_cast<int32_t>(inputs[i].size() / kInput);
      batched[i].resize(size_t(rows) * kClasses);
      statuses[i] = batcher.Run(inputs[i].data(), rows, batched[i].data());
    });
  }
  for (std::thread& t : callers) t.join();
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("request " << i);
    CHECK(statuses[i].ok());
    CHECK(SameBits(batched[i], alone[i]));
  }
  const BatcherStats stats = batcher.stats();
  CHECK(stats.requests == 40);
  CHECK(stats.rows == 120);
  CHECK(stats.largest_batch <= 16);
  CHECK(stats.largest_batch > 5);   // requests were batched together
  CHECK(stats.batches < 40);
  // And one full batch of 64 rows equals the rows one at a time.
  const std::vector<float> x = RandomRows(64, 9);
  std::vector<float> whole(64 * kClasses), rows(64 * kClasses);
  model->Forward(x.data(), 64, whole.data());
  for (int r = 0; r < 64; ++r) {
    model->Forward(x.data() + r * kInput, 1, rows.data() + r * kClasses);
  }
  CHECK(SameBits(whole, rows));
}

TEST_CASE("DynamicBatcher: a full queue is RESOURCE_EXHAUSTED, an oversized "
          "request INVALID_ARGUMENT",
          "[serving][batcher]") {
  absl::Notification started, release;
  BatcherOptions options;
  options.max_batch_size = 1;
  options.max_queue_size = 2;
  options.max_queue_delay_microseconds = 0;
  DynamicBatcher batcher(options, 1, 1,
                         [&](const float* x, int32_t rows, float* y) {
                           if (!started.HasBeenNotified()) started.Notify();
                           release.WaitForNotification();
                           for (int32_t r = 0; r < rows; ++r) y[r] = 2 * x[r];
                         });
  float in[4] = {1, 2, 3, 4}, out[4] = {};
  std::vector<absl::Status> statuses(3);
  std::vector<std::thread> callers;
  callers.emplace_back([&] { statuses[0] = batcher.Run(&in[0], 1, &out[0]); });
  started.WaitForNotification();  // the first runs (and blocks) ...
  callers.emplace_back([&] { statuses[1] = batcher.Run(&in[1], 1, &out[1]); });
  callers.emplace_back([&] { statuses[2] = batcher.Run(&in[2], 1, &out[2]); });
  // ... two wait: the queue is full.
  for (int i = 0; i < 10000 && batcher.queue_length() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  REQUIRE(batcher.queue_length() == 2);
  const absl::Status refused = batcher.Run(&in[3], 1, &out[3]);
  CHECK(refused.code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(refused.message()), Catch::Contains("max_queue_size 2"));
  absl::Status too_big = batcher.Run(in, 2, out);
  CHECK(too_big.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(too_big.message()), Catch::Contains("max_batch_size"));
  release.Notify();
  for (std::thread& t : callers) t.join();
  for (const absl::Status& s : statuses) CHECK(s.ok());
  CHECK(out[0] == 2);
  CHECK(out[1] == 4);
  CHECK(out[2] == 6);
}

// The service on 127.0.0.1:0 over a real channel (plaintext).
ModelLoadOptions LoadOptions(int32_t max_batch) {
  ModelLoadOptions o;
  o.batching.max_batch_size = max_batch;
  o.batching.max_queue_delay_microseconds = 500;
  return o;
}

// The service over gRPC and HTTP, serving RandomMlp(1) as version "1".
struct Served {
  explicit Served(int32_t max_batch = 8)
      : versions(LoadOptions(max_batch)),
        metrics(&registry, &versions),
        service("fashion", &versions, &metrics) {
    versions.set_batch_observer([this](int32_t rows) { metrics.RecordBatch(rows); });
    REQUIRE(versions.Load({RandomMlp(1), {{"step", "7"}}}, "test").ok());
    auto started = StartRpcServer(RpcServerOptions{}, {&service});
    REQUIRE(started.ok());
    rpc = *std::move(started);
    stub = inference::GRPCInferenceService::NewStub(
        MakeChannel(absl::StrCat("127.0.0.1:", rpc.port)));
    auto web = HttpServer::Start("127.0.0.1:0", &service, 8, std::nullopt);
    REQUIRE(web.ok());
    http = *std::move(web);
  }
  ~Served() {
    http.reset();
    rpc.server->Shutdown();
  }

  grpc::Status Infer(const inference::ModelInferRequest& request,
                     inference::ModelInferResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
    return stub->ModelInfer(&context, request, response);
  }

  // POSTs `body` to `path`; returns {status, body}.
  std::pair<int, std::string> Post(const std::string& path, const std::string& body) {
    httplib::Client client("127.0.0.1", http->port());
    auto result = client.Post(path.c_str(), body, "application/json");
    REQUIRE(result);
    return {result->status, result->body};
  }
  std::pair<int, std::string> Get(const std::string& path) {
    httplib::Client client("127.0.0.1", http->port());
    auto result = client.Get(path.c_str());
    REQUIRE(result);
    return {result->status, result->body};
  }

  MetricsRegistry registry;
  ModelVersions versions;
  ServingMetrics metrics;
  InferenceService service;
  RpcServer rpc;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
  std::unique_ptr<HttpServer> http;
};

inference::ModelInferRequest Request(const std::vector<float>& x, bool raw) {
  inference::ModelInferRequest request;
  request.set_model_name("fashion");
  request.set_id("r1");
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype("FP32");
  input->add_shape(static_cast<int64_t>(x.size() / kInput));
  input->add_shape(kInput);
  if (raw) {
    request.add_raw_input_contents()->assign(
        reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
  } else {
    input->mutable_contents()->mutable_fp32_contents()->Add(x.begin(), x.end());
  }
  return request;
}

TEST_CASE("InferenceService: health, metadata and inference over gRPC",
          "[serving][service]") {
  Served served;
  {
    grpc::ClientContext context;
    inference::ServerLiveResponse live;
    REQUIRE(served.stub->ServerLive(&context, {}, &live).ok());
    CHECK(live.live());
  }
  {
    grpc::ClientContext context;
    inference::ServerReadyResponse ready;
    REQUIRE(served.stub->ServerReady(&context, {}, &ready).ok());
    CHECK(ready.ready());
  }
  {
    grpc::ClientContext context;
    inference::ModelReadyRequest request;
    request.set_name("fashion");
    inference::ModelReadyResponse ready;
    REQUIRE(served.stub->ModelReady(&context, request, &ready).ok());
    CHECK(ready.ready());
  }
  {
    grpc::ClientContext context;
    inference::ModelMetadataRequest request;
    request.set_name("fashion");
    request.set_version("1");
    inference::ModelMetadataResponse metadata;
    REQUIRE(served.stub->ModelMetadata(&context, request, &metadata).ok());
    CHECK(metadata.name() == "fashion");
    REQUIRE(metadata.inputs_size() == 1);
    CHECK(metadata.inputs(0).name() == "input");
    CHECK(metadata.inputs(0).datatype() == "FP32");
    CHECK(std::vector<int64_t>(metadata.inputs(0).shape().begin(),
                               metadata.inputs(0).shape().end()) ==
          std::vector<int64_t>{-1, kInput});
    REQUIRE(metadata.outputs_size() == 2);
    CHECK(metadata.outputs(0).name() == "logits");
    CHECK(metadata.outputs(1).name() == "class");
    CHECK(metadata.outputs(1).datatype() == "INT64");
  }
  const std::vector<float> x = RandomRows(3, 5);
  std::vector<float> want(3 * kClasses);
  Model()->Forward(x.data(), 3, want.data());
  for (bool raw : {false, true}) {
    INFO("raw " << raw);
    inference::ModelInferResponse response;
    REQUIRE(served.Infer(Request(x, raw), &response).ok());
    CHECK(response.model_name() == "fashion");
    CHECK(response.id() == "r1");
    REQUIRE(response.outputs_size() == 2);
    CHECK(response.outputs(0).name() == "logits");
    CHECK(std::vector<int64_t>(response.outputs(0).shape().begin(),
                               response.outputs(0).shape().end()) ==
          std::vector<int64_t>{3, kClasses});
    std::vector<float> logits(3 * kClasses);
    std::vector<int64_t> classes(3);
    if (raw) {
      REQUIRE(response.raw_output_contents_size() == 2);
      REQUIRE(response.raw_output_contents(0).size() == logits.size() * 4);
      std::memcpy(logits.data(), response.raw_output_contents(0).data(), logits.size() * 4);
      REQUIRE(response.raw_output_contents(1).size() == 3 * 8);
      std::memcpy(classes.data(), response.raw_output_contents(1).data(), 3 * 8);
    } else {
      const auto& f = response.outputs(0).contents().fp32_contents();
      REQUIRE(f.size() == 3 * kClasses);
      logits.assign(f.begin(), f.end());
      const auto& c = response.outputs(1).contents().int64_contents();
      REQUIRE(c.size() == 3);
      classes.assign(c.begin(), c.end());
    }
    CHECK(SameBits(logits, want));
    for (int r = 0; r < 3; ++r) {
      const float* row = want.data() + r * kClasses;
      CHECK(classes[r] == std::max_element(row, row + kClasses) - row);
    }
  }
  // Only the output asked for.
  inference::ModelInferRequest request = Request(x, false);
  request.add_outputs()->set_name("class");
  inference::ModelInferResponse response;
  REQUIRE(served.Infer(request, &response).ok());
  REQUIRE(response.outputs_size() == 1);
  CHECK(response.outputs(0).name() == "class");
}

TEST_CASE("InferenceService: bad requests get a status naming the field",
          "[serving][service]") {
  Served served;
  const std::vector<float> x = RandomRows(2, 5);
  auto expect = [&](const inference::ModelInferRequest& request,
                    grpc::StatusCode code, const std::string& text) {
    inference::ModelInferResponse response;
    grpc::Status status = served.Infer(request, &response);
    INFO(status.error_message());
    CHECK(status.error_code() == code);
    CHECK_THAT(status.error_message(), Catch::Contains(text));
  };
  inference::ModelInferRequest r = Request(x, false);
  r.set_model_name("mnist");
  expect(r, grpc::StatusCode::NOT_FOUND, "model_name \"mnist\": unknown");
  r = Request(x, false);
  r.set_model_version("2");
  expect(r, grpc::StatusCode::NOT_FOUND,
         "model_version \"2\" of model \"fashion\": not loaded (loaded: \"1\")");
  r = Request(x, false);
  r.mutable_inputs(0)->set_name("images");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].name: \"images\"");
  r = Request(x, false);
  r.mutable_inputs(0)->set_datatype("FP64");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].datatype: \"FP64\"");
  r = Request(x, false);
  r.mutable_inputs(0)->set_shape(1, 783);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape: [2,783], want [1..8, 784]");
  r = Request(x, false);
  r.mutable_inputs(0)->add_shape(1);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape");
  r = Request(x, false);
  r.mutable_inputs(0)->set_shape(0, 9);  // more than max_batch_size
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape: [9,784]");
  r = Request(x, false);
  r.mutable_inputs(0)->set_shape(0, -1);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape: [-1,784]");
  r = Request(x, false);
  r.mutable_inputs(0)->mutable_contents()->mutable_fp32_contents()->RemoveLast();
  expect(r, grpc::StatusCode::INVALID_ARGUMENT,
         "inputs[0].contents.fp32_contents: 1567 values, want 1568");
  r = Request(x, false);
  r.mutable_inputs(0)->mutable_contents()->add_int_contents(1);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].contents");
  r = Request(x, true);
  r.mutable_raw_input_contents(0)->pop_back();
  expect(r, grpc::StatusCode::INVALID_ARGUMENT,
         "raw_input_contents[0]: 6271 bytes, want 6272");
  r = Request(x, true);
  r.add_raw_input_contents("x");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents: 2 entries");
  r = Request(x, true);
  r.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "together with raw_input_contents");
  r = Request(x, false);
  r.add_inputs()->set_name("input2");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs: 2 tensors");
  r = Request(x, false);
  r.clear_inputs();
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "inputs: 0 tensors");
  r = Request(x, false);
  r.add_outputs()->set_name("probabilities");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "outputs[0].name: \"probabilities\"");
  r = Request(x, false);
  r.add_outputs()->set_name("class");
  r.add_outputs()->set_name("class");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "outputs[1].name: \"class\" asked twice");
  {
    grpc::ClientContext context;
    inference::ModelReadyRequest request;
    request.set_name("nope");
    inference::ModelReadyResponse ready;
    CHECK(served.stub->ModelReady(&context, request, &ready).error_code() ==
          grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    inference::ModelMetadataRequest request;
    request.set_name("fashion");
    request.set_version("7");
    inference::ModelMetadataResponse metadata;
    CHECK(served.stub->ModelMetadata(&context, request, &metadata).error_code() ==
          grpc::StatusCode::NOT_FOUND);
  }
  // Still serving after all that.
  inference::ModelInferResponse response;
  CHECK(served.Infer(Request(x, true), &response).ok());
}

// An OIP JSON infer body for rows of x, nested [rows][784] when `nested`.
std::string JsonBody(const std::vector<float>& x, bool nested,
                     const std::string& extra_output = "") {
  const size_t rows = x.size() / kInput;
  std::string data;
  for (size_t r = 0; r < rows; ++r) {
    if (nested) data += r == 0 ? "[" : ",[";
    for (size_t j = 0; j < kInput; ++j) {
      if (j > 0 || (!nested && r > 0)) data += ",";
      // %.9g reads back the same float.
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.9g", x[r * kInput + j]);
      data += buf;
    }
    if (nested) data += "]";
  }
  return absl::StrCat(R"({"id":"h1","inputs":[{"name":"input","shape":[)", rows,
                      R"(,784],"datatype":"FP32","data":[)", data, "]}]",
                      extra_output, "}");
}

TEST_CASE("HTTP/JSON: the same results as gRPC, bit for bit", "[serving][http]") {
  Served served;
  const std::vector<float> x = RandomRows(3, 11);
  inference::ModelInferResponse grpc_response;
  REQUIRE(served.Infer(Request(x, false), &grpc_response).ok());
  const auto& want = grpc_response.outputs(0).contents().fp32_contents();
  for (bool nested : {false, true}) {
    INFO("nested " << nested);
    auto [status, body] = served.Post("/v2/models/fashion/infer", JsonBody(x, nested));
    INFO(body);
    REQUIRE(status == 200);
    // Read back with protobuf's JSON parser, as a client would.
    google::protobuf::Struct parsed;
    REQUIRE(google::protobuf::util::JsonStringToMessage(body, &parsed).ok());
    const auto& f = parsed.fields();
    CHECK(f.at("model_name").string_value() == "fashion");
    CHECK(f.at("model_version").string_value() == "1");
    CHECK(f.at("id").string_value() == "h1");
    const auto& outputs = f.at("outputs").list_value();
    REQUIRE(outputs.values_size() == 2);
    const auto& logits = outputs.values(0).struct_value().fields();
    CHECK(logits.at("name").string_value() == "logits");
    CHECK(logits.at("datatype").string_value() == "FP32");
    CHECK(logits.at("shape").list_value().values(1).number_value() == kClasses);
    const auto& data = logits.at("data").list_value();
    REQUIRE(data.values_size() == want.size());
    std::vector<float> got, expected(want.begin(), want.end());
    for (const auto& v : data.values()) got.push_back(static_cast<float>(v.number_value()));
    CHECK(SameBits(got, expected));
    const auto& classes = outputs.values(1).struct_value().fields();
    CHECK(classes.at("datatype").string_value() == "INT64");
    for (int r = 0; r < 3; ++r) {
      CHECK(classes.at("data").list_value().values(r).number_value() ==
            grpc_response.outputs(1).contents().int64_contents(r));
    }
  }
  // Versioned path, one output.
  auto [status, body] = served.Post("/v2/models/fashion/versions/1/infer",
                                    JsonBody(x, false, R"(,"outputs":[{"name":"class"}])"));
  CHECK(status == 200);
  CHECK_THAT(body, Catch::Contains(R"("name":"class")"));
  CHECK_THAT(body, !Catch::Contains("logits"));
  // Health and metadata.
  CHECK(served.Get("/v2/health/live").first == 200);
  CHECK(served.Get("/v2/health/ready") == std::pair<int, std::string>{200, R"({"ready":true})"});
  CHECK(served.Get("/v2/models/fashion/ready").first == 200);
  CHECK(served.Get("/v2/models/fashion/versions/1/ready").first == 200);
  auto metadata = served.Get("/v2/models/fashion");
  CHECK(metadata.first == 200);
  CHECK_THAT(metadata.second, Catch::Contains(R"("versions":["1"])"));
  CHECK_THAT(metadata.second, Catch::Contains(R"("shape":[-1,784])"));
  CHECK_THAT(metadata.second, Catch::Contains(R"("step":"7")"));
  CHECK_THAT(served.Get("/v2").second, Catch::Contains(R"("name":"psd_serve")"));
}

TEST_CASE("HTTP/JSON: bad requests get the status and the field",
          "[serving][http]") {
  Served served;
  const std::vector<float> x = RandomRows(2, 5);
  const std::string good = JsonBody(x, false);
  auto expect = [&](const std::string& path, const std::string& body, int code,
                    const std::string& text) {
    auto [status, reply] = served.Post(path, body);
    INFO(path << " " << body.substr(0, 200) << " -> " << reply);
    CHECK(status == code);
    // {"error": "..."} with the field named.
    google::protobuf::Struct parsed;
    REQUIRE(google::protobuf::util::JsonStringToMessage(reply, &parsed).ok());
    REQUIRE(parsed.fields().count("error") == 1);
    CHECK_THAT(parsed.fields().at("error").string_value(), Catch::Contains(text));
  };
  const std::string infer = "/v2/models/fashion/infer";
  auto replace = [&](std::string from, std::string to) {
    std::string body = good;
    const size_t at = body.find(from);
    REQUIRE(at != std::string::npos);
    return body.replace(at, from.size(), to);
  };
  expect(infer, "{not json", 400, "request body: not a JSON object");
  expect(infer, "[1,2]", 400, "request body: not a JSON object");
  expect(infer, R"({"inputs":[]})", 400, "inputs: 0 tensors");
  expect(infer, R"({"input":[]})", 400, "input: unknown field");
  expect(infer, replace(R"("name":"input")", R"("name":"images")"), 400,
         "inputs[0].name: \"images\"");
  expect(infer, replace(R"("datatype":"FP32")", R"("datatype":"INT8")"), 400,
         "inputs[0].datatype: \"INT8\"");
  expect(infer, replace("[2,784]", "[2,783]"), 400,
         "inputs[0].shape: [2,783], want [1..8, 784]");
  expect(infer, replace("[2,784]", "[2.5,784]"), 400, "inputs[0].shape[0]: want an integer");
  expect(infer, replace("[2,784]", "[1,784]"), 400,
         "inputs[0].contents.fp32_contents: 1568 values, want 784");
  expect(infer, replace(R"("data":[)", R"("data":["a",)"), 400,
         "inputs[0].data[0]: want a number");
  expect(infer, replace(R"("data":[)", R"("data":[1e300,)"), 400,
         "inputs[0].data[0]: 1e+300 is not a finite FP32 value");
  expect(infer, replace(R"("shape")", R"("shapes")"), 400, "inputs[0].shapes: unknown field");
  expect(infer, replace(R"("datatype":"FP32",)", ""), 400, "inputs[0].datatype: missing");
  expect(infer, replace(R"("id":"h1")", R"("id":7)"), 400, "id: want a string");
  expect(infer, JsonBody(x, false, R"(,"outputs":[{"name":"probs"}])"), 400,
         "outputs[0].name: \"probs\"");
  expect("/v2/models/mnist/infer", good, 404, "model_name \"mnist\": unknown");
  expect("/v2/models/fashion/versions/9/infer", good, 404,
         "model_version \"9\" of model \"fashion\": not loaded");
  CHECK(served.Get("/v2/models/fashion/versions/9").first == 404);
  CHECK(served.Get("/v2/models/fashion/versions/9/ready").first == 404);
  CHECK(served.Get("/v2/nothing/here").first == 404);
  // Metrics count what happened, by code (both protocols meet there).
  const std::string text = served.registry.RenderPrometheusText();
  CHECK_THAT(text, Catch::Contains("psd_serve_requests_total{code=\"INVALID_ARGUMENT\"} 15"));
  CHECK_THAT(text, Catch::Contains("psd_serve_requests_total{code=\"NOT_FOUND\"} 2"));
  CHECK_THAT(text, Catch::Contains("psd_serve_model_version 1"));
  CHECK_THAT(text, Catch::Contains("psd_serve_queue_length 0"));
  // Still serving.
  CHECK(served.Post(infer, good).first == 200);
  CHECK_THAT(served.registry.RenderPrometheusText(),
             Catch::Contains("psd_serve_batch_rows_count 1"));
}

TEST_CASE("HTTP status of each gRPC code", "[serving][http]") {
  CHECK(HttpStatusOf(grpc::StatusCode::OK) == 200);
  CHECK(HttpStatusOf(grpc::StatusCode::INVALID_ARGUMENT) == 400);
  CHECK(HttpStatusOf(grpc::StatusCode::UNAUTHENTICATED) == 401);
  CHECK(HttpStatusOf(grpc::StatusCode::PERMISSION_DENIED) == 403);
  CHECK(HttpStatusOf(grpc::StatusCode::NOT_FOUND) == 404);
  CHECK(HttpStatusOf(grpc::StatusCode::RESOURCE_EXHAUSTED) == 429);
  CHECK(HttpStatusOf(grpc::StatusCode::UNAVAILABLE) == 503);
  CHECK(HttpStatusOf(grpc::StatusCode::INTERNAL) == 500);
}

TEST_CASE("ModelVersions: a reload under load drops no request; two kept",
          "[serving][versions]") {
  Served served;
  const std::vector<float> x = RandomRows(2, 3);
  std::vector<float> v1(2 * kClasses), v2(2 * kClasses);
  Model(1)->Forward(x.data(), 2, v1.data());
  Model(2)->Forward(x.data(), 2, v2.data());
  REQUIRE(!SameBits(v1, v2));
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0}, answered{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!stop) {
        inference::ModelInferResponse response;
        grpc::Status status = served.Infer(Request(x, true), &response);
        if (!status.ok()) {
          ++failed;
          continue;
        }
        // Each answer is wholly one version's.
        std::vector<float> got(2 * kClasses);
        std::memcpy(got.data(), response.raw_output_contents(0).data(), got.size() * 4);
        const bool is_v1 = SameBits(got, v1), is_v2 = SameBits(got, v2);
        if (!(is_v1 || is_v2) ||
            (is_v1 ? response.model_version() == "1" || response.model_version() == "3"
                   : response.model_version() == "2") == false) {
          ++failed;
        }
        ++answered;
      }
    });
  }
  auto stop_clients = [&] {
    stop = true;
    for (auto& c : clients) {
      if (c.joinable()) c.join();
    }
  };
  // Waits (up to 30 s) until `n` answers have come back; else stops the
  // clients (so the threads are joined) and fails the test.
  auto await_answers = [&](int n) {
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (answered < n && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (answered < n) {
      stop_clients();
      FAIL("only " << answered << " answers of " << n << " after 30 s");
    }
  };
  // Versions 2 (seed 2) and 3 (seed 1 again) while the clients run.
  await_answers(20);
  auto v = served.versions.Load({RandomMlp(2), {}}, "seed 2");
  if (!v.ok()) stop_clients();
  REQUIRE(v.ok());
  CHECK((*v)->version == "2");
  await_answers(answered + 20);
  const bool reloaded = served.versions.Load({RandomMlp(1), {}}, "seed 1").ok();
  if (!reloaded) stop_clients();
  REQUIRE(reloaded);
  await_answers(answered + 20);
  stop_clients();
  CHECK(failed == 0);
  CHECK(served.versions.Names() == std::vector<std::string>{"2", "3"});
  // "1" is unloaded; "2" can still be asked for by name.
  inference::ModelInferRequest request = Request(x, true);
  request.set_model_version("1");
  inference::ModelInferResponse response;
  CHECK(served.Infer(request, &response).error_code() == grpc::StatusCode::NOT_FOUND);
  request.set_model_version("2");
  REQUIRE(served.Infer(request, &response).ok());
  std::vector<float> got(2 * kClasses);
  std::memcpy(got.data(), response.raw_output_contents(0).data(), got.size() * 4);
  CHECK(SameBits(got, v2));
  // A model of another signature is refused; the served one stays.
  std::vector<NamedTensor> other = RandomMlp(1);
  other.resize(2);  // one layer: 784 -> 256
  auto refused = served.versions.Load({other, {}}, "one layer");
  CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(served.versions.newest_number() == 3);
}

}  // namespace
}  // namespace psd::serving
