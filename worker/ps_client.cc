#include "worker/ps_client.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"
#include "common/tensor.h"

namespace psd {

// The partitions one call carries: with options.call_per_shard, all of a
// shard's partitions (one call per shard per step); else one partition.
// push.gradients(k), pull.partition_ids(k) and the slices [k] are parts[k]'s.
struct ParameterClient::Target {
  std::vector<Partition> parts;
  int32_t shard = 0;
  std::string server;  // "id (address)", for messages
  std::shared_ptr<ParameterServer::Stub> stub;
  PushRequest push;
  PushResponse push_response;
  PullRequest pull;
  PullResponse pull_response;
  grpc::Status status;
  // Shared memory: each partition's push and pull slices of the client's
  // region (fixed at creation), and whether the server maps the region.
  std::vector<SharedSlice> push_slices;
  std::vector<SharedSlice> pull_slices;
  bool shared = false;
  // Partitions of the open push not encoded yet: the call starts at 0.
  size_t waiting = 0;
  // "partition 3" or "partitions 3, 4, 5 (shard 1)", for messages.
  std::string What() const {
    if (parts.size() == 1) return absl::StrCat("partition ", parts[0].id());
    std::string ids;
    for (const Partition& p : parts) {
      absl::StrAppend(&ids, ids.empty() ? "" : ", ", p.id());
    }
    return absl::StrCat("partitions ", ids, " (shard ", shard, ")");
  }
};

namespace {

// Slices start on 64-byte boundaries (cache lines, AVX-512 loads).
uint64_t Align64(uint64_t n) { return (n + 63) / 64 * 64; }

}  // namespace

ParameterClient::ParameterClient(const Assignment& assignment,
                                 ParameterClientOptions options)
    : options_(options),
      job_id_(assignment.job_id()),
      rank_(assignment.rank()),
      bfloat16_(assignment.config().gradient_dtype() == BFLOAT16),
      pull_dtype_(assignment.config().parameter_dtype() == BFLOAT16 ? BFLOAT16
                                                                   : FLOAT32),
      view_epoch_(assignment.view_epoch()) {}

absl::StatusOr<std::unique_ptr<ParameterClient>> ParameterClient::Create(
    const Assignment& assignment, ParameterClientOptions options) {
  std::unique_ptr<ParameterClient> client(
      new ParameterClient(assignment, options));
  const Placement& placement = assignment.placement();
  for (const ParameterSpec& p : placement.parameters()) {
    client->sizes_.push_back(NumElements(p));
    client->names_.push_back(p.name());
  }
  client->tensor_parts_.resize(client->sizes_.size());
  std::map<int32_t, Target*> by_shard;
  for (const Partition& part : placement.partitions()) {
    if (part.parameter() < 0 ||
        part.parameter() >= static_cast<int32_t>(client->sizes_.size()) ||
        part.offset() < 0 ||
        part.offset() + part.num_elements() > client->sizes_[part.parameter()]) {
      return absl::InvalidArgumentError(
          absl::StrCat("assignment: partition ", part.id(), " out of range"));
    }
    Target* target = options.call_per_shard ? by_shard[part.shard()] : nullptr;
    if (target == nullptr) {
      client->targets_.push_back(std::make_unique<Target>());
      target = client->targets_.back().get();
      if (options.call_per_shard) by_shard[part.shard()] = target;
      target->shard = part.shard();
      target->push.set_job_id(client->job_id_);
      target->push.set_worker_rank(client->rank_);
      target->push.set_pull_next(options.pull_with_push);
      target->pull.set_job_id(client->job_id_);
      target->pull.set_worker_rank(client->rank_);
    }
    client->tensor_parts_[part.parameter()].push_back(
        {target, static_cast<int>(target->parts.size())});
    target->parts.push_back(part);
    target->push.add_gradients()->set_partition_id(part.id());
    target->pull.add_partition_ids(part.id());
  }
  if (options.shared_memory) {
    uint64_t offset = SharedMemory::kHeaderBytes;
    for (auto& t : client->targets_) {
      for (const Partition& part : t->parts) {
        const uint64_t bytes = part.num_elements() * sizeof(float);
        for (auto* slices : {&t->push_slices, &t->pull_slices}) {
          SharedSlice& slice = slices->emplace_back();
          slice.set_offset(offset);
          slice.set_size(bytes);
          offset += Align64(bytes);
        }
      }
    }
    auto shm = SharedMemory::Create(offset);
    if (shm.ok()) {
      client->shm_ = *std::move(shm);
    } else {
      Log()->info("job {} rank {}: no shared memory ({}); tensors go in the "
                  "messages", client->job_id_, client->rank_,
                  shm.status().ToString());
    }
  }
  PSD_RETURN_IF_ERROR(client->Route(assignment));
  return client;
}

absl::Status ParameterClient::Route(const Assignment& assignment) {
  std::map<std::string, const ServerInfo*> servers;
  for (const ServerInfo& s : assignment.servers()) servers[s.id()] = &s;
  std::map<int32_t, std::string> primary;
  for (const ShardReplicas& r : assignment.shards()) primary[r.shard()] = r.primary();
  for (auto& target : targets_) {
    auto shard = primary.find(target->shard);
    if (shard == primary.end() || !servers.count(shard->second)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "assignment: no server for shard ", target->shard, " of ",
          target->What()));
    }
    const ServerInfo& server = *servers[shard->second];
    auto& stub = stubs_[server.address()];
    if (!stub) stub = ParameterServer::NewStub(MakeChannel(server.address()));
    target->server = absl::StrCat(server.id(), " (", server.address(), ")");
    target->stub = stub;
    target->push.set_view_epoch(assignment.view_epoch());
    target->pull.set_view_epoch(assignment.view_epoch());
    SetTransport(target.get(), SharedWith(server.address(), stub.get()));
  }
  view_epoch_ = assignment.view_epoch();
  return absl::OkStatus();
}

bool ParameterClient::SharedWith(const std::string& address,
                                 ParameterServer::Stub* stub) {
  if (shm_ == nullptr || shm_failed_) return false;
  auto [it, first] = shared_with_.try_emplace(address, false);
  if (!first) return it->second;
  AttachSharedMemoryRequest request;
  request.set_job_id(job_id_);
  *request.mutable_region() = shm_->region();
  AttachSharedMemoryResponse response;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(5)));
  const grpc::Status status =
      stub->AttachSharedMemory(&context, request, &response);
  it->second = status.ok();
  Log()->info("job {} rank {}: server {}: {}", job_id_, rank_, address,
              status.ok() ? "tensors go through shared memory"
                          : absl::StrCat("tensors go in the messages (",
                                         status.error_message(), ")"));
  return it->second;
}

void ParameterClient::SetTransport(Target* t, bool shared) {
  for (size_t k = 0; k < t->parts.size(); ++k) {
    PartitionTensor* g = t->push.mutable_gradients(k);
    if (shared == t->shared || g->tensor().shape_size() == 0) continue;
    // A push is held (its tensor was encoded): move its bytes.
    std::string* data = g->mutable_tensor()->mutable_data();
    uint8_t* slice = shm_->data() + t->push_slices[k].offset();
    const uint64_t bytes = shared ? data->size() : g->shared().size();
    if (shared) {
      if (bytes > 0) std::memcpy(slice, data->data(), bytes);
      data->clear();
      g->mutable_shared()->set_offset(t->push_slices[k].offset());
      g->mutable_shared()->set_size(bytes);
    } else {
      data->assign(reinterpret_cast<const char*>(slice), bytes);
    }
  }
  t->shared = shared;
  // A shared slice holds FLOAT32; bfloat16 pulls only save bytes on a wire.
  t->pull.set_dtype(shared ? FLOAT32 : pull_dtype_);
  t->push.set_pull_dtype(shared ? FLOAT32 : pull_dtype_);
  if (shared) {
    *t->push.mutable_shared_region() = shm_->region();
    *t->pull.mutable_shared_region() = shm_->region();
    t->pull.clear_shared();
    t->push.clear_pull_shared();
    for (const SharedSlice& slice : t->pull_slices) {
      *t->pull.add_shared() = slice;
      if (t->push.pull_next()) *t->push.add_pull_shared() = slice;
    }
  } else {
    t->push.clear_shared_region();
    t->push.clear_pull_shared();
    t->pull.clear_shared_region();
    t->pull.clear_shared();
    for (PartitionTensor& g : *t->push.mutable_gradients()) g.clear_shared();
  }
}

std::vector<std::string> ParameterClient::parameter_names() const {
  return names_;
}

namespace {

using Target = ParameterClient::Target;
// Starts the call of one target: (target, its context, the callback).
using StartCall = std::function<void(Target*, grpc::ClientContext*,
                                     std::function<void(grpc::Status)>)>;

}  // namespace

// Calls of one kind (push or pull), one per target, started one at a time
// (Start: the call is in flight at once) and waited for together (Wait).
// The caller's thread owns it; the gRPC callbacks only store a target's
// status and count down. Destroying it cancels the calls still in flight
// and waits for them.
class ParameterClient::Calls {
 public:
  Calls(const ParameterClientOptions& options, int64_t view_epoch,
        const char* what, StartCall start)
      : options_(options),
        view_epoch_(view_epoch),
        what_(what),
        start_(std::move(start)) {}

  ~Calls() {
    for (auto& context : contexts_) context->TryCancel();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Calls::AllDone));
  }

  // Starts `t`'s call. REQUIRES: t has no call of this set in flight.
  void Start(Target* t) {
    {
      absl::MutexLock lock(&mu_);
      ++in_flight_;
    }
    started_.push_back(t);
    contexts_.push_back(std::make_unique<grpc::ClientContext>());
    start_(t, contexts_.back().get(), [this, t](grpc::Status s) {
      t->status = std::move(s);
      absl::MutexLock lock(&mu_);
      --in_flight_;
    });
  }

  // Waits for every call started; retries the ones that failed with
  // UNAVAILABLE (options.retries times, backing off). When options.cancel
  // becomes true, or a newer view is known (options.views), the calls in
  // flight are cancelled (the latter returns ABORTED). Returns the first
  // error, prefixed with the partition and server.
  absl::Status Wait() {
    for (int attempt = 0;; ++attempt) {
      bool newer_view = false;
      while (!WaitFor(absl::Milliseconds(100))) {
        if (options_.cancel != nullptr && options_.cancel->load()) {
          for (auto& context : contexts_) context->TryCancel();
        }
        if (!newer_view && NewerView()) {
          newer_view = true;  // e.g. waiting on a primary that was replaced
          for (auto& context : contexts_) context->TryCancel();
        }
      }
      if (newer_view &&
          !(options_.cancel != nullptr && options_.cancel->load())) {
        return ViewChanged();
      }
      std::vector<Target*> failed;
      for (Target* t : started_) {
        if (t->status.ok()) continue;
        if (t->status.error_code() == grpc::StatusCode::UNAVAILABLE &&
            attempt < options_.retries) {
          failed.push_back(t);
          continue;
        }
        return absl::Status(
            static_cast<absl::StatusCode>(t->status.error_code()),
            absl::StrCat(what_, " ", t->What(),
                         " on server ", t->server, ": ",
                         t->status.error_message()));
      }
      if (failed.empty()) return absl::OkStatus();
      started_.clear();  // Every call has ended.
      contexts_.clear();
      // Back off, but stop waiting as soon as a newer view is known (a
      // failover: the caller moves to the new primaries).
      const absl::Time retry_at =
          absl::Now() + absl::Milliseconds(200 << attempt);
      while (absl::Now() < retry_at) {
        if (NewerView()) return ViewChanged();
        absl::SleepFor(absl::Milliseconds(10));
      }
      for (Target* t : failed) Start(t);
    }
  }

 private:
  bool AllDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_flight_ == 0;
  }
  // Waits until no call is in flight or `timeout` passed; true if none is.
  bool WaitFor(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(this, &Calls::AllDone),
                                timeout);
  }
  bool NewerView() const {
    return options_.views != nullptr &&
           options_.views->LatestEpoch() > view_epoch_;
  }
  absl::Status ViewChanged() const {
    return absl::AbortedError(absl::StrCat(
        what_, ": the view changed (epoch ", view_epoch_, " is old)"));
  }

  // Constant after construction.
  const ParameterClientOptions& options_;
  const int64_t view_epoch_;
  const char* const what_;
  const StartCall start_;
  // The current attempt's calls; the caller's thread only.
  std::vector<Target*> started_;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;

  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

ParameterClient::~ParameterClient() = default;  // Calls is complete here.

namespace {

// Starts a target's push (its request as it is), with a deadline.
StartCall PushCall(int timeout_ms) {
  const auto timeout = std::chrono::milliseconds(timeout_ms);
  return [timeout](Target* t, grpc::ClientContext* context,
                   std::function<void(grpc::Status)> done) {
    context->set_deadline(DeadlineIn(timeout));
    t->stub->async()->Push(context, &t->push, &t->push_response,
                           std::move(done));
  };
}

// Runs the call of every target at once and waits for all (Calls::Wait).
absl::Status RunAll(const std::vector<Target*>& targets,
                    const ParameterClientOptions& options, int64_t view_epoch,
                    const char* what, StartCall start) {
  ParameterClient::Calls calls(options, view_epoch, what, std::move(start));
  for (Target* t : targets) calls.Start(t);
  return calls.Wait();
}

}  // namespace

absl::Status ParameterClient::Pull(int64_t step, bool latest,
                                   std::vector<std::vector<float>>* params,
                                   int64_t* step_out, int64_t* clock_out) {
  params->resize(sizes_.size());
  std::vector<float*> out(sizes_.size());
  for (size_t i = 0; i < sizes_.size(); ++i) {
    (*params)[i].resize(sizes_[i]);
    out[i] = (*params)[i].data();
  }
  return Pull(step, latest, out, step_out, clock_out);
}

absl::Status ParameterClient::Pull(int64_t step, bool latest,
                                   const std::vector<float*>& out,
                                   int64_t* step_out, int64_t* clock_out) {
  if (out.size() != sizes_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pull: ", out.size(), " output buffers, want ", sizes_.size()));
  }
  for (size_t i = 0; i < sizes_.size(); ++i) {
    if (out[i] == nullptr && sizes_[i] > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pull: the output buffer of ", names_[i], " (", sizes_[i],
          " floats) is null"));
    }
  }
  std::vector<Target*> all;
  for (auto& t : targets_) all.push_back(t.get());
  // The last push asked for these parameters (pull_next): they came with
  // its responses.
  // (A server that does not know pull_next answers the push alone: then
  // the pull is a call of its own.)
  const bool prefetched =
      !latest && prefetched_step_ == step &&
      std::all_of(all.begin(), all.end(),
                  [](Target* t) { return t->push_response.has_pulled(); });
  prefetched_step_ = -1;
  if (!prefetched) {
    const auto timeout = std::chrono::milliseconds(options_.pull_timeout_ms);
    PSD_RETURN_IF_ERROR(WithFailover([&] { return RunAll(
        all, options_, view_epoch_, "pull",
        [&](Target* t, grpc::ClientContext* context, auto done) {
          t->pull.set_step(step);
          t->pull.set_latest(latest);
          context->set_deadline(DeadlineIn(timeout));
          t->stub->async()->Pull(context, &t->pull, &t->pull_response,
                                 std::move(done));
        }); }, /*repush=*/true));
  }
  int64_t lowest = INT64_MAX;
  int64_t lowest_clock = INT64_MAX;
  for (Target* t : all) {
    const PullResponse& response =
        prefetched ? t->push_response.pulled() : t->pull_response;
    if (response.parameters_size() != static_cast<int>(t->parts.size())) {
      return absl::DataLossError(absl::StrCat(
          "pull: server ", t->server, " returned ",
          response.parameters_size(), " tensors for ", t->What()));
    }
    for (size_t k = 0; k < t->parts.size(); ++k) {
    const Partition& part = t->parts[k];
    const PartitionTensor& returned = response.parameters(k);
    const std::string what = absl::StrCat("pull response of partition ", part.id());
    if (returned.partition_id() != part.id()) {
      return absl::DataLossError(absl::StrCat(
          what, ": the server returned partition ", returned.partition_id()));
    }
    if (returned.has_shared()) {  // the server wrote our pull slice
      if (!t->shared || returned.shared().offset() != t->pull_slices[k].offset() ||
          returned.shared().size() != t->pull_slices[k].size()) {
        return absl::DataLossError(absl::StrCat(
            what, ": shared memory not asked for, or another slice"));
      }
      const Tensor& tensor = returned.tensor();
      if (tensor.dtype() != FLOAT32 || tensor.shape_size() != 1 ||
          tensor.shape(0) != part.num_elements()) {
        return absl::DataLossError(absl::StrCat(
            what, ": want FLOAT32 of shape [", part.num_elements(), "]"));
      }
      const uint8_t* bytes = shm_->data() + t->pull_slices[k].offset();
      if (part.num_elements() > 0) {
        std::memcpy(out[part.parameter()] + part.offset(), bytes,
                    part.num_elements() * sizeof(float));
      }
    } else {
      // Straight from the response's bytes into the caller's slice
      // (BFLOAT16 widened on the way).
      PSD_RETURN_IF_ERROR(DecodeToFloat32(returned.tensor(),
                                          part.num_elements(),
                                          out[part.parameter()] + part.offset(),
                                          what));
    }
    }
    lowest = std::min(lowest, response.step());
    lowest_clock = std::min(lowest_clock, response.clock());
  }
  if (step_out != nullptr) *step_out = lowest == INT64_MAX ? step : lowest;
  if (clock_out != nullptr) {
    *clock_out = lowest_clock == INT64_MAX ? 0 : lowest_clock;
  }
  return absl::OkStatus();
}

absl::Status ParameterClient::Push(
    int64_t step, const std::vector<std::vector<float>>& grads) {
  if (grads.size() != sizes_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push: ", grads.size(), " gradient tensors, want ", sizes_.size()));
  }
  for (size_t i = 0; i < grads.size(); ++i) {
    PSD_RETURN_IF_ERROR(CheckTensorSize(i, grads[i].size()));
  }
  PSD_RETURN_IF_ERROR(BeginPush(step));
  for (size_t i = 0; i < grads.size(); ++i) {
    // An error here is kept and returned by FinishPush.
    PushTensor(static_cast<int32_t>(i), grads[i].data(), grads[i].size())
        .IgnoreError();
  }
  return FinishPush();
}

absl::Status ParameterClient::CheckTensorSize(size_t tensor,
                                              size_t elements) const {
  if (static_cast<int64_t>(elements) != sizes_[tensor]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push: gradient of ", names_[tensor], " has ", elements,
        " elements, want ", sizes_[tensor]));
  }
  return absl::OkStatus();
}

absl::Status ParameterClient::BeginPush(int64_t step) {
  if (push_calls_ != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "push: BeginPush(", step, ") while the push of step ", push_step_,
        " is open (FinishPush it first)"));
  }
  push_calls_ = std::make_unique<Calls>(options_, view_epoch_, "push",
                                        PushCall(PushTimeoutMs()));
  push_step_ = step;
  prefetched_step_ = -1;  // the push responses are about to be overwritten
  push_given_.assign(sizes_.size(), false);
  for (auto& t : targets_) t->waiting = t->parts.size();
  push_error_ = absl::OkStatus();
  pushed_ = false;  // The requests are being overwritten.
  return absl::OkStatus();
}

absl::Status ParameterClient::PushTensor(int32_t tensor, const float* grad,
                                         size_t elements) {
  absl::Status status;
  if (push_calls_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("push: PushTensor(", tensor, ") without BeginPush"));
  } else if (tensor < 0 || tensor >= static_cast<int32_t>(sizes_.size())) {
    status = absl::InvalidArgumentError(
        absl::StrCat("push: tensor ", tensor, " outside [0, ", sizes_.size(),
                     ")"));
  } else if (push_given_[tensor]) {
    status = absl::FailedPreconditionError(
        absl::StrCat("push: gradient of ", names_[tensor],
                     " given twice for step ", push_step_));
  } else {
    status = CheckTensorSize(tensor, elements);
  }
  if (!status.ok()) {
    if (push_error_.ok()) push_error_ = status;
    return status;
  }
  push_given_[tensor] = true;
  for (auto [t, k] : tensor_parts_[tensor]) {
    const Partition& part = t->parts[k];
    t->push.set_step(push_step_);
    PartitionTensor* g = t->push.mutable_gradients(k);
    Tensor* encoded = g->mutable_tensor();
    if (t->shared && !bfloat16_) {  // straight into the push slice
      encoded->set_dtype(FLOAT32);
      encoded->clear_shape();
      encoded->add_shape(part.num_elements());
      encoded->clear_data();
      std::memcpy(shm_->data() + t->push_slices[k].offset(),
                  grad + part.offset(), part.num_elements() * sizeof(float));
      *g->mutable_shared() = t->push_slices[k];
    } else {
      if (bfloat16_) {
        EncodeBfloat16(grad + part.offset(), part.num_elements(), encoded);
      } else {
        EncodeFloat32(grad + part.offset(), part.num_elements(), encoded);
      }
      if (t->shared) {  // BFLOAT16: half the slice
        std::memcpy(shm_->data() + t->push_slices[k].offset(),
                    encoded->data().data(), encoded->data().size());
        g->mutable_shared()->set_offset(t->push_slices[k].offset());
        g->mutable_shared()->set_size(encoded->data().size());
        encoded->clear_data();
      }
    }
    if (--t->waiting == 0) push_calls_->Start(t);
  }
  return absl::OkStatus();
}

absl::Status ParameterClient::FinishPush() {
  if (push_calls_ == nullptr) {
    return absl::FailedPreconditionError("push: FinishPush without BeginPush");
  }
  // Ends the open push whatever happens below (cancelling calls on error).
  std::unique_ptr<Calls> calls = std::move(push_calls_);
  if (push_error_.ok()) {
    for (size_t i = 0; i < sizes_.size(); ++i) {
      if (!push_given_[i]) {
        push_error_ = absl::FailedPreconditionError(
            absl::StrCat("push: step ", push_step_, " finished without the "
                         "gradient of ", names_[i]));
        break;
      }
    }
  }
  if (!push_error_.ok()) return push_error_;
  absl::Status first = calls->Wait();
  calls.reset();
  pushed_ = true;
  // A failure of these calls goes through the failover like any push: on
  // the new view, the whole push is sent again (Repush).
  bool waited = false;
  PSD_RETURN_IF_ERROR(WithFailover(
      [&] {
        if (!waited) {
          waited = true;
          return first;
        }
        return Repush();
      },
      /*repush=*/false));
  if (options_.pull_with_push) prefetched_step_ = push_step_ + 1;
  return absl::OkStatus();
}

absl::Status ParameterClient::Repush() {
  std::vector<Target*> all;
  for (auto& t : targets_) all.push_back(t.get());
  return RunAll(all, options_, view_epoch_, "push", PushCall(PushTimeoutMs()));
}

int ParameterClient::PushTimeoutMs() const {
  // A push that also pulls waits like a pull, for the slowest rank.
  return options_.pull_with_push
             ? std::max(options_.push_timeout_ms, options_.pull_timeout_ms)
             : options_.push_timeout_ms;
}

absl::Status ParameterClient::WithFailover(
    const std::function<absl::Status()>& call, bool repush) {
  absl::Time give_up = absl::InfiniteFuture();
  absl::Time first_failure;
  while (true) {
    absl::Status status = call();
    if (status.ok() && first_failure != absl::Time()) {
      // The time a failover cost this rank: from its first failed call to
      // the call that succeeded on the new view (replication_bench.sh).
      Log()->warn("job {} rank {}: failed over after {} ms (view epoch {})",
                  job_id_, rank_,
                  absl::ToInt64Milliseconds(absl::Now() - first_failure),
                  view_epoch_);
    }
    if (!status.ok() && shm_ != nullptr &&
        absl::StrContains(status.message(), "shared_region")) {
      // A server can no longer map our region (e.g. its name was removed
      // from /dev/shm): from now on every tensor goes in the messages,
      // and the call is made again that way.
      Log()->warn("job {} rank {}: shared memory failed ({}); tensors go in "
                  "the messages from now on", job_id_, rank_,
                  std::string(status.message()));
      for (auto& t : targets_) SetTransport(t.get(), false);
      for (auto& [address, shared] : shared_with_) shared = false;
      shm_failed_ = true;
      continue;
    }
    if (status.ok() || options_.views == nullptr) return status;
    if (first_failure == absl::Time()) first_failure = absl::Now();
    if (options_.cancel != nullptr && options_.cancel->load()) {
      return status.code() == absl::StatusCode::kCancelled
                 ? status
                 : absl::CancelledError(absl::StrCat(
                       "job cancelled (and: ", status.message(), ")"));
    }
    // ABORTED: not the primary (any more); UNAVAILABLE: unreachable or its
    // view is on its way; NOT_FOUND: a server without the job, one
    // restarted in place on the address of a primary the view still names
    // until the failover is published; CANCELLED: the server dropped the
    // job while a call waited (the job ended, or the server was drained
    // from it by live resharding: the coordinator says which, by a newer
    // view or by stopping the rank, see options_.cancel above). All wait
    // for a newer view, bounded.
    if (status.code() != absl::StatusCode::kAborted &&
        status.code() != absl::StatusCode::kUnavailable &&
        status.code() != absl::StatusCode::kNotFound &&
        status.code() != absl::StatusCode::kCancelled) {
      return status;
    }
    const absl::Time now = absl::Now();
    if (give_up == absl::InfiniteFuture()) {
      give_up = now + absl::Milliseconds(options_.failover_timeout_ms);
    } else if (now > give_up) {
      return absl::Status(status.code(),
                          absl::StrCat(status.message(), " (no working view for ",
                                       options_.failover_timeout_ms, " ms)"));
    }
    std::optional<Assignment> next =
        options_.views->AwaitNewer(view_epoch_, absl::Seconds(1));
    if (next.has_value()) {
      const int64_t old = view_epoch_;
      PSD_RETURN_IF_ERROR(Route(*next));
      Log()->warn("job {} rank {}: view epoch {} -> {} ({}); retrying on the "
                  "new primaries", job_id_, rank_, old, view_epoch_,
                  std::string(status.message()));
    }
    // With no new view yet, the same servers are tried again (the view
    // may not have changed: a server busy or briefly unreachable).
    if (repush && pushed_) {
      absl::Status again = Repush();
      if (!again.ok()) continue;
    }
  }
}

}  // namespace psd
