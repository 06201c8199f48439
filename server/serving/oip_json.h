// The Open Inference Protocol's HTTP/JSON bodies, converted to and from the
// gRPC messages (proto/inference.proto) so that HTTP requests run through
// the same InferenceService methods. JSON is read and written with
// protobuf's JSON utilities (as a google.protobuf.Struct); nothing here
// parses JSON by hand.
//
// Request body of POST /v2/models/{name}[/versions/{v}]/infer:
//   {"id": "...",                                   optional
//    "inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32",
//                "data": [0.1, ...] or [[...], [...]],  row-major, nested
//                                                       or flat
//                "parameters": {...}}],             optional, ignored
//    "outputs": [{"name": "class", "parameters": {...}}],  optional
//    "parameters": {...}}                           optional, ignored
// Response body:
//   {"model_name": "...", "model_version": "2", "id": "...",
//    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 10],
//                 "data": [...]}, ...]}
// FP32 values are written with enough digits to read back the same float.
#ifndef PSD_SERVER_SERVING_OIP_JSON_H_
#define PSD_SERVER_SERVING_OIP_JSON_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "inference.pb.h"

namespace psd::serving {

// Parses an infer request body into `request` (model_name and
// model_version are set from the URL's `name` and `version`). Only what
// JSON can say is checked here: INVALID_ARGUMENT naming the field for a
// body that is not a JSON object, an unknown field, a field of the wrong
// JSON type (e.g. "inputs[0].shape[1]: want an integer"), or an FP32 data
// element that is not a finite float. The tensor's name, datatype, shape
// and element count are left to InferenceService::ModelInfer, which checks
// them for both protocols; data of another datatype than FP32 is not
// converted (that datatype is refused there).
absl::Status ParseInferRequestJson(const std::string& body,
                                   const std::string& name,
                                   const std::string& version,
                                   inference::ModelInferRequest* request);

// The response body for `response` (its outputs in contents, not raw).
std::string InferResponseJson(const inference::ModelInferResponse& response);

// GET /v2 and GET /v2/models/{name}[/versions/{v}] bodies.
std::string ServerMetadataJson(const inference::ServerMetadataResponse& m);
std::string ModelMetadataJson(const inference::ModelMetadataResponse& m);

// The client side, for oip_classify and the benchmark's bodies: the JSON
// body of `request` (its FP32 inputs from contents or raw_input_contents;
// model_name and model_version go in the URL, not the body), and a
// response body read back into `response` (outputs' data into
// contents.fp32_contents or int64_contents by datatype). Errors:
// INVALID_ARGUMENT naming what is malformed.
std::string InferRequestJson(const inference::ModelInferRequest& request);
absl::Status ParseInferResponseJson(const std::string& body,
                                    inference::ModelInferResponse* response);

// {"error": message}.
std::string ErrorJson(const std::string& message);

// The HTTP status for a gRPC status code: OK 200, INVALID_ARGUMENT 400,
// UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, anything else 500.
int HttpStatusOf(grpc::StatusCode code);

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_OIP_JSON_H_
