// The psd.v1.ParameterServer gRPC service over a ParameterStore.
#ifndef PSD_SERVER_PS_PARAMETER_SERVICE_H_
#define PSD_SERVER_PS_PARAMETER_SERVICE_H_

#include <memory>

#include "common/metrics.h"
#include "common/proto.h"
#include "server/ps/parameter_store.h"
#include "server/ps/shared_regions.h"
#include "server/snapshot/snapshot_store.h"

namespace psd {

// Push and Pull use the callback API, so the number of calls in flight is
// not bounded by a handler thread pool (a worker has one call per partition
// in flight). Push validates and applies on the callback thread (CPU work on
// one partition, no I/O). A pull waiting for a step holds no thread, and
// ends when the step is reached, the job is dropped, or the client cancels
// or passes its deadline; so does a push with pull_next, which is answered
// like a pull of the next step once its push is taken. Tensor bytes may
// come and go through a worker's shared memory (SharedRegions). CreateJob
// and DropJob use the sync API; Replicate, like Push and Pull, the callback
// API.
// Counts push and pull calls, their bytes, errors and latency in the
// psd_server_push_* and psd_server_pull_* metrics; the hot path only
// touches atomics, and nothing is logged per call.
// Thread-safe. Does not own `store` or `metrics`.
class ParameterService final
    : public ParameterServer::WithCallbackMethod_Push<
          ParameterServer::WithCallbackMethod_Pull<
              ParameterServer::WithCallbackMethod_Replicate<
                  ParameterServer::Service>>> {
 public:
  // Registers the service's metrics in `metrics`, which must outlive
  // it; with nullptr they are kept in a private registry (tests).
  // `snapshots` (not owned; may be null when the server has no
  // --data_dir) serves RestoreJob and ListSnapshots.
  // `shared_memory` governs the workers' shared-memory regions
  // (AttachSharedMemory; SharedRegions).
  explicit ParameterService(
      ParameterStore* store, MetricsRegistry* metrics = nullptr,
      SnapshotStore* snapshots = nullptr,
      SharedRegions::Options shared_memory = SharedRegions::Options());
  ~ParameterService() override;

  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const PushRequest* request,
                                 PushResponse* response) override;
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const PullRequest* request,
                                 PullResponse* response) override;
  grpc::Status AttachSharedMemory(grpc::ServerContext* context,
                                  const AttachSharedMemoryRequest* request,
                                  AttachSharedMemoryResponse* response) override;
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const CreateJobRequest* request,
                         CreateJobResponse* response) override;
  grpc::Status DropJob(grpc::ServerContext* context,
                       const DropJobRequest* request,
                       DropJobResponse* response) override;
  grpc::Status GetServerStatus(grpc::ServerContext* context,
                               const GetServerStatusRequest* request,
                               ServerStatus* response) override;
  grpc::Status RestoreJob(grpc::ServerContext* context,
                          const RestoreJobRequest* request,
                          RestoreJobResponse* response) override;
  grpc::Status ListSnapshots(grpc::ServerContext* context,
                             const ListSnapshotsRequest* request,
                             ListSnapshotsResponse* response) override;
  grpc::Status SnapshotJob(grpc::ServerContext* context,
                           const SnapshotJobRequest* request,
                           SnapshotJobResponse* response) override;
  // Callback API, as Push: a backup applies the update on the thread that
  // read the request (no hand-off to a handler thread on every step).
  grpc::ServerUnaryReactor* Replicate(grpc::CallbackServerContext* context,
                                      const ReplicateRequest* request,
                                      ReplicateResponse* response) override;
  grpc::Status InstallPartition(grpc::ServerContext* context,
                                const InstallPartitionRequest* request,
                                InstallPartitionResponse* response) override;
  grpc::Status SetView(grpc::ServerContext* context,
                       const SetViewRequest* request,
                       SetViewResponse* response) override;
  // The state transfer to a joining backup: one InstallPartition call per
  // partition of the shard (each at most partition_bytes of weights plus
  // the optimizer slots), while training goes on; every step completed from
  // the first copy on is replicated to the backup too.
  grpc::Status SyncBackup(grpc::ServerContext* context,
                          const SyncBackupRequest* request,
                          SyncBackupResponse* response) override;

  // The push and pull metrics (defined in the .cc).
  struct Metrics;

 private:
  // The push as the store takes it: gradients read out of the worker's
  // shared memory (copied once, so what is validated cannot change under
  // it) and BFLOAT16 widened to FLOAT32, into *storage; `request` itself
  // when neither applies. Errors: those of SharedRegions::Get, and
  // INVALID_ARGUMENT for a slice outside the region or a bad dtype.
  absl::StatusOr<const PushRequest*> StorePushRequest(
      const PushRequest& request, PushRequest* storage);
  // Validates and takes a push (StorePushRequest, ParameterStore::Push),
  // counting it in the push metrics.
  absl::Status TakePush(const PushRequest& request, PushResponse* response);

  ParameterStore* const store_;
  SharedRegions regions_;
  SnapshotStore* const snapshots_;
  std::unique_ptr<MetricsRegistry> own_registry_;  // when none given
  std::unique_ptr<const Metrics> metrics_;
};

}  // namespace psd

#endif  // PSD_SERVER_PS_PARAMETER_SERVICE_H_
