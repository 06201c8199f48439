#include "server/embedding/embedding_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"
#include "common/embedding_rows.h"

namespace psd {

struct EmbeddingService::Metrics {
  explicit Metrics(MetricsRegistry* registry, EmbeddingStore* store)
      : pull_requests(registry->AddCounter(
            "psd_server_embedding_pull_requests_total",
            "PullRows calls received.")),
        pull_rows(registry->AddCounter("psd_server_embedding_pull_rows_total",
                                       "Rows returned by PullRows.")),
        pull_errors(registry->AddCounter(
            "psd_server_embedding_pull_errors_total",
            "PullRows calls answered with an error.")),
        pull_latency(registry->AddHistogram(
            "psd_server_embedding_pull_latency_seconds",
            "Time to serve one PullRows, seconds.", LatencyBuckets())),
        push_requests(registry->AddCounter(
            "psd_server_embedding_push_requests_total",
            "PushRows calls received.")),
        push_rows(registry->AddCounter(
            "psd_server_embedding_push_rows_total",
            "Distinct rows updated by PushRows.")),
        push_errors(registry->AddCounter(
            "psd_server_embedding_push_errors_total",
            "PushRows calls answered with an error.")),
        push_latency(registry->AddHistogram(
            "psd_server_embedding_push_latency_seconds",
            "Time to validate and apply one PushRows, seconds (forwards to "
            "backups not included).",
            LatencyBuckets())),
        replicate_requests(registry->AddCounter(
            "psd_server_embedding_replicate_requests_total",
            "ReplicateRows calls received (pushes forwarded by a primary).")),
        forwards(registry->AddCounter(
            "psd_server_embedding_forwards_total",
            "ReplicateRows calls made to backups.")),
        forward_errors(registry->AddCounter(
            "psd_server_embedding_forward_errors_total",
            "Forwards that failed (after gRPC's retries); each drops its "
            "backup.")),
        forward_latency(registry->AddHistogram(
            "psd_server_embedding_forward_latency_seconds",
            "From a replicated push applied to every forward of it "
            "completed, seconds.",
            LatencyBuckets())) {
    registry->AddGaugeCallback(
        "psd_server_embedding_bytes",
        "Bytes held for sparse embedding tables (rows, slots, maps).",
        [store] { return static_cast<double>(store->bytes()); });
    // Per table. The registry's families have one label, so it is
    // table="<job id>/<table name>" (a table name holds no '/': the part
    // after the last '/' is the table).
    registry->AddGaugeFamilyCallback(
        "psd_server_embedding_table_live_rows",
        "Rows held (created, not evicted) of each sparse embedding table, "
        "by table=\"<job id>/<table>\".",
        "table", [store] {
          LabeledValues values;
          for (const auto& u : store->Usage()) {
            values.emplace_back(absl::StrCat(u.job_id, "/", u.table),
                                static_cast<double>(u.rows));
          }
          return values;
        });
    registry->AddGaugeFamilyCallback(
        "psd_server_embedding_table_bytes",
        "Bytes held for each sparse embedding table (rows, slots, maps, "
        "admission counts), by table=\"<job id>/<table>\".",
        "table", [store] {
          LabeledValues values;
          for (const auto& u : store->Usage()) {
            values.emplace_back(absl::StrCat(u.job_id, "/", u.table),
                                static_cast<double>(u.bytes));
          }
          return values;
        });
  }

  Counter* const pull_requests;
  Counter* const pull_rows;
  Counter* const pull_errors;
  Histogram* const pull_latency;
  Counter* const push_requests;
  Counter* const push_rows;
  Counter* const push_errors;
  Histogram* const push_latency;
  Counter* const replicate_requests;
  Counter* const forwards;
  Counter* const forward_errors;
  Histogram* const forward_latency;
};

// One BSP PushRows call waiting for its step (EmbeddingStore::PushBsp):
// answered once, by whichever comes first of the step's completion (after
// its forwards) and the call's cancellation (its deadline).
struct EmbeddingService::BspCall : EmbeddingBspWaiter {
  absl::Mutex mu;
  grpc::ServerUnaryReactor* reactor = nullptr;  // valid until finished
  PushRowsResponse* response = nullptr;
  bool finished ABSL_GUARDED_BY(mu) = false;

  void Finish(const grpc::Status& status, int64_t rows_updated = 0,
              int64_t rows_created = 0) {
    absl::MutexLock lock(&mu);
    if (finished) return;
    finished = true;
    response->Clear();
    if (status.ok()) {
      response->set_rows_updated(duplicate ? 0 : rows_updated);
      response->set_rows_created(duplicate ? 0 : rows_created);
      response->set_duplicate(duplicate);
    }
    reactor->Finish(status);
  }
};

namespace {

// The reactor of a BSP PushRows: a cancelled (deadline passed) call is
// answered at once; its push stays buffered in the store.
class BspReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit BspReactor(std::shared_ptr<EmbeddingService::BspCall> call)
      : call_(std::move(call)) {}
  void OnCancel() override {
    call_->Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                               "BSP push cancelled while its step waited; "
                               "it stays buffered"));
  }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<EmbeddingService::BspCall> call_;
};

void FinishAll(const std::vector<std::shared_ptr<EmbeddingBspWaiter>>& waiters,
               const grpc::Status& status, int64_t rows_updated,
               int64_t rows_created) {
  for (const auto& w : waiters) {
    static_cast<EmbeddingService::BspCall*>(w.get())->Finish(
        status, rows_updated, rows_created);
  }
}

}  // namespace

// One client push's forwards to the shard's backups, in flight.
struct EmbeddingService::Forward {
  grpc::ServerUnaryReactor* reactor = nullptr;  // ASP: the client's call
  const PushRowsRequest* request = nullptr;  // the client's; lives until Finish
  // BSP: the merged step forwarded (request points to it), its rows.
  std::unique_ptr<PushRowsRequest> merged;
  int64_t rows_updated = 0;
  int64_t rows_created = 0;
  int32_t shard = 0;
  std::chrono::steady_clock::time_point start;
  std::vector<std::string> targets;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<PushRowsResponse> responses;
  std::vector<grpc::Status> statuses;
  std::atomic<size_t> pending{0};
};

namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                       start)
      .count();
}

absl::Span<const uint64_t> Ids(
    const google::protobuf::RepeatedField<uint64_t>& ids) {
  return absl::Span<const uint64_t>(ids.data(), ids.size());
}

// A channel to a backup: MakeChannel's tuning plus gRPC's retry policy for
// ReplicateRows (UNAVAILABLE only: a re-sent forward is a duplicate on the
// backup, so retrying is safe), with a retry buffer that holds a whole
// push.
std::shared_ptr<grpc::Channel> ForwardChannel(const std::string& address,
                                              int attempts) {
  grpc::ChannelArguments args = ChannelArguments();
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, 64 << 20);
  args.SetServiceConfigJSON(absl::StrCat(
      R"({"methodConfig": [{"name": [{"service": "psd.v1.EmbeddingServer", )",
      R"("method": "ReplicateRows"}], "retryPolicy": {"maxAttempts": )",
      std::clamp(attempts, 2, 5),
      R"(, "initialBackoff": "0.1s", "maxBackoff": "1s", )",
      R"("backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})"));
  return MakeChannel(address, args);
}

}  // namespace

EmbeddingService::EmbeddingService(EmbeddingStore* store,
                                   MetricsRegistry* metrics,
                                   EmbeddingServiceOptions options,
                                   EmbeddingSnapshotStore* snapshots)
    : store_(store),
      snapshots_(snapshots),
      options_(options),
      own_registry_(metrics == nullptr ? std::make_unique<MetricsRegistry>()
                                       : nullptr),
      metrics_(std::make_unique<Metrics>(
          metrics != nullptr ? metrics : own_registry_.get(), store)) {
  // Step snapshots of sparse jobs' tables (CreateTableRequest.
  // snapshot_every_steps) need somewhere to go.
  if (snapshots_ != nullptr) {
    step_writer_ = std::make_unique<EmbeddingStepWriter>(snapshots_);
    store_->SetStepCaptureSink(
        [writer = step_writer_.get()](
            std::shared_ptr<EmbeddingTableCapture> capture) {
          writer->Enqueue(std::move(capture));
        });
  }
}

EmbeddingService::~EmbeddingService() {
  if (step_writer_ != nullptr) store_->SetStepCaptureSink(nullptr);
}

grpc::ServerUnaryReactor* EmbeddingService::PullRows(
    grpc::CallbackServerContext* context, const PullRowsRequest* request,
    PullRowsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = std::chrono::steady_clock::now();
  metrics_->pull_requests->Increment();
  Tensor* rows = response->mutable_rows();
  int32_t dim = 0;
  absl::Status status = store_->Pull(request->job_id(), request->table(),
                                     Ids(request->row_ids()),
                                     rows->mutable_data(), &dim);
  metrics_->pull_latency->Observe(SecondsSince(start));
  if (!status.ok()) {
    metrics_->pull_errors->Increment();
    response->Clear();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }
  const int64_t n = request->row_ids_size();
  rows->set_dtype(FLOAT32);
  rows->add_shape(n);
  rows->add_shape(dim);
  metrics_->pull_rows->Increment(n);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::StatusOr<EmbeddingPushResult> EmbeddingService::Apply(
    const PushRowsRequest& request, EmbeddingPushSource source,
    PushRowsResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  metrics_->push_requests->Increment();
  if (request.client_id().size() > 128) {
    metrics_->push_errors->Increment();
    return absl::InvalidArgumentError("client_id: at most 128 bytes");
  }
  if (!request.client_id().empty() &&
      request.client_id()[0] == kReservedClientPrefix) {
    metrics_->push_errors->Increment();
    return absl::InvalidArgumentError(
        "client_id: must not start with byte 0x01 (reserved)");
  }
  auto result = store_->Push(request.job_id(), request.table(),
                             Ids(request.row_ids()), request.gradients(),
                             {request.client_id(), request.sequence()},
                             source, request.step());
  metrics_->push_latency->Observe(SecondsSince(start));
  if (!result.ok()) {
    metrics_->push_errors->Increment();
    return result.status();
  }
  response->set_rows_updated(result->rows_updated);
  response->set_rows_created(result->rows_created);
  response->set_duplicate(result->duplicate);
  metrics_->push_rows->Increment(result->rows_updated);
  if (result->promoted) {
    Log()->warn(
        "embedding table {} of job {}: shard {} promoted to primary by a push "
        "from client {}; forwarding to {} replica(s)",
        request.table(), request.job_id(), result->shard,
        request.client_id(), result->forward_to.size());
  }
  return result;
}

grpc::ServerUnaryReactor* EmbeddingService::PushBsp(
    grpc::CallbackServerContext* context, const PushRowsRequest* request,
    PushRowsResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  metrics_->push_requests->Increment();
  auto call = std::make_shared<BspCall>();
  auto* reactor = new BspReactor(call);
  call->reactor = reactor;
  call->response = response;
  absl::StatusOr<EmbeddingBspResult> result;
  if (request->client_id().size() > 128) {
    result = absl::InvalidArgumentError("client_id: at most 128 bytes");
  } else {
    result = store_->PushBsp(
        request->job_id(), request->table(), Ids(request->row_ids()),
        request->gradients(),
        {request->step(), request->rank(), request->num_ranks(),
         request->shard()},
        {request->client_id(), request->sequence()},
        EmbeddingPushSource::kClient, call);
  }
  metrics_->push_latency->Observe(SecondsSince(start));
  if (!result.ok()) {
    metrics_->push_errors->Increment();
    call->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  if (result->promoted) {
    Log()->warn(
        "embedding table {} of job {}: shard {} promoted to primary by a BSP "
        "push from client {}; forwarding to {} replica(s)",
        request->table(), request->job_id(), result->shard,
        request->client_id(), result->forward_to.size());
  }
  using Outcome = EmbeddingBspResult::Outcome;
  switch (result->outcome) {
    case Outcome::kAnswer:
      call->duplicate = result->duplicate;
      call->Finish(grpc::Status::OK);
      break;
    case Outcome::kWaiting:
      break;  // answered when the step completes, or at its deadline
    case Outcome::kFailed:
      metrics_->push_errors->Increment();
      FinishAll(result->waiters, ToGrpcStatus(result->error), 0, 0);
      break;
    case Outcome::kApplied: {
      metrics_->push_rows->Increment(result->rows_updated);
      if (result->forward_to.empty()) {
        FinishAll(result->waiters, grpc::Status::OK, result->rows_updated,
                  result->rows_created);
        break;
      }
      auto merged = std::make_unique<PushRowsRequest>();
      merged->set_job_id(request->job_id());
      merged->set_table(request->table());
      merged->mutable_row_ids()->Assign(result->merged_ids.begin(),
                                        result->merged_ids.end());
      Tensor* g = merged->mutable_gradients();
      g->set_dtype(FLOAT32);
      const int64_t n = static_cast<int64_t>(result->merged_ids.size());
      g->add_shape(n);
      g->add_shape(result->dim);
      g->mutable_data()->assign(
          reinterpret_cast<const char*>(result->merged_grads.data()),
          result->merged_grads.size() * 4);
      merged->set_bsp(true);
      merged->set_step(result->step);
      merged->set_rank(-1);
      merged->set_num_ranks(request->num_ranks());
      merged->set_shard(result->shard);
      auto* forward = new Forward;
      forward->request = merged.get();
      forward->merged = std::move(merged);
      forward->rows_updated = result->rows_updated;
      forward->rows_created = result->rows_created;
      StartForward(forward, result->shard, std::move(result->forward_to));
      break;
    }
  }
  return reactor;
}

void EmbeddingService::StartForward(Forward* forward, int32_t shard,
                                    std::vector<std::string> targets) {
  const size_t n = targets.size();
  forward->shard = shard;
  forward->start = std::chrono::steady_clock::now();
  forward->targets = std::move(targets);
  forward->responses.resize(n);
  forward->statuses.resize(n);
  forward->pending.store(n);
  for (size_t i = 0; i < n; ++i) {
    EmbeddingServer::Stub* stub = StubFor(forward->targets[i]);
    forward->contexts.push_back(std::make_unique<grpc::ClientContext>());
    forward->contexts[i]->set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.forward_timeout_ms)));
    metrics_->forwards->Increment();
    stub->async()->ReplicateRows(
        forward->contexts[i].get(), forward->request, &forward->responses[i],
        [this, forward, i](grpc::Status status) {
          forward->statuses[i] = std::move(status);
          if (forward->pending.fetch_sub(1) == 1) FinishForward(forward);
        });
  }
}

grpc::ServerUnaryReactor* EmbeddingService::PushRows(
    grpc::CallbackServerContext* context, const PushRowsRequest* request,
    PushRowsResponse* response) {
  if (request->bsp()) return PushBsp(context, request, response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto result = Apply(*request, EmbeddingPushSource::kClient, response);
  if (!result.ok()) {
    response->Clear();
    reactor->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  if (result->forward_to.empty()) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Forward the request as it came (same dedup key) to every backup; the
  // client is answered once all of them completed (FinishForward).
  auto* forward = new Forward;
  forward->reactor = reactor;
  forward->request = request;
  StartForward(forward, result->shard, std::move(result->forward_to));
  return reactor;
}

void EmbeddingService::FinishForward(Forward* forward) {
  metrics_->forward_latency->Observe(SecondsSince(forward->start));
  const PushRowsRequest& request = *forward->request;
  for (size_t i = 0; i < forward->targets.size(); ++i) {
    const grpc::Status& status = forward->statuses[i];
    if (status.ok()) continue;
    metrics_->forward_errors->Increment();
    const std::string reason =
        absl::StrCat(FromGrpcStatus(status).ToString());
    if (store_->DropReplica(request.job_id(), request.table(), forward->shard,
                            forward->targets[i], reason)) {
      Log()->error(
          "embedding table {} of job {}: dropped backup {} of shard {}: "
          "forwarding push ({}, {}) failed: {}; this server no longer "
          "forwards this shard's pushes to it (for the table's lifetime)",
          request.table(), request.job_id(), forward->targets[i],
          forward->shard, request.client_id(), request.sequence(), reason);
    }
  }
  if (forward->merged != nullptr) {
    // BSP: the step is on every backup still listed; answer its calls.
    FinishAll(store_->FinishBspStep(request.job_id(), request.table(),
                                    forward->shard, request.step()),
              grpc::Status::OK, forward->rows_updated, forward->rows_created);
    delete forward;
    return;
  }
  grpc::ServerUnaryReactor* reactor = forward->reactor;
  delete forward;
  reactor->Finish(grpc::Status::OK);
}

grpc::ServerUnaryReactor* EmbeddingService::ReplicateRows(
    grpc::CallbackServerContext* context, const PushRowsRequest* request,
    PushRowsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  metrics_->replicate_requests->Increment();
  if (request->bsp()) {
    // A merged step from the shard's primary: applied once (by step).
    metrics_->push_requests->Increment();
    auto merged = store_->PushBsp(
        request->job_id(), request->table(), Ids(request->row_ids()),
        request->gradients(),
        {request->step(), request->rank(), request->num_ranks(),
         request->shard()},
        {}, EmbeddingPushSource::kReplica, nullptr);
    if (!merged.ok()) {
      metrics_->push_errors->Increment();
      reactor->Finish(ToGrpcStatus(merged.status()));
      return reactor;
    }
    response->set_rows_updated(merged->rows_updated);
    response->set_rows_created(merged->rows_created);
    response->set_duplicate(merged->duplicate);
    FinishAll(merged->waiters, grpc::Status::OK, merged->rows_updated,
              merged->rows_created);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  auto result = Apply(*request, EmbeddingPushSource::kReplica, response);
  if (!result.ok()) {
    response->Clear();
    reactor->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

EmbeddingServer::Stub* EmbeddingService::StubFor(const std::string& address) {
  absl::MutexLock lock(&stubs_mu_);
  std::unique_ptr<EmbeddingServer::Stub>& stub = stubs_[address];
  if (stub == nullptr) {
    stub = EmbeddingServer::NewStub(
        ForwardChannel(address, options_.forward_attempts));
  }
  return stub.get();
}

grpc::Status EmbeddingService::CreateTable(grpc::ServerContext*,
                                           const CreateTableRequest* request,
                                           CreateTableResponse* response) {
  if (request->snapshot_every_steps() < 0 || request->restore_step() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        request->restore_step() < 0
            ? absl::StrCat("restore_step: must be >= 0, got ",
                           request->restore_step())
            : absl::StrCat("snapshot_every_steps: must be >= 0, got ",
                           request->snapshot_every_steps())));
  }
  if (request->restore_step() > 0 && !request->restore()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        "restore_step: set without restore"));
  }
  grpc::Status made = CreateOrRestoreTable(request, response);
  if (!made.ok() || request->snapshot_every_steps() == 0) return made;
  if (snapshots_ == nullptr) {
    Log()->warn("embedding table {} of job {}: no step snapshots (every {} "
                "steps asked): this server has no --data_dir",
                request->spec().name(), request->job_id(),
                request->snapshot_every_steps());
    return made;
  }
  const int keep = request->snapshot_keep_last() > 0
                       ? std::max(request->snapshot_keep_last(), 2)
                       : 3;
  return ToGrpcStatus(store_->ScheduleStepCaptures(
      request->job_id(), request->spec().name(),
      request->snapshot_every_steps(), keep));
}

grpc::Status EmbeddingService::CreateOrRestoreTable(
    const CreateTableRequest* request, CreateTableResponse* response) {
  std::vector<int32_t> shards(request->shards().begin(),
                              request->shards().end());
  std::vector<TableShardReplicas> replicas(request->replicas().begin(),
                                      request->replicas().end());
  if (request->restore()) {
    if (snapshots_ == nullptr) {
      return ToGrpcStatus(absl::FailedPreconditionError(
          "restore: this server has no --data_dir, so it has no snapshots of "
          "embedding tables"));
    }
    if (request->job_id().empty()) {
      return ToGrpcStatus(absl::InvalidArgumentError("job_id: required"));
    }
    if (absl::Status valid = ValidateTableSpec(request->spec(), "spec");
        !valid.ok()) {
      return ToGrpcStatus(valid);
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::pair<int64_t, absl::Status>> skipped;
    auto snapshot =
        request->restore_step() > 0
            ? snapshots_->ReadStep(request->job_id(), request->spec().name(),
                                   request->restore_step(), &skipped)
            : snapshots_->ReadNewestValid(request->job_id(),
                                          request->spec().name(), &skipped);
    for (const auto& [generation, error] : skipped) {
      Log()->error("embedding table {} of job {}: snapshot generation {} "
                   "skipped: {}",
                   request->spec().name(), request->job_id(), generation,
                   error.ToString());
    }
    if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
    if (WithTableDefaults(request->spec()).SerializeAsString() !=
        snapshot->capture.spec.SerializeAsString()) {
      return ToGrpcStatus(absl::FailedPreconditionError(absl::StrCat(
          "restore: spec differs from the snapshot's (generation ",
          snapshot->manifest.generation(), "): snapshot ",
          snapshot->capture.spec.ShortDebugString(), "; request ",
          WithTableDefaults(request->spec()).ShortDebugString())));
    }
    auto loaded = store_->Restore(snapshot->capture, shards, replicas);
    if (!loaded.ok()) return ToGrpcStatus(loaded.status());
    response->set_created(true);
    response->set_restored_generation(snapshot->manifest.generation());
    response->set_restored_rows(*loaded);
    *response->mutable_restored_metadata() = snapshot->manifest.metadata();
    Log()->info("embedding table {} of job {}: restored generation {} ({} "
                "rows of shards [{}], {} dedup entries) in {:.3f} s",
                request->spec().name(), request->job_id(),
                snapshot->manifest.generation(), *loaded,
                absl::StrJoin(shards, ", "),
                snapshot->manifest.dedup_entries(), SecondsSince(start));
    return grpc::Status::OK;
  }
  auto created = store_->CreateTable(request->job_id(), request->spec(),
                                     shards, replicas);
  if (!created.ok()) return ToGrpcStatus(created.status());
  response->set_created(*created);
  return grpc::Status::OK;
}

grpc::Status EmbeddingService::TableStatus(grpc::ServerContext*,
                                           const TableStatusRequest* request,
                                           TableStatusResponse* response) {
  auto status = store_->Status(request->job_id(), request->table(),
                               request->checksum());
  if (!status.ok()) return ToGrpcStatus(status.status());
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status EmbeddingService::DropTable(grpc::ServerContext*,
                                         const DropTableRequest* request,
                                         DropTableResponse*) {
  return ToGrpcStatus(store_->DropTable(request->job_id(), request->table()));
}

grpc::Status EmbeddingService::SnapshotTable(
    grpc::ServerContext*, const SnapshotTableRequest* request,
    SnapshotTableResponse* response) {
  if (snapshots_ == nullptr) {
    return ToGrpcStatus(absl::FailedPreconditionError(
        "SnapshotTable: this server has no --data_dir; start psd_server with "
        "--data_dir=DIR to snapshot embedding tables"));
  }
  const auto start = std::chrono::steady_clock::now();
  auto capture = store_->Capture(request->job_id(), request->table());
  if (!capture.ok()) return ToGrpcStatus(capture.status());
  const double captured = SecondsSince(start);
  std::map<std::string, std::string> metadata(request->metadata().begin(),
                                              request->metadata().end());
  auto written = snapshots_->Write(*capture, metadata);
  if (!written.ok()) {
    Log()->error("embedding table {} of job {}: snapshot failed: {}",
                 request->table(), request->job_id(),
                 written.status().ToString());
    return ToGrpcStatus(written.status());
  }
  response->set_generation(written->generation());
  response->set_rows(written->rows());
  response->set_dedup_entries(written->dedup_entries());
  response->set_bytes(written->total_bytes());
  response->set_capture_seconds(captured);
  response->set_seconds(SecondsSince(start));
  Log()->info("embedding table {} of job {}: snapshot generation {} ({} rows, "
              "{} bytes) in {:.3f} s (pushes blocked {:.3f} s)",
              request->table(), request->job_id(), written->generation(),
              written->rows(), written->total_bytes(), response->seconds(),
              captured);
  return grpc::Status::OK;
}

}  // namespace psd
