// The psd.v1.ParameterServer gRPC service over a ParameterStore.
#ifndef PSD_SERVER_PARAMETER_SERVICE_H_
#define PSD_SERVER_PARAMETER_SERVICE_H_

#include "common/proto.h"
#include "server/parameter_store.h"

namespace psd {

// Push and Pull use the callback API, so the number of calls in flight is
// not bounded by a handler thread pool (a worker has one call per partition
// in flight). Push validates and applies on the callback thread (CPU work on
// one partition, no I/O). A pull waiting for a step holds no thread, and
// ends when the step is reached, the job is dropped, or the client cancels
// or passes its deadline. CreateJob and DropJob use the sync API.
// Thread-safe. Does not own `store`.
class ParameterService final
    : public ParameterServer::WithCallbackMethod_Push<
          ParameterServer::WithCallbackMethod_Pull<ParameterServer::Service>> {
 public:
  explicit ParameterService(ParameterStore* store) : store_(store) {}

  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const PushRequest* request,
                                 PushResponse* response) override;
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const PullRequest* request,
                                 PullResponse* response) override;
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const CreateJobRequest* request,
                         CreateJobResponse* response) override;
  grpc::Status DropJob(grpc::ServerContext* context,
                       const DropJobRequest* request,
                       DropJobResponse* response) override;
  grpc::Status GetServerStatus(grpc::ServerContext* context,
                               const GetServerStatusRequest* request,
                               ServerStatus* response) override;

 private:
  ParameterStore* const store_;
};

}  // namespace psd

#endif  // PSD_SERVER_PARAMETER_SERVICE_H_
