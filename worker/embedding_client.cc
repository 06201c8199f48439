#include "worker/embedding_client.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/rpc.h"
#include "common/status.h"
#include "common/embedding_rows.h"

namespace psd {

struct EmbeddingClient::Call {
  int32_t shard = 0;
  // The replica (index in replicas_[shard]) it was last sent to, and the
  // attempts made there.
  size_t replica = 0;
  int attempts = 0;
  // Indices into unique_ of the rows this call carries, in order.
  std::vector<uint32_t> rows;
  std::unique_ptr<grpc::ClientContext> context;
  PullRowsRequest pull_request;
  PullRowsResponse pull_response;
  PushRowsRequest push_request;
  PushRowsResponse push_response;
  grpc::Status status;
};

namespace {

absl::Status Prefixed(const std::string& server, int32_t shard,
                      const grpc::Status& status) {
  absl::Status s = FromGrpcStatus(status);
  return absl::Status(s.code(), absl::StrCat("server ", server, " (shard ",
                                             shard, "): ", s.message()));
}

// 128 random bits from the OS, as 32 hex digits.
std::string RandomClientId() {
  std::random_device device;
  std::string id;
  for (int i = 0; i < 4; ++i) {
    absl::StrAppend(&id, absl::Hex(device(), absl::kZeroPad8));
  }
  return id;
}

bool Retryable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EmbeddingClient>> EmbeddingClient::Create(
    const std::string& job_id, const std::vector<std::string>& servers,
    EmbeddingClientOptions options) {
  if (servers.empty() ||
      servers.size() > static_cast<size_t>(kMaxEmbeddingShards)) {
    return absl::InvalidArgumentError(
        absl::StrCat("servers: need 1 to ", kMaxEmbeddingShards,
                     " addresses, got ", servers.size()));
  }
  std::vector<std::vector<std::string>> replicas;
  for (const std::string& address : servers) replicas.push_back({address});
  return Create(job_id, replicas, std::move(options));
}

absl::StatusOr<std::unique_ptr<EmbeddingClient>> EmbeddingClient::Create(
    const std::string& job_id,
    const std::vector<std::vector<std::string>>& replicas,
    EmbeddingClientOptions options) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  if (replicas.empty() ||
      replicas.size() > static_cast<size_t>(kMaxEmbeddingShards)) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicas: need 1 to ", kMaxEmbeddingShards,
                     " shards, got ", replicas.size()));
  }
  for (size_t s = 0; s < replicas.size(); ++s) {
    if (replicas[s].empty() ||
        replicas[s].size() > static_cast<size_t>(kMaxShardReplicas)) {
      return absl::InvalidArgumentError(
          absl::StrCat("replicas[", s, "]: need 1 to ", kMaxShardReplicas,
                       " addresses, got ", replicas[s].size()));
    }
    for (size_t j = 0; j < replicas[s].size(); ++j) {
      if (replicas[s][j].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("replicas[", s, "][", j, "]: empty address"));
      }
      for (size_t k = 0; k < j; ++k) {
        if (replicas[s][k] == replicas[s][j]) {
          return absl::InvalidArgumentError(
              absl::StrCat("replicas[", s, "][", j, "]: ", replicas[s][j],
                           " is listed twice for shard ", s));
        }
      }
    }
  }
  return std::unique_ptr<EmbeddingClient>(
      new EmbeddingClient(job_id, replicas, options));
}

EmbeddingClient::EmbeddingClient(
    std::string job_id, std::vector<std::vector<std::string>> replicas,
    EmbeddingClientOptions options)
    : job_id_(std::move(job_id)),
      replicas_(std::move(replicas)),
      options_(std::move(options)),
      client_id_(options_.client_id.empty() ? RandomClientId()
                                            : options_.client_id),
      current_(replicas_.size(), 0) {
  for (const auto& shard : replicas_) {
    for (const std::string& address : shard) {
      std::unique_ptr<EmbeddingServer::Stub>& stub = stubs_[address];
      if (stub == nullptr) {
        stub = EmbeddingServer::NewStub(MakeChannel(address));
      }
    }
  }
}

bool EmbeddingClient::FailOver(int32_t shard, size_t from) {
  if (current_[shard] == from && from + 1 < replicas_[shard].size()) {
    ++current_[shard];
    ++failovers_;
  }
  return current_[shard] > from;
}

EmbeddingClient::~EmbeddingClient() = default;

std::map<std::string, CreateTableRequest> EmbeddingClient::CreateRequests(
    const EmbeddingTableSpec& spec) const {
  // One request per server: the shards it holds, and where it holds a
  // replicated shard, the shard's replicas and its own index in them.
  std::map<std::string, CreateTableRequest> requests;
  for (int32_t s = 0; s < num_shards(); ++s) {
    const std::vector<std::string>& replicas = replicas_[s];
    for (size_t j = 0; j < replicas.size(); ++j) {
      CreateTableRequest& request = requests[replicas[j]];
      if (!request.has_spec()) {
        request.set_job_id(job_id_);
        *request.mutable_spec() = spec;
      }
      request.add_shards(s);
      if (replicas.size() > 1) {
        TableShardReplicas* r = request.add_replicas();
        r->set_shard(s);
        for (const std::string& a : replicas) r->add_replicas(a);
        r->set_self(static_cast<int32_t>(j));
      }
    }
  }
  return requests;
}

absl::Status EmbeddingClient::CreateTable(EmbeddingTableSpec spec) {
  if (spec.num_shards() == 0) spec.set_num_shards(num_shards());
  if (spec.num_shards() != num_shards()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.num_shards: this client has ", num_shards(),
                     " shards, got ", spec.num_shards()));
  }
  for (const auto& [address, request] : CreateRequests(spec)) {
    CreateTableResponse response;
    grpc::ClientContext context;
    context.set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.timeout_ms)));
    grpc::Status status =
        StubOf(address)->CreateTable(&context, request, &response);
    if (!status.ok()) {
      return Prefixed(address, request.shards(0), status);
    }
  }
  dims_[spec.name()] = spec.dim();
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, std::string>> EmbeddingClient::Restore(
    EmbeddingTableSpec spec) {
  if (spec.num_shards() == 0) spec.set_num_shards(num_shards());
  if (spec.num_shards() != num_shards()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.num_shards: this client has ", num_shards(),
                     " shards, got ", spec.num_shards()));
  }
  std::map<std::string, std::string> metadata;
  std::string first_address;
  int64_t first_generation = 0;
  for (auto& [address, request] : CreateRequests(spec)) {
    request.set_restore(true);
    CreateTableResponse response;
    grpc::ClientContext context;
    context.set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.snapshot_timeout_ms)));
    grpc::Status status =
        StubOf(address)->CreateTable(&context, request, &response);
    if (!status.ok()) return Prefixed(address, request.shards(0), status);
    std::map<std::string, std::string> got(
        response.restored_metadata().begin(),
        response.restored_metadata().end());
    if (first_address.empty()) {
      first_address = address;
      first_generation = response.restored_generation();
      metadata = std::move(got);
    } else if (got != metadata) {
      return absl::FailedPreconditionError(absl::StrCat(
          "table \"", spec.name(), "\": server ", address,
          " restored a snapshot (generation ", response.restored_generation(),
          ") with other metadata than server ", first_address,
          " (generation ", first_generation,
          "): their newest snapshots were not taken together"));
    }
  }
  dims_[spec.name()] = spec.dim();
  return metadata;
}

absl::StatusOr<std::map<std::string, SnapshotTableResponse>>
EmbeddingClient::Snapshot(const std::string& table,
                          const std::map<std::string, std::string>& metadata) {
  std::map<std::string, SnapshotTableResponse> responses;
  for (int32_t s = 0; s < num_shards(); ++s) {
    for (const std::string& address : replicas_[s]) {
      if (responses.count(address)) continue;
      SnapshotTableRequest request;
      request.set_job_id(job_id_);
      request.set_table(table);
      request.mutable_metadata()->insert(metadata.begin(), metadata.end());
      grpc::ClientContext context;
      context.set_deadline(
          DeadlineIn(std::chrono::milliseconds(options_.snapshot_timeout_ms)));
      grpc::Status status = StubOf(address)->SnapshotTable(
          &context, request, &responses[address]);
      if (!status.ok()) return Prefixed(address, s, status);
    }
  }
  return responses;
}

absl::Status EmbeddingClient::DropTable(const std::string& table) {
  dims_.erase(table);
  absl::Status first;
  for (int32_t s = 0; s < num_shards(); ++s) {
    for (const std::string& address : replicas_[s]) {
      bool earlier = false;  // a server holding an earlier shard too
      for (int32_t e = 0; e < s && !earlier; ++e) {
        earlier = std::find(replicas_[e].begin(), replicas_[e].end(),
                            address) != replicas_[e].end();
      }
      if (earlier) continue;
      DropTableRequest request;
      request.set_job_id(job_id_);
      request.set_table(table);
      DropTableResponse response;
      grpc::ClientContext context;
      context.set_deadline(
          DeadlineIn(std::chrono::milliseconds(options_.timeout_ms)));
      grpc::Status status =
          StubOf(address)->DropTable(&context, request, &response);
      if (!status.ok() && first.ok()) first = Prefixed(address, s, status);
    }
  }
  return first;
}

absl::Status EmbeddingClient::StatusOf(int32_t shard, const std::string& table,
                                       TableStatusResponse* response) {
  for (int attempt = 0;; ++attempt) {
    const size_t replica = current_[shard];
    const std::string& address = replicas_[shard][replica];
    TableStatusRequest request;
    request.set_job_id(job_id_);
    request.set_table(table);
    grpc::ClientContext context;
    context.set_deadline(
        DeadlineIn(std::chrono::milliseconds(options_.timeout_ms)));
    grpc::Status status =
        StubOf(address)->TableStatus(&context, request, response);
    if (status.ok()) return absl::OkStatus();
    if (!Retryable(status)) return Prefixed(address, shard, status);
    const bool give_up_here =
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
        attempt >= options_.retries;
    if (give_up_here && FailOver(shard, replica)) {
      attempt = -1;
      continue;
    }
    if (attempt >= options_.retries) return Prefixed(address, shard, status);
    absl::SleepFor(absl::Milliseconds(100) * (attempt + 1));
  }
}

absl::StatusOr<std::vector<TableStatusResponse>> EmbeddingClient::Status(
    const std::string& table) {
  std::vector<TableStatusResponse> all(num_shards());
  for (int32_t s = 0; s < num_shards(); ++s) {
    absl::Status status = StatusOf(s, table, &all[s]);
    if (!status.ok()) return status;
  }
  return all;
}

std::vector<std::vector<absl::StatusOr<TableStatusResponse>>>
EmbeddingClient::ReplicaStatus(const std::string& table, bool checksum) {
  std::vector<std::vector<absl::StatusOr<TableStatusResponse>>> all(
      num_shards());
  for (int32_t s = 0; s < num_shards(); ++s) {
    for (const std::string& address : replicas_[s]) {
      TableStatusRequest request;
      request.set_job_id(job_id_);
      request.set_table(table);
      request.set_checksum(checksum);
      TableStatusResponse response;
      grpc::ClientContext context;
      context.set_deadline(
          DeadlineIn(std::chrono::milliseconds(options_.timeout_ms)));
      grpc::Status status =
          StubOf(address)->TableStatus(&context, request, &response);
      if (status.ok()) {
        all[s].push_back(std::move(response));
      } else {
        all[s].push_back(Prefixed(address, s, status));
      }
    }
  }
  return all;
}

absl::StatusOr<int32_t> EmbeddingClient::Dim(const std::string& table) {
  auto it = dims_.find(table);
  if (it != dims_.end()) return it->second;
  TableStatusResponse response;
  absl::Status status = StatusOf(0, table, &response);
  if (!status.ok()) return status;
  dims_[table] = response.spec().dim();
  return response.spec().dim();
}

size_t EmbeddingClient::Plan(absl::Span<const uint64_t> ids,
                             int64_t rows_per_call) {
  unique_.clear();
  position_.resize(ids.size());
  absl::flat_hash_map<uint64_t, uint32_t> seen;
  seen.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto [it, inserted] =
        seen.try_emplace(ids[i], static_cast<uint32_t>(unique_.size()));
    if (inserted) unique_.push_back(ids[i]);
    position_[i] = it->second;
  }
  // Per shard, the open call (index into calls_), or -1.
  std::vector<int64_t> open(num_shards(), -1);
  size_t n = 0;
  for (uint32_t u = 0; u < unique_.size(); ++u) {
    const int32_t shard = ShardOfRow(unique_[u], num_shards());
    if (open[shard] < 0 ||
        static_cast<int64_t>(calls_[open[shard]]->rows.size()) >=
            rows_per_call) {
      if (n == calls_.size()) calls_.push_back(std::make_unique<Call>());
      calls_[n]->shard = shard;
      calls_[n]->rows.clear();
      open[shard] = static_cast<int64_t>(n++);
    }
    calls_[open[shard]]->rows.push_back(u);
  }
  return n;
}

bool EmbeddingClient::Alive(const std::string& address,
                            const std::string& table) {
  TableStatusRequest request;
  request.set_job_id(job_id_);
  request.set_table(table);
  TableStatusResponse response;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(
      std::chrono::milliseconds(std::min(options_.timeout_ms, 5000))));
  return StubOf(address)->TableStatus(&context, request, &response).ok();
}

absl::Status EmbeddingClient::RunCalls(size_t n, bool pull, bool bsp) {
  const absl::Time bsp_deadline =
      absl::Now() + absl::Milliseconds(options_.bsp_wait_ms);
  // Indices of the calls to (re)send. A call that failed with UNAVAILABLE
  // goes again to the same replica up to `retries` times; after that, or
  // after DEADLINE_EXCEEDED, its shard fails over to the next replica and
  // it goes there. It is the same request each time: a push keeps its
  // sequence, so each replica applies it once.
  std::vector<size_t> todo(n);
  for (size_t c = 0; c < n; ++c) {
    todo[c] = c;
    calls_[c]->attempts = 0;
  }
  while (true) {
    absl::Mutex mu;
    size_t pending = todo.size();
    for (size_t c : todo) {
      Call& call = *calls_[c];
      call.replica = current_[call.shard];
      ++call.attempts;
      call.context = std::make_unique<grpc::ClientContext>();
      call.context->set_deadline(
          DeadlineIn(std::chrono::milliseconds(options_.timeout_ms)));
      auto done = [&mu, &pending, &call](grpc::Status status) {
        absl::MutexLock lock(&mu);
        call.status = std::move(status);
        --pending;
      };
      EmbeddingServer::Stub* stub =
          StubOf(replicas_[call.shard][call.replica]);
      if (pull) {
        stub->async()->PullRows(call.context.get(), &call.pull_request,
                                &call.pull_response, done);
      } else {
        call.push_response.Clear();
        stub->async()->PushRows(call.context.get(), &call.push_request,
                                &call.push_response, done);
      }
    }
    {
      absl::MutexLock lock(&mu);
      mu.Await(absl::Condition(
          +[](size_t* p) { return *p == 0; }, &pending));
    }
    std::vector<size_t> again;
    int backoff = 0;  // the most attempts of a call retried in place
    for (size_t c : todo) {
      Call& call = *calls_[c];
      const grpc::Status& status = call.status;
      if (status.ok()) continue;
      const std::string& address = replicas_[call.shard][call.replica];
      // A BSP push cancelled by its server (e.g. shutting down while the
      // step waited) is re-sent like an unreachable one: its (step, rank)
      // makes a second arrival a duplicate.
      const bool cancelled =
          bsp && status.error_code() == grpc::StatusCode::CANCELLED;
      if (!Retryable(status) && !cancelled) {
        return Prefixed(address, call.shard, status);
      }
      if (bsp && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
          absl::Now() < bsp_deadline &&
          Alive(address, call.push_request.table())) {
        // The step waits for other ranks; the push stays buffered there:
        // join it again with the same (step, rank).
        call.attempts = 0;
        again.push_back(c);
        continue;
      }
      const bool give_up_here =
          status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
          call.attempts > options_.retries;
      if (give_up_here && FailOver(call.shard, call.replica)) {
        call.attempts = 0;  // a fresh replica
      } else if (call.attempts > options_.retries) {
        return Prefixed(address, call.shard, status);
      } else {
        backoff = std::max(backoff, call.attempts);
      }
      again.push_back(c);
    }
    if (again.empty()) return absl::OkStatus();
    ++retried_calls_;
    todo = std::move(again);
    if (backoff > 0) absl::SleepFor(absl::Milliseconds(100) * backoff);
  }
}

absl::Status EmbeddingClient::Pull(const std::string& table,
                                   absl::Span<const uint64_t> ids,
                                   std::vector<float>* rows) {
  auto dim_or = Dim(table);
  if (!dim_or.ok()) return dim_or.status();
  const int64_t dim = *dim_or;
  const int64_t rows_per_call =
      std::max<int64_t>(1, options_.max_call_bytes / (dim * 4));
  const size_t n = Plan(ids, rows_per_call);
  for (size_t c = 0; c < n; ++c) {
    Call& call = *calls_[c];
    call.pull_request.set_job_id(job_id_);
    call.pull_request.set_table(table);
    auto* row_ids = call.pull_request.mutable_row_ids();
    row_ids->Clear();
    row_ids->Reserve(static_cast<int>(call.rows.size()));
    for (uint32_t u : call.rows) row_ids->AddAlreadyReserved(unique_[u]);
    call.pull_response.Clear();
  }
  absl::Status status = RunCalls(n, /*pull=*/true);
  if (!status.ok()) return status;
  unique_rows_.resize(unique_.size() * dim);
  for (size_t c = 0; c < n; ++c) {
    Call& call = *calls_[c];
    const Tensor& t = call.pull_response.rows();
    const size_t want = call.rows.size() * dim * 4;
    if (t.data().size() != want) {
      return absl::InternalError(absl::StrCat(
          "server ", replicas_[call.shard][call.replica], " returned ",
          t.data().size(),
          " bytes of rows, expected ", want));
    }
    const char* src = t.data().data();
    for (size_t k = 0; k < call.rows.size(); ++k) {
      std::memcpy(unique_rows_.data() + call.rows[k] * dim, src + k * dim * 4,
                  dim * 4);
    }
  }
  rows->resize(ids.size() * dim);
  for (size_t i = 0; i < ids.size(); ++i) {
    std::memcpy(rows->data() + i * dim, unique_rows_.data() + position_[i] * dim,
                dim * 4);
  }
  return absl::OkStatus();
}

absl::Status EmbeddingClient::Push(const std::string& table,
                                   absl::Span<const uint64_t> ids,
                                   absl::Span<const float> grads) {
  return Push(table, ids, grads, nullptr, -1);
}

absl::Status EmbeddingClient::Push(const std::string& table,
                                   absl::Span<const uint64_t> ids,
                                   absl::Span<const float> grads,
                                   const BspTag* bsp, int64_t step) {
  auto dim_or = Dim(table);
  if (!dim_or.ok()) return dim_or.status();
  const int64_t dim = *dim_or;
  if (static_cast<int64_t>(grads.size()) !=
      static_cast<int64_t>(ids.size()) * dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("grads: need len(ids) x dim = ", ids.size() * dim,
                     " floats, got ", grads.size()));
  }
  if (bsp == nullptr && step < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0, or -1 for none, got ", step));
  }
  // BSP: one call per shard, whatever its size.
  const int64_t rows_per_call =
      bsp != nullptr
          ? std::numeric_limits<int64_t>::max()
          : std::max<int64_t>(1, options_.max_call_bytes / (dim * 4));
  size_t n = Plan(ids, rows_per_call);
  if (bsp != nullptr) {
    // Every shard gets a call, an empty one if none of the rows is there.
    std::vector<bool> has(num_shards(), false);
    for (size_t c = 0; c < n; ++c) has[calls_[c]->shard] = true;
    for (int32_t s = 0; s < num_shards(); ++s) {
      if (has[s]) continue;
      if (n == calls_.size()) calls_.push_back(std::make_unique<Call>());
      calls_[n]->shard = s;
      calls_[n]->rows.clear();
      ++n;
    }
  }
  // Sum duplicates, in request order.
  unique_rows_.assign(unique_.size() * dim, 0.0f);
  for (size_t i = 0; i < ids.size(); ++i) {
    float* dst = unique_rows_.data() + position_[i] * dim;
    const float* src = grads.data() + i * dim;
    for (int64_t c = 0; c < dim; ++c) dst[c] += src[c];
  }
  for (size_t c = 0; c < n; ++c) {
    Call& call = *calls_[c];
    PushRowsRequest& request = call.push_request;
    request.set_job_id(job_id_);
    request.set_table(table);
    request.set_client_id(client_id_);
    request.set_sequence(next_sequence_++);
    request.set_bsp(bsp != nullptr);
    request.set_step(bsp != nullptr ? bsp->step : std::max<int64_t>(step, 0));
    request.set_rank(bsp != nullptr ? bsp->rank : 0);
    request.set_num_ranks(bsp != nullptr ? bsp->num_ranks : 0);
    request.set_shard(bsp != nullptr ? call.shard : 0);
    auto* row_ids = request.mutable_row_ids();
    row_ids->Clear();
    row_ids->Reserve(static_cast<int>(call.rows.size()));
    for (uint32_t u : call.rows) row_ids->AddAlreadyReserved(unique_[u]);
    Tensor* t = request.mutable_gradients();
    t->set_dtype(FLOAT32);
    t->clear_shape();
    t->add_shape(static_cast<int64_t>(call.rows.size()));
    t->add_shape(dim);
    std::string* data = t->mutable_data();
    data->resize(call.rows.size() * dim * 4);
    for (size_t k = 0; k < call.rows.size(); ++k) {
      std::memcpy(data->data() + k * dim * 4,
                  unique_rows_.data() + call.rows[k] * dim, dim * 4);
    }
  }
  return RunCalls(n, /*pull=*/false, /*bsp=*/bsp != nullptr);
}

absl::Status EmbeddingClient::EnableCache(const std::string& table,
                                          int32_t staleness_steps,
                                          int64_t cache_rows) {
  if (staleness_steps == 0) {
    caches_.erase(table);
    return absl::OkStatus();
  }
  auto dim = Dim(table);
  if (!dim.ok()) return dim.status();
  auto made = RowCache::Create(*dim, staleness_steps,
                               cache_rows == 0 ? 65536 : cache_rows);
  if (!made.ok()) {
    absl::Status s = made.status();
    std::string message(s.message());
    if (message.rfind("capacity_rows", 0) == 0) {
      message = "cache_rows" + message.substr(13);
    }
    return absl::Status(s.code(), message);
  }
  caches_[table] = std::make_unique<RowCache>(*std::move(made));
  return absl::OkStatus();
}

const RowCache* EmbeddingClient::cache(const std::string& table) const {
  auto it = caches_.find(table);
  return it == caches_.end() ? nullptr : it->second.get();
}

absl::Status EmbeddingClient::PullAt(const std::string& table,
                                     absl::Span<const uint64_t> ids,
                                     int64_t step, std::vector<float>* rows) {
  auto it = caches_.find(table);
  if (it == caches_.end()) return Pull(table, ids, rows);
  RowCache& cache = *it->second;
  const int64_t dim = cache.dim();
  rows->resize(ids.size() * dim);
  std::vector<uint64_t> missing;
  std::vector<size_t> where;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!cache.Lookup(ids[i], step, rows->data() + i * dim)) {
      missing.push_back(ids[i]);
      where.push_back(i);
    }
  }
  if (missing.empty()) return absl::OkStatus();
  std::vector<float> fetched;
  absl::Status status = Pull(table, missing, &fetched);
  if (!status.ok()) return status;
  for (size_t k = 0; k < missing.size(); ++k) {
    const float* row = fetched.data() + k * dim;
    std::memcpy(rows->data() + where[k] * dim, row, dim * 4);
    cache.Insert(missing[k], step, row);
  }
  return absl::OkStatus();
}

}  // namespace psd
