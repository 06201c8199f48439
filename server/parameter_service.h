// The psd.v1.ParameterServer gRPC service over a ParameterStore.
#ifndef PSD_SERVER_PARAMETER_SERVICE_H_
#define PSD_SERVER_PARAMETER_SERVICE_H_

#include "common/proto.h"
#include "server/parameter_store.h"

namespace psd {

// Sync-API service; each call runs on a gRPC handler thread. Pull blocks its
// thread while it waits for a step (bounded by the client's deadline, or
// 10 minutes when the client set none). Thread-safe. Does not own `store`.
class ParameterService final : public ParameterServer::Service {
 public:
  explicit ParameterService(ParameterStore* store) : store_(store) {}

  grpc::Status Push(grpc::ServerContext* context, const PushRequest* request,
                    PushResponse* response) override;
  grpc::Status Pull(grpc::ServerContext* context, const PullRequest* request,
                    PullResponse* response) override;
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const CreateJobRequest* request,
                         CreateJobResponse* response) override;
  grpc::Status DropJob(grpc::ServerContext* context,
                       const DropJobRequest* request,
                       DropJobResponse* response) override;

 private:
  ParameterStore* const store_;
};

}  // namespace psd

#endif  // PSD_SERVER_PARAMETER_SERVICE_H_
