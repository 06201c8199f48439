// EmbeddingStore::Capture and EmbeddingStore::Restore: a table's rows and
// dedup logs to and from an EmbeddingTableCapture (what
// embedding_snapshot.h persists).
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/embedding_rows.h"
#include "server/embedding/embedding_store.h"
#include "server/embedding/embedding_table.h"

namespace psd {

absl::StatusOr<EmbeddingTableCapture> EmbeddingStore::Capture(
    const std::string& job_id, const std::string& table) const {
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  Table& t = **found;
  EmbeddingTableCapture capture;
  capture.job_id = job_id;
  capture.spec = t.spec;
  capture.shards = t.shards;
  capture.record_floats = t.row_floats;
  // No push runs from here on (each holds capture_mu shared throughout).
  absl::MutexLock capture_lock(&t.capture_mu);
  int64_t rows = 0;
  for (const Table::Stripe& stripe : t.stripes) {
    absl::ReaderMutexLock lock(&stripe.mu);
    rows += stripe.rows;
  }
  capture.ids.reserve(rows);
  capture.records.resize(rows * t.row_floats);
  float* dst = capture.records.data();
  for (const Table::Stripe& stripe : t.stripes) {
    absl::ReaderMutexLock lock(&stripe.mu);
    for (const auto& [row, slot] : stripe.index) {
      capture.ids.push_back(row);
      std::memcpy(dst, t.Record(stripe, slot), t.row_floats * 4);
      dst += t.row_floats;
    }
  }
  for (const Table::Stripe& stripe : t.stripes) {
    absl::ReaderMutexLock lock(&stripe.mu);
    for (const auto& [row, pending] : stripe.pending) {
      capture.admission.emplace_back(row, pending.count);
    }
  }
  std::sort(capture.admission.begin(), capture.admission.end());
  {
    absl::MutexLock lock(&t.bsp_mu);
    capture.bsp_num_ranks = t.bsp_num_ranks;
    for (const auto& [shard, b] : t.bsp) {
      capture.bsp_clocks.emplace_back(shard, b.clock);
    }
  }
  capture.asp_step = t.asp_step.load();
  absl::MutexLock clients_lock(&t.clients_mu);
  for (const auto& [client, log] : t.clients) {
    absl::MutexLock log_lock(&log->mu);
    if (log->applied.empty()) continue;
    capture.dedup.emplace_back(
        client, std::vector<uint64_t>(log->applied.begin(), log->applied.end()));
  }
  return capture;
}

absl::StatusOr<int64_t> EmbeddingStore::Restore(
    const EmbeddingTableCapture& capture, const std::vector<int32_t>& shards,
    const std::vector<TableShardReplicas>& replicas) {
  auto made = NewTable(capture.job_id, capture.spec, shards, replicas);
  if (!made.ok()) return made.status();
  std::shared_ptr<Table> fresh = *std::move(made);
  Table& t = *fresh;
  const std::string what = absl::StrCat("restore of table \"", t.spec.name(),
                                        "\" of job ", capture.job_id);
  if (t.spec.SerializeAsString() != capture.spec.SerializeAsString()) {
    return absl::DataLossError(
        absl::StrCat(what, ": the snapshot's spec does not validate as given"));
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    if (!std::binary_search(capture.shards.begin(), capture.shards.end(),
                            shards[i])) {
      return absl::NotFoundError(absl::StrCat(
          "shards[", i, "]: shard ", shards[i], " is not in the snapshot of "
          "table \"", t.spec.name(), "\" (it holds shards [",
          absl::StrJoin(capture.shards, ", "), "])"));
    }
  }
  if (capture.record_floats != t.row_floats ||
      capture.records.size() != capture.ids.size() * t.row_floats) {
    return absl::DataLossError(absl::StrCat(
        what, ": the snapshot's row records have ", capture.record_floats,
        " floats (", capture.records.size(), " floats for ", capture.ids.size(),
        " rows); the spec needs ", t.row_floats));
  }
  const uint64_t num_shards = static_cast<uint64_t>(t.spec.num_shards());
  int64_t loaded = 0, chunk_bytes = 0;
  for (Table::Stripe& stripe : t.stripes) stripe.mu.Lock();
  absl::Status status;
  for (size_t i = 0; i < capture.ids.size() && status.ok(); ++i) {
    const uint64_t id = capture.ids[i];
    if (id >= t.spec.num_rows()) {
      status = absl::DataLossError(absl::StrCat(
          what, ": row id ", id, " is out of range [0, ", t.spec.num_rows(),
          ")"));
      break;
    }
    const uint64_t mixed = SplitMix64Mix(id);
    if (!t.holds[mixed % num_shards]) continue;
    Table::Stripe& stripe = t.stripes[StripeOf(mixed)];
    auto [it, inserted] =
        stripe.index.try_emplace(id, static_cast<uint32_t>(stripe.rows));
    if (!inserted) {
      status = absl::DataLossError(
          absl::StrCat(what, ": row ", id, " is in the snapshot twice"));
      break;
    }
    if (stripe.rows ==
        static_cast<int64_t>(stripe.chunks.size()) * t.rows_per_chunk) {
      stripe.chunks.emplace_back(new float[t.rows_per_chunk * t.row_floats]);
      chunk_bytes += t.ChunkBytes();
    }
    std::memcpy(t.Record(stripe, it->second),
                capture.records.data() + i * t.row_floats, t.row_floats * 4);
    ++stripe.rows;
    ++loaded;
  }
  for (Table::Stripe& stripe : t.stripes) {
    t.Account(stripe);
    stripe.mu.Unlock();
  }
  // The chunks are counted against max_bytes like a push's (the table's
  // destructor gives them back, also on the error paths below).
  const int64_t before = arena_bytes_->fetch_add(chunk_bytes);
  if (!status.ok()) return status;
  if (options_.max_bytes > 0 && before + chunk_bytes > options_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, " needs ", chunk_bytes, " bytes of rows; the server holds ",
        before, " of its limit ", options_.max_bytes));
  }
  t.rows.store(loaded);
  // BSP clocks of the restored shards, the ASP step, admission counts of
  // their rows; eviction clocks restart: every restored row counts as
  // pushed at the restored step.
  int64_t step = capture.asp_step;
  {
    absl::MutexLock lock(&t.bsp_mu);
    t.bsp_num_ranks = capture.bsp_num_ranks;
    for (const auto& [shard, clock] : capture.bsp_clocks) {
      if (shard < 0 || shard >= t.spec.num_shards() || clock < 0) {
        return absl::DataLossError(absl::StrCat(
            what, ": BSP clock ", clock, " of shard ", shard));
      }
      if (!t.holds[shard]) continue;
      t.bsp[shard].clock = clock;
      step = std::max(step, clock > 0 ? clock - 1 : 0);
    }
  }
  t.asp_step.store(capture.asp_step);
  int64_t pending = 0;
  for (Table::Stripe& stripe : t.stripes) {
    absl::MutexLock lock(&stripe.mu);
    if (t.spec.evict_after_steps() > 0) {
      stripe.slot_ids.resize(stripe.rows);
      stripe.last_step.assign(stripe.rows, step);
      for (const auto& [row, slot] : stripe.index) stripe.slot_ids[slot] = row;
    }
  }
  for (const auto& [row, count] : capture.admission) {
    if (row >= t.spec.num_rows()) {
      return absl::DataLossError(
          absl::StrCat(what, ": admission count of row ", row));
    }
    const uint64_t mixed = SplitMix64Mix(row);
    if (!t.holds[mixed % num_shards]) continue;
    Table::Stripe& stripe = t.stripes[StripeOf(mixed)];
    absl::MutexLock lock(&stripe.mu);
    Table::Stripe::Pending& p = stripe.pending[row];
    p.count = count;
    p.last_step = step;
    ++pending;
  }
  for (Table::Stripe& stripe : t.stripes) {
    absl::MutexLock lock(&stripe.mu);
    t.Account(stripe);
  }
  t.pending_rows.store(pending);
  for (const auto& [client, sequences] : capture.dedup) {
    std::shared_ptr<Table::ClientLog> log = t.LogOf(client);
    absl::MutexLock lock(&log->mu);
    const size_t skip =
        sequences.size() > kDedupWindow ? sequences.size() - kDedupWindow : 0;
    log->applied.insert(sequences.begin() + skip, sequences.end());
    log->last_used = absl::Now();
  }
  absl::MutexLock lock(&mu_);
  auto key = std::make_pair(capture.job_id, t.spec.name());
  if (tables_.count(key)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "table \"", t.spec.name(), "\" of job ", capture.job_id,
        " exists on this server; drop it before restoring it"));
  }
  tables_[key] = std::move(fresh);
  return loaded;
}

}  // namespace psd

namespace psd {

absl::Status EmbeddingStore::ScheduleStepCaptures(const std::string& job_id,
                                                  const std::string& table,
                                                  int64_t every_steps,
                                                  int keep_last) {
  if (every_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "snapshot_every_steps: must be >= 0, got ", every_steps));
  }
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  Table& t = **found;
  absl::MutexLock lock(&t.bsp_mu);
  t.capture_every = every_steps;
  t.capture_keep = keep_last;
  if (every_steps == 0) t.step_captures.clear();
  return absl::OkStatus();
}

void EmbeddingStore::SetStepCaptureSink(StepCaptureSink sink) {
  absl::MutexLock lock(&sink_mu_);
  sink_ = std::move(sink);
}

void EmbeddingStore::CaptureShardAtStep(const std::string& job_id, Table& t,
                                        int32_t shard, int64_t clock) {
  Table::StepCapture& partial = t.step_captures[clock];
  if (partial.capture == nullptr) {
    partial.capture = std::make_shared<EmbeddingTableCapture>();
    EmbeddingTableCapture& c = *partial.capture;
    c.job_id = job_id;
    c.spec = t.spec;
    c.shards = t.shards;
    c.record_floats = t.row_floats;
    c.step = clock;
    c.keep_last = t.capture_keep;
  }
  if (!partial.shards.insert(shard).second) return;  // copied already
  EmbeddingTableCapture& c = *partial.capture;
  const uint64_t num_shards = static_cast<uint64_t>(t.spec.num_shards());
  // This shard's rows: no step of the table applies meanwhile (bsp_mu),
  // and ASP pushes are not sent to a BSP table's shards by its workers.
  for (const Table::Stripe& stripe : t.stripes) {
    absl::ReaderMutexLock lock(&stripe.mu);
    for (const auto& [row, slot] : stripe.index) {
      if (SplitMix64Mix(row) % num_shards != static_cast<uint64_t>(shard)) {
        continue;
      }
      c.ids.push_back(row);
      const float* record = t.Record(stripe, slot);
      c.records.insert(c.records.end(), record, record + t.row_floats);
    }
    for (const auto& [row, pending] : stripe.pending) {
      if (SplitMix64Mix(row) % num_shards != static_cast<uint64_t>(shard)) {
        continue;
      }
      c.admission.emplace_back(row, pending.count);
    }
  }
  c.bsp_clocks.emplace_back(shard, clock);
  if (partial.shards.size() < t.shards.size()) return;
  // Every held shard is in: hand the capture over.
  std::shared_ptr<EmbeddingTableCapture> done = std::move(partial.capture);
  t.step_captures.erase(clock);
  // Older partial captures can no longer complete (their shards moved on
  // without them, e.g. a shard restored past them).
  t.step_captures.erase(t.step_captures.begin(),
                        t.step_captures.lower_bound(clock));
  std::sort(done->admission.begin(), done->admission.end());
  std::sort(done->bsp_clocks.begin(), done->bsp_clocks.end());
  done->bsp_num_ranks = t.bsp_num_ranks;
  done->asp_step = t.asp_step.load();
  absl::MutexLock lock(&sink_mu_);
  if (sink_) sink_(std::move(done));
}

}  // namespace psd
