#include "server/embedding/embedding_step_writer.h"

#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/process.h"

namespace psd {

namespace {
constexpr size_t kMaxQueued = 4;
}  // namespace

EmbeddingStepWriter::EmbeddingStepWriter(EmbeddingSnapshotStore* snapshots)
    : snapshots_(snapshots), thread_([this] { Run(); }) {}

EmbeddingStepWriter::~EmbeddingStepWriter() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void EmbeddingStepWriter::Enqueue(
    std::shared_ptr<EmbeddingTableCapture> capture) {
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= kMaxQueued) {
    ++dropped_;
    Log()->error(
        "embedding table {} of job {}: step snapshot of step {} skipped: {} "
        "snapshots already wait for the disk",
        capture->spec.name(), capture->job_id, capture->step, queue_.size());
    return;
  }
  queue_.push_back(std::move(capture));
}

void EmbeddingStepWriter::Flush() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](EmbeddingStepWriter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
        return w->queue_.empty() && !w->busy_;
      },
      this));
}

int64_t EmbeddingStepWriter::written() const {
  absl::MutexLock lock(&mu_);
  return written_;
}
int64_t EmbeddingStepWriter::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}
int64_t EmbeddingStepWriter::failed() const {
  absl::MutexLock lock(&mu_);
  return failed_;
}

void EmbeddingStepWriter::Run() {
  for (;;) {
    std::shared_ptr<EmbeddingTableCapture> capture;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](EmbeddingStepWriter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
            return w->stop_ || !w->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping, all written
      capture = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    const std::map<std::string, std::string> metadata = {
        {"step", absl::StrCat(capture->step)}};
    auto written = snapshots_->Write(*capture, metadata, capture->keep_last);
    absl::MutexLock lock(&mu_);
    busy_ = false;
    if (written.ok()) {
      ++written_;
      Log()->info(
          "embedding table {} of job {}: step snapshot of step {} written "
          "(generation {}, {} rows, {} bytes)",
          capture->spec.name(), capture->job_id, capture->step,
          written->generation(), written->rows(), written->total_bytes());
    } else {
      ++failed_;
      Log()->error("embedding table {} of job {}: step snapshot of step {} "
                   "failed: {}",
                   capture->spec.name(), capture->job_id, capture->step,
                   written.status().ToString());
    }
  }
}

}  // namespace psd
