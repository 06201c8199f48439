#include "server/snapshot/snapshot_store.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <system_error>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "server/snapshot/rocksdb_util.h"
#include "server/snapshot/snapshot_format.h"

namespace psd {
namespace {

// Releases a RocksDB snapshot on scope exit.
class ScopedDbSnapshot {
 public:
  explicit ScopedDbSnapshot(rocksdb::DB* db)
      : db_(db), snapshot_(db->GetSnapshot()) {}
  ~ScopedDbSnapshot() { db_->ReleaseSnapshot(snapshot_); }
  ScopedDbSnapshot(const ScopedDbSnapshot&) = delete;
  ScopedDbSnapshot& operator=(const ScopedDbSnapshot&) = delete;
  const rocksdb::Snapshot* get() const { return snapshot_; }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snapshot_;
};

}  // namespace

class SnapshotStore::Impl {
 public:
  Impl(std::string dir, SnapshotStoreOptions options,
       std::unique_ptr<rocksdb::DB> db)
      : dir_(std::move(dir)), options_(options), db_(std::move(db)) {}

  ~Impl() {
    rocksdb::Status s = db_->Close();
    (void)s;  // Nothing to do about it: every write was synced.
  }

  absl::Status Write(ShardSnapshot snapshot);
  absl::StatusOr<std::vector<SnapshotInfo>> List(const std::string& job_id);
  absl::StatusOr<std::vector<std::string>> ListJobs();
  absl::StatusOr<ShardSnapshot> Read(const std::string& job_id, int64_t step);
  absl::StatusOr<ShardSnapshot> ReadNewestValidAtMost(
      const std::string& job_id, int64_t max_step,
      std::vector<std::pair<int64_t, absl::Status>>* skipped);
  absl::Status DeleteJob(const std::string& job_id);
  absl::StatusOr<std::string> ServerUid();

 private:
  rocksdb::ReadOptions ReadOpts(const rocksdb::Snapshot* snapshot) const {
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    ro.snapshot = snapshot;
    return ro;
  }

  // Steps with a manifest, ascending.
  absl::StatusOr<std::vector<int64_t>> ManifestSteps(
      const std::string& job_id, const rocksdb::Snapshot* snapshot);

  // Reads and verifies under `snapshot`.
  absl::StatusOr<ShardSnapshot> ReadAt(const std::string& job_id, int64_t step,
                                       const rocksdb::Snapshot* snapshot);

  // Applies the batch, synced; resumes RocksDB after an earlier failure.
  absl::Status Commit(rocksdb::WriteBatch* batch, const std::string& context)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // Constant after construction.
  const std::string dir_;
  const SnapshotStoreOptions options_;
  const std::unique_ptr<rocksdb::DB> db_;  // thread-safe itself

  absl::Mutex write_mu_;  // serializes writers only; readers never take it
  bool write_failed_ ABSL_GUARDED_BY(write_mu_) = false;
  std::string server_uid_ ABSL_GUARDED_BY(write_mu_);
};

absl::Status SnapshotStore::Impl::Commit(rocksdb::WriteBatch* batch,
                                         const std::string& context) {
  if (write_failed_) {
    // A failed write may leave RocksDB in a background-error state that
    // refuses every later write; try to clear it (e.g. space was freed).
    rocksdb::Status r = db_->Resume();
    (void)r;  // If it did not help, the write below says why.
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Write(wo, batch);
  write_failed_ = !s.ok();
  return FromRocks(s, context);
}

absl::StatusOr<std::vector<int64_t>> SnapshotStore::Impl::ManifestSteps(
    const std::string& job_id, const rocksdb::Snapshot* snapshot) {
  const std::string lower = ManifestPrefix(job_id);
  const std::string upper = PrefixEnd(lower);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro = ReadOpts(snapshot);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::vector<int64_t> steps;
  for (it->Seek(lower); it->Valid(); it->Next()) {
    rocksdb::Slice key = it->key();
    key.remove_prefix(lower.size());
    int64_t step = ParseStep(key);
    if (step >= 0) steps.push_back(step);  // foreign keys are ignored
  }
  PSD_RETURN_IF_ERROR(FromRocks(
      it->status(),
      absl::StrCat("listing snapshots of job ", job_id, " in ", dir_)));
  return steps;
}

absl::Status SnapshotStore::Impl::Write(ShardSnapshot snapshot) {
  SnapshotManifest& m = snapshot.manifest;
  const std::string& job_id = m.job_id();
  PSD_RETURN_IF_ERROR(CheckJobId(job_id));
  const int64_t step = m.step();
  const std::string what = absl::StrCat("snapshot ", job_id, " step ", step);
  if (step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": step < 0"));
  }

  PSD_RETURN_IF_ERROR(PrepareForWrite(&snapshot, what));

  // The batch: partition records, then the manifest (its checksums are
  // known only after the records).
  size_t reserve = 0;
  for (const PartitionSnapshot& p : snapshot.partitions) {
    reserve += 64 + kRecordHeaderBytes +
               sizeof(float) * (p.weights.size() + p.slots.size());
  }
  rocksdb::WriteBatch batch(reserve + m.ByteSizeLong() + 4096);

  absl::MutexLock lock(&write_mu_);
  // Deletions first, so that the same step can be written again.
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> existing,
                       ManifestSteps(job_id, nullptr));
  std::vector<int64_t> kept;  // ascending, without `step`
  for (int64_t s : existing) {
    if (s < step) kept.push_back(s);
  }
  std::vector<int64_t> doomed;
  for (int64_t s : existing) {
    if (s >= step) doomed.push_back(s);  // same step: replaced
  }
  // The job's own policy wins over the store's default.
  const int keep_last = snapshot.manifest.config().snapshot().keep_last() > 0
                            ? snapshot.manifest.config().snapshot().keep_last()
                            : options_.keep_last;
  const size_t keep_old = static_cast<size_t>(std::max(keep_last, 1) - 1);
  if (kept.size() > keep_old) {
    doomed.insert(doomed.end(), kept.begin(), kept.end() - keep_old);
  }
  for (int64_t s : doomed) {
    rocksdb::Status st = batch.Delete(SnapshotManifestKey(job_id, s));
    if (st.ok()) {
      const std::string prefix = PartitionPrefix(job_id, s);
      st = batch.DeleteRange(prefix, PrefixEnd(prefix));
    }
    PSD_RETURN_IF_ERROR(FromRocks(st, what));
  }

  m.clear_partition_ids();
  m.clear_partition_crc32();
  int64_t total_bytes = 0;
  for (const PartitionSnapshot& p : snapshot.partitions) {
    const RecordHeader h = MakeRecordHeader(p);
    const size_t wbytes = sizeof(float) * p.weights.size();
    const size_t vbytes = sizeof(float) * p.slots.size();
    const uint32_t crc = RecordCrc32(h, p);
    const std::string key = SnapshotPartitionKey(job_id, step, p.id);
    rocksdb::Slice key_slice(key);
    rocksdb::Slice parts[3] = {
        rocksdb::Slice(reinterpret_cast<const char*>(&h), sizeof(h)),
        rocksdb::Slice(reinterpret_cast<const char*>(p.weights.data()), wbytes),
        rocksdb::Slice(reinterpret_cast<const char*>(p.slots.data()),
                       vbytes)};
    PSD_RETURN_IF_ERROR(FromRocks(batch.Put(rocksdb::SliceParts(&key_slice, 1),
                                            rocksdb::SliceParts(parts, 3)),
                                  what));
    m.add_partition_ids(p.id);
    m.add_partition_crc32(crc);
    total_bytes += static_cast<int64_t>(sizeof(h) + wbytes + vbytes);
  }
  m.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  m.set_total_bytes(total_bytes);

  PSD_ASSIGN_OR_RETURN(std::string manifest_value, EncodeManifest(m, what));
  PSD_RETURN_IF_ERROR(FromRocks(
      batch.Put(SnapshotManifestKey(job_id, step), manifest_value), what));

  return Commit(&batch, absl::StrCat("writing ", what, " to ", dir_));
}

absl::StatusOr<std::vector<SnapshotInfo>> SnapshotStore::Impl::List(
    const std::string& job_id) {
  PSD_RETURN_IF_ERROR(CheckJobId(job_id));
  const std::string lower = ManifestPrefix(job_id);
  const std::string upper = PrefixEnd(lower);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro = ReadOpts(nullptr);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::vector<SnapshotInfo> out;
  for (it->Seek(lower); it->Valid(); it->Next()) {
    rocksdb::Slice key = it->key();
    key.remove_prefix(lower.size());
    const int64_t step = ParseStep(key);
    if (step < 0) continue;
    SnapshotInfo info;
    info.set_job_id(job_id);
    info.set_step(step);
    SnapshotManifest m;
    rocksdb::Slice v = it->value();
    if (v.size() >= 4 && m.ParseFromArray(v.data() + 4, v.size() - 4)) {
      info.set_total_bytes(m.total_bytes());
      info.set_created_unix_ms(m.created_unix_ms());
      *info.mutable_shards() = m.shards();
    }
    out.push_back(std::move(info));
  }
  PSD_RETURN_IF_ERROR(FromRocks(
      it->status(),
      absl::StrCat("listing snapshots of job ", job_id, " in ", dir_)));
  std::reverse(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::vector<std::string>> SnapshotStore::Impl::ListJobs() {
  const std::string lower = "m/";
  const std::string upper = PrefixEnd(lower);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro = ReadOpts(nullptr);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::vector<std::string> jobs;
  it->Seek(lower);
  while (it->Valid()) {
    rocksdb::Slice key = it->key();
    key.remove_prefix(lower.size());
    const std::string rest = key.ToString();
    const size_t slash = rest.find('/');
    if (slash == std::string::npos || slash == 0) {
      it->Next();  // not ours
      continue;
    }
    jobs.push_back(rest.substr(0, slash));
    it->Seek(PrefixEnd(ManifestPrefix(jobs.back())));
  }
  PSD_RETURN_IF_ERROR(
      FromRocks(it->status(), absl::StrCat("listing jobs in ", dir_)));
  return jobs;
}

absl::StatusOr<ShardSnapshot> SnapshotStore::Impl::Read(
    const std::string& job_id, int64_t step) {
  PSD_RETURN_IF_ERROR(CheckJobId(job_id));
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot ", job_id, " step ", step, ": step < 0"));
  }
  ScopedDbSnapshot snap(db_.get());
  return ReadAt(job_id, step, snap.get());
}

absl::StatusOr<ShardSnapshot> SnapshotStore::Impl::ReadAt(
    const std::string& job_id, int64_t step,
    const rocksdb::Snapshot* snapshot) {
  const std::string what = absl::StrCat("snapshot ", job_id, " step ", step);
  const rocksdb::ReadOptions ro = ReadOpts(snapshot);
  auto read_error = [&](const rocksdb::Status& s, const std::string& where) {
    absl::Status st = FromRocks(s, absl::StrCat(where, " in ", dir_));
    if (absl::IsNotFound(st)) {
      // Only a missing manifest is NOT_FOUND (checked by the caller).
      st = absl::DataLossError(std::string(st.message()));
    }
    return st;
  };

  // The manifest.
  rocksdb::PinnableSlice mv;
  rocksdb::Status s = db_->Get(ro, db_->DefaultColumnFamily(),
                               SnapshotManifestKey(job_id, step), &mv);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("no snapshot of job ", job_id, " at step ", step));
  }
  if (!s.ok()) return read_error(s, absl::StrCat(what, ": manifest"));
  ShardSnapshot out;
  PSD_ASSIGN_OR_RETURN(out.manifest, DecodeManifest(mv, job_id, step, what));
  mv.Reset();
  const SnapshotManifest& m = out.manifest;
  std::map<int32_t, int64_t> num_elements;
  for (const Partition& p : m.placement().partitions()) {
    num_elements[p.id()] = p.num_elements();
  }
  // The ASP/SSP partitions' clocks, by partition id (checked above).
  std::map<int32_t, const AsyncPartitionClocks*> async;
  for (const AsyncPartitionClocks& a : m.async_partitions()) {
    async.emplace(a.partition_id(), &a);
  }

  // The partitions.
  out.partitions.reserve(m.partition_ids_size());
  for (int i = 0; i < m.partition_ids_size(); ++i) {
    const int32_t id = m.partition_ids(i);
    const std::string pwhat = absl::StrCat(what, " partition ", id);
    auto expected = num_elements.find(id);
    if (expected == num_elements.end()) {
      return absl::DataLossError(
          absl::StrCat(pwhat, ": not in the manifest's placement"));
    }
    rocksdb::PinnableSlice v;
    s = db_->Get(ro, db_->DefaultColumnFamily(),
                 SnapshotPartitionKey(job_id, step, id), &v);
    if (s.IsNotFound()) {
      return absl::DataLossError(absl::StrCat(pwhat, ": record missing"));
    }
    if (!s.ok()) return read_error(s, pwhat);
    PSD_ASSIGN_OR_RETURN(
        PartitionSnapshot p,
        DecodePartitionRecord(v, id, expected->second, m.partition_crc32(i),
                              pwhat));
    auto a = async.find(id);
    if (a != async.end()) {
      p.clocks.assign(a->second->clocks().begin(), a->second->clocks().end());
      p.updates = a->second->updates();
    }
    out.partitions.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<ShardSnapshot> SnapshotStore::Impl::ReadNewestValidAtMost(
    const std::string& job_id, int64_t max_step,
    std::vector<std::pair<int64_t, absl::Status>>* skipped) {
  PSD_RETURN_IF_ERROR(CheckJobId(job_id));
  ScopedDbSnapshot snap(db_.get());
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> steps,
                       ManifestSteps(job_id, snap.get()));
  int tried = 0;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (*it > max_step) continue;
    ++tried;
    absl::StatusOr<ShardSnapshot> r = ReadAt(job_id, *it, snap.get());
    if (r.ok()) return r;
    if (!absl::IsDataLoss(r.status())) return r.status();
    if (skipped != nullptr) skipped->emplace_back(*it, r.status());
  }
  return absl::NotFoundError(
      absl::StrCat("no valid snapshot of job ", job_id,
                   max_step == std::numeric_limits<int64_t>::max()
                       ? std::string()
                       : absl::StrCat(" at step <= ", max_step),
                   " in ", dir_, " (", tried, " failed verification)"));
}

absl::Status SnapshotStore::Impl::DeleteJob(const std::string& job_id) {
  PSD_RETURN_IF_ERROR(CheckJobId(job_id));
  const std::string mprefix = ManifestPrefix(job_id);
  const std::string pprefix = absl::StrCat("p/", job_id, "/");
  rocksdb::WriteBatch batch;
  const std::string what = absl::StrCat("deleting snapshots of job ", job_id);
  PSD_RETURN_IF_ERROR(
      FromRocks(batch.DeleteRange(mprefix, PrefixEnd(mprefix)), what));
  PSD_RETURN_IF_ERROR(
      FromRocks(batch.DeleteRange(pprefix, PrefixEnd(pprefix)), what));
  absl::MutexLock lock(&write_mu_);
  return Commit(&batch, absl::StrCat(what, " in ", dir_));
}

absl::StatusOr<std::string> SnapshotStore::Impl::ServerUid() {
  absl::MutexLock lock(&write_mu_);
  if (!server_uid_.empty()) return server_uid_;
  std::string value;
  rocksdb::Status s = db_->Get(ReadOpts(nullptr), kServerUidKey, &value);
  if (s.ok()) {
    if (value.size() != 16 ||
        value.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return absl::DataLossError(absl::StrCat(
          "server uid in ", dir_, " is malformed: \"", value, "\""));
    }
    server_uid_ = value;
    return server_uid_;
  }
  if (!s.IsNotFound()) {
    return FromRocks(s, absl::StrCat("reading the server uid in ", dir_));
  }
  std::random_device rd;  // /dev/urandom
  const uint64_t uid = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  value = absl::StrFormat("%016x", uid);
  rocksdb::WriteBatch batch;
  PSD_RETURN_IF_ERROR(FromRocks(batch.Put(kServerUidKey, value), dir_));
  PSD_RETURN_IF_ERROR(
      Commit(&batch, absl::StrCat("writing the server uid in ", dir_)));
  server_uid_ = value;
  return server_uid_;
}

// ---------------------------------------------------------------------------

SnapshotStore::SnapshotStore(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

SnapshotStore::~SnapshotStore() = default;

absl::StatusOr<std::unique_ptr<SnapshotStore>> SnapshotStore::Open(
    const std::string& dir, SnapshotStoreOptions options) {
  if (options.keep_last < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot store ", dir, ": keep_last is ",
                     options.keep_last, ", must be >= 1"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot store ", dir,
                     ": cannot create the directory: ", ec.message()));
  }
  rocksdb::Options ro;
  ro.create_if_missing = true;
  ro.paranoid_checks = true;
  // Parameters are float32 noise to a compressor.
  ro.compression = rocksdb::kNoCompression;
  // A damaged WAL ends recovery at the damage: the snapshots written
  // before it are kept, the ones after are gone (never half there).
  ro.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  ro.keep_log_file_num = 4;
  ro.max_log_file_size = 16 << 20;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, dir, &raw);
  if (!s.ok()) {
    return FromRocks(s, absl::StrCat("snapshot store ", dir, ": cannot open"));
  }
  return std::unique_ptr<SnapshotStore>(new SnapshotStore(
      std::make_unique<Impl>(dir, options, std::unique_ptr<rocksdb::DB>(raw))));
}

absl::Status SnapshotStore::Write(ShardSnapshot snapshot) {
  return impl_->Write(std::move(snapshot));
}

absl::StatusOr<std::vector<SnapshotInfo>> SnapshotStore::List(
    const std::string& job_id) {
  return impl_->List(job_id);
}

absl::StatusOr<std::vector<std::string>> SnapshotStore::ListJobs() {
  return impl_->ListJobs();
}

absl::StatusOr<ShardSnapshot> SnapshotStore::Read(const std::string& job_id,
                                                  int64_t step) {
  return impl_->Read(job_id, step);
}

absl::StatusOr<ShardSnapshot> SnapshotStore::ReadNewestValid(
    const std::string& job_id,
    std::vector<std::pair<int64_t, absl::Status>>* skipped) {
  return impl_->ReadNewestValidAtMost(
      job_id, std::numeric_limits<int64_t>::max(), skipped);
}

absl::StatusOr<ShardSnapshot> SnapshotStore::ReadNewestValidAtMost(
    const std::string& job_id, int64_t max_step,
    std::vector<std::pair<int64_t, absl::Status>>* skipped) {
  return impl_->ReadNewestValidAtMost(job_id, max_step, skipped);
}

absl::Status SnapshotStore::DeleteJob(const std::string& job_id) {
  return impl_->DeleteJob(job_id);
}

absl::StatusOr<std::string> SnapshotStore::ServerUid() {
  return impl_->ServerUid();
}

std::optional<int64_t> NewestCommonStep(
    const std::vector<std::vector<int64_t>>& valid_steps) {
  if (valid_steps.empty()) return std::nullopt;
  std::set<int64_t> common(valid_steps[0].begin(), valid_steps[0].end());
  for (size_t i = 1; i < valid_steps.size() && !common.empty(); ++i) {
    std::set<int64_t> shard(valid_steps[i].begin(), valid_steps[i].end());
    std::set<int64_t> both;
    std::set_intersection(common.begin(), common.end(), shard.begin(),
                          shard.end(), std::inserter(both, both.begin()));
    common = std::move(both);
  }
  if (common.empty()) return std::nullopt;
  return *common.rbegin();
}

}  // namespace psd
