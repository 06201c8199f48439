#include "server/ps/parameter_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>

#include <grpcpp/alarm.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/authorization.h"
#include "common/process.h"
#include "common/quote.h"
#include "common/rpc.h"
#include "common/status.h"
#include "common/tensor.h"

namespace psd {

struct ParameterService::Metrics {
  explicit Metrics(MetricsRegistry* registry)
      : push_requests(registry->AddCounter(
            "psd_server_push_requests_total", "Push calls received.")),
        push_errors(registry->AddCounter(
            "psd_server_push_errors_total",
            "Push calls answered with an error (rejected gradients).")),
        push_bytes(registry->AddCounter(
            "psd_server_push_bytes_total",
            "Bytes of push requests received (serialized protobuf size).")),
        push_latency(registry->AddHistogram(
            "psd_server_push_latency_seconds",
            "Time to validate and apply one push, seconds.",
            LatencyBuckets())),
        pull_requests(registry->AddCounter(
            "psd_server_pull_requests_total", "Pull calls received.")),
        pull_errors(registry->AddCounter(
            "psd_server_pull_errors_total",
            "Pull calls that ended with an error, cancellation included.")),
        pull_bytes(registry->AddCounter(
            "psd_server_pull_bytes_total",
            "Bytes of pull responses sent (serialized protobuf size).")),
        pull_latency(registry->AddHistogram(
            "psd_server_pull_latency_seconds",
            "Time from receiving a pull to answering it, seconds; includes "
            "waiting for the step's last push.",
            LatencyBuckets())),
        shared_memory_bytes(registry->AddCounter(
            "psd_server_shared_memory_bytes_total",
            "Bytes of pushed gradients and pulled parameters carried through "
            "workers' shared memory instead of gRPC messages.")) {}

  Counter* const push_requests;
  Counter* const push_errors;
  Counter* const push_bytes;
  Histogram* const push_latency;
  Counter* const pull_requests;
  Counter* const pull_errors;
  Counter* const pull_bytes;
  Histogram* const pull_latency;
  Counter* const shared_memory_bytes;
};

namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  const auto elapsed = std::chrono::steady_clock::now() - start;
  return std::chrono::duration<double>(elapsed).count();
}

}  // namespace

ParameterService::ParameterService(ParameterStore* store,
                                   MetricsRegistry* metrics,
                                   SnapshotStore* snapshots,
                                   SharedRegions::Options shared_memory)
    : store_(store),
      regions_(shared_memory),
      snapshots_(snapshots),
      own_registry_(metrics == nullptr ? std::make_unique<MetricsRegistry>()
                                       : nullptr),
      metrics_(std::make_unique<Metrics>(
          metrics != nullptr ? metrics : own_registry_.get())) {}

ParameterService::~ParameterService() = default;

namespace {

// One pull: finishes when the store answers it; a client that cancels (or
// whose deadline passes) withdraws it from the store. Its latency runs from
// construction to the store's answer.
class PullReactor final : public grpc::ServerUnaryReactor {
 public:
  // `region`: the worker's shared memory when the request names one
  // (else null), or the error of mapping it, which ends the pull.
  PullReactor(ParameterStore* store, const ParameterService::Metrics* metrics,
              std::chrono::system_clock::time_point deadline,
              const PullRequest* request, PullResponse* response,
              absl::StatusOr<std::shared_ptr<const SharedMemory>> region,
              std::unique_ptr<const PullRequest> owned = nullptr)
      : owned_(std::move(owned)),
        store_(store),
        metrics_(metrics),
        start_(std::chrono::steady_clock::now()),
        job_id_(request->job_id()),
        id_(store->NewPullId()) {
    metrics_->pull_requests->Increment();
    if (region.ok() && *region != nullptr &&
        request->shared_size() != request->partition_ids_size()) {
      region = absl::InvalidArgumentError(absl::StrCat(
          "shared: ", request->shared_size(), " slices for ",
          request->partition_ids_size(), " partition_ids"));
    }
    if (!region.ok()) {
      metrics_->pull_errors->Increment();
      Finish(ToGrpcStatus(region.status()));
      return;
    }
    region_ = *std::move(region);
    // A pull still waiting shortly before the client's deadline ends with
    // DEADLINE_EXCEEDED and the store's account of what it waited for (e.g.
    // the SSP bound and the slowest rank), instead of the bare gRPC one.
    const auto now = std::chrono::system_clock::now();
    if (deadline - now < std::chrono::hours(24 * 365)) {
      const auto margin = std::min<std::chrono::system_clock::duration>(
          std::chrono::milliseconds(200), (deadline - now) / 10);
      alarm_.Set(deadline - margin,
                 [store = store_, job_id = job_id_, id = id_](bool fired) {
                   if (fired) store->ExpirePull(job_id, id);
                 });
    }
    store_->PullAsync(
        id_, *request, response, [this, request, response](absl::Status status) {
          metrics_->pull_latency->Observe(SecondsSince(start_));
          if (status.ok() && region_ != nullptr) {
            status = WriteShared(*request, response);
          }
          if (status.ok()) {
            metrics_->pull_bytes->Increment(response->ByteSizeLong());
          } else {
            metrics_->pull_errors->Increment();
          }
          Finish(ToGrpcStatus(status));
        });
  }

  void OnCancel() override {
    store_->CancelPull(job_id_, id_,
                       absl::CancelledError("pull cancelled by the client"));
  }

  void OnDone() override { delete this; }

 private:
  // Moves each returned partition's bytes into the worker's slice.
  absl::Status WriteShared(const PullRequest& request, PullResponse* response) {
    uint64_t bytes = 0;
    for (int i = 0; i < response->parameters_size(); ++i) {
      Tensor* tensor = response->mutable_parameters(i)->mutable_tensor();
      const SharedSlice& slice = request.shared(i);
      PSD_RETURN_IF_ERROR(region_->CheckSlice(
          slice, tensor->data().size(), absl::StrCat("shared[", i, "]")));
      if (!tensor->data().empty()) {
        std::memcpy(region_->data() + slice.offset(), tensor->data().data(),
                    tensor->data().size());
      }
      bytes += tensor->data().size();
      tensor->clear_data();
      *response->mutable_parameters(i)->mutable_shared() = slice;
    }
    metrics_->shared_memory_bytes->Increment(bytes);
    return absl::OkStatus();
  }

  // The request, when this reactor made it (a push's pull_next); else
  // gRPC owns it.
  const std::unique_ptr<const PullRequest> owned_;
  std::shared_ptr<const SharedMemory> region_;  // null: bytes in messages
  ParameterStore* const store_;
  const ParameterService::Metrics* const metrics_;
  const std::chrono::steady_clock::time_point start_;
  const std::string job_id_;
  const uint64_t id_;
  grpc::Alarm alarm_;  // cancelled when the reactor is destroyed
};

}  // namespace

absl::Status ParameterService::TakePush(const PushRequest& request,
                                        PushResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  metrics_->push_requests->Increment();
  metrics_->push_bytes->Increment(request.ByteSizeLong());
  PushRequest storage;
  absl::StatusOr<const PushRequest*> taken = StorePushRequest(request, &storage);
  absl::StatusOr<PushResponse> result =
      taken.ok() ? store_->Push(**taken) : taken.status();
  metrics_->push_latency->Observe(SecondsSince(start));
  if (!result.ok()) {
    metrics_->push_errors->Increment();
    Log()->debug("push rejected: job {} rank {} step {}: {}",
                 Quote(request.job_id()), request.worker_rank(),
                 request.step(), result.status().ToString());
    return result.status();
  }
  *response = *std::move(result);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ParameterService::Push(
    grpc::CallbackServerContext* context, const PushRequest* request,
    PushResponse* response) {
  absl::Status pushed = TakePush(*request, response);
  if (pushed.ok() && request->pull_next() &&
      request->step() < INT64_MAX) {  // step + 1 stays an int64
    // The pull of step + 1, answered in response->pulled by a PullReactor.
    auto pull = std::make_unique<PullRequest>();
    pull->set_job_id(request->job_id());
    pull->set_worker_rank(request->worker_rank());
    pull->set_step(request->step() + 1);
    pull->set_view_epoch(request->view_epoch());
    pull->set_dtype(request->pull_dtype());
    for (const PartitionTensor& g : request->gradients()) {
      pull->add_partition_ids(g.partition_id());
    }
    absl::StatusOr<std::shared_ptr<const SharedMemory>> region =
        std::shared_ptr<const SharedMemory>();
    if (request->has_shared_region()) {
      *pull->mutable_shared_region() = request->shared_region();
      *pull->mutable_shared() = request->pull_shared();
      region = regions_.Get(request->job_id(), request->shared_region());
    }
    const PullRequest* raw = pull.get();
    return new PullReactor(store_, metrics_.get(), context->deadline(), raw,
                           response->mutable_pulled(), std::move(region),
                           std::move(pull));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(pushed));
  return reactor;
}

absl::StatusOr<const PushRequest*> ParameterService::StorePushRequest(
    const PushRequest& request, PushRequest* storage) {
  const bool bfloat16 = std::any_of(
      request.gradients().begin(), request.gradients().end(),
      [](const PartitionTensor& g) { return g.tensor().dtype() == BFLOAT16; });
  if (!bfloat16 && !request.has_shared_region()) return &request;
  std::shared_ptr<const SharedMemory> region;
  if (request.has_shared_region()) {
    PSD_ASSIGN_OR_RETURN(region,
                         regions_.Get(request.job_id(), request.shared_region()));
  }
  // Everything but the gradients (a new PushRequest field goes here too).
  storage->set_job_id(request.job_id());
  storage->set_worker_rank(request.worker_rank());
  storage->set_step(request.step());
  storage->set_view_epoch(request.view_epoch());
  uint64_t shared_bytes = 0;
  for (int i = 0; i < request.gradients_size(); ++i) {
    const PartitionTensor& g = request.gradients(i);
    const std::string what = absl::StrCat("gradients[", i, "] (partition ",
                                          g.partition_id(), ")");
    PartitionTensor* out = storage->add_gradients();
    out->set_partition_id(g.partition_id());
    Tensor* tensor = out->mutable_tensor();
    if (g.has_shared()) {
      if (region == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ".shared: set without shared_region"));
      }
      PSD_RETURN_IF_ERROR(
          region->CheckSlice(g.shared(), g.shared().size(), what + ".shared"));
      tensor->set_dtype(g.tensor().dtype());
      *tensor->mutable_shape() = g.tensor().shape();
      tensor->mutable_data()->assign(
          reinterpret_cast<const char*>(region->data() + g.shared().offset()),
          g.shared().size());
      shared_bytes += g.shared().size();
      if (tensor->dtype() == BFLOAT16) {
        PSD_RETURN_IF_ERROR(WidenToFloat32(tensor, what));
      }
    } else if (g.tensor().dtype() == BFLOAT16) {
      // BFLOAT16 gradients (JobConfig.gradient_dtype) are widened to
      // float32 here, exactly; the store sums and applies float32 only.
      PSD_RETURN_IF_ERROR(WidenToFloat32(g.tensor(), tensor, what));
    } else {
      *tensor = g.tensor();
    }
  }
  metrics_->shared_memory_bytes->Increment(shared_bytes);
  return storage;
}



grpc::ServerUnaryReactor* ParameterService::Pull(
    grpc::CallbackServerContext* context, const PullRequest* request,
    PullResponse* response) {
  // A person's pull (psd_ctl export): only of a job they submitted, or as
  // an admin. Workers pull any job they are given; psd_serve (the serve
  // role) any job it is told to serve.
  if (std::optional<SpiffeId> caller = CallerOf(*context);
      caller.has_value() && caller->role != Role::kWorker &&
      caller->role != Role::kServe) {
    absl::StatusOr<std::string> submitted_by =
        store_->SubmittedBy(request->job_id());
    absl::Status allowed =
        submitted_by.ok()
            ? AuthorizeJobAction(caller, *submitted_by, "export",
                                 request->job_id())
            : submitted_by.status();
    if (!allowed.ok()) {
      grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
      reactor->Finish(ToGrpcStatus(allowed));
      return reactor;
    }
  }
  // (A default StatusOr is an error: start from "no region".)
  absl::StatusOr<std::shared_ptr<const SharedMemory>> region =
      std::shared_ptr<const SharedMemory>();
  if (request->has_shared_region()) {
    region = regions_.Get(request->job_id(), request->shared_region());
  }
  return new PullReactor(store_, metrics_.get(), context->deadline(), request,
                         response, std::move(region));
}

grpc::Status ParameterService::AttachSharedMemory(
    grpc::ServerContext*, const AttachSharedMemoryRequest* request,
    AttachSharedMemoryResponse*) {
  auto region = regions_.Get(request->job_id(), request->region());
  if (!region.ok()) {
    Log()->info("job {}: a worker's shared memory not mapped: {}",
                Quote(request->job_id()), region.status().ToString());
    return ToGrpcStatus(region.status());
  }
  Log()->info("job {}: mapped a worker's shared memory {} ({} bytes)",
              Quote(request->job_id()), (*region)->region().name(),
              (*region)->size());
  return grpc::Status::OK;
}

grpc::Status ParameterService::CreateJob(grpc::ServerContext*,
                                         const CreateJobRequest* request,
                                         CreateJobResponse* response) {
  auto result = store_->CreateJob(*request);
  if (!result.ok()) {
    Log()->warn("create job {} failed: {}", Quote(request->job_id()),
                result.status().ToString());
    return ToGrpcStatus(result.status());
  }
  Log()->info("job {}: holding {} partitions, {} bytes of state",
              request->job_id(), result->num_partitions(),
              result->state_bytes());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status ParameterService::DropJob(grpc::ServerContext*,
                                       const DropJobRequest* request,
                                       DropJobResponse*) {
  absl::Status status = store_->DropJob(
      request->job_id(), request->keep_parameters(), request->view_epoch());
  if (status.ok()) regions_.DropJob(request->job_id());
  if (status.code() == absl::StatusCode::kAborted) {
    // A failed start attempt's drop, after a later attempt created the job.
    Log()->info("job {}: kept: {}", Quote(request->job_id()),
                std::string(status.message()));
    return ToGrpcStatus(status);
  }
  if (status.ok()) {
    Log()->info("job {}: {}", request->job_id(),
                request->keep_parameters()
                    ? "finished; training state freed, parameters kept"
                    : "dropped");
  }
  if (request->delete_snapshots() && snapshots_ != nullptr) {
    absl::Status deleted = snapshots_->DeleteJob(request->job_id());
    if (!deleted.ok()) return ToGrpcStatus(deleted);
    Log()->info("job {}: snapshots deleted", request->job_id());
    // Nothing held in memory (e.g. after a restart) is fine here.
    if (status.code() == absl::StatusCode::kNotFound) return grpc::Status::OK;
  }
  return ToGrpcStatus(status);
}

grpc::Status ParameterService::GetServerStatus(grpc::ServerContext*,
                                               const GetServerStatusRequest*,
                                               ServerStatus* response) {
  *response = store_->Status();
  return grpc::Status::OK;
}

grpc::Status ParameterService::RestoreJob(grpc::ServerContext*,
                                          const RestoreJobRequest* request,
                                          RestoreJobResponse* response) {
  if (snapshots_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this server has no --data_dir, so no snapshots");
  }
  std::vector<std::pair<int64_t, absl::Status>> skipped;
  auto snapshot = snapshots_->ReadNewestValidAtMost(
      request->job_id(), request->max_step(), &skipped);
  for (const auto& [step, why] : skipped) {
    Log()->warn("job {}: snapshot at step {} skipped: {}", request->job_id(),
                step, why.ToString());
    response->add_skipped(absl::StrCat("step ", step, ": ", why.ToString()));
  }
  if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
  const int64_t step = snapshot->manifest.step();
  absl::Status restored =
      store_->Restore(*snapshot, request->view_epoch(),
                      request->submitted_by(), request->servers());
  if (!restored.ok()) return ToGrpcStatus(restored);
  Log()->info("job {}: restored from the snapshot at step {}",
              request->job_id(), step);
  response->set_step(step);
  return grpc::Status::OK;
}

grpc::Status ParameterService::ListSnapshots(grpc::ServerContext*,
                                             const ListSnapshotsRequest* request,
                                             ListSnapshotsResponse* response) {
  if (snapshots_ != nullptr) {
    auto list = snapshots_->List(request->job_id());
    if (!list.ok()) return ToGrpcStatus(list.status());
    for (SnapshotInfo& info : *list) *response->add_snapshots() = std::move(info);
  }
  if (response->snapshots_size() > 0) return grpc::Status::OK;
  const std::vector<std::string> held = store_->JobIds();
  if (std::find(held.begin(), held.end(), request->job_id()) != held.end()) {
    return grpc::Status::OK;  // held, no snapshot yet
  }
  // An answer of "none" would hide a mistyped id.
  return grpc::Status(
      grpc::StatusCode::NOT_FOUND,
      absl::StrCat("job_id: no job ", Quote(request->job_id()),
                   " on this server: neither held nor snapshotted here",
                   snapshots_ == nullptr ? " (no --data_dir)" : ""));
}

grpc::Status ParameterService::SnapshotJob(grpc::ServerContext*,
                                           const SnapshotJobRequest* request,
                                           SnapshotJobResponse* response) {
  absl::Status status = store_->RequestSnapshot(request->job_id(), request->step());
  if (status.ok()) {
    Log()->info("job {}: snapshot requested at step {}", request->job_id(),
                request->step());
    response->set_step(request->step());
  }
  return ToGrpcStatus(status);
}

namespace {

grpc::Status ApplyReplicate(ParameterStore* store,
                            const ReplicateRequest& request,
                            ReplicateResponse* response) {
  auto result = store->Replicate(request);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

// psd_server --test_stall_replicate_at_step (tests only): a Replicate held
// as a stalled backup would, until `until`, the caller gives up (its
// deadline or a cancellation) or the server stops (Shutdown cancels the
// call); then applied. Polls every 10 ms with an alarm: no thread is held.
class HeldReplicateReactor final : public grpc::ServerUnaryReactor {
 public:
  HeldReplicateReactor(ParameterStore* store,
                       grpc::CallbackServerContext* context,
                       const ReplicateRequest* request,
                       ReplicateResponse* response, absl::Time until)
      : store_(store),
        context_(context),
        request_(request),
        response_(response),
        until_(until) {
    Poll();
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override { delete this; }

 private:
  void Poll() {
    if (cancelled_ || std::chrono::system_clock::now() > context_->deadline()) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                          "test hook --test_stall_replicate_at_step: the "
                          "caller gave up while this replication was held"));
    } else if (absl::Now() >= until_) {
      Finish(ApplyReplicate(store_, *request_, response_));
    } else {
      alarm_.Set(std::chrono::system_clock::now() + std::chrono::milliseconds(10),
                 [this](bool) { Poll(); });
    }
  }

  ParameterStore* const store_;
  grpc::CallbackServerContext* const context_;
  const ReplicateRequest* const request_;
  ReplicateResponse* const response_;
  const absl::Time until_;
  std::atomic<bool> cancelled_{false};
  grpc::Alarm alarm_;
};

}  // namespace

grpc::ServerUnaryReactor* ParameterService::Replicate(
    grpc::CallbackServerContext* context, const ReplicateRequest* request,
    ReplicateResponse* response) {
  absl::Status peer =
      store_->CheckReplicaPeer(request->job_id(), CallerIdentity(*context));
  const absl::Time held_until = store_->ReplicateHeldUntilForTest(*request);
  if (peer.ok() && absl::Now() < held_until) {
    return new HeldReplicateReactor(store_, context, request, response,
                                    held_until);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(peer.ok() ? ApplyReplicate(store_, *request, response)
                            : ToGrpcStatus(peer));
  return reactor;
}

grpc::Status ParameterService::InstallPartition(
    grpc::ServerContext* context, const InstallPartitionRequest* request,
    InstallPartitionResponse*) {
  if (absl::Status peer = store_->CheckReplicaPeer(request->job_id(),
                                                   CallerIdentity(*context));
      !peer.ok()) {
    return ToGrpcStatus(peer);
  }
  return ToGrpcStatus(store_->InstallPartition(*request));
}

grpc::Status ParameterService::SetView(grpc::ServerContext*,
                                       const SetViewRequest* request,
                                       SetViewResponse*) {
  absl::Status status = store_->SetView(*request);
  if (status.ok()) {
    Log()->info("job {}: view epoch {}", request->job_id(),
                request->view().epoch());
  }
  return ToGrpcStatus(status);
}

grpc::Status ParameterService::SyncBackup(grpc::ServerContext* context,
                                          const SyncBackupRequest* request,
                                          SyncBackupResponse* response) {
  const std::string& job_id = request->job_id();
  auto ids = store_->AddJoiner(job_id, request->shard(),
                               request->backup_address());
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  auto stub = ParameterServer::NewStub(MakeChannel(request->backup_address()));
  for (int32_t id : *ids) {
    absl::StatusOr<InstallPartitionRequest> copy =
        store_->CopyPartition(job_id, id);
    grpc::Status status;
    if (!copy.ok()) {
      status = ToGrpcStatus(copy.status());
    } else {
      grpc::ClientContext call;
      call.set_deadline(DeadlineIn(std::chrono::seconds(60)));
      InstallPartitionResponse installed;
      status = stub->InstallPartition(&call, *copy, &installed);
      response->set_bytes(response->bytes() +
                          static_cast<int64_t>(copy->ByteSizeLong()));
    }
    if (!status.ok() || context->IsCancelled()) {
      store_->RemoveJoiner(job_id, request->shard(), request->backup_address());
      return grpc::Status(
          status.ok() ? grpc::StatusCode::CANCELLED : status.error_code(),
          absl::StrCat("state transfer of partition ", id, " to ",
                       request->backup_address(), ": ",
                       status.ok() ? "cancelled" : status.error_message()));
    }
    response->set_partitions(response->partitions() + 1);
  }
  Log()->info("job {}: shard {} transferred to backup {} ({} partitions, {} "
              "bytes)", job_id, request->shard(), request->backup_address(),
              response->partitions(), response->bytes());
  return grpc::Status::OK;
}

}  // namespace psd
