#include "server/serving/batcher.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace psd::serving {

// One caller's request, on its stack while it waits in Run.
struct DynamicBatcher::Pending {
  const float* x;
  int32_t rows;
  float* y;
  absl::Time enqueued;
  absl::Notification done;
};

DynamicBatcher::DynamicBatcher(const BatcherOptions& options, int32_t input_dim,
                               int32_t output_dim, RunBatch run_batch)
    : options_(options),
      input_dim_(input_dim),
      output_dim_(output_dim),
      run_batch_(std::move(run_batch)),
      runner_([this] { Runner(); }) {}

DynamicBatcher::~DynamicBatcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  runner_.join();
}

absl::Status DynamicBatcher::ValidateOptions(const BatcherOptions& options) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch_size: ", options.max_batch_size, ", must be >= 1"));
  }
  if (options.max_queue_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_queue_size: ", options.max_queue_size, ", must be >= 1"));
  }
  if (options.max_queue_delay_microseconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay_microseconds: ",
                     options.max_queue_delay_microseconds, ", must be >= 0"));
  }
  return absl::OkStatus();
}

absl::Status DynamicBatcher::Run(const float* x, int32_t rows, float* y) {
  if (rows < 1 || rows > options_.max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch of ", rows, " rows: must be in [1, ",
                     options_.max_batch_size, "] (max_batch_size)"));
  }
  Pending pending{x, rows, y, absl::Now(), {}};
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    if (queue_.size() >= static_cast<size_t>(options_.max_queue_size)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "inference queue full: ", queue_.size(),
          " requests waiting (max_queue_size ", options_.max_queue_size, ")"));
    }
    queue_.push_back(&pending);
    queued_rows_ += rows;
  }
  pending.done.WaitForNotification();
  return absl::OkStatus();
}

BatcherStats DynamicBatcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

int32_t DynamicBatcher::queue_length() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(queue_.size());
}

void DynamicBatcher::Runner() {
  const absl::Duration delay =
      absl::Microseconds(options_.max_queue_delay_microseconds);
  std::vector<Pending*> batch;
  std::vector<float> x, y;
  mu_.Lock();
  while (true) {
    mu_.Await(absl::Condition(
        +[](DynamicBatcher* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
          return b->stopping_ || !b->queue_.empty();
        },
        this));
    if (queue_.empty()) break;  // stopping, nothing left
    // Wait for the batch to fill, up to the oldest request's deadline.
    mu_.AwaitWithDeadline(
        absl::Condition(
            +[](DynamicBatcher* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
              return b->stopping_ ||
                     b->queued_rows_ >= b->options_.max_batch_size;
            },
            this),
        queue_.front()->enqueued + delay);
    batch.clear();
    int32_t rows = 0;
    while (!queue_.empty() &&
           rows + queue_.front()->rows <= options_.max_batch_size) {
      batch.push_back(queue_.front());
      rows += queue_.front()->rows;
      queued_rows_ -= queue_.front()->rows;
      queue_.pop_front();
    }
    mu_.Unlock();
    // Outside the lock: callers keep queueing while the batch runs.
    const float* in = batch.front()->x;
    float* out = batch.front()->y;
    if (batch.size() > 1) {
      x.resize(size_t(rows) * input_dim_);
      y.resize(size_t(rows) * output_dim_);
      size_t at = 0;
      for (Pending* p : batch) {
        std::memcpy(x.data() + at, p->x, sizeof(float) * p->rows * input_dim_);
        at += size_t(p->rows) * input_dim_;
      }
      in = x.data();
      out = y.data();
    }
    run_batch_(in, rows, out);
    if (batch.size() > 1) {
      size_t at = 0;
      for (Pending* p : batch) {
        std::memcpy(p->y, y.data() + at, sizeof(float) * p->rows * output_dim_);
        at += size_t(p->rows) * output_dim_;
      }
    }
    mu_.Lock();
    stats_.batches += 1;
    stats_.requests += static_cast<int64_t>(batch.size());
    stats_.rows += rows;
    stats_.largest_batch = std::max(stats_.largest_batch, rows);
    for (Pending* p : batch) p->done.Notify();  // p is gone after this
  }
  mu_.Unlock();
}

}  // namespace psd::serving
