// Sparse embedding tables held by a parameter server (issue 7): the server
// side of psd.v1.EmbeddingServer (proto/embedding.proto).
//
// A table is num_rows (V) x dim (d) float32, split over num_shards shards by
// ShardOfRow (common/embedding_rows.h); a server holds some of its shards.
// Memory follows the rows touched, never V:
//   * a row is created by its first push: its weights get the seeded
//     initial values (InitialRow), its optimizer slots zero, its update
//     count 0;
//   * a pull of a row never pushed computes the initial values on the fly
//     and stores nothing.
// Storage per table: 8 stripes (by the top 3 bits of SplitMix64Mix(row)),
// each an absl::flat_hash_map<uint64_t row id, uint32_t slot> plus an arena
// of fixed-size chunks (about 16 KiB each) of row records
//   [int64 update count][d weights][OptimizerSlots x d slots]   (float32)
// so one row costs row_bytes = 8 + 4 d (1 + k) bytes of arena, plus about
// 17 / load-factor bytes of map (16 B slot + 1 control byte; the map's load
// factor is between 7/16 and 7/8), plus a partly filled last chunk per
// stripe. bytes() below counts exactly that: chunks allocated x chunk bytes
// + map capacity x 17 B. See docs/ARCHITECTURE.md for measured figures.
//
// Push: duplicate row ids of one request are summed first (in request
// order; TensorFlow's IndexedSlices and PyTorch's sparse embedding gradients
// coalesce the same way), then each distinct row gets one optimizer update,
// server/ps/optimizer.h's ApplyOptimizer on that row alone, with the row's own
// slots and its own update count as `step`. Rows not in the push are not
// touched (no weight decay, no slot decay). Consistency is ASP: a push is
// applied when it arrives; there is no step and no barrier. Pushes with an
// EmbeddingPushKey are applied once each (dedup).
//
// Replication: a held shard may have replicas on other servers
// (TableShardReplicas in proto/embedding.proto). The store keeps, per such shard,
// its replica list, its role (primary or backup), and the replicas dropped
// after a failed forward; Push says where a client push must be forwarded
// (EmbeddingPushResult.forward_to) and promotes a backup that receives one.
// The forwarding itself is EmbeddingService's.
//
// Snapshots (Capture, Restore): Capture copies a table's rows and dedup
// logs while the table's pushes wait (each push holds the table's capture
// lock in shared mode from its dedup check to its log entry, Capture holds
// it exclusively), so the copy is a cut between pushes: every push is in it
// wholly, with its dedup key, or not at all. Pulls do not wait. Writing
// the copy to disk is EmbeddingSnapshotStore's (server/embedding/embedding_snapshot.h).
//
// Thread-safe: any number of pulls, pushes and table calls may run at once.
// A push holds the write locks of the stripes it touches (ascending order)
// while it applies; a pull holds read locks, one stripe at a time.
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_STORE_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/proto.h"
#include "proto/embedding.pb.h"

namespace psd {

struct EmbeddingStoreOptions {
  // Upper bound on the bytes of row storage (arena chunks) over all tables;
  // a push that needs new chunks beyond it fails with RESOURCE_EXHAUSTED
  // and applies nothing. The hash maps' arrays are counted in bytes() but
  // not reserved against this bound. 0 = no bound. Default: 0.
  int64_t max_bytes = 0;
};

// What a push did.
struct EmbeddingPushResult {
  // Distinct rows updated, and how many of them the push created.
  int64_t rows_updated = 0;
  int64_t rows_created = 0;
  // The push's key was applied already: nothing was done.
  bool duplicate = false;
  // The shard of the push's rows when they are all of one shard, else -1.
  int32_t shard = -1;
  // kClient pushes to a replicated shard: the backups to forward the push
  // to (host:port; its replicas minus this server minus dropped ones), also
  // for a duplicate (a retry must wait for its forward). Empty otherwise.
  std::vector<std::string> forward_to;
  // This push made this server the shard's primary (it was a backup).
  bool promoted = false;
};

// A table's state copied at one instant (EmbeddingStore::Capture), and
// what EmbeddingStore::Restore loads.
struct EmbeddingTableCapture {
  std::string job_id;
  EmbeddingTableSpec spec;  // with defaults
  // BSP clocks (steps applied) of the held shards that have one, and the
  // table's num_ranks (0: no BSP push yet); the ASP step (highest
  // PushRowsRequest.step seen); admission counts (row -> pushes counted,
  // rows not admitted yet). Stored in the snapshot's dedup log record as
  // entries with reserved client ids (kReservedClientPrefix).
  std::vector<std::pair<int32_t, int64_t>> bsp_clocks;
  int32_t bsp_num_ranks = 0;
  int64_t asp_step = 0;
  std::vector<std::pair<uint64_t, uint32_t>> admission;
  // The shards held, ascending.
  std::vector<int32_t> shards;
  // A step capture (EmbeddingStore::ScheduleStepCaptures): the BSP step k
  // at which every held shard was copied (each at clock k); 0 otherwise.
  int64_t step = 0;
  // A step capture: the generations to keep when written (0: the
  // snapshot store's default).
  int keep_last = 0;
  // Floats per row record: 2 (the int64 update count, its 8 bytes as they
  // are in memory, little-endian) + dim (weights) + dim x OptimizerSlots
  // (slots, one after the other).
  int64_t record_floats = 0;
  // Row i has id ids[i] and record records[i * record_floats, ...); ids
  // distinct, in no particular order.
  std::vector<uint64_t> ids;
  std::vector<float> records;
  // Dedup logs: per client id, the sequences remembered, ascending.
  std::vector<std::pair<std::string, std::vector<uint64_t>>> dedup;
};

// Most ranks of a BSP table.
inline constexpr int32_t kMaxBspRanks = 65536;

// A BSP push (PushRowsRequest.bsp): rank `rank` of `num_ranks` pushes its
// gradient of step `step` for shard `shard` (see PushBsp). rank -1: a
// step already merged by the shard's primary (ReplicateRows only).
struct EmbeddingBspTag {
  int64_t step = 0;
  int32_t rank = 0;
  int32_t num_ranks = 1;
  int32_t shard = 0;
};

// A BSP push call waiting for its step to be applied (and forwarded); the
// caller's (EmbeddingService's reactor). The store only keeps it and hands
// it back (EmbeddingBspResult.waiters, FinishBspStep); it sets `duplicate`
// when the call's (step, rank) had been received before.
class EmbeddingBspWaiter {
 public:
  virtual ~EmbeddingBspWaiter() = default;
  bool duplicate = false;
};

// What PushBsp did.
struct EmbeddingBspResult {
  enum class Outcome {
    // Answer the call now: `duplicate` (a step applied and forwarded
    // before), or a merged step applied on a backup (kReplica; `waiters`
    // then holds client calls of that step buffered here, to answer OK).
    kAnswer,
    // The waiter was kept: the step waits for other ranks, or for its
    // forward to the backups (a duplicate of a step being forwarded).
    kWaiting,
    // This push completed the step: it was applied (rows_*); forward
    // merged_ids / merged_grads (ascending ids, [n, dim] means) as step
    // `step` to forward_to, then call FinishBspStep for the waiters. With
    // no forward_to, `waiters` holds them already (this call's included).
    kApplied,
    // This push completed the step but the merge failed (`error`: the
    // mean overflowed to Inf, or RESOURCE_EXHAUSTED): the step's pushes
    // were discarded (nothing applied); answer `waiters` with `error`.
    kFailed,
  };
  Outcome outcome = Outcome::kAnswer;
  bool duplicate = false;
  int64_t rows_updated = 0;
  int64_t rows_created = 0;
  int32_t shard = 0;
  int64_t step = 0;
  int32_t dim = 0;  // the table's
  std::vector<uint64_t> merged_ids;
  std::vector<float> merged_grads;
  std::vector<std::string> forward_to;
  bool promoted = false;
  std::vector<std::shared_ptr<EmbeddingBspWaiter>> waiters;
  absl::Status error;
};

// Where a push comes from.
enum class EmbeddingPushSource {
  // A client's PushRows: promotes a backup, gets forward targets.
  kClient,
  // A primary's ReplicateRows: applied only.
  kReplica,
};

// Makes a push exactly-once (DESIGN invariant 1): a client (client_id,
// unique per client process, e.g. random) numbers its push calls
// (sequence, unique per call of that client, increasing), and a server
// applies each (client_id, sequence) once per table: a retry of a call
// that was applied is acknowledged as a duplicate and changes nothing, and
// a retry that arrives while the original applies waits for it. A server
// remembers, per table and client, the last 1024 sequences applied, and a
// client for 10 minutes after its last push; a sequence older than the
// 1024 remembered is refused (FAILED_PRECONDITION) rather than risk a
// second application. Empty client_id: no dedup (each call is applied).
struct EmbeddingPushKey {
  std::string client_id;
  uint64_t sequence = 0;
};

// Client ids starting with this byte are reserved (a snapshot's BSP clocks
// and admission counts are stored as dedup entries under such ids);
// EmbeddingService refuses them.
inline constexpr char kReservedClientPrefix = '\x01';

class EmbeddingStore {
 public:
  explicit EmbeddingStore(EmbeddingStoreOptions options = {});
  ~EmbeddingStore();
  EmbeddingStore(const EmbeddingStore&) = delete;
  EmbeddingStore& operator=(const EmbeddingStore&) = delete;

  // Creates table spec.name() of `job_id` holding `shards`, with the
  // replica sets of those that have backups (`replicas`: at most one per
  // held shard; a shard without one is unreplicated). Returns true when
  // created, false when the same table (same spec after defaults, same
  // shards, same replicas) was there already.
  // Errors: INVALID_ARGUMENT naming the field ("job_id", "spec.<field>",
  // "shards[i]", "replicas[i].<field>"); ALREADY_EXISTS (another spec,
  // other shards or other replicas).
  absl::StatusOr<bool> CreateTable(const std::string& job_id,
                                   const EmbeddingTableSpec& spec,
                                   const std::vector<int32_t>& shards,
                                   const std::vector<TableShardReplicas>& replicas =
                                       {});

  // Writes rows `ids` (in that order) to *out: ids.size() x dim float32,
  // little-endian, row-major (out is resized), and the table's dim to *dim
  // when not null. Allocates no rows.
  // Errors: NOT_FOUND (job or table); INVALID_ARGUMENT "row_ids[i]: ..."
  // for an id >= num_rows; FAILED_PRECONDITION "row_ids[i]: ..." for a row
  // of a shard not held here.
  absl::Status Pull(const std::string& job_id, const std::string& table,
                    absl::Span<const uint64_t> ids, std::string* out,
                    int32_t* dim = nullptr) const;

  // Applies `gradients` ([ids.size(), dim] FLOAT32, finite) to rows `ids`
  // (see the file comment), once per `key` (EmbeddingPushKey). The whole
  // request is checked before any row changes. Errors: those of Pull, plus
  // INVALID_ARGUMENT naming gradients.dtype / gradients.shape /
  // gradients.data (size, or the first NaN/Inf element with its row),
  // RESOURCE_EXHAUSTED (max_bytes), FAILED_PRECONDITION naming sequence
  // (a key too old to tell whether it was applied). For a table with a
  // replicated shard: INVALID_ARGUMENT naming row_ids[i] when the rows
  // are of more than one shard, and, from kClient on a replicated shard,
  // naming client_id when the key is empty (a forward must be
  // exactly-once).
  absl::StatusOr<EmbeddingPushResult> Push(
      const std::string& job_id, const std::string& table,
      absl::Span<const uint64_t> ids, const Tensor& gradients,
      const EmbeddingPushKey& key = {},
      EmbeddingPushSource source = EmbeddingPushSource::kClient,
      int64_t asp_step = 0);

  // A BSP push (PushRowsRequest.bsp; proto/embedding.proto and
  // docs/ARCHITECTURE.md, "BSP row pushes"). kClient: buffers rank
  // tag.rank's push of step tag.step for shard tag.shard; the push that
  // completes the step (one from each of tag.num_ranks ranks) merges them
  // (per row: gradients summed in rank order, then request order, times
  // 1 / num_ranks, float32) and applies one optimizer update per row
  // (ascending id), with admission and eviction at step tag.step, and the
  // shard's clock becomes tag.step + 1. kReplica with rank -1: applies an
  // already merged step (ids distinct) the same way, once (step < clock
  // is a duplicate). `waiter` is kept while the call waits (Outcome).
  // Errors (nothing changes): those of Push (row ids, gradients), and
  // INVALID_ARGUMENT naming step (< 0), rank, num_ranks (not in [1,
  // 65536], or not the table's) or shard (not in [0, num_shards));
  // FAILED_PRECONDITION naming shard (not held here) or step (> the
  // shard's clock: this replica missed steps).
  absl::StatusOr<EmbeddingBspResult> PushBsp(
      const std::string& job_id, const std::string& table,
      absl::Span<const uint64_t> ids, const Tensor& gradients,
      const EmbeddingBspTag& tag, const EmbeddingPushKey& key,
      EmbeddingPushSource source, std::shared_ptr<EmbeddingBspWaiter> waiter);

  // After the forwards of a kApplied step: the calls waiting for it
  // (empty when the table or step is gone).
  std::vector<std::shared_ptr<EmbeddingBspWaiter>> FinishBspStep(
      const std::string& job_id, const std::string& table, int32_t shard,
      int64_t step);

  // Takes backup `address` of `shard` out of the forward list for good,
  // recording `reason` (shown in TableStatus). Returns false when it was
  // not listed (already dropped, or the table is gone).
  bool DropReplica(const std::string& job_id, const std::string& table,
                   int32_t shard, const std::string& address,
                   const std::string& reason);

  // The table's spec (with defaults), shards, rows, bytes, call counts and
  // per-shard status (role, replicas; with `checksum` also rows, updates
  // and checksum, which reads every row: O(rows held)).
  // Errors: NOT_FOUND.
  absl::StatusOr<TableStatusResponse> Status(const std::string& job_id,
                                             const std::string& table,
                                             bool checksum = false) const;

  // Copies the table's rows and dedup logs (see the file comment:
  // pushes to the table wait meanwhile; pulls do not). O(rows held) time
  // and memory (row_bytes + 8 per row). Errors: NOT_FOUND.
  absl::StatusOr<EmbeddingTableCapture> Capture(const std::string& job_id,
                                                const std::string& table) const;

  // Creates table capture.spec of capture.job_id holding `shards` (each
  // one of capture.shards) with `replicas` (as CreateTable), loaded with
  // the captured rows of those shards (bitwise: update counts, weights,
  // slots) and the captured dedup logs (each client remembered as if it
  // had just pushed). The table is visible only once loaded. Returns the
  // rows loaded. Errors: as CreateTable; NOT_FOUND "shards[i]: ..." for a
  // shard not in the capture; ALREADY_EXISTS when the table exists;
  // DATA_LOSS when the capture is inconsistent (sizes, duplicate or
  // out-of-range ids); RESOURCE_EXHAUSTED (max_bytes).
  absl::StatusOr<int64_t> Restore(
      const EmbeddingTableCapture& capture, const std::vector<int32_t>& shards,
      const std::vector<TableShardReplicas>& replicas = {});

  // Step captures (issue 25: a sparse job's tables snapshotted with its
  // dense part). From now on, whenever a BSP step makes a held shard's
  // clock a multiple k of `every_steps` (step k - 1 applied, by PushBsp
  // from a client or a primary's forward alike), that shard's rows,
  // admission counts and clock are copied (under the table's BSP lock, so
  // no other step of the table applies meanwhile); once every held shard
  // has its copy of step k, the capture (EmbeddingTableCapture.step = k,
  // bsp_clocks all k, keep_last = `keep_last`, no dedup logs: BSP pushes
  // are deduplicated by step) goes to the sink (SetStepCaptureSink). The
  // shards of a table are at most one step apart under BSP (a rank pushes
  // step s + 1 only once its step s was applied on every shard), so at
  // most two captures are partial at once. Eviction clocks are not
  // captured (a restore restarts them). every_steps 0 stops them.
  // Errors: NOT_FOUND; INVALID_ARGUMENT naming snapshot_every_steps (< 0).
  absl::Status ScheduleStepCaptures(const std::string& job_id,
                                    const std::string& table,
                                    int64_t every_steps, int keep_last);

  // Where complete step captures go. Called with the table's BSP lock
  // held, on the thread of the push that completed it: it must not call
  // back into the store, and should only queue the capture (e.g.
  // EmbeddingStepWriter). Without a sink, captures are dropped.
  using StepCaptureSink =
      std::function<void(std::shared_ptr<EmbeddingTableCapture>)>;
  void SetStepCaptureSink(StepCaptureSink sink);

  // Frees the table (calls in flight on it finish first on their own copy
  // of its handle). Errors: NOT_FOUND.
  absl::Status DropTable(const std::string& job_id, const std::string& table);

  // Live rows and bytes of one table (as TableStatusResponse.rows, bytes).
  struct TableUsage {
    std::string job_id;
    std::string table;
    int64_t rows = 0;
    int64_t bytes = 0;
  };
  // Every table's, by (job id, table name). O(tables).
  std::vector<TableUsage> Usage() const;

  // Bytes held over all tables (as TableStatusResponse.bytes).
  int64_t bytes() const { return bytes_->load(std::memory_order_relaxed); }

  // One table (defined in the .cc).
  struct Table;

 private:
  // Validates a CreateTable request and builds its (empty, unlisted)
  // table.
  absl::StatusOr<std::shared_ptr<Table>> NewTable(
      const std::string& job_id, const EmbeddingTableSpec& spec,
      const std::vector<int32_t>& shards,
      const std::vector<TableShardReplicas>& replicas) const;
  absl::StatusOr<std::shared_ptr<Table>> Find(const std::string& job_id,
                                              const std::string& table) const;
  // Applies checked rows (RouteIds' order and starts; gradients
  // [ids.size(), dim] float32 at grad_bytes) with admission; `now` is the
  // table's step for eviction clocks. REQUIRES: t.capture_mu held shared.
  // Errors: RESOURCE_EXHAUSTED (nothing applied).
  absl::StatusOr<EmbeddingPushResult> ApplyRows(
      Table& t, absl::Span<const uint64_t> ids, const char* grad_bytes,
      std::vector<uint32_t>& order, absl::Span<const uint32_t> starts,
      int64_t now);

  // Constant after construction.
  const EmbeddingStoreOptions options_;
  // Bytes over all tables (bytes()), and of their arenas alone
  // (max_bytes); shared with the tables, which may outlive a DropTable
  // while calls on them finish.
  const std::shared_ptr<std::atomic<int64_t>> bytes_;
  const std::shared_ptr<std::atomic<int64_t>> arena_bytes_;

  // Copies shard `shard` of `t` (its clock just became `clock`) into the
  // table's step capture of `clock`; hands a complete one to the sink.
  // REQUIRES: t.bsp_mu held, t.capture_mu held shared.
  void CaptureShardAtStep(const std::string& job_id, Table& t, int32_t shard,
                          int64_t clock);

  absl::Mutex sink_mu_;
  StepCaptureSink sink_ ABSL_GUARDED_BY(sink_mu_);

  mutable absl::Mutex mu_;
  // (job id, table name) -> table.
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Table>>
      tables_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_STORE_H_
