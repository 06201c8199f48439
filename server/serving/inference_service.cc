#include "server/serving/inference_service.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/quote.h"
#include "common/status.h"

namespace psd::serving {

namespace {

constexpr char kInput[] = "input";
constexpr char kLogits[] = "logits";
constexpr char kClass[] = "class";

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// Whether any element field of `c` other than fp32_contents is set.
bool HasOtherContents(const inference::InferTensorContents& c) {
  return c.bool_contents_size() > 0 || c.int_contents_size() > 0 ||
         c.int64_contents_size() > 0 || c.uint_contents_size() > 0 ||
         c.uint64_contents_size() > 0 || c.fp64_contents_size() > 0 ||
         c.bytes_contents_size() > 0;
}

}  // namespace

InferenceService::InferenceService(std::string model_name,
                                   ModelVersions* versions,
                                   ServingMetrics* metrics)
    : name_(std::move(model_name)), versions_(versions), metrics_(metrics) {}

grpc::Status InferenceService::FindModel(
    const std::string& name, const std::string& version,
    std::shared_ptr<const ModelVersion>* found) const {
  if (name != name_) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("model_name ", Quote(name), ": unknown (this server serves ",
                     Quote(name_), ")"));
  }
  *found = versions_->Get(version);
  if (*found != nullptr) return grpc::Status::OK;
  const std::vector<std::string> loaded = versions_->Names();
  if (loaded.empty()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("model ", Quote(name),
                                     ": no version loaded yet"));
  }
  std::vector<std::string> quoted;
  for (const std::string& v : loaded) quoted.push_back(Quote(v));
  return grpc::Status(
      grpc::StatusCode::NOT_FOUND,
      absl::StrCat("model_version ", Quote(version), " of model ", Quote(name),
                   ": not loaded (loaded: ", absl::StrJoin(quoted, ", "), ")"));
}

grpc::Status InferenceService::ServerLive(grpc::ServerContext*,
                                          const inference::ServerLiveRequest*,
                                          inference::ServerLiveResponse* response) {
  response->set_live(true);
  return grpc::Status::OK;
}

grpc::Status InferenceService::ServerReady(
    grpc::ServerContext*, const inference::ServerReadyRequest*,
    inference::ServerReadyResponse* response) {
  response->set_ready(versions_->newest_number() > 0);
  return grpc::Status::OK;
}

grpc::Status InferenceService::ServerMetadata(
    grpc::ServerContext*, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("psd_serve");
  response->set_version("1");
  return grpc::Status::OK;
}

grpc::Status InferenceService::ModelReady(
    grpc::ServerContext*, const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  std::shared_ptr<const ModelVersion> version;
  grpc::Status known = FindModel(request->name(), request->version(), &version);
  if (known.error_code() == grpc::StatusCode::UNAVAILABLE) {
    response->set_ready(false);
    return grpc::Status::OK;
  }
  if (!known.ok()) return known;
  response->set_ready(true);
  return grpc::Status::OK;
}

grpc::Status InferenceService::ModelMetadata(
    grpc::ServerContext*, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  std::shared_ptr<const ModelVersion> version;
  grpc::Status known = FindModel(request->name(), request->version(), &version);
  if (!known.ok()) return known;
  const MlpModel& model = *version->model;
  response->set_name(name_);
  for (const std::string& v : versions_->Names()) response->add_versions(v);
  response->set_platform("psd_mlp");
  auto& parameters = *response->mutable_parameters();
  for (const auto& [key, value] : version->metadata) {
    parameters[key].set_string_param(value);
  }
  parameters["version"].set_string_param(version->version);
  auto* input = response->add_inputs();
  input->set_name(kInput);
  input->set_datatype("FP32");
  input->add_shape(-1);
  input->add_shape(model.input_dim());
  auto* logits = response->add_outputs();
  logits->set_name(kLogits);
  logits->set_datatype("FP32");
  logits->add_shape(-1);
  logits->add_shape(model.num_classes());
  auto* label = response->add_outputs();
  label->set_name(kClass);
  label->set_datatype("INT64");
  label->add_shape(-1);
  return grpc::Status::OK;
}

grpc::Status InferenceService::ModelInfer(
    grpc::ServerContext*, const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  const absl::Time start = absl::Now();
  grpc::Status status = Infer(*request, response);
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(status.error_code(), absl::Now() - start);
  }
  return status;
}

grpc::Status InferenceService::Infer(const inference::ModelInferRequest& req,
                                     inference::ModelInferResponse* response) {
  const inference::ModelInferRequest* request = &req;
  std::shared_ptr<const ModelVersion> version;
  grpc::Status known =
      FindModel(request->model_name(), request->model_version(), &version);
  if (!known.ok()) return known;
  const int32_t max_batch = version->batcher->options().max_batch_size;
  const int64_t dim = version->model->input_dim();
  if (request->inputs_size() != 1) {
    return Invalid(absl::StrCat("inputs: ", request->inputs_size(),
                                " tensors, want 1 (\"input\")"));
  }
  const auto& input = request->inputs(0);
  if (input.name() != kInput) {
    return Invalid(absl::StrCat("inputs[0].name: ", Quote(input.name()),
                                ", want \"input\""));
  }
  if (input.datatype() != "FP32") {
    return Invalid(absl::StrCat("inputs[0].datatype: ", Quote(input.datatype()),
                                ", want \"FP32\""));
  }
  if (input.shape_size() != 2 || input.shape(0) < 1 ||
      input.shape(0) > max_batch || input.shape(1) != dim) {
    return Invalid(absl::StrCat("inputs[0].shape: [",
                                absl::StrJoin(input.shape(), ","), "], want [1..",
                                max_batch, ", ", dim, "]"));
  }
  const int32_t rows = static_cast<int32_t>(input.shape(0));
  const int64_t elements = rows * dim;
  // Where the data is: raw_input_contents or contents.fp32_contents.
  const bool raw = request->raw_input_contents_size() > 0;
  const float* x = nullptr;
  std::vector<float> aligned;  // raw bytes need not be float-aligned
  if (raw) {
    if (request->raw_input_contents_size() != 1) {
      return Invalid(absl::StrCat("raw_input_contents: ",
                                  request->raw_input_contents_size(),
                                  " entries, want 1 (one per input)"));
    }
    if (input.has_contents() &&
        (input.contents().fp32_contents_size() > 0 ||
         HasOtherContents(input.contents()))) {
      return Invalid(
          "inputs[0].contents: set together with raw_input_contents; use one");
    }
    const std::string& bytes = request->raw_input_contents(0);
    if (static_cast<int64_t>(bytes.size()) != elements * 4) {
      return Invalid(absl::StrCat("raw_input_contents[0]: ", bytes.size(),
                                  " bytes, want ", elements * 4, " (FP32 [",
                                  rows, ", ", dim, "])"));
    }
    aligned.resize(elements);
    std::memcpy(aligned.data(), bytes.data(), bytes.size());
    x = aligned.data();
  } else {
    if (HasOtherContents(input.contents())) {
      return Invalid(
          "inputs[0].contents: FP32 data goes in fp32_contents, not another "
          "type's field");
    }
    if (input.contents().fp32_contents_size() != elements) {
      return Invalid(absl::StrCat("inputs[0].contents.fp32_contents: ",
                                  input.contents().fp32_contents_size(),
                                  " values, want ", elements, " ([", rows, ", ",
                                  dim, "])"));
    }
    x = input.contents().fp32_contents().data();
  }
  // Which outputs, in the order asked (default: both).
  std::vector<std::string> outputs;
  for (int i = 0; i < request->outputs_size(); ++i) {
    const std::string& name = request->outputs(i).name();
    if (name != kLogits && name != kClass) {
      return Invalid(absl::StrCat("outputs[", i, "].name: ", Quote(name),
                                  ", want \"logits\" or \"class\""));
    }
    for (const std::string& seen : outputs) {
      if (seen == name) {
        return Invalid(absl::StrCat("outputs[", i, "].name: ", Quote(name),
                                    " asked twice"));
      }
    }
    outputs.push_back(name);
  }
  if (outputs.empty()) outputs = {kLogits, kClass};

  const int32_t classes = version->model->num_classes();
  std::vector<float> logits(size_t(rows) * classes);
  absl::Status ran = version->batcher->Run(x, rows, logits.data());
  if (!ran.ok()) return ToGrpcStatus(ran);

  response->set_model_name(name_);
  response->set_model_version(version->version);
  response->set_id(request->id());
  for (const std::string& name : outputs) {
    auto* out = response->add_outputs();
    out->set_name(name);
    out->add_shape(rows);
    if (name == kLogits) {
      out->set_datatype("FP32");
      out->add_shape(classes);
      if (raw) {
        response->add_raw_output_contents()->assign(
            reinterpret_cast<const char*>(logits.data()),
            logits.size() * sizeof(float));
      } else {
        out->mutable_contents()->mutable_fp32_contents()->Add(logits.begin(),
                                                              logits.end());
      }
    } else {
      out->set_datatype("INT64");
      // Argmax, the first maximum on ties: kernels' ArgmaxRows rule.
      std::vector<int64_t> label(rows);
      for (int32_t r = 0; r < rows; ++r) {
        const float* row = logits.data() + size_t(r) * classes;
        int32_t best = 0;
        for (int32_t j = 1; j < classes; ++j) {
          if (row[j] > row[best]) best = j;
        }
        label[r] = best;
      }
      if (raw) {
        response->add_raw_output_contents()->assign(
            reinterpret_cast<const char*>(label.data()),
            label.size() * sizeof(int64_t));
      } else {
        out->mutable_contents()->mutable_int64_contents()->Add(label.begin(),
                                                               label.end());
      }
    }
  }
  return grpc::Status::OK;
}

}  // namespace psd::serving
