// The client side of the data plane: pulls a job's parameters from, and
// pushes gradients to, the parameter servers that hold its partitions.
#ifndef PSD_WORKER_PS_CLIENT_H_
#define PSD_WORKER_PS_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

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
};

// One rank's view of a job's parameters. Parameters are whole tensors
// (float32, row-major, in Placement.parameters order); the client cuts them
// into partitions and issues one RPC per partition, all in flight at once
// (gRPC callback API). Request buffers are reused across steps.
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

  // Fills params[i] (resized to parameter_sizes()[i]) with the parameters
  // after `step` updates, waiting for them. With latest = true, returns the
  // current parameters without waiting, and *step_out gets their step.
  // Errors: the first failing call's status, prefixed with the server.
  absl::Status Pull(int64_t step, bool latest,
                    std::vector<std::vector<float>>* params,
                    int64_t* step_out = nullptr);

  // Pushes gradients of `step`; grads[i] has parameter_sizes()[i] floats.
  absl::Status Push(int64_t step, const std::vector<std::vector<float>>& grads);

  // One partition's server stub and reusable messages (defined in the .cc).
  struct Target;

 private:
  ParameterClient(const Assignment& assignment, ParameterClientOptions options);

  const ParameterClientOptions options_;
  std::string job_id_;
  int32_t rank_ = 0;
  int64_t view_epoch_ = 0;
  std::vector<int64_t> sizes_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<Target>> targets_;
};

}  // namespace psd

#endif  // PSD_WORKER_PS_CLIENT_H_
