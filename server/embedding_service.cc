#include "server/embedding_service.h"

#include <chrono>
#include <vector>

#include "common/status.h"

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
            "Time to validate and apply one PushRows, seconds.",
            LatencyBuckets())) {
    registry->AddGaugeCallback(
        "psd_server_embedding_bytes",
        "Bytes held for sparse embedding tables (rows, slots, maps).",
        [store] { return static_cast<double>(store->bytes()); });
  }

  Counter* const pull_requests;
  Counter* const pull_rows;
  Counter* const pull_errors;
  Histogram* const pull_latency;
  Counter* const push_requests;
  Counter* const push_rows;
  Counter* const push_errors;
  Histogram* const push_latency;
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

}  // namespace

EmbeddingService::EmbeddingService(EmbeddingStore* store,
                                   MetricsRegistry* metrics)
    : store_(store),
      own_registry_(metrics == nullptr ? std::make_unique<MetricsRegistry>()
                                       : nullptr),
      metrics_(std::make_unique<Metrics>(
          metrics != nullptr ? metrics : own_registry_.get(), store)) {}

EmbeddingService::~EmbeddingService() = default;

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

grpc::ServerUnaryReactor* EmbeddingService::PushRows(
    grpc::CallbackServerContext* context, const PushRowsRequest* request,
    PushRowsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = std::chrono::steady_clock::now();
  metrics_->push_requests->Increment();
  if (request->client_id().size() > 128) {
    metrics_->push_errors->Increment();
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "client_id: at most 128 bytes"));
    return reactor;
  }
  auto result = store_->Push(request->job_id(), request->table(),
                             Ids(request->row_ids()), request->gradients(),
                             {request->client_id(), request->sequence()});
  metrics_->push_latency->Observe(SecondsSince(start));
  if (!result.ok()) {
    metrics_->push_errors->Increment();
    reactor->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  response->set_rows_updated(result->rows_updated);
  response->set_rows_created(result->rows_created);
  response->set_duplicate(result->duplicate);
  metrics_->push_rows->Increment(result->rows_updated);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::Status EmbeddingService::CreateTable(grpc::ServerContext*,
                                           const CreateTableRequest* request,
                                           CreateTableResponse* response) {
  std::vector<int32_t> shards(request->shards().begin(),
                              request->shards().end());
  auto created = store_->CreateTable(request->job_id(), request->spec(), shards);
  if (!created.ok()) return ToGrpcStatus(created.status());
  response->set_created(*created);
  return grpc::Status::OK;
}

grpc::Status EmbeddingService::TableStatus(grpc::ServerContext*,
                                           const TableStatusRequest* request,
                                           TableStatusResponse* response) {
  auto status = store_->Status(request->job_id(), request->table());
  if (!status.ok()) return ToGrpcStatus(status.status());
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status EmbeddingService::DropTable(grpc::ServerContext*,
                                         const DropTableRequest* request,
                                         DropTableResponse*) {
  return ToGrpcStatus(store_->DropTable(request->job_id(), request->table()));
}

}  // namespace psd
