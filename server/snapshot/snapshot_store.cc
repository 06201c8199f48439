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

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "snapshot records are little-endian; this code copies floats "
              "as they are in memory");

namespace psd {
namespace {

constexpr uint32_t kRecordMagic = 0x50445350;  // "PSDP" read little-endian
constexpr size_t kRecordHeaderBytes = 24;
constexpr char kServerUidKey[] = "meta/server_uid";

uint32_t Crc32(uint32_t crc, const void* data, size_t size) {
  // zlib returns the initial value for a null buffer, whatever `crc` is.
  if (size == 0) return crc;
  return static_cast<uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), size));
}

std::string Hex32(uint32_t v) { return absl::StrFormat("0x%08x", v); }

std::string StepKeyPart(int64_t step) { return absl::StrFormat("%020d", step); }

// [m/<job>/, m/<job>0): '0' is the byte after '/'.
std::string ManifestPrefix(const std::string& job_id) {
  return absl::StrCat("m/", job_id, "/");
}
std::string PartitionPrefix(const std::string& job_id, int64_t step) {
  return absl::StrCat("p/", job_id, "/", StepKeyPart(step), "/");
}

absl::Status CheckJobId(const std::string& job_id) {
  if (job_id.empty()) {
    return absl::InvalidArgumentError("job_id: empty");
  }
  if (job_id.find('/') != std::string::npos ||
      job_id.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id: \"", job_id, "\" contains '/' or NUL"));
  }
  return absl::OkStatus();
}


// Parses "<20 digits>" into a step; -1 if malformed.
int64_t ParseStep(rocksdb::Slice s) {
  if (s.size() != 20) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c < '0' || c > '9') return -1;
    if (v > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

struct RecordHeader {
  uint32_t magic;
  int32_t id;
  uint64_t num_weights;
  uint64_t num_slot_elements;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes, "packed header");

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

std::string SnapshotManifestKey(const std::string& job_id, int64_t step) {
  return absl::StrCat(ManifestPrefix(job_id), StepKeyPart(step));
}

std::string SnapshotPartitionKey(const std::string& job_id, int64_t step,
                                 int32_t partition_id) {
  return absl::StrCat(PartitionPrefix(job_id, step),
                      absl::StrFormat("%010d", partition_id));
}

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

  std::map<int32_t, int64_t> num_elements;  // from the placement
  for (const Partition& p : m.placement().partitions()) {
    num_elements[p.id()] = p.num_elements();
  }
  std::sort(snapshot.partitions.begin(), snapshot.partitions.end(),
            [](const PartitionSnapshot& a, const PartitionSnapshot& b) {
              return a.id < b.id;
            });
  for (size_t i = 0; i < snapshot.partitions.size(); ++i) {
    const PartitionSnapshot& p = snapshot.partitions[i];
    const std::string pwhat = absl::StrCat(what, " partition ", p.id);
    if (i > 0 && snapshot.partitions[i - 1].id == p.id) {
      return absl::InvalidArgumentError(
          absl::StrCat(pwhat, ": partition given twice"));
    }
    auto found = num_elements.find(p.id);
    if (p.id < 0 || found == num_elements.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(pwhat, ": not in the manifest's placement"));
    }
    if (static_cast<int64_t>(p.weights.size()) != found->second) {
      return absl::InvalidArgumentError(absl::StrCat(
          pwhat, ": ", p.weights.size(), " weights, but the placement has ",
          found->second, " elements"));
    }
    if (p.weights.empty() ? !p.slots.empty()
                          : p.slots.size() % p.weights.size() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          pwhat, ": optimizer slots have ", p.slots.size(),
          " elements, not a multiple of the weights' ",
          p.weights.size()));
    }
    if (!p.clocks.empty()) {
      if (static_cast<int64_t>(p.clocks.size()) != m.config().workers()) {
        return absl::InvalidArgumentError(absl::StrCat(
            pwhat, ": ", p.clocks.size(), " clocks, the job has ",
            m.config().workers(), " worker ranks"));
      }
      for (int64_t c : p.clocks) {
        if (c < step) {
          return absl::InvalidArgumentError(absl::StrCat(
              pwhat, ": a rank's clock ", c, " is below the step"));
        }
      }
      if (p.updates < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(pwhat, ": updates < 0"));
      }
    }
  }
  m.clear_async_partitions();
  for (const PartitionSnapshot& p : snapshot.partitions) {
    if (p.clocks.empty()) continue;
    AsyncPartitionClocks* a = m.add_async_partitions();
    a->set_partition_id(p.id);
    a->set_updates(p.updates);
    for (int64_t c : p.clocks) a->add_clocks(c);
  }

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
    RecordHeader h;
    h.magic = kRecordMagic;
    h.id = p.id;
    h.num_weights = p.weights.size();
    h.num_slot_elements = p.slots.size();
    const size_t wbytes = sizeof(float) * p.weights.size();
    const size_t vbytes = sizeof(float) * p.slots.size();
    uint32_t crc = Crc32(0, &h, sizeof(h));
    crc = Crc32(crc, p.weights.data(), wbytes);
    crc = Crc32(crc, p.slots.data(), vbytes);
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

  std::string manifest_value(4, '\0');
  if (!m.AppendToString(&manifest_value)) {
    return absl::InternalError(
        absl::StrCat(what, ": cannot serialize the manifest"));
  }
  const uint32_t mcrc =
      Crc32(0, manifest_value.data() + 4, manifest_value.size() - 4);
  std::memcpy(&manifest_value[0], &mcrc, 4);
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
  if (mv.size() < 4) {
    return absl::DataLossError(
        absl::StrCat(what, ": manifest truncated (", mv.size(), " bytes)"));
  }
  uint32_t stored;
  std::memcpy(&stored, mv.data(), 4);
  const uint32_t computed = Crc32(0, mv.data() + 4, mv.size() - 4);
  if (stored != computed) {
    return absl::DataLossError(
        absl::StrCat(what, ": manifest checksum mismatch (stored ",
                     Hex32(stored), ", computed ", Hex32(computed), ")"));
  }
  ShardSnapshot out;
  SnapshotManifest& m = out.manifest;
  if (!m.ParseFromArray(mv.data() + 4, static_cast<int>(mv.size() - 4))) {
    return absl::DataLossError(absl::StrCat(what, ": manifest does not parse"));
  }
  mv.Reset();
  if (m.job_id() != job_id || m.step() != step) {
    return absl::DataLossError(absl::StrCat(what, ": manifest is of job ",
                                            m.job_id(), " step ", m.step()));
  }
  if (m.partition_ids_size() != m.partition_crc32_size()) {
    return absl::DataLossError(absl::StrCat(
        what, ": manifest has ", m.partition_ids_size(), " partition ids but ",
        m.partition_crc32_size(), " checksums"));
  }
  std::map<int32_t, int64_t> num_elements;
  for (const Partition& p : m.placement().partitions()) {
    num_elements[p.id()] = p.num_elements();
  }
  // The ASP/SSP partitions' clocks, by partition id.
  std::map<int32_t, const AsyncPartitionClocks*> async;
  for (const AsyncPartitionClocks& a : m.async_partitions()) {
    const std::string awhat =
        absl::StrCat(what, " partition ", a.partition_id(), ": clocks");
    if (std::find(m.partition_ids().begin(), m.partition_ids().end(),
                  a.partition_id()) == m.partition_ids().end()) {
      return absl::DataLossError(
          absl::StrCat(awhat, " of a partition not in the snapshot"));
    }
    if (!async.emplace(a.partition_id(), &a).second) {
      return absl::DataLossError(absl::StrCat(awhat, " given twice"));
    }
    if (a.clocks_size() != m.config().workers()) {
      return absl::DataLossError(
          absl::StrCat(awhat, ": ", a.clocks_size(), " of them, the job has ",
                       m.config().workers(), " worker ranks"));
    }
    for (int64_t c : a.clocks()) {
      if (c < step) {
        return absl::DataLossError(absl::StrCat(
            awhat, ": a rank's clock ", c, " is below the snapshot's step"));
      }
    }
    if (a.updates() < 0) {
      return absl::DataLossError(
          absl::StrCat(awhat, ": update count ", a.updates(), " < 0"));
    }
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
    if (v.size() < kRecordHeaderBytes) {
      return absl::DataLossError(
          absl::StrCat(pwhat, ": record truncated (", v.size(), " bytes)"));
    }
    const uint32_t want = m.partition_crc32(i);
    const uint32_t got = Crc32(0, v.data(), v.size());
    if (want != got) {
      return absl::DataLossError(
          absl::StrCat(pwhat, ": checksum mismatch (stored ", Hex32(want),
                       ", computed ", Hex32(got), ")"));
    }
    RecordHeader h;
    std::memcpy(&h, v.data(), sizeof(h));
    if (h.magic != kRecordMagic || h.id != id) {
      return absl::DataLossError(
          absl::StrCat(pwhat, ": record header names partition ", h.id,
                       " (magic ", Hex32(h.magic), ")"));
    }
    if (static_cast<int64_t>(h.num_weights) != expected->second ||
        (h.num_weights == 0 ? h.num_slot_elements != 0
                          : h.num_slot_elements % h.num_weights != 0)) {
      return absl::DataLossError(
          absl::StrCat(pwhat, ": record has ", h.num_weights, " weights and ",
                       h.num_slot_elements, " optimizer-slot elements; the placement has ",
                       expected->second, " elements"));
    }
    if (v.size() !=
        kRecordHeaderBytes + sizeof(float) * (h.num_weights + h.num_slot_elements)) {
      return absl::DataLossError(absl::StrCat(
          pwhat, ": record is ", v.size(), " bytes, its header says ",
          kRecordHeaderBytes +
              sizeof(float) * (h.num_weights + h.num_slot_elements)));
    }
    PartitionSnapshot p;
    p.id = id;
    p.weights.resize(h.num_weights);
    p.slots.resize(h.num_slot_elements);
    // std::copy_n, not memcpy: an empty vector's data() may be null (a
    // partition with no optimizer slots), which memcpy must not be given.
    const char* src = v.data() + kRecordHeaderBytes;
    std::copy_n(src, sizeof(float) * h.num_weights,
                reinterpret_cast<char*>(p.weights.data()));
    std::copy_n(src + sizeof(float) * h.num_weights,
                sizeof(float) * h.num_slot_elements,
                reinterpret_cast<char*>(p.slots.data()));
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
