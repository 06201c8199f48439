#include "server/snapshot/snapshot_writer.h"

#include "absl/strings/str_cat.h"
#include "common/process.h"

namespace psd {

SnapshotWriter::SnapshotWriter(SnapshotStore* store, int max_queued,
                               MetricsRegistry* metrics)
    : store_(store), max_queued_(max_queued) {
  if (metrics != nullptr) {
    write_seconds_ = metrics->AddHistogram(
        "psd_server_snapshot_seconds",
        "Time to write one shard snapshot to RocksDB (synced).",
        {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60});
    bytes_ = metrics->AddCounter("psd_server_snapshot_bytes_total",
                                 "Bytes of parameters and optimizer slots "
                                 "written in snapshots.");
    written_ = metrics->AddCounter("psd_server_snapshots_total",
                                   "Shard snapshots written.");
    failed_ = metrics->AddCounter("psd_server_snapshot_failures_total",
                                  "Shard snapshots that failed or were skipped.");
  }
  thread_ = std::thread([this] { Run(); });
}

SnapshotWriter::~SnapshotWriter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void SnapshotWriter::Fail(const SnapshotManifest& manifest,
                          const std::string& error) {
  Log()->error("job {}: snapshot at step {} failed: {}", manifest.job_id(),
               manifest.step(), error);
  if (failed_ != nullptr) failed_->Increment();
  SnapshotFailure failure;
  failure.set_job_id(manifest.job_id());
  failure.set_step(manifest.step());
  failure.set_error(error);
  failures_.push_back(std::move(failure));
}

void SnapshotWriter::Enqueue(ShardSnapshot snapshot) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(queue_.size()) >= max_queued_) {
    Fail(snapshot.manifest,
         absl::StrCat("skipped: ", queue_.size(),
                      " snapshots still wait for the disk"));
    return;
  }
  queue_.push_back(std::move(snapshot));
}

std::vector<SnapshotFailure> SnapshotWriter::TakeFailures() {
  absl::MutexLock lock(&mu_);
  std::vector<SnapshotFailure> failures;
  failures.swap(failures_);
  return failures;
}

void SnapshotWriter::Flush() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](SnapshotWriter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
        return w->queue_.empty() && !w->writing_;
      },
      this));
}

void SnapshotWriter::Run() {
  while (true) {
    ShardSnapshot snapshot;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SnapshotWriter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
            return w->stopping_ || !w->queue_.empty();
          },
          this));
      if (stopping_) return;
      snapshot = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
    }
    const SnapshotManifest manifest = snapshot.manifest;
    uint64_t bytes = 0;
    for (const PartitionSnapshot& p : snapshot.partitions) {
      bytes += (p.weights.size() + p.slots.size()) * sizeof(float);
    }
    const absl::Time start = absl::Now();
    absl::Status written = store_->Write(std::move(snapshot));
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!written.ok()) {
      Fail(manifest, written.ToString());
    } else {
      if (write_seconds_ != nullptr) {
        write_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - start));
        bytes_->Increment(bytes);
        written_->Increment();
      }
      Log()->debug("job {}: snapshot at step {} written in {} ms",
                   manifest.job_id(), manifest.step(),
                   absl::ToInt64Milliseconds(absl::Now() - start));
    }
  }
}

}  // namespace psd
