// The in-memory layout of one embedding table held by EmbeddingStore:
// rows in 8 stripes (by the top bits of SplitMix64Mix(row)), each an
// open-addressing index into an arena of fixed-size row records, plus the
// table's replication state and per-client dedup logs. Private to
// server/embedding (embedding_store.cc and embedding_capture.cc).
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_TABLE_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_TABLE_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/embedding/embedding_store.h"
#include "server/ps/optimizer.h"

namespace psd {

// Rows are split into kStripes stripes by the top kStripeBits bits of
// SplitMix64Mix(row), each with its own lock.
inline constexpr int kStripeBits = 3;
inline constexpr int kStripes = 1 << kStripeBits;
// Target size of one arena chunk.
inline constexpr int64_t kChunkBytes = 16 << 10;
// Bytes per map slot: the (uint64, uint32) pair padded to 16, plus one
// control byte (absl's SwissTable).
inline constexpr int64_t kMapSlotBytes =
    sizeof(std::pair<const uint64_t, uint32_t>) + 1;

// Pushes remembered per client and table for dedup, and how long a client
// with no push is remembered (see EmbeddingPushKey).
// Bytes per admission-count map slot: (uint64, {uint32, int64}) padded to
// 24, plus one control byte.
inline constexpr int64_t kPendingSlotBytes =
    sizeof(std::pair<const uint64_t, std::pair<uint32_t, int64_t>>) + 1;

inline constexpr size_t kDedupWindow = 1024;
inline constexpr absl::Duration kDedupIdle = absl::Minutes(10);

inline int StripeOf(uint64_t mixed) {
  return static_cast<int>(mixed >> (64 - kStripeBits));
}

struct EmbeddingStore::Table {
  // One eighth of the rows: its map and its arena.
  struct Stripe {
    mutable absl::Mutex mu;
    absl::flat_hash_map<uint64_t, uint32_t> index ABSL_GUARDED_BY(mu);
    std::vector<std::unique_ptr<float[]>> chunks ABSL_GUARDED_BY(mu);
    int64_t rows ABSL_GUARDED_BY(mu) = 0;
    // With eviction (spec.evict_after_steps > 0), by slot: the row id
    // and the step of its last push (the table's step then).
    std::vector<uint64_t> slot_ids ABSL_GUARDED_BY(mu);
    std::vector<int64_t> last_step ABSL_GUARDED_BY(mu);
    // With admission (spec.admit_after_pushes > 1): rows pushed but not
    // created yet -> pushes counted and the step of the last one.
    struct Pending {
      uint32_t count = 0;
      int64_t last_step = 0;
    };
    absl::flat_hash_map<uint64_t, Pending> pending ABSL_GUARDED_BY(mu);
    // What this stripe last added to the accounting.
    int64_t accounted ABSL_GUARDED_BY(mu) = 0;
  };

  // Replication state of one replicated shard.
  struct Replication {
    std::vector<std::string> replicas;  // primary first
    int32_t self = 0;                   // this server's index in replicas
    bool primary = false;
    std::vector<std::string> forward_to;  // replicas - self - dropped
    std::vector<std::string> dropped;     // "address: reason"
  };

  Table(EmbeddingTableSpec s, std::vector<int32_t> sh,
        std::vector<TableShardReplicas> repl,
        std::shared_ptr<std::atomic<int64_t>> store_total,
        std::shared_ptr<std::atomic<int64_t>> store_arena)
      : spec(std::move(s)),
        shards(std::move(sh)),
        replica_sets(std::move(repl)),
        dim(spec.dim()),
        slots(OptimizerSlots(spec.optimizer())),
        row_floats(2 + static_cast<int64_t>(dim) * (1 + slots)),
        rows_per_chunk(std::max<int64_t>(1, kChunkBytes / (row_floats * 4))),
        holds(spec.num_shards(), false),
        total(std::move(store_total)),
        arena(std::move(store_arena)) {
    for (int32_t s : shards) holds[s] = true;
    for (const TableShardReplicas& r : replica_sets) {
      Replication& state = replication[r.shard()];
      state.replicas.assign(r.replicas().begin(), r.replicas().end());
      state.self = r.self();
      state.primary = r.self() == 0;
      if (state.primary) {
        for (int32_t i = 0; i < r.replicas_size(); ++i) {
          if (i != r.self()) state.forward_to.push_back(r.replicas(i));
        }
      }
    }
  }

  ~Table() {
    int64_t all = 0, chunk_bytes = 0;
    for (Stripe& s : stripes) {
      absl::MutexLock lock(&s.mu);
      all += s.accounted;
      chunk_bytes += static_cast<int64_t>(s.chunks.size()) * ChunkBytes();
    }
    total->fetch_sub(all);
    arena->fetch_sub(chunk_bytes);
  }

  int64_t ChunkBytes() const { return rows_per_chunk * row_floats * 4; }
  int64_t RowBytes() const { return row_floats * 4; }

  // The record of slot `slot`. REQUIRES: s.mu held.
  float* Record(const Stripe& s, uint32_t slot) const {
    return s.chunks[slot / rows_per_chunk].get() +
           (slot % rows_per_chunk) * row_floats;
  }

  // Brings the accounting up to date with the stripe's arrays.
  void Account(Stripe& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    const int64_t now =
        static_cast<int64_t>(s.chunks.size()) * ChunkBytes() +
        static_cast<int64_t>(s.index.capacity()) * kMapSlotBytes +
        static_cast<int64_t>(s.slot_ids.capacity()) * 8 +
        static_cast<int64_t>(s.last_step.capacity()) * 8 +
        static_cast<int64_t>(s.pending.capacity()) * kPendingSlotBytes;
    total->fetch_add(now - s.accounted);
    table_bytes.fetch_add(now - s.accounted);
    s.accounted = now;
  }

  // Constant after construction.
  const EmbeddingTableSpec spec;  // with defaults
  const std::vector<int32_t> shards;
  // As created (sorted by shard), for the idempotency check.
  const std::vector<TableShardReplicas> replica_sets;
  const int32_t dim;
  const int slots;
  const int64_t row_floats;  // count (2 floats) + weights + slots
  const int64_t rows_per_chunk;
  std::vector<bool> holds;  // by shard; constant after construction
  const std::shared_ptr<std::atomic<int64_t>> total;
  const std::shared_ptr<std::atomic<int64_t>> arena;

  // The dedup state of one client (EmbeddingPushKey): the sequence numbers
  // of its last kDedupWindow pushes applied here. mu is held while the
  // client's push applies, so a retry waits for the original.
  struct ClientLog {
    absl::Mutex mu;
    std::set<uint64_t> applied ABSL_GUARDED_BY(mu);
    absl::Time last_used ABSL_GUARDED_BY(mu);
  };
  // The client's log (created on first use); drops the logs idle for
  // kDedupIdle, at most once a minute.
  std::shared_ptr<ClientLog> LogOf(const std::string& client_id) {
    absl::MutexLock lock(&clients_mu);
    const absl::Time now = absl::Now();
    if (now - last_sweep > absl::Minutes(1)) {
      last_sweep = now;
      for (auto it = clients.begin(); it != clients.end();) {
        absl::MutexLock log_lock(&it->second->mu);
        it = now - it->second->last_used > kDedupIdle ? clients.erase(it)
                                                      : std::next(it);
      }
    }
    std::shared_ptr<ClientLog>& log = clients[client_id];
    if (log == nullptr) log = std::make_shared<ClientLog>();
    return log;
  }

  // Pushes hold it shared from their dedup check to their log entry;
  // Capture holds it exclusively (a cut between pushes).
  mutable absl::Mutex capture_mu;
  std::array<Stripe, kStripes> stripes;
  mutable absl::Mutex replication_mu;
  // Shard -> its replication; only replicated shards are here. The keys
  // are constant after construction.
  std::map<int32_t, Replication> replication ABSL_GUARDED_BY(replication_mu);
  absl::Mutex clients_mu;
  std::map<std::string, std::shared_ptr<ClientLog>> clients
      ABSL_GUARDED_BY(clients_mu);
  absl::Time last_sweep ABSL_GUARDED_BY(clients_mu) = absl::Now();
  // BSP state of one held shard (PushBsp): its clock (steps applied), the
  // pushes of step `clock` received so far (by rank), and the step being
  // forwarded to the backups with the calls waiting for that.
  struct BspRankPush {
    bool have = false;
    std::vector<uint64_t> ids;
    std::vector<float> grads;  // [ids.size(), dim]
  };
  struct BspShard {
    int64_t clock = 0;
    std::vector<BspRankPush> ranks;  // num_ranks entries once used
    int32_t received = 0;
    std::vector<std::shared_ptr<EmbeddingBspWaiter>> waiters;
    int64_t forwarding_step = -1;  // -1: none
    std::vector<std::shared_ptr<EmbeddingBspWaiter>> forward_waiters;
  };
  // Held (after capture_mu, shared) while a BSP push buffers or applies;
  // the stripes' locks are taken under it.
  mutable absl::Mutex bsp_mu;
  std::map<int32_t, BspShard> bsp ABSL_GUARDED_BY(bsp_mu);
  int32_t bsp_num_ranks ABSL_GUARDED_BY(bsp_mu) = 0;
  // Step captures (EmbeddingStore::ScheduleStepCaptures): every this many
  // BSP steps (0: none), keeping this many generations; the captures of
  // steps some held shard has not reached yet, by step, and the shards
  // already copied into each.
  int64_t capture_every ABSL_GUARDED_BY(bsp_mu) = 0;
  int capture_keep ABSL_GUARDED_BY(bsp_mu) = 0;
  struct StepCapture {
    std::shared_ptr<EmbeddingTableCapture> capture;
    std::set<int32_t> shards;
  };
  std::map<int64_t, StepCapture> step_captures ABSL_GUARDED_BY(bsp_mu);
  // ASP: the highest PushRowsRequest.step seen, and the step of the next
  // eviction scan.
  std::atomic<int64_t> asp_step{0};
  std::atomic<int64_t> next_scan{0};
  std::atomic<int64_t> evicted{0};
  std::atomic<int64_t> pending_rows{0};
  std::atomic<int64_t> unadmitted{0};
  std::atomic<int64_t> table_bytes{0};
  std::atomic<int64_t> rows{0};
  std::atomic<int64_t> pulls{0};
  std::atomic<int64_t> pushes{0};
  std::atomic<int64_t> replicated{0};
};

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_TABLE_H_
