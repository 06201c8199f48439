// Dynamic batching for inference, with Triton's knobs: requests queue until
// a batch is full or the oldest has waited long enough, then run as one
// batch, and each request gets its own rows back.
#ifndef PSD_SERVER_SERVING_BATCHER_H_
#define PSD_SERVER_SERVING_BATCHER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace psd::serving {

struct BatcherOptions {
  // Most rows in one batch (Triton's max_batch_size); a request with more
  // rows is refused. Default: 64.
  int32_t max_batch_size = 64;
  // How long the oldest queued request may wait for others to join its
  // batch (Triton's max_queue_delay_microseconds). 0: a batch runs with
  // whatever is queued when the runner is free. Default: 1000 us.
  int64_t max_queue_delay_microseconds = 1000;
  // Most requests waiting (not yet in a running batch); one more is
  // refused with RESOURCE_EXHAUSTED (Triton's max_queue_size). Default: 1024.
  int32_t max_queue_size = 1024;
};

// Counters, for tests and logs.
struct BatcherStats {
  int64_t batches = 0;    // batches run
  int64_t requests = 0;   // requests answered
  int64_t rows = 0;       // rows run
  int32_t largest_batch = 0;  // most rows in one batch
};

// Runs a row-wise function y[rows, output_dim] = f(x[rows, input_dim]) on
// batches gathered from concurrent callers of Run. One thread of its own
// (the runner) calls `run_batch`, one batch at a time, so `run_batch` need
// not be thread-safe. A batch is the queued requests, oldest first, as long
// as their rows fit in max_batch_size; it starts as soon as they fill it,
// or when the oldest has waited max_queue_delay_microseconds, or at
// shutdown. Each caller gets exactly the rows of its own request back.
//
// Thread-safe: Run may be called from any number of threads.
class DynamicBatcher {
 public:
  // x: batch rows * input_dim floats; y: rows * output_dim floats to fill.
  using RunBatch = std::function<void(const float* x, int32_t rows, float* y)>;

  // REQUIRES: input_dim > 0, output_dim > 0, options.max_batch_size > 0,
  // options.max_queue_size > 0, options.max_queue_delay_microseconds >= 0
  // (ValidateOptions checks these on flag values).
  DynamicBatcher(const BatcherOptions& options, int32_t input_dim,
                 int32_t output_dim, RunBatch run_batch);
  // Runs what is still queued, then stops the runner.
  ~DynamicBatcher();

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // INVALID_ARGUMENT naming the option when one is out of range.
  static absl::Status ValidateOptions(const BatcherOptions& options);

  // Queues x[rows, input_dim], waits for its batch to run and writes its
  // rows of the result to y[rows, output_dim]. Blocks the caller. Errors:
  // INVALID_ARGUMENT when rows is not in [1, max_batch_size];
  // RESOURCE_EXHAUSTED when max_queue_size requests are already waiting;
  // UNAVAILABLE after shutdown began.
  absl::Status Run(const float* x, int32_t rows, float* y);

  BatcherStats stats() const;
  // Requests waiting now (not yet in a running batch).
  int32_t queue_length() const;
  const BatcherOptions& options() const { return options_; }

 private:
  struct Pending;
  void Runner();

  // Constant after construction.
  const BatcherOptions options_;
  const int32_t input_dim_;
  const int32_t output_dim_;
  const RunBatch run_batch_;

  mutable absl::Mutex mu_;
  // Protected by mu_.
  std::deque<Pending*> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  BatcherStats stats_ ABSL_GUARDED_BY(mu_);

  std::thread runner_;  // last: starts once the rest is built
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_BATCHER_H_
