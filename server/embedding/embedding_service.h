// The psd.v1.EmbeddingServer gRPC service (proto/embedding.proto) over an
// EmbeddingStore: sparse embedding tables, served by psd_server beside
// psd.v1.ParameterServer on the same port.
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_SERVICE_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_SERVICE_H_

#include <functional>
#include <map>
#include <vector>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "proto/embedding.grpc.pb.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_step_writer.h"
#include "server/embedding/embedding_store.h"

namespace psd {

struct EmbeddingServiceOptions {
  // Deadline of one forward (ReplicateRows to one backup), gRPC's retries
  // included, ms. Keep it well under the clients' call deadline
  // (EmbeddingClientOptions.timeout_ms), so that a primary drops a hung
  // backup before its clients give up on the primary. Default: 5000.
  int forward_timeout_ms = 5000;
  // Attempts of one forward that fails with UNAVAILABLE (gRPC's retry
  // policy: backoff 100 ms doubling up to 1 s, jittered), 1 to 5; then the
  // backup is dropped. Default: 4.
  int forward_attempts = 4;
  // Who submitted a job (JobStatus.submitted_by, a PrincipalName; "" on a
  // plaintext cluster), for ExportRows by users: only of a job they
  // submitted (AuthorizeJobAction). psd_server: its ParameterStore's
  // SubmittedBy (a server holding a table shard of a job holds the job's
  // dense shard too). Unset: users are refused. Default: unset.
  std::function<absl::StatusOr<std::string>(const std::string& job_id)>
      submitted_by;
};

// PullRows, PushRows and ReplicateRows use the callback API and run on the
// callback thread: CPU work on the rows requested under the stripes' locks,
// no I/O, no waiting. A PushRows to a replicated shard then forwards the
// request to the shard's backups with asynchronous ReplicateRows calls and
// finishes when all of them completed (EmbeddingPushResult.forward_to); a
// backup whose forward failed is dropped (EmbeddingStore::DropReplica) and
// logged, and the push is acknowledged: it is on this server and on every
// backup still listed. CreateTable, TableStatus and DropTable use the sync
// API, and so does SnapshotTable (an in-memory copy while the table's
// pushes wait, then RocksDB writes, on a sync-API thread) and CreateTable
// with restore (RocksDB reads, then the table is built before it is
// listed). With `snapshots`, the service owns an EmbeddingStepWriter that
// writes the store's step captures (CreateTableRequest.
// snapshot_every_steps; EmbeddingStore::ScheduleStepCaptures) in the
// background; CreateTable with restore_step restores the step snapshot of
// that step (EmbeddingSnapshotStore::ReadStep).
// Store errors become gRPC statuses with the same code and message
// (common/status.h). Counts calls, rows, errors and latency in the
// psd_server_embedding_* metrics (atomics only on the hot path; nothing is
// logged per call), and psd_server_embedding_bytes (EmbeddingStore::bytes)
// at scrape time.
// Thread-safe. Does not own `store`, `snapshots` or `metrics`.
class EmbeddingService final
    : public EmbeddingServer::WithCallbackMethod_PullRows<
          EmbeddingServer::WithCallbackMethod_PushRows<
              EmbeddingServer::WithCallbackMethod_ReplicateRows<
                  EmbeddingServer::Service>>> {
 public:
  // Registers the metrics in `metrics`, which must outlive the service;
  // with nullptr they go to a private registry (tests).
  // `snapshots`: where SnapshotTable writes and restore reads (psd_server:
  // <data_dir>/embeddings); nullptr (no --data_dir) makes both
  // FAILED_PRECONDITION.
  explicit EmbeddingService(EmbeddingStore* store,
                            MetricsRegistry* metrics = nullptr,
                            EmbeddingServiceOptions options = {},
                            EmbeddingSnapshotStore* snapshots = nullptr);
  ~EmbeddingService() override;

  grpc::ServerUnaryReactor* PullRows(grpc::CallbackServerContext* context,
                                     const PullRowsRequest* request,
                                     PullRowsResponse* response) override;
  grpc::ServerUnaryReactor* PushRows(grpc::CallbackServerContext* context,
                                     const PushRowsRequest* request,
                                     PushRowsResponse* response) override;
  grpc::ServerUnaryReactor* ReplicateRows(
      grpc::CallbackServerContext* context, const PushRowsRequest* request,
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
  grpc::Status SnapshotTable(grpc::ServerContext* context,
                             const SnapshotTableRequest* request,
                             SnapshotTableResponse* response) override;
  // Streams one held shard's weights (server/embedding/embedding_export.h;
  // defined in embedding_export.cc). Sync API: one in-memory copy of the
  // table, then chunks of at most max_chunk_bytes.
  grpc::Status ExportRows(grpc::ServerContext* context,
                          const ExportRowsRequest* request,
                          grpc::ServerWriter<ExportRowsResponse>* writer) override;

  // The metrics, and one push's forwards in flight (defined in the .cc).
  struct Metrics;
  struct Forward;
  // A BSP PushRows call waiting for its step.
  struct BspCall;

 private:
  // Applies a PushRows or ReplicateRows; fills *response. Returns the
  // store's result (forward targets) or its error.
  absl::StatusOr<EmbeddingPushResult> Apply(const PushRowsRequest& request,
                                            EmbeddingPushSource source,
                                            PushRowsResponse* response);
  // A PushRows with bsp (EmbeddingStore::PushBsp): the call waits for the
  // step's other ranks; the push completing the step forwards the merged
  // step to the backups (ReplicateRows, rank -1), then every call of the
  // step is answered.
  grpc::ServerUnaryReactor* PushBsp(grpc::CallbackServerContext* context,
                                    const PushRowsRequest* request,
                                    PushRowsResponse* response);
  // CreateTable without its step snapshot schedule (restore or create).
  grpc::Status CreateOrRestoreTable(const CreateTableRequest* request,
                                    CreateTableResponse* response);
  // Sends forward->request to `targets` (ReplicateRows, asynchronously);
  // FinishForward runs once all completed.
  void StartForward(Forward* forward, int32_t shard,
                    std::vector<std::string> targets);
  // The stub for a backup (created on first use; never freed before the
  // service).
  EmbeddingServer::Stub* StubFor(const std::string& address);
  // Called once every forward of `forward` completed: drops the backups
  // that failed, finishes the client's call, frees `forward`.
  void FinishForward(Forward* forward);

  // Constant after construction.
  EmbeddingStore* const store_;
  EmbeddingSnapshotStore* const snapshots_;  // may be null
  const EmbeddingServiceOptions options_;
  std::unique_ptr<MetricsRegistry> own_registry_;  // when none given
  std::unique_ptr<const Metrics> metrics_;
  // Writes the store's step captures (with `snapshots` only).
  std::unique_ptr<EmbeddingStepWriter> step_writer_;

  absl::Mutex stubs_mu_;
  std::map<std::string, std::unique_ptr<EmbeddingServer::Stub>> stubs_
      ABSL_GUARDED_BY(stubs_mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_SERVICE_H_
