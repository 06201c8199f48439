// The Open Inference Protocol (KServe v2) gRPC service of psd_serve:
// ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and
// ModelInfer for one MLP classifier, its inferences run through a
// DynamicBatcher.
#ifndef PSD_SERVER_SERVING_INFERENCE_SERVICE_H_
#define PSD_SERVER_SERVING_INFERENCE_SERVICE_H_

#include <cstdint>
#include <string>

#include "inference.grpc.pb.h"
#include "server/serving/batcher.h"

namespace psd::serving {

// What the service says of the model it serves.
struct ServedModel {
  // The model's name in requests (model_name). Required.
  std::string name;
  // Features per row of the "input" tensor. Required (> 0).
  int32_t input_dim = 0;
  // Logits per row of the "logits" tensor. Required (> 0).
  int32_t num_classes = 0;
};

// The tensors, by their OIP names:
//   input  FP32  [batch, input_dim]   (batch in [1, max_batch_size])
//   logits FP32  [batch, num_classes]
//   class  INT64 [batch]              (argmax of each row's logits, the
//                                      first on ties, as the trainer's)
// The only version is "1" ("" means it too). A request's input arrives in
// InferTensorContents.fp32_contents or in raw_input_contents (little-endian
// bytes); the response answers in the same form. Bad requests get
// INVALID_ARGUMENT naming the field (e.g. "inputs[0].shape: [2,783], want
// [1..64, 784]"), an unknown model or version NOT_FOUND, a full queue
// RESOURCE_EXHAUSTED.
//
// Thread-safe. `batcher` is not owned and must outlive the service; its
// run function computes the model's logits (output_dim == num_classes).
class InferenceService final
    : public inference::GRPCInferenceService::Service {
 public:
  InferenceService(ServedModel model, DynamicBatcher* batcher);

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

 private:
  // OK when `name`/`version` are the served model's; NOT_FOUND otherwise.
  grpc::Status CheckModel(const std::string& name,
                          const std::string& version) const;

  // Constant after construction.
  const ServedModel model_;
  DynamicBatcher* const batcher_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_INFERENCE_SERVICE_H_
