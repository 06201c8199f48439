#include "server/serving/oip_json.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace psd::serving {

namespace {

using google::protobuf::ListValue;
using google::protobuf::Struct;
using google::protobuf::Value;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// OK when every key of `object` is one of `allowed`.
absl::Status OnlyFields(const Struct& object, const std::string& where,
                        std::initializer_list<const char*> allowed) {
  for (const auto& [key, value] : object.fields()) {
    bool known = false;
    for (const char* a : allowed) known = known || key == a;
    if (!known) {
      return Invalid(where.empty() ? key : absl::StrCat(where, ".", key),
                     "unknown field");
    }
  }
  return absl::OkStatus();
}

absl::Status GetString(const Struct& object, const std::string& where,
                       const char* key, bool required, std::string* out) {
  auto it = object.fields().find(key);
  const std::string field = where.empty() ? key : absl::StrCat(where, ".", key);
  if (it == object.fields().end()) {
    return required ? Invalid(field, "missing") : absl::OkStatus();
  }
  if (it->second.kind_case() != Value::kStringValue) {
    return Invalid(field, "want a string");
  }
  *out = it->second.string_value();
  return absl::OkStatus();
}

// The list `key` of `object`, or nullptr when absent (an error if required).
absl::Status GetList(const Struct& object, const std::string& where,
                     const char* key, bool required, const ListValue** out) {
  *out = nullptr;
  auto it = object.fields().find(key);
  const std::string field = where.empty() ? key : absl::StrCat(where, ".", key);
  if (it == object.fields().end()) {
    return required ? Invalid(field, "missing") : absl::OkStatus();
  }
  if (it->second.kind_case() != Value::kListValue) {
    return Invalid(field, "want an array");
  }
  *out = &it->second.list_value();
  return absl::OkStatus();
}

absl::Status CheckObject(const Struct& object, const std::string& where,
                         const char* key) {
  auto it = object.fields().find(key);
  if (it != object.fields().end() &&
      it->second.kind_case() != Value::kStructValue) {
    return Invalid(where.empty() ? key : absl::StrCat(where, ".", key),
                   "want an object");
  }
  return absl::OkStatus();
}

// Appends the numbers of `list` (arrays nested to any depth: OIP allows
// the row-major data flat or nested) to `out` as floats.
absl::Status FlattenFp32(const ListValue& list, const std::string& where,
                         google::protobuf::RepeatedField<float>* out) {
  for (int i = 0; i < list.values_size(); ++i) {
    const Value& v = list.values(i);
    const std::string field = absl::StrCat(where, "[", i, "]");
    if (v.kind_case() == Value::kListValue) {
      absl::Status nested = FlattenFp32(v.list_value(), field, out);
      if (!nested.ok()) return nested;
      continue;
    }
    if (v.kind_case() != Value::kNumberValue) {
      return Invalid(field, "want a number (FP32)");
    }
    const double d = v.number_value();
    if (!std::isfinite(d) || std::fabs(d) > std::numeric_limits<float>::max()) {
      return Invalid(field, absl::StrCat(d, " is not a finite FP32 value"));
    }
    out->Add(static_cast<float>(d));
  }
  return absl::OkStatus();
}

absl::Status ParseInput(const Value& value, const std::string& where,
                        inference::ModelInferRequest::InferInputTensor* input) {
  if (value.kind_case() != Value::kStructValue) {
    return Invalid(where, "want an object");
  }
  const Struct& object = value.struct_value();
  absl::Status s = OnlyFields(object, where,
                              {"name", "shape", "datatype", "data", "parameters"});
  if (s.ok()) s = GetString(object, where, "name", true, input->mutable_name());
  if (s.ok()) {
    s = GetString(object, where, "datatype", true, input->mutable_datatype());
  }
  if (s.ok()) s = CheckObject(object, where, "parameters");
  const ListValue* shape = nullptr;
  if (s.ok()) s = GetList(object, where, "shape", true, &shape);
  if (!s.ok()) return s;
  for (int i = 0; i < shape->values_size(); ++i) {
    const Value& d = shape->values(i);
    const double n = d.number_value();
    if (d.kind_case() != Value::kNumberValue || n != std::floor(n) ||
        std::fabs(n) > 9007199254740992.0) {
      return Invalid(absl::StrCat(where, ".shape[", i, "]"), "want an integer");
    }
    input->add_shape(static_cast<int64_t>(n));
  }
  const ListValue* data = nullptr;
  s = GetList(object, where, "data", true, &data);
  if (!s.ok()) return s;
  // Other datatypes are refused by the service, which names the datatype.
  if (input->datatype() != "FP32") return absl::OkStatus();
  return FlattenFp32(*data, absl::StrCat(where, ".data"),
                     input->mutable_contents()->mutable_fp32_contents());
}

Value Number(double v) {
  Value value;
  value.set_number_value(v);
  return value;
}

Value String(const std::string& v) {
  Value value;
  value.set_string_value(v);
  return value;
}

std::string ToJson(const Struct& object) {
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(object, &json);
  if (!status.ok()) {
    // Only non-finite numbers cannot be written; logits never are.
    return R"({"error": "the response could not be written as JSON"})";
  }
  return json;
}

// {"name", "datatype", "shape"} of a tensor's metadata.
Value TensorMetadata(
    const inference::ModelMetadataResponse::TensorMetadata& tensor) {
  Value value;
  auto& fields = *value.mutable_struct_value()->mutable_fields();
  fields["name"] = String(tensor.name());
  fields["datatype"] = String(tensor.datatype());
  ListValue* shape = fields["shape"].mutable_list_value();
  for (int64_t d : tensor.shape()) *shape->add_values() = Number(d);
  return value;
}

}  // namespace

absl::Status ParseInferRequestJson(const std::string& body,
                                   const std::string& name,
                                   const std::string& version,
                                   inference::ModelInferRequest* request) {
  request->set_model_name(name);
  request->set_model_version(version);
  Struct object;
  auto parsed = google::protobuf::util::JsonStringToMessage(body, &object);
  if (!parsed.ok()) {
    return Invalid("request body",
                   absl::StrCat("not a JSON object (", parsed.message().as_string(), ")"));
  }
  absl::Status s = OnlyFields(object, "", {"id", "inputs", "outputs", "parameters"});
  if (s.ok()) s = GetString(object, "", "id", false, request->mutable_id());
  if (s.ok()) s = CheckObject(object, "", "parameters");
  const ListValue* inputs = nullptr;
  if (s.ok()) s = GetList(object, "", "inputs", true, &inputs);
  if (!s.ok()) return s;
  for (int i = 0; i < inputs->values_size(); ++i) {
    s = ParseInput(inputs->values(i), absl::StrCat("inputs[", i, "]"),
                   request->add_inputs());
    if (!s.ok()) return s;
  }
  const ListValue* outputs = nullptr;
  s = GetList(object, "", "outputs", false, &outputs);
  if (!s.ok() || outputs == nullptr) return s;
  for (int i = 0; i < outputs->values_size(); ++i) {
    const std::string where = absl::StrCat("outputs[", i, "]");
    const Value& v = outputs->values(i);
    if (v.kind_case() != Value::kStructValue) {
      return Invalid(where, "want an object");
    }
    s = OnlyFields(v.struct_value(), where, {"name", "parameters"});
    if (s.ok()) {
      s = GetString(v.struct_value(), where, "name", true,
                    request->add_outputs()->mutable_name());
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string InferResponseJson(const inference::ModelInferResponse& response) {
  Struct object;
  auto& fields = *object.mutable_fields();
  fields["model_name"] = String(response.model_name());
  fields["model_version"] = String(response.model_version());
  if (!response.id().empty()) fields["id"] = String(response.id());
  ListValue* outputs = fields["outputs"].mutable_list_value();
  for (const auto& out : response.outputs()) {
    auto& o = *outputs->add_values()->mutable_struct_value()->mutable_fields();
    o["name"] = String(out.name());
    o["datatype"] = String(out.datatype());
    ListValue* shape = o["shape"].mutable_list_value();
    for (int64_t d : out.shape()) *shape->add_values() = Number(d);
    ListValue* data = o["data"].mutable_list_value();
    for (float v : out.contents().fp32_contents()) *data->add_values() = Number(v);
    for (int64_t v : out.contents().int64_contents()) {
      *data->add_values() = Number(static_cast<double>(v));
    }
  }
  return ToJson(object);
}

std::string InferRequestJson(const inference::ModelInferRequest& request) {
  Struct object;
  auto& fields = *object.mutable_fields();
  if (!request.id().empty()) fields["id"] = String(request.id());
  ListValue* inputs = fields["inputs"].mutable_list_value();
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    auto& o = *inputs->add_values()->mutable_struct_value()->mutable_fields();
    o["name"] = String(in.name());
    o["datatype"] = String(in.datatype());
    ListValue* shape = o["shape"].mutable_list_value();
    for (int64_t d : in.shape()) *shape->add_values() = Number(d);
    ListValue* data = o["data"].mutable_list_value();
    if (i < request.raw_input_contents_size()) {
      const std::string& raw = request.raw_input_contents(i);
      for (size_t k = 0; k + sizeof(float) <= raw.size(); k += sizeof(float)) {
        float v;
        std::memcpy(&v, raw.data() + k, sizeof(v));
        *data->add_values() = Number(v);
      }
    }
    for (float v : in.contents().fp32_contents()) *data->add_values() = Number(v);
  }
  if (request.outputs_size() > 0) {
    ListValue* outputs = fields["outputs"].mutable_list_value();
    for (const auto& out : request.outputs()) {
      (*outputs->add_values()->mutable_struct_value()->mutable_fields())["name"] =
          String(out.name());
    }
  }
  return ToJson(object);
}

absl::Status ParseInferResponseJson(const std::string& body,
                                    inference::ModelInferResponse* response) {
  Struct object;
  auto parsed = google::protobuf::util::JsonStringToMessage(body, &object);
  if (!parsed.ok()) {
    return Invalid("response body", "not a JSON object");
  }
  std::string value;
  absl::Status s = GetString(object, "", "model_name", true, &value);
  response->set_model_name(value);
  if (s.ok()) s = GetString(object, "", "model_version", true, &value);
  response->set_model_version(value);
  value.clear();
  if (s.ok()) s = GetString(object, "", "id", false, &value);
  response->set_id(value);
  const ListValue* outputs = nullptr;
  if (s.ok()) s = GetList(object, "", "outputs", true, &outputs);
  if (!s.ok()) return s;
  for (int i = 0; i < outputs->values_size(); ++i) {
    const std::string where = absl::StrCat("outputs[", i, "]");
    if (outputs->values(i).kind_case() != Value::kStructValue) {
      return Invalid(where, "want an object");
    }
    const Struct& o = outputs->values(i).struct_value();
    auto* out = response->add_outputs();
    s = GetString(o, where, "name", true, out->mutable_name());
    if (s.ok()) s = GetString(o, where, "datatype", true, out->mutable_datatype());
    const ListValue* shape = nullptr;
    const ListValue* data = nullptr;
    if (s.ok()) s = GetList(o, where, "shape", true, &shape);
    if (s.ok()) s = GetList(o, where, "data", true, &data);
    if (!s.ok()) return s;
    for (const Value& d : shape->values()) {
      out->add_shape(static_cast<int64_t>(d.number_value()));
    }
    for (const Value& d : data->values()) {
      if (out->datatype() == "INT64") {
        out->mutable_contents()->add_int64_contents(
            static_cast<int64_t>(d.number_value()));
      } else {
        out->mutable_contents()->add_fp32_contents(
            static_cast<float>(d.number_value()));
      }
    }
  }
  return absl::OkStatus();
}

std::string ServerMetadataJson(const inference::ServerMetadataResponse& m) {
  Struct object;
  auto& fields = *object.mutable_fields();
  fields["name"] = String(m.name());
  fields["version"] = String(m.version());
  ListValue* extensions = fields["extensions"].mutable_list_value();
  for (const std::string& e : m.extensions()) {
    *extensions->add_values() = String(e);
  }
  return ToJson(object);
}

std::string ModelMetadataJson(const inference::ModelMetadataResponse& m) {
  Struct object;
  auto& fields = *object.mutable_fields();
  fields["name"] = String(m.name());
  fields["platform"] = String(m.platform());
  ListValue* versions = fields["versions"].mutable_list_value();
  for (const std::string& v : m.versions()) *versions->add_values() = String(v);
  ListValue* inputs = fields["inputs"].mutable_list_value();
  for (const auto& t : m.inputs()) *inputs->add_values() = TensorMetadata(t);
  ListValue* outputs = fields["outputs"].mutable_list_value();
  for (const auto& t : m.outputs()) *outputs->add_values() = TensorMetadata(t);
  auto& parameters = *fields["parameters"].mutable_struct_value()->mutable_fields();
  for (const auto& [key, p] : m.parameters()) {
    parameters[key] = String(p.string_param());
  }
  return ToJson(object);
}

std::string ErrorJson(const std::string& message) {
  Struct object;
  (*object.mutable_fields())["error"] = String(message);
  return ToJson(object);
}

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 400;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    default:
      return 500;
  }
}

}  // namespace psd::serving
