// The Open Inference Protocol (KServe v2) gRPC service of psd_serve:
// ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and
// ModelInfer for one MLP classifier and its loaded versions
// (model_versions.h), each version's inferences run through its
// DynamicBatcher. The HTTP/JSON form (http_server.h) converts its requests
// to these messages and calls the same methods, so both protocols share
// one validation path.
#ifndef PSD_SERVER_SERVING_INFERENCE_SERVICE_H_
#define PSD_SERVER_SERVING_INFERENCE_SERVICE_H_

#include <cstdint>
#include <string>

#include "inference.grpc.pb.h"
#include "server/serving/model_versions.h"
#include "server/serving/serving_metrics.h"

namespace psd::serving {

// The tensors, by their OIP names:
//   input  FP32  [batch, input_dim]   (batch in [1, max_batch_size])
//   logits FP32  [batch, num_classes]
//   class  INT64 [batch]              (argmax of each row's logits, the
//                                      first on ties, as the trainer's)
// Versions are those `versions` holds ("" means the newest); ServerReady
// and ModelReady say false until one is loaded (then ModelInfer gets
// UNAVAILABLE). A request's input arrives in
// InferTensorContents.fp32_contents or in raw_input_contents (little-endian
// bytes); the response answers in the same form. Bad requests get
// INVALID_ARGUMENT naming the field (e.g. "inputs[0].shape: [2,783], want
// [1..64, 784]"), an unknown model or version NOT_FOUND, a full queue
// RESOURCE_EXHAUSTED.
//
// The methods ignore their ServerContext (the HTTP server passes nullptr).
// Thread-safe. `versions` and `metrics` (which may be null) are not owned
// and must outlive the service.
class InferenceService final
    : public inference::GRPCInferenceService::Service {
 public:
  InferenceService(std::string model_name, ModelVersions* versions,
                   ServingMetrics* metrics);

  grpc::Status ServerLive(grpc::ServerContext* context,
                          const inference::ServerLiveRequest* request,
                          inference::ServerLiveResponse* response) override;
  grpc::Status ServerReady(grpc::ServerContext* context,
                           const inference::ServerReadyRequest* request,
                           inference::ServerReadyResponse* response) override;
  grpc::Status ServerMetadata(
      grpc::ServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
  grpc::Status ModelReady(grpc::ServerContext* context,
                          const inference::ModelReadyRequest* request,
                          inference::ModelReadyResponse* response) override;
  grpc::Status ModelMetadata(
      grpc::ServerContext* context,
      const inference::ModelMetadataRequest* request,
      inference::ModelMetadataResponse* response) override;
  grpc::Status ModelInfer(grpc::ServerContext* context,
                          const inference::ModelInferRequest* request,
                          inference::ModelInferResponse* response) override;

  // The metrics ModelInfer records into (null: none), for a front end
  // that refuses a request before it becomes a ModelInferRequest.
  ServingMetrics* metrics() const { return metrics_; }

 private:
  // The version `name`/`version` names; NOT_FOUND naming the field when
  // the model or version is unknown, UNAVAILABLE before the first load.
  grpc::Status FindModel(const std::string& name, const std::string& version,
                         std::shared_ptr<const ModelVersion>* found) const;
  grpc::Status Infer(const inference::ModelInferRequest& request,
                     inference::ModelInferResponse* response);

  // Constant after construction.
  const std::string name_;
  ModelVersions* const versions_;
  ServingMetrics* const metrics_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_INFERENCE_SERVICE_H_
