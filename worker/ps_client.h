// The client side of the data plane: pulls a job's parameters from, and
// pushes gradients to, the parameter servers that hold its partitions.
#ifndef PSD_WORKER_PS_CLIENT_H_
#define PSD_WORKER_PS_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/proto.h"
#include "common/shared_memory.h"

namespace psd {

// Where a client learns that its job's view changed (a primary failed
// over): the worker's heartbeats. Thread-safe.
class ViewSource {
 public:
  virtual ~ViewSource() = default;
  // The newest view epoch known for the job; polled while calls wait.
  virtual int64_t LatestEpoch() = 0;
  // Waits up to `timeout` for the job's assignment with a view epoch above
  // `epoch`; nullopt when none came.
  virtual std::optional<Assignment> AwaitNewer(int64_t epoch,
                                               absl::Duration timeout) = 0;
};

struct ParameterClientOptions {
  // Deadline of one Pull, which waits for the slowest worker's push.
  // Default: 10 minutes.
  int pull_timeout_ms = 600000;
  // Deadline of one Push. Default: 60 s.
  int push_timeout_ms = 60000;
  // Retries of a call that failed with UNAVAILABLE (safe: pushes are
  // idempotent). Default: 3.
  int retries = 3;
  // When set and it becomes true, calls in flight are cancelled within
  // 100 ms and end with CANCELLED (used to stop a worker promptly). Not
  // owned; must outlive the client. Default: none.
  const std::atomic<bool>* cancel = nullptr;
  // When set, a call that fails because the view changed or a server is
  // unreachable (ABORTED, UNAVAILABLE), or reaches a server that does not
  // hold the job (NOT_FOUND: one restarted in place on a primary's address
  // before the view names the failover), or that waits while a newer view is
  // known, is retried on the new view's primaries: the last push is sent
  // again first (the servers drop duplicates), then the call. Not owned.
  // Default: none (such failures are returned).
  ViewSource* views = nullptr;
  // Give up when no call succeeds for this long while failing over.
  // Default: 60 s.
  int failover_timeout_ms = 60000;
  // Carry tensor bytes through shared memory with the servers on this host
  // (common/shared_memory.h): the client creates one region (twice the
  // model's bytes plus a header: a push and a pull slice per partition),
  // and asks each server it routes to to map it (AttachSharedMemory, once
  // per server address); a server that cannot (another host, shared memory
  // off) gets the bytes in the messages. Pushed and pulled values are the
  // same either way. Default: false. EXPERIMENTAL: not safe with failover
  // yet: a server that was stopped (not killed) and resumes may still
  // answer a call the client gave up on, reading a push slice or writing a
  // pull slice the client has reused since (docs/ARCHITECTURE.md, "Shared
  // memory"; tests/failover_test.sh scenario 3 showed it).
  bool shared_memory = false;
  // Each push also asks for the parameters of the next step
  // (PushRequest.pull_next), so the push of step s and the pull of step
  // s + 1 are one call per partition, and Pull(s + 1) right after
  // FinishPush is answered from the push responses without a call. The
  // push then waits like a pull (pull_timeout_ms). Default: true.
  bool pull_with_push = true;
  // One call per shard per step: the partitions a shard holds go in one
  // PushRequest (and one PullRequest), started once the last of their
  // tensors is given to PushTensor; else one call per partition, each
  // started as soon as its tensor is given. The servers take the same
  // bytes per partition either way, so results are bitwise the same.
  // Default: true.
  bool call_per_shard = true;
};

// One rank's view of a job's parameters. Parameters are whole tensors
// (float32, row-major, in Placement.parameters order); the client cuts them
// into partitions and issues one RPC per shard (or per partition: see
// call_per_shard), all in flight at once (gRPC callback API). Request
// buffers are reused across steps.
//
// A push can overlap with the backward pass that computes it (as in
// PyTorch DDP and BytePS): BeginPush(step), then PushTensor(i, ...) for each
// tensor as soon as its gradient is final (an RPC starts as soon as the
// last tensor it carries is given, while the caller goes on computing), then FinishPush() waits for
// all of them. The servers take each partition's push on its own, so the
// partitions of a step may arrive in any order and at any time; the bytes
// of each partition's request are the same as Push's, so BSP results stay
// bitwise the same. Push(step, grads) is BeginPush, PushTensor for every
// tensor in order, FinishPush.
//
// Not thread-safe: one caller at a time.
class ParameterClient {
 public:
  // Errors: INVALID_ARGUMENT when a partition's shard has no server in the
  // assignment.
  static absl::StatusOr<std::unique_ptr<ParameterClient>> Create(
      const Assignment& assignment, ParameterClientOptions options);
  ~ParameterClient();

  // Element count of each parameter tensor.
  const std::vector<int64_t>& parameter_sizes() const { return sizes_; }
  // Name of each parameter tensor.
  std::vector<std::string> parameter_names() const;

  // Writes the parameters after `step` updates into caller-provided
  // buffers, waiting for them: out[i] (host memory, e.g. pinned memory from
  // kernels::Backend::AllocateHost, owned by the caller) receives
  // parameter_sizes()[i] floats. Each partition's response is copied
  // straight into its slice of out[i]; nothing else is allocated per call.
  // Under JobConfig.parameter_dtype = BFLOAT16 the servers send each value
  // rounded to bfloat16 (to nearest even), widened exactly here, except
  // through shared memory (always float32). With latest = true, returns the current parameters without waiting,
  // and *step_out gets their step. Under ASP/SSP `step` is this rank's
  // clock (see PullRequest.step), and *clock_out gets PullResponse.clock
  // (the fewest of this rank's pushes applied to any partition).
  // REQUIRES: out[i] has room for parameter_sizes()[i] floats, and nothing
  // reads or writes it during the call (e.g. a device's asynchronous
  // upload from it must be complete: see Backend::CopyFromHostAsync).
  // Errors: INVALID_ARGUMENT for out.size() != parameter_sizes().size() or
  // a null out[i] of a non-empty tensor (nothing is written then); else
  // the first failing call's status, prefixed with the server, or
  // DATA_LOSS for a malformed response. On an error the contents of the
  // buffers are unspecified (some partitions may have been written).
  absl::Status Pull(int64_t step, bool latest, const std::vector<float*>& out,
                    int64_t* step_out = nullptr, int64_t* clock_out = nullptr);

  // The same into vectors: params[i] is resized to parameter_sizes()[i]
  // (also when an error follows) and filled as above.
  absl::Status Pull(int64_t step, bool latest,
                    std::vector<std::vector<float>>* params,
                    int64_t* step_out = nullptr, int64_t* clock_out = nullptr);

  // Pushes gradients of `step`; grads[i] has parameter_sizes()[i] floats,
  // sent as the job's gradient_dtype (FLOAT32, or BFLOAT16: half the bytes).
  // Errors: INVALID_ARGUMENT for a wrong tensor count or size; else as
  // FinishPush.
  absl::Status Push(int64_t step, const std::vector<std::vector<float>>& grads);

  // Opens the push of `step`, to be filled tensor by tensor. Errors:
  // FAILED_PRECONDITION when a push is open already.
  absl::Status BeginPush(int64_t step);
  // Encodes tensor `tensor`'s gradient (`elements` floats at `grad`, host
  // memory, read only during the call) into its partitions' requests, as
  // the job's gradient_dtype, and starts their RPCs; returns without
  // waiting for them. Errors (also kept, and returned by FinishPush):
  // FAILED_PRECONDITION without an open push or for a tensor given twice
  // in it, INVALID_ARGUMENT for a tensor index outside
  // [0, parameter_sizes().size()) or elements != parameter_sizes()[tensor].
  absl::Status PushTensor(int32_t tensor, const float* grad, size_t elements);
  // Waits for every RPC of the open push and closes it. Retries, failover
  // (the whole push is sent again on the new view's primaries; the servers
  // drop what they already have) and cancellation are Push's. Errors: the
  // first PushTensor error; FAILED_PRECONDITION without an open push or
  // when a tensor was never given (its calls in flight are cancelled and
  // nothing is re-sent); else the first failing call's status, prefixed
  // with the partition and server.
  absl::Status FinishPush();

  // The view epoch calls are made in.
  int64_t view_epoch() const { return view_epoch_; }

  // One partition's server stub and reusable messages (defined in the .cc).
  struct Target;
  // A set of RPCs in flight (defined in the .cc).
  class Calls;

 private:
  ParameterClient(const Assignment& assignment, ParameterClientOptions options);
  // Points every partition at its shard's primary in `assignment`'s view.
  absl::Status Route(const Assignment& assignment);
  // Runs `call` and, with options_.views, fails over (see views).
  absl::Status WithFailover(const std::function<absl::Status()>& call,
                            bool repush);
  // Sends the last push again (after a failover).
  absl::Status Repush();
  // A push's deadline, ms.
  int PushTimeoutMs() const;
  // INVALID_ARGUMENT unless `elements` == sizes_[tensor].
  absl::Status CheckTensorSize(size_t tensor, size_t elements) const;
  // Whether the server at `address` maps shm_ (asked once per address).
  bool SharedWith(const std::string& address, ParameterServer::Stub* stub);
  // Moves t's requests to (or off) shared memory; a push held in them (to
  // be sent again after a failover) moves along.
  void SetTransport(Target* t, bool shared);

  const ParameterClientOptions options_;
  std::string job_id_;
  int32_t rank_ = 0;
  // Gradients go as BFLOAT16 (JobConfig.gradient_dtype), else FLOAT32.
  bool bfloat16_ = false;
  // Parameters come as this dtype (JobConfig.parameter_dtype: FLOAT32 or
  // BFLOAT16) except through shared memory, which is always FLOAT32.
  DType pull_dtype_ = FLOAT32;
  int64_t view_epoch_ = 0;
  std::vector<int64_t> sizes_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<Target>> targets_;
  // Each parameter tensor's partitions: (the target that carries it, its
  // index k in that target's parts). Targets not owned.
  std::vector<std::vector<std::pair<Target*, int>>> tensor_parts_;
  std::map<std::string, std::shared_ptr<ParameterServer::Stub>> stubs_;
  // Shared memory (options_.shared_memory): null when off or not created.
  std::unique_ptr<SharedMemory> shm_;
  std::map<std::string, bool> shared_with_;  // by server address
  bool shm_failed_ = false;  // a server refused it mid-job: off for good
  // The step whose parameters the last FinishPush brought (pull_with_push),
  // still in the targets' push responses; -1 when none.
  int64_t prefetched_step_ = -1;
  bool pushed_ = false;  // targets' push requests hold the last push
  // The open push (BeginPush .. FinishPush); push_calls_ null when none.
  std::unique_ptr<Calls> push_calls_;
  int64_t push_step_ = 0;
  std::vector<bool> push_given_;  // Per tensor: PushTensor done.
  absl::Status push_error_;       // The first PushTensor error.
};

}  // namespace psd

#endif  // PSD_WORKER_PS_CLIENT_H_
