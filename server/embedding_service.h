// The psd.v1.EmbeddingServer gRPC service (proto/embedding.proto) over an
// EmbeddingStore: sparse embedding tables, served by psd_server beside
// psd.v1.ParameterServer on the same port.
#ifndef PSD_SERVER_EMBEDDING_SERVICE_H_
#define PSD_SERVER_EMBEDDING_SERVICE_H_

#include <memory>

#include "common/metrics.h"
#include "proto/embedding.grpc.pb.h"
#include "server/embedding_store.h"

namespace psd {

// PullRows and PushRows use the callback API and run on the callback
// thread: CPU work on the rows requested under the stripes' locks, no I/O,
// no waiting. CreateTable, TableStatus and DropTable use the sync API.
// Store errors become gRPC statuses with the same code and message
// (common/status.h). Counts calls, rows, errors and latency in the
// psd_server_embedding_* metrics (atomics only on the hot path; nothing is
// logged per call), and psd_server_embedding_bytes (EmbeddingStore::bytes)
// at scrape time.
// Thread-safe. Does not own `store` or `metrics`.
class EmbeddingService final
    : public EmbeddingServer::WithCallbackMethod_PullRows<
          EmbeddingServer::WithCallbackMethod_PushRows<
              EmbeddingServer::Service>> {
 public:
  // Registers the metrics in `metrics`, which must outlive the service;
  // with nullptr they go to a private registry (tests).
  explicit EmbeddingService(EmbeddingStore* store,
                            MetricsRegistry* metrics = nullptr);
  ~EmbeddingService() override;

  grpc::ServerUnaryReactor* PullRows(grpc::CallbackServerContext* context,
                                     const PullRowsRequest* request,
                                     PullRowsResponse* response) override;
  grpc::ServerUnaryReactor* PushRows(grpc::CallbackServerContext* context,
                                     const PushRowsRequest* request,
                                     PushRowsResponse* response) override;
  grpc::Status CreateTable(grpc::ServerContext* context,
                           const CreateTableRequest* request,
                           CreateTableResponse* response) override;
  grpc::Status TableStatus(grpc::ServerContext* context,
                           const TableStatusRequest* request,
                           TableStatusResponse* response) override;
  grpc::Status DropTable(grpc::ServerContext* context,
                         const DropTableRequest* request,
                         DropTableResponse* response) override;

  // The metrics (defined in the .cc).
  struct Metrics;

 private:
  EmbeddingStore* const store_;
  std::unique_ptr<MetricsRegistry> own_registry_;  // when none given
  std::unique_ptr<const Metrics> metrics_;
};

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_SERVICE_H_
