#include "server/embedding/embedding_store.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/embedding_rows.h"
#include "server/embedding/embedding_table.h"
#include "server/ps/optimizer.h"

namespace psd {
namespace {

// Checks the ids against the table; fills mixed[i] = SplitMix64Mix(ids[i])
// and `by_stripe` with the request indices grouped by stripe (request order
// within a stripe), `starts[s]` the first of stripe s (starts[kStripes] =
// n).
// *shard (when not null) gets the shard of the rows when they are all of
// one, else -1; with `one_shard`, rows of two shards are INVALID_ARGUMENT.
absl::Status RouteIds(const EmbeddingStore::Table& t,
                      absl::Span<const uint64_t> ids,
                      std::vector<uint32_t>* by_stripe,
                      std::array<uint32_t, kStripes + 1>* starts,
                      bool one_shard = false, int32_t* shard_out = nullptr) {
  int32_t first_shard = -1;
  bool mixed = false;
  const uint64_t num_rows = t.spec.num_rows();
  const uint64_t num_shards = static_cast<uint64_t>(t.spec.num_shards());
  std::array<uint32_t, kStripes + 1> count{};
  std::vector<uint8_t> stripe(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t id = ids[i];
    if (id >= num_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("row_ids[", i, "]: ", id, " is out of range [0, ",
                       num_rows, ") of table \"", t.spec.name(), "\""));
    }
    const uint64_t mixed_bits = SplitMix64Mix(id);
    const int32_t shard = static_cast<int32_t>(mixed_bits % num_shards);
    if (!t.holds[shard]) {
      return absl::FailedPreconditionError(absl::StrCat(
          "row_ids[", i, "]: row ", id, " is on shard ", shard, " of ",
          num_shards, "; this server holds shards [",
          absl::StrJoin(t.shards, ", "), "] of table \"", t.spec.name(),
          "\""));
    }
    if (i == 0) {
      first_shard = shard;
    } else if (shard != first_shard) {
      if (one_shard) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row_ids[", i, "]: row ", id, " is on shard ", shard,
            " but row_ids[0] is on shard ", first_shard, "; a push to table \"",
            t.spec.name(),
            "\" (it has replicated shards) must hold rows of one shard"));
      }
      mixed = true;
    }
    stripe[i] = static_cast<uint8_t>(StripeOf(mixed_bits));
    ++count[stripe[i] + 1];
  }
  if (shard_out != nullptr) *shard_out = mixed ? -1 : first_shard;
  for (int s = 0; s < kStripes; ++s) count[s + 1] += count[s];
  *starts = count;
  by_stripe->resize(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    (*by_stripe)[count[stripe[i]]++] = static_cast<uint32_t>(i);
  }
  return absl::OkStatus();
}

std::string ShapeString(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

absl::Status CheckGradients(const EmbeddingStore::Table& t,
                            absl::Span<const uint64_t> ids,
                            const Tensor& gradients) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (gradients.dtype() != FLOAT32) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradients.dtype: must be FLOAT32, got ",
                     DType_Name(gradients.dtype())));
  }
  if (gradients.shape_size() != 2 || gradients.shape(0) != n ||
      gradients.shape(1) != t.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradients.shape: must be [len(row_ids), dim] = [", n, ", ", t.dim,
        "], got ", ShapeString(gradients)));
  }
  const int64_t want = n * t.dim * 4;
  if (static_cast<int64_t>(gradients.data().size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradients.data: must hold ", want, " bytes ([", n, ", ",
                     t.dim, "] float32), got ", gradients.data().size()));
  }
  const char* data = gradients.data().data();
  for (int64_t e = 0; e < n * t.dim; ++e) {
    float v;
    std::memcpy(&v, data + e * 4, 4);
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradients.data: element ", e, " (row_ids[", e / t.dim, "] = ",
          ids[e / t.dim], ", column ", e % t.dim, ") is ", v,
          "; gradients must be finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

EmbeddingStore::EmbeddingStore(EmbeddingStoreOptions options)
    : options_(options),
      bytes_(std::make_shared<std::atomic<int64_t>>(0)),
      arena_bytes_(std::make_shared<std::atomic<int64_t>>(0)) {}

EmbeddingStore::~EmbeddingStore() = default;

absl::StatusOr<std::shared_ptr<EmbeddingStore::Table>>
EmbeddingStore::NewTable(const std::string& job_id,
                         const EmbeddingTableSpec& spec,
                         const std::vector<int32_t>& shards,
                         const std::vector<TableShardReplicas>& replicas) const {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  absl::Status valid = ValidateTableSpec(spec, "spec");
  if (!valid.ok()) return valid;
  if (shards.empty()) {
    return absl::InvalidArgumentError("shards: at least one shard required");
  }
  std::vector<bool> seen(spec.num_shards(), false);
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i] < 0 || shards[i] >= spec.num_shards()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shards[", i, "]: must be in [0, ", spec.num_shards(),
                       "), got ", shards[i]));
    }
    if (seen[shards[i]]) {
      return absl::InvalidArgumentError(
          absl::StrCat("shards[", i, "]: shard ", shards[i], " listed twice"));
    }
    seen[shards[i]] = true;
  }
  std::vector<bool> has_replicas(spec.num_shards(), false);
  for (size_t i = 0; i < replicas.size(); ++i) {
    const TableShardReplicas& r = replicas[i];
    const std::string field = absl::StrCat("replicas[", i, "]");
    if (r.shard() < 0 || r.shard() >= spec.num_shards() || !seen[r.shard()]) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shard: ", r.shard(),
                       " is not one of the shards this server holds"));
    }
    if (has_replicas[r.shard()]) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shard: shard ", r.shard(), " has two replica sets"));
    }
    has_replicas[r.shard()] = true;
    if (r.replicas_size() < 2 || r.replicas_size() > kMaxShardReplicas) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".replicas: need 2 to ", kMaxShardReplicas,
                       " addresses, got ", r.replicas_size()));
    }
    for (int j = 0; j < r.replicas_size(); ++j) {
      const std::string& address = r.replicas(j);
      if (address.empty() || address.size() > 256) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".replicas[", j, "]: must be host:port of 1 to 256 bytes"));
      }
      for (int k = 0; k < j; ++k) {
        if (r.replicas(k) == address) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ".replicas[", j, "]: ", address,
                           " is listed twice"));
        }
      }
    }
    if (r.self() < 0 || r.self() >= r.replicas_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".self: must be in [0, ", r.replicas_size(),
                       "), got ", r.self()));
    }
  }
  std::vector<TableShardReplicas> sorted_replicas = replicas;
  std::sort(sorted_replicas.begin(), sorted_replicas.end(),
            [](const TableShardReplicas& a, const TableShardReplicas& b) {
              return a.shard() < b.shard();
            });
  std::vector<int32_t> sorted = shards;
  std::sort(sorted.begin(), sorted.end());
  return std::make_shared<Table>(WithTableDefaults(spec), std::move(sorted),
                                 std::move(sorted_replicas), bytes_,
                                 arena_bytes_);
}

absl::StatusOr<bool> EmbeddingStore::CreateTable(
    const std::string& job_id, const EmbeddingTableSpec& spec,
    const std::vector<int32_t>& shards,
    const std::vector<TableShardReplicas>& replicas) {
  auto made = NewTable(job_id, spec, shards, replicas);
  if (!made.ok()) return made.status();
  std::shared_ptr<Table> fresh = *std::move(made);
  absl::MutexLock lock(&mu_);
  auto key = std::make_pair(job_id, spec.name());
  auto it = tables_.find(key);
  if (it != tables_.end()) {
    const Table& old = *it->second;
    bool same_replicas = old.replica_sets.size() == fresh->replica_sets.size();
    for (size_t i = 0; same_replicas && i < fresh->replica_sets.size(); ++i) {
      same_replicas = old.replica_sets[i].SerializeAsString() ==
                      fresh->replica_sets[i].SerializeAsString();
    }
    if (old.spec.SerializeAsString() == fresh->spec.SerializeAsString() &&
        old.shards == fresh->shards && same_replicas) {
      return false;
    }
    return absl::AlreadyExistsError(absl::StrCat(
        "table \"", spec.name(), "\" of job ", job_id,
        " exists with another spec, other shards or other replicas (drop it "
        "first)"));
  }
  tables_[key] = std::move(fresh);
  return true;
}

absl::StatusOr<std::shared_ptr<EmbeddingStore::Table>> EmbeddingStore::Find(
    const std::string& job_id, const std::string& table) const {
  absl::MutexLock lock(&mu_);
  auto it = tables_.find(std::make_pair(job_id, table));
  if (it != tables_.end()) return it->second;
  for (const auto& [key, unused] : tables_) {
    if (key.first == job_id) {
      return absl::NotFoundError(absl::StrCat("table: no table \"", table,
                                              "\" in job ", job_id,
                                              " on this server"));
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "job_id: no embedding table of job \"", job_id, "\" on this server"));
}

absl::Status EmbeddingStore::Pull(const std::string& job_id,
                                  const std::string& table,
                                  absl::Span<const uint64_t> ids,
                                  std::string* out, int32_t* dim) const {
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  Table& t = **found;
  if (dim != nullptr) *dim = t.dim;
  std::vector<uint32_t> order;
  std::array<uint32_t, kStripes + 1> starts;
  absl::Status routed = RouteIds(t, ids, &order, &starts);
  if (!routed.ok()) return routed;
  const int64_t row_bytes = static_cast<int64_t>(t.dim) * 4;
  out->resize(ids.size() * row_bytes);
  char* dst = out->data();
  for (int s = 0; s < kStripes; ++s) {
    if (starts[s] == starts[s + 1]) continue;
    const Table::Stripe& stripe = t.stripes[s];
    absl::ReaderMutexLock lock(&stripe.mu);
    for (uint32_t k = starts[s]; k < starts[s + 1]; ++k) {
      const uint32_t i = order[k];
      float* row = reinterpret_cast<float*>(dst + i * row_bytes);
      auto it = stripe.index.find(ids[i]);
      if (it == stripe.index.end()) {
        InitialRow(t.spec.initializer(), t.dim, ids[i], row);
      } else {
        std::memcpy(row, t.Record(stripe, it->second) + 2, row_bytes);
      }
    }
  }
  t.pulls.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

namespace {

// The replication decision of a client push to shard `shard` of `t`:
// forward targets and promotion (see Push). Errors: client_id missing.
absl::Status RouteReplication(EmbeddingStore::Table& t, int32_t shard,
                              const EmbeddingPushKey& key,
                              std::vector<std::string>* forward_to,
                              bool* promoted) {
  absl::MutexLock lock(&t.replication_mu);
  auto it = t.replication.find(shard);
  if (it == t.replication.end()) return absl::OkStatus();
  if (key.client_id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "client_id: required for a push to shard ", shard, " of table \"",
        t.spec.name(), "\", which has backups (forwards are exactly-once)"));
  }
  EmbeddingStore::Table::Replication& r = it->second;
  if (!r.primary) {
    r.primary = true;
    *promoted = true;
    // Every other replica, the earlier ones included (the old primary
    // may be alive for other clients: it then gets these pushes too).
    // Nothing is dropped yet: only a primary forwards, so only a primary
    // drops.
    for (size_t i = 0; i < r.replicas.size(); ++i) {
      if (static_cast<int32_t>(i) != r.self) {
        r.forward_to.push_back(r.replicas[i]);
      }
    }
  }
  *forward_to = r.forward_to;
  return absl::OkStatus();
}

// Removes the rows of `shard` (-1: every shard) not pushed during the
// last spec.evict_after_steps steps at step `now` (now - last push >= N),
// and the admission counts idle as long; frees arena chunks no longer
// needed. O(rows held). REQUIRES: capture_mu held (shared), no stripe
// lock held.
void Evict(EmbeddingStore::Table& t, int32_t shard, int64_t now,
           std::atomic<int64_t>& arena) {
  const int64_t n = t.spec.evict_after_steps();
  if (n <= 0) return;
  const uint64_t num_shards = static_cast<uint64_t>(t.spec.num_shards());
  auto of_shard = [&](uint64_t id) {
    return shard < 0 ||
           static_cast<int32_t>(SplitMix64Mix(id) % num_shards) == shard;
  };
  int64_t removed = 0, forgotten = 0;
  std::vector<uint64_t> victims;
  for (EmbeddingStore::Table::Stripe& s : t.stripes) {
    absl::MutexLock lock(&s.mu);
    victims.clear();
    for (const auto& [id, slot] : s.index) {
      if (now - s.last_step[slot] >= n && of_shard(id)) victims.push_back(id);
    }
    for (uint64_t id : victims) {
      auto it = s.index.find(id);
      const uint32_t slot = it->second;
      const uint32_t last = static_cast<uint32_t>(s.rows - 1);
      s.index.erase(it);
      if (slot != last) {
        std::memcpy(t.Record(s, slot), t.Record(s, last), t.row_floats * 4);
        s.slot_ids[slot] = s.slot_ids[last];
        s.last_step[slot] = s.last_step[last];
        s.index[s.slot_ids[slot]] = slot;
      }
      s.slot_ids.pop_back();
      s.last_step.pop_back();
      --s.rows;
    }
    removed += static_cast<int64_t>(victims.size());
    const size_t need =
        static_cast<size_t>((s.rows + t.rows_per_chunk - 1) / t.rows_per_chunk);
    while (s.chunks.size() > need) {
      s.chunks.pop_back();
      arena.fetch_sub(t.ChunkBytes());
    }
    for (auto it = s.pending.begin(); it != s.pending.end();) {
      if (now - it->second.last_step >= n && of_shard(it->first)) {
        s.pending.erase(it++);
        ++forgotten;
      } else {
        ++it;
      }
    }
    t.Account(s);
  }
  t.rows.fetch_sub(removed);
  t.evicted.fetch_add(removed);
  t.pending_rows.fetch_sub(forgotten);
}

}  // namespace

absl::StatusOr<EmbeddingPushResult> EmbeddingStore::ApplyRows(
    Table& t, absl::Span<const uint64_t> ids, const char* grad_bytes,
    std::vector<uint32_t>& order,
    absl::Span<const uint32_t> starts, int64_t now) {
  EmbeddingPushResult result;
  const int64_t admit = t.spec.admit_after_pushes();
  const bool admission = admit > 1;
  const bool eviction = t.spec.evict_after_steps() > 0;
  // Within each stripe, equal ids become adjacent, in request order
  // (stable), so duplicates are summed in request order.
  for (int s = 0; s < kStripes; ++s) {
    std::stable_sort(order.begin() + starts[s], order.begin() + starts[s + 1],
                     [&ids](uint32_t a, uint32_t b) { return ids[a] < ids[b]; });
  }
  const int64_t dim = t.dim;
  // Lock every stripe the push touches, in ascending order.
  std::array<bool, kStripes> locked{};
  for (int s = 0; s < kStripes; ++s) {
    if (starts[s] == starts[s + 1]) continue;
    t.stripes[s].mu.Lock();
    locked[s] = true;
  }
  auto unlock_all = [&]() {
    for (int s = kStripes - 1; s >= 0; --s) {
      if (locked[s]) t.stripes[s].mu.Unlock();
    }
  };
  // Whether a push to `id` (not held) creates it: its admit-th push.
  auto admits = [&](const Table::Stripe& stripe, uint64_t id)
                    ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (!admission) return true;
    auto p = stripe.pending.find(id);
    return (p == stripe.pending.end() ? 0 : p->second.count) + 1 >= admit;
  };
  // Reserve the arena chunks the new rows need (max_bytes), before any
  // row changes.
  std::array<int64_t, kStripes> new_chunks{};
  int64_t reserve = 0;
  for (int s = 0; s < kStripes; ++s) {
    if (!locked[s]) continue;
    Table::Stripe& stripe = t.stripes[s];
    int64_t fresh = 0;
    for (uint32_t k = starts[s]; k < starts[s + 1]; ++k) {
      if (k > starts[s] && ids[order[k]] == ids[order[k - 1]]) continue;
      if (!stripe.index.contains(ids[order[k]]) &&
          admits(stripe, ids[order[k]])) {
        ++fresh;
      }
    }
    const int64_t capacity =
        static_cast<int64_t>(stripe.chunks.size()) * t.rows_per_chunk;
    const int64_t needed = stripe.rows + fresh - capacity;
    new_chunks[s] =
        needed > 0 ? (needed + t.rows_per_chunk - 1) / t.rows_per_chunk : 0;
    reserve += new_chunks[s] * t.ChunkBytes();
  }
  if (reserve > 0) {
    const int64_t before = arena_bytes_->fetch_add(reserve);
    if (options_.max_bytes > 0 && before + reserve > options_.max_bytes) {
      arena_bytes_->fetch_sub(reserve);
      unlock_all();
      return absl::ResourceExhaustedError(absl::StrCat(
          "push to table \"", t.spec.name(), "\" needs ", reserve,
          " more bytes of rows; the server holds ", before, " of its limit ",
          options_.max_bytes));
    }
  }
  std::vector<float> sum(dim);
  int64_t pending_delta = 0, unadmitted = 0;
  for (int s = 0; s < kStripes; ++s) {
    if (!locked[s]) continue;
    Table::Stripe& stripe = t.stripes[s];
    for (int64_t c = 0; c < new_chunks[s]; ++c) {
      stripe.chunks.emplace_back(new float[t.rows_per_chunk * t.row_floats]);
    }
    uint32_t k = starts[s];
    while (k < starts[s + 1]) {
      const uint64_t id = ids[order[k]];
      // Sum the group of equal ids (request order).
      std::memcpy(sum.data(), grad_bytes + int64_t{order[k]} * dim * 4,
                  dim * 4);
      uint32_t end = k + 1;
      for (; end < starts[s + 1] && ids[order[end]] == id; ++end) {
        const char* g = grad_bytes + int64_t{order[end]} * dim * 4;
        for (int64_t c = 0; c < dim; ++c) {
          float v;
          std::memcpy(&v, g + c * 4, 4);
          sum[c] += v;
        }
      }
      k = end;
      float* record = nullptr;
      auto it = stripe.index.find(id);
      if (it == stripe.index.end()) {
        if (admission) {
          auto [p, inserted] = stripe.pending.try_emplace(id);
          if (p->second.count + 1 < admit) {
            // Counted only (not admitted yet).
            ++p->second.count;
            p->second.last_step = now;
            if (inserted) ++pending_delta;
            ++unadmitted;
            continue;
          }
          if (!inserted) --pending_delta;
          stripe.pending.erase(p);
        }
        it = stripe.index.try_emplace(id, static_cast<uint32_t>(stripe.rows))
                 .first;
        record = t.Record(stripe, it->second);
        ++stripe.rows;
        ++result.rows_created;
        std::memset(record, 0, t.row_floats * 4);  // count 0, slots 0
        InitialRow(t.spec.initializer(), t.dim, id, record + 2);
        if (eviction) {
          stripe.slot_ids.push_back(id);
          stripe.last_step.push_back(now);
        }
      } else {
        record = t.Record(stripe, it->second);
        if (eviction) stripe.last_step[it->second] = now;
      }
      int64_t step;
      std::memcpy(&step, record, 8);
      ApplyOptimizer(t.spec.optimizer(), step, sum.data(), dim, record + 2,
                     t.slots > 0 ? record + 2 + dim : nullptr);
      ++step;
      std::memcpy(record, &step, 8);
      ++result.rows_updated;
    }
    t.Account(stripe);
  }
  unlock_all();
  t.rows.fetch_add(result.rows_created, std::memory_order_relaxed);
  t.pending_rows.fetch_add(pending_delta, std::memory_order_relaxed);
  t.unadmitted.fetch_add(unadmitted, std::memory_order_relaxed);
  return result;
}

absl::StatusOr<EmbeddingPushResult> EmbeddingStore::Push(
    const std::string& job_id, const std::string& table,
    absl::Span<const uint64_t> ids, const Tensor& gradients,
    const EmbeddingPushKey& key, EmbeddingPushSource source,
    int64_t asp_step) {
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  Table& t = **found;
  std::vector<uint32_t> order;
  std::array<uint32_t, kStripes + 1> starts;
  const bool replicated = !t.replica_sets.empty();
  int32_t shard = -1;
  absl::Status checked =
      RouteIds(t, ids, &order, &starts, /*one_shard=*/replicated, &shard);
  if (!checked.ok()) return checked;
  checked = CheckGradients(t, ids, gradients);
  if (!checked.ok()) return checked;
  if (asp_step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0, got ", asp_step));
  }
  // A client push to a replicated shard: who to forward to (and a backup
  // becomes the primary). Decided before applying; the caller forwards
  // after.
  EmbeddingPushResult routing;
  routing.shard = shard;
  if (replicated && shard >= 0 && source == EmbeddingPushSource::kClient) {
    checked = RouteReplication(t, shard, key, &routing.forward_to,
                               &routing.promoted);
    if (!checked.ok()) return checked;
  }
  // A Capture waits for this push to finish (and this push for a Capture).
  absl::ReaderMutexLock capture_lock(&t.capture_mu);
  // Exactly once per (client, sequence): held until the push is applied.
  std::shared_ptr<Table::ClientLog> log;
  std::optional<absl::ReleasableMutexLock> log_lock;
  if (!key.client_id.empty()) {
    log = t.LogOf(key.client_id);
    log_lock.emplace(&log->mu);
    log->last_used = absl::Now();
    if (log->applied.count(key.sequence)) {
      routing.duplicate = true;
      return routing;
    }
    if (log->applied.size() >= kDedupWindow &&
        key.sequence < *log->applied.begin()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence: ", key.sequence, " of client \"", key.client_id,
          "\" is older than the ", kDedupWindow,
          " pushes this server remembers for it: cannot tell whether it "
          "was applied, so it is refused"));
    }
  }
  // The table's ASP step (eviction clock): the highest step seen.
  int64_t now = t.asp_step.load();
  while (asp_step > now && !t.asp_step.compare_exchange_weak(now, asp_step)) {
  }
  now = std::max(now, asp_step);
  auto applied = ApplyRows(t, ids, gradients.data().data(), order, starts, now);
  if (!applied.ok()) return applied.status();
  EmbeddingPushResult result = *std::move(applied);
  result.shard = routing.shard;
  result.forward_to = std::move(routing.forward_to);
  result.promoted = routing.promoted;
  if (log != nullptr) {
    log->applied.insert(key.sequence);
    if (log->applied.size() > kDedupWindow) {
      log->applied.erase(log->applied.begin());
    }
  }
  t.pushes.fetch_add(1, std::memory_order_relaxed);
  if (source == EmbeddingPushSource::kReplica) {
    t.replicated.fetch_add(1, std::memory_order_relaxed);
  }
  // Eviction under ASP: a scan of every held shard each time the table's
  // step passes the next scan point (every max(1, N / 4) steps).
  const int64_t n = t.spec.evict_after_steps();
  if (n > 0 && now > 0) {
    int64_t next = t.next_scan.load();
    if (now >= next &&
        t.next_scan.compare_exchange_strong(
            next, now + std::max<int64_t>(1, n / 4))) {
      if (log_lock.has_value()) log_lock->Release();
      Evict(t, -1, now, *arena_bytes_);
    }
  }
  return result;
}

absl::StatusOr<EmbeddingBspResult> EmbeddingStore::PushBsp(
    const std::string& job_id, const std::string& table,
    absl::Span<const uint64_t> ids, const Tensor& gradients,
    const EmbeddingBspTag& tag, const EmbeddingPushKey& key,
    EmbeddingPushSource source, std::shared_ptr<EmbeddingBspWaiter> waiter) {
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  Table& t = **found;
  const bool merged = source == EmbeddingPushSource::kReplica;
  if (waiter == nullptr) waiter = std::make_shared<EmbeddingBspWaiter>();
  if (tag.step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: must be >= 0 with bsp, got ", tag.step));
  }
  if (tag.num_ranks < 1 || tag.num_ranks > kMaxBspRanks) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_ranks: must be in [1, ", kMaxBspRanks,
                     "] with bsp, got ", tag.num_ranks));
  }
  if (merged ? tag.rank != -1 : (tag.rank < 0 || tag.rank >= tag.num_ranks)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank: must be ",
        merged ? std::string("-1 (a merged step) in ReplicateRows")
               : absl::StrCat("in [0, num_ranks = ", tag.num_ranks, ")"),
        ", got ", tag.rank));
  }
  if (tag.shard < 0 || tag.shard >= t.spec.num_shards()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard: must be in [0, ", t.spec.num_shards(),
                     ") with bsp, got ", tag.shard));
  }
  if (!t.holds[tag.shard]) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard: this server does not hold shard ", tag.shard, " of table \"",
        t.spec.name(), "\" (it holds [", absl::StrJoin(t.shards, ", "), "])"));
  }
  std::vector<uint32_t> order;
  std::array<uint32_t, kStripes + 1> starts;
  int32_t shard = -1;
  absl::Status checked =
      RouteIds(t, ids, &order, &starts, /*one_shard=*/true, &shard);
  if (!checked.ok()) return checked;
  if (!ids.empty() && shard != tag.shard) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row_ids[0]: row ", ids[0], " is on shard ", shard,
        ", not on the push's shard ", tag.shard));
  }
  checked = CheckGradients(t, ids, gradients);
  if (!checked.ok()) return checked;
  if (merged) {
    for (size_t i = 1; i < ids.size(); ++i) {
      if (ids[i] <= ids[i - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row_ids[", i, "]: a merged step's rows must be ascending and "
            "distinct"));
      }
    }
  }
  // Refusals that depend on the shard's state, checked before a backup is
  // promoted (and again below, as a push may have moved the clock since).
  auto check_state = [&t, &tag]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t.bsp_mu)
      -> absl::Status {
    if (t.bsp_num_ranks != 0 && t.bsp_num_ranks != tag.num_ranks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "num_ranks: table \"", t.spec.name(), "\" has ", t.bsp_num_ranks,
          " BSP ranks, got ", tag.num_ranks));
    }
    auto it = t.bsp.find(tag.shard);
    const int64_t clock = it == t.bsp.end() ? 0 : it->second.clock;
    if (tag.step > clock) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: shard ", tag.shard, " of table \"", t.spec.name(),
          "\" has applied ", clock, " BSP steps here, so step ", tag.step,
          " cannot be applied yet (this replica missed steps, or the pusher "
          "is ahead of its own acknowledged pushes)"));
    }
    return absl::OkStatus();
  };
  {
    absl::MutexLock bsp_lock(&t.bsp_mu);
    checked = check_state();
    if (!checked.ok()) return checked;
  }
  EmbeddingBspResult result;
  result.shard = tag.shard;
  result.step = tag.step;
  result.dim = t.dim;
  if (!merged && !t.replica_sets.empty()) {
    checked = RouteReplication(t, tag.shard, key, &result.forward_to,
                               &result.promoted);
    if (!checked.ok()) return checked;
  }
  absl::ReaderMutexLock capture_lock(&t.capture_mu);
  absl::MutexLock bsp_lock(&t.bsp_mu);
  checked = check_state();
  if (!checked.ok()) return checked;
  Table::BspShard& b = t.bsp[tag.shard];
  if (tag.step < b.clock) {
    result.duplicate = true;
    if (!merged && tag.step == b.forwarding_step) {
      // Acknowledged once the step's forward completed, as its original.
      waiter->duplicate = true;
      b.forward_waiters.push_back(std::move(waiter));
      result.outcome = EmbeddingBspResult::Outcome::kWaiting;
    }
    return result;
  }
  t.bsp_num_ranks = tag.num_ranks;
  const int64_t dim = t.dim;
  std::vector<uint64_t> merged_ids;
  std::vector<float> merged_grads;
  if (merged) {
    merged_ids.assign(ids.begin(), ids.end());
    merged_grads.resize(ids.size() * dim);
    std::memcpy(merged_grads.data(), gradients.data().data(),
                merged_grads.size() * 4);
  } else {
    if (b.ranks.empty()) b.ranks.resize(tag.num_ranks);
    Table::BspRankPush& mine = b.ranks[tag.rank];
    if (mine.have) {
      waiter->duplicate = true;
      result.duplicate = true;
      b.waiters.push_back(std::move(waiter));
      result.outcome = EmbeddingBspResult::Outcome::kWaiting;
      return result;
    }
    mine.have = true;
    mine.ids.assign(ids.begin(), ids.end());
    mine.grads.resize(ids.size() * dim);
    if (!mine.grads.empty()) {  // an empty push's data may be null
      std::memcpy(mine.grads.data(), gradients.data().data(),
                  mine.grads.size() * 4);
    }
    b.waiters.push_back(std::move(waiter));
    if (++b.received < tag.num_ranks) {
      result.outcome = EmbeddingBspResult::Outcome::kWaiting;
      return result;
    }
    // Every rank's push is here: merge them. Per row, the gradients in
    // (rank, request position) order, summed left to right.
    struct Entry {
      uint64_t id;
      int32_t rank;
      uint32_t index;
    };
    std::vector<Entry> entries;
    for (int32_t r = 0; r < tag.num_ranks; ++r) {
      for (size_t i = 0; i < b.ranks[r].ids.size(); ++i) {
        entries.push_back({b.ranks[r].ids[i], r, static_cast<uint32_t>(i)});
      }
    }
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& e) {
                if (a.id != e.id) return a.id < e.id;
                if (a.rank != e.rank) return a.rank < e.rank;
                return a.index < e.index;
              });
    const float scale = 1.0f / static_cast<float>(tag.num_ranks);
    absl::Status overflow;
    for (size_t k = 0; k < entries.size();) {
      const uint64_t id = entries[k].id;
      const size_t at = merged_grads.size();
      merged_ids.push_back(id);
      merged_grads.resize(at + dim, 0.0f);
      float* dst = merged_grads.data() + at;
      const float* first =
          b.ranks[entries[k].rank].grads.data() + entries[k].index * dim;
      std::copy(first, first + dim, dst);
      for (++k; k < entries.size() && entries[k].id == id; ++k) {
        const float* g =
            b.ranks[entries[k].rank].grads.data() + entries[k].index * dim;
        for (int64_t c = 0; c < dim; ++c) dst[c] += g[c];
      }
      for (int64_t c = 0; c < dim; ++c) {
        dst[c] *= scale;
        if (!std::isfinite(dst[c]) && overflow.ok()) {
          overflow = absl::InvalidArgumentError(absl::StrCat(
              "gradients: the mean over ranks of step ", tag.step,
              " for row ", id, " (column ", c,
              ") is not finite; the step's pushes were discarded"));
        }
      }
    }
    if (!overflow.ok()) {
      result.outcome = EmbeddingBspResult::Outcome::kFailed;
      result.error = overflow;
      result.waiters = std::move(b.waiters);
      b.waiters.clear();
      b.ranks.assign(tag.num_ranks, {});
      b.received = 0;
      return result;
    }
  }
  // Apply the merged step: one update per row, ascending id.
  std::vector<uint32_t> merged_order;
  std::array<uint32_t, kStripes + 1> merged_starts;
  checked = RouteIds(t, merged_ids, &merged_order, &merged_starts);
  if (!checked.ok()) return checked;  // not reached: ids checked above
  auto applied =
      ApplyRows(t, merged_ids, reinterpret_cast<const char*>(merged_grads.data()),
                merged_order, merged_starts, tag.step);
  if (!applied.ok()) {
    if (merged) return applied.status();
    result.outcome = EmbeddingBspResult::Outcome::kFailed;
    result.error = applied.status();
    result.waiters = std::move(b.waiters);
    b.waiters.clear();
    b.ranks.assign(tag.num_ranks, {});
    b.received = 0;
    return result;
  }
  result.rows_updated = applied->rows_updated;
  result.rows_created = applied->rows_created;
  b.clock = tag.step + 1;
  t.pushes.fetch_add(1, std::memory_order_relaxed);
  if (merged) t.replicated.fetch_add(1, std::memory_order_relaxed);
  // Eviction under BSP: this shard's rows, every max(1, N / 4) steps, at
  // the same steps on every replica.
  const int64_t n = t.spec.evict_after_steps();
  if (n > 0 && b.clock % std::max<int64_t>(1, n / 4) == 0) {
    Evict(t, tag.shard, tag.step, *arena_bytes_);
  }
  if (t.capture_every > 0 && b.clock % t.capture_every == 0) {
    CaptureShardAtStep(job_id, t, tag.shard, b.clock);
  }
  if (merged) {
    // Pushes of this step that clients sent here (while another replica
    // was their primary) are answered: the step is applied here now.
    result.outcome = EmbeddingBspResult::Outcome::kAnswer;
    result.waiters = std::move(b.waiters);
    b.waiters.clear();
    b.ranks.clear();
    b.received = 0;
    return result;
  }
  b.ranks.assign(tag.num_ranks, {});
  b.received = 0;
  result.outcome = EmbeddingBspResult::Outcome::kApplied;
  if (result.forward_to.empty()) {
    result.waiters = std::move(b.waiters);
    b.waiters.clear();
  } else {
    // (A previous step still forwarding cannot be, as no rank pushes
    // step s + 1 before step s was acknowledged; its waiters would then
    // be answered with this step's.)
    b.forwarding_step = tag.step;
    b.forward_waiters.insert(b.forward_waiters.end(), b.waiters.begin(),
                             b.waiters.end());
    b.waiters.clear();
    result.merged_ids = std::move(merged_ids);
    result.merged_grads = std::move(merged_grads);
  }
  return result;
}

std::vector<std::shared_ptr<EmbeddingBspWaiter>> EmbeddingStore::FinishBspStep(
    const std::string& job_id, const std::string& table, int32_t shard,
    int64_t step) {
  auto found = Find(job_id, table);
  if (!found.ok()) return {};
  Table& t = **found;
  absl::MutexLock bsp_lock(&t.bsp_mu);
  auto it = t.bsp.find(shard);
  if (it == t.bsp.end() || it->second.forwarding_step != step) return {};
  it->second.forwarding_step = -1;
  std::vector<std::shared_ptr<EmbeddingBspWaiter>> waiters =
      std::move(it->second.forward_waiters);
  it->second.forward_waiters.clear();
  return waiters;
}
bool EmbeddingStore::DropReplica(const std::string& job_id,
                                 const std::string& table, int32_t shard,
                                 const std::string& address,
                                 const std::string& reason) {
  auto found = Find(job_id, table);
  if (!found.ok()) return false;
  Table& t = **found;
  absl::MutexLock lock(&t.replication_mu);
  auto it = t.replication.find(shard);
  if (it == t.replication.end()) return false;
  std::vector<std::string>& targets = it->second.forward_to;
  auto target = std::find(targets.begin(), targets.end(), address);
  if (target == targets.end()) return false;
  targets.erase(target);
  it->second.dropped.push_back(absl::StrCat(address, ": ", reason));
  return true;
}

absl::StatusOr<TableStatusResponse> EmbeddingStore::Status(
    const std::string& job_id, const std::string& table, bool checksum) const {
  auto found = Find(job_id, table);
  if (!found.ok()) return found.status();
  const Table& t = **found;
  TableStatusResponse status;
  *status.mutable_spec() = t.spec;
  for (int32_t s : t.shards) status.add_shards(s);
  status.set_rows(t.rows.load());
  status.set_bytes(t.table_bytes.load());
  status.set_row_bytes(t.RowBytes());
  status.set_pulls(t.pulls.load());
  status.set_pushes(t.pushes.load());
  status.set_replicated(t.replicated.load());
  status.set_evicted_rows(t.evicted.load());
  status.set_pending_admission_rows(t.pending_rows.load());
  status.set_unadmitted_pushes(t.unadmitted.load());
  int64_t step = t.asp_step.load();
  {
    absl::MutexLock lock(&t.bsp_mu);
    for (const auto& [s, b] : t.bsp) step = std::max(step, b.clock);
  }
  status.set_step(step);
  std::map<int32_t, TableShardStatus*> by_shard;
  {
    absl::MutexLock lock(&t.replication_mu);
    for (int32_t s : t.shards) {
      TableShardStatus* shard = status.add_shard_status();
      by_shard[s] = shard;
      shard->set_shard(s);
      shard->set_role(TableShardStatus::PRIMARY);
      {
        absl::MutexLock lock(&t.bsp_mu);
        shard->set_bsp_num_ranks(t.bsp_num_ranks);
        auto b = t.bsp.find(s);
        if (b != t.bsp.end()) {
          shard->set_bsp_clock(b->second.clock);
          for (size_t r = 0; r < b->second.ranks.size(); ++r) {
            if (b->second.ranks[r].have) shard->add_bsp_waiting_ranks(r);
          }
        }
      }
      auto it = t.replication.find(s);
      if (it == t.replication.end()) continue;
      const Table::Replication& r = it->second;
      shard->set_role(r.primary ? TableShardStatus::PRIMARY : TableShardStatus::BACKUP);
      for (const std::string& a : r.replicas) shard->add_replicas(a);
      for (const std::string& a : r.forward_to) shard->add_forward_to(a);
      for (const std::string& d : r.dropped) shard->add_dropped(d);
    }
  }
  if (!checksum) return status;
  // Per row: a SplitMix64 chain over (row id, record words); per shard the
  // wrapping sum, so the order rows are visited in does not matter.
  const uint64_t num_shards = static_cast<uint64_t>(t.spec.num_shards());
  const int64_t words = t.row_floats;  // 32-bit words of a record
  for (const Table::Stripe& stripe : t.stripes) {
    absl::ReaderMutexLock lock(&stripe.mu);
    for (const auto& [row, slot] : stripe.index) {
      const float* record = t.Record(stripe, slot);
      uint64_t h = SplitMix64Mix(row ^ 0x9e3779b97f4a7c15ULL);
      for (int64_t w = 0; w < words; ++w) {
        uint32_t bits;
        std::memcpy(&bits, record + w, 4);
        h = SplitMix64Mix(h + bits);
      }
      int64_t updates;
      std::memcpy(&updates, record, 8);
      TableShardStatus* shard =
          by_shard[static_cast<int32_t>(SplitMix64Mix(row) % num_shards)];
      shard->set_rows(shard->rows() + 1);
      shard->set_updates(shard->updates() + updates);
      shard->set_checksum(shard->checksum() + h);
    }
  }
  return status;
}

std::vector<EmbeddingStore::TableUsage> EmbeddingStore::Usage() const {
  std::vector<TableUsage> usage;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, t] : tables_) {
    usage.push_back({key.first, key.second, t->rows.load(),
                     t->table_bytes.load()});
  }
  return usage;
}

absl::Status EmbeddingStore::DropTable(const std::string& job_id,
                                       const std::string& table) {
  std::shared_ptr<Table> dropped;  // freed outside the lock
  {
    absl::MutexLock lock(&mu_);
    auto it = tables_.find(std::make_pair(job_id, table));
    if (it == tables_.end()) {
      return absl::NotFoundError(absl::StrCat(
          "table: no table \"", table, "\" in job ", job_id, " on this server"));
    }
    dropped = std::move(it->second);
    tables_.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace psd
