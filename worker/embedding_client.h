// The client side of sparse embedding tables (proto/embedding.proto): routes
// row ids to the parameter servers that hold their shards, and pulls and
// pushes rows over psd.v1.EmbeddingServer.
#ifndef PSD_WORKER_EMBEDDING_CLIENT_H_
#define PSD_WORKER_EMBEDDING_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/proto.h"
#include "proto/embedding.grpc.pb.h"
#include "worker/row_cache.h"

namespace psd {

struct EmbeddingClientOptions {
  // Largest row payload of one call, in bytes (rows x dim x 4): a larger
  // pull or push is cut into calls of at most this size, all in flight at
  // once (STYLE 7: bounded messages). At least one row per call.
  // Default: 1 MiB.
  int64_t max_call_bytes = 1 << 20;
  // Deadline of one call, ms. Default: 30 s.
  int timeout_ms = 30000;
  // Times a call that failed with UNAVAILABLE is sent again to the same
  // server (after 100 ms, 200 ms, ...), and one that failed with
  // DEADLINE_EXCEEDED when its shard has no further replica. Then, or at
  // once after DEADLINE_EXCEEDED, a shard with a further replica fails
  // over to it (see EmbeddingClient). Safe for pushes: each carries this
  // client's id and its own sequence number, and a server applies each
  // once (PushRowsRequest.client_id). Default: 3.
  int retries = 3;
  // The dedup identity of this client's pushes; unique per client (two
  // clients with one id would drop each other's pushes). Default: empty,
  // for 128 random bits.
  std::string client_id;
  // Deadline of one SnapshotTable or restoring CreateTable call (they
  // read or write a server's whole share of a table), ms. Default: 10 min.
  int snapshot_timeout_ms = 600000;
  // BSP pushes (Push with a BspTag): how long one push may wait in all for
  // the step's other ranks, ms. A BSP call that reaches its deadline
  // (timeout_ms) while its server still answers TableStatus is sent again
  // to the same replica (it joins its buffered push) until this much time
  // passed; then Push fails with DEADLINE_EXCEEDED. Default: 10 min.
  int64_t bsp_wait_ms = 600000;
};

// A BSP push's tag (PushRowsRequest.bsp): this worker is rank `rank` of
// `num_ranks` and pushes its gradient of step `step` (0, 1, ... from the
// table's creation or restored clock).
struct BspTag {
  int64_t step = 0;
  int32_t rank = 0;
  int32_t num_ranks = 1;
};

// One job's view of its embedding tables. replicas[s] lists the host:port
// of the psd_servers holding shard s of every table made by this client,
// the primary first (num_shards = replicas.size()); row r goes to shard
// ShardOfRow(r, S) (common/embedding_rows.h). The table layout is not taken
// from the coordinator: the caller names the servers (see
// docs/ARCHITECTURE.md, "Sparse embedding tables").
//
// Pushes are exactly-once: each call carries (client_id, sequence), so a
// retried call is applied once (see EmbeddingClientOptions.retries).
//
// Replication and failover: pulls and pushes go to a shard's current
// replica, at first the primary. The primary forwards each push to the
// backups and answers once they have it (proto/embedding.proto). When the
// current replica fails a call with UNAVAILABLE `retries` times, or with
// DEADLINE_EXCEEDED, the client moves that shard to the next replica in
// its list, for good (failovers() counts the moves), and sends the calls
// that had not succeeded there again, with the same dedup keys: a push the
// old primary had forwarded is a duplicate there, one it had not is
// applied. The first push a backup receives makes it the shard's primary.
// A shard with no replica left fails the call with the last error. Each
// client fails over on its own: there is no fencing (see
// docs/ARCHITECTURE.md for what that allows).
//
// Not thread-safe: one caller at a time (request buffers are reused). Use
// one client per thread.
class EmbeddingClient {
 public:
  // One replica per shard: servers[s] holds shard s.
  // Errors: INVALID_ARGUMENT for an empty job id or server list.
  static absl::StatusOr<std::unique_ptr<EmbeddingClient>> Create(
      const std::string& job_id, const std::vector<std::string>& servers,
      EmbeddingClientOptions options = {});
  // replicas[s]: the replicas of shard s, primary first (1 to 16 distinct
  // addresses; one server may hold several shards). Errors:
  // INVALID_ARGUMENT naming replicas[s] or replicas[s][j].
  static absl::StatusOr<std::unique_ptr<EmbeddingClient>> Create(
      const std::string& job_id,
      const std::vector<std::vector<std::string>>& replicas,
      EmbeddingClientOptions options = {});
  ~EmbeddingClient();

  int32_t num_shards() const { return static_cast<int32_t>(replicas_.size()); }
  // The replica shard s's calls go to now (its primary until a failover).
  const std::string& current_replica(int32_t shard) const {
    return replicas_[shard][current_[shard]];
  }
  // Shards moved to their next replica so far.
  int64_t failovers() const { return failovers_; }
  // This client's dedup identity (EmbeddingClientOptions.client_id).
  const std::string& client_id() const { return client_id_; }
  // Sets the next push call's sequence number (PushRowsRequest.sequence;
  // each call takes the next). A worker that numbers its calls from its
  // step (e.g. step x 2^20) with a client_id of its rank gives the worker
  // that replaces it the same keys for the same step's pushes, so a push
  // its predecessor made is acknowledged as a duplicate: ASP pushes stay
  // exactly-once across a worker's death. Sequences must grow.
  void set_next_sequence(uint64_t sequence) { next_sequence_ = sequence; }
  // Rounds of calls sent again after UNAVAILABLE/DEADLINE_EXCEEDED.
  int64_t retried_calls() const { return retried_calls_; }

  // Creates the table on every server: one CreateTable per server, with
  // the shards it holds and, for replicated shards, their replica lists
  // and its index in them (CreateTableRequest.replicas). spec.num_shards 0
  // means num_shards(); another value than num_shards() is
  // INVALID_ARGUMENT. Succeeds when the same table exists already.
  // Errors: the first server's error, prefixed with its address.
  absl::Status CreateTable(EmbeddingTableSpec spec);

  // Snapshots the table on every server holding a shard of it (every
  // replica, each once), one after the other, with `metadata` (e.g. the
  // training epoch; SnapshotTableRequest.metadata). Call it when no push
  // is in flight for the snapshots to hold the same pushes on every
  // server. Returns the servers' responses, by address. Errors: the first
  // failing server's, prefixed with its address (the servers before it
  // wrote theirs; the previous snapshots of the others stay as they were).
  absl::StatusOr<std::map<std::string, SnapshotTableResponse>> Snapshot(
      const std::string& table,
      const std::map<std::string, std::string>& metadata = {});

  // Restores the table on every server from that server's newest snapshot
  // (CreateTable with restore: same shards and replica lists as
  // CreateTable, so the addresses may differ from the snapshot's time).
  // Returns the snapshots' metadata, which must be the same on every
  // server. Errors: the first server's, prefixed with its address
  // (NOT_FOUND: no snapshot; DATA_LOSS: none verifies; ALREADY_EXISTS);
  // FAILED_PRECONDITION when two servers restored snapshots with different
  // metadata (a crash between their snapshots; the table is then left
  // restored, for the caller to drop).
  absl::StatusOr<std::map<std::string, std::string>> Restore(
      EmbeddingTableSpec spec);

  // Drops the table on every server (all are tried). Errors: the first
  // server's, as CreateTable (NOT_FOUND; UNAVAILABLE for a dead one).
  absl::Status DropTable(const std::string& table);

  // TableStatus of each shard's current replica, by shard (failing over
  // like a pull). One server holding several shards answers for each.
  absl::StatusOr<std::vector<TableStatusResponse>> Status(
      const std::string& table);

  // TableStatus of every replica: [shard][replica] in the order given at
  // Create, each the replica's answer or its error (e.g. UNAVAILABLE for a
  // dead one). With `checksum`, per-shard rows, updates and checksums
  // (TableStatusRequest.checksum). Makes no failover.
  std::vector<std::vector<absl::StatusOr<TableStatusResponse>>>
  ReplicaStatus(const std::string& table, bool checksum);

  // Fills *rows (resized to ids.size() x dim, row-major) with rows `ids`.
  // Duplicate ids are fetched once. Errors: the first failing call's,
  // prefixed with the server's address.
  absl::Status Pull(const std::string& table, absl::Span<const uint64_t> ids,
                    std::vector<float>* rows);

  // Pushes gradients (ids.size() x dim, row-major) for rows `ids`.
  // Duplicate ids are summed here (in request order) before sending, as
  // the server would. Errors: as Pull; INVALID_ARGUMENT when grads.size()
  // is not ids.size() x dim.
  absl::Status Push(const std::string& table, absl::Span<const uint64_t> ids,
                    absl::Span<const float> grads);

  // As Push above. With `bsp` (not null): a BSP push of step bsp->step by
  // rank bsp->rank: ONE call to EVERY shard (an empty one to a shard with
  // none of the rows: each shard counts the step's ranks), whatever
  // max_call_bytes (so a step's rows of one shard must fit one message);
  // it returns once every shard applied the step, i.e. once every rank
  // pushed it (the merged mean is then on every server, so a pull of the
  // next step sees it). Calls keep their dedup keys and (step, rank) on
  // retries and failovers (a re-sent push of a step already applied is a
  // duplicate). A call reaching its deadline is sent again to the same
  // replica while that replica answers TableStatus (bsp_wait_ms), and
  // fails over otherwise. Without `bsp` (nullptr): ASP, as above, with
  // `step` (>= 0) the worker's step sent as PushRowsRequest.step (the
  // table's eviction clock); -1 sends none.
  // Errors: as above; the servers' INVALID_ARGUMENT naming step, rank or
  // num_ranks; FAILED_PRECONDITION naming step (a replica that missed
  // steps).
  absl::Status Push(const std::string& table, absl::Span<const uint64_t> ids,
                    absl::Span<const float> grads, const BspTag* bsp,
                    int64_t step = -1);

  // Worker-side row cache (worker/row_cache.h) for `table`: PullAt then
  // answers a row from a copy fetched at most staleness_steps steps before
  // the pull's step; at most cache_rows rows (0 = 65536), least recently
  // used dropped first. staleness_steps 0 disables it (removes the
  // cache). Never use it for a BSP job (the caller decides; see
  // EmbeddingTableSpec.cache_staleness_steps). Errors: as Pull (the dim
  // is asked of shard 0); INVALID_ARGUMENT naming staleness_steps or
  // cache_rows.
  absl::Status EnableCache(const std::string& table, int32_t staleness_steps,
                           int64_t cache_rows);
  // The table's cache, or nullptr (its hits(), misses(), size()).
  const RowCache* cache(const std::string& table) const;

  // Pull at the worker's step `step`: with a cache for the table, rows
  // held fresh enough come from it and the others are pulled (and
  // cached); without one, as Pull.
  absl::Status PullAt(const std::string& table, absl::Span<const uint64_t> ids,
                      int64_t step, std::vector<float>* rows);

  // One in-flight call's context and reusable messages (in the .cc).
  struct Call;

 private:
  EmbeddingClient(std::string job_id,
                  std::vector<std::vector<std::string>> replicas,
                  EmbeddingClientOptions options);
  // One CreateTableRequest per server: the shards it holds and their
  // replica lists. REQUIRES: spec.num_shards() == num_shards().
  std::map<std::string, CreateTableRequest> CreateRequests(
      const EmbeddingTableSpec& spec) const;
  EmbeddingServer::Stub* StubOf(const std::string& address) {
    return stubs_.at(address).get();
  }
  // A unary TableStatus on shard `shard`, failing over like RunCalls.
  absl::Status StatusOf(int32_t shard, const std::string& table,
                        TableStatusResponse* response);
  // Moves `shard` past replica `from` (when it is still there and has a
  // next one). Returns whether the shard's current replica is now after
  // `from`.
  bool FailOver(int32_t shard, size_t from);
  // The table's dim: remembered from CreateTable, else asked of shard 0.
  absl::StatusOr<int32_t> Dim(const std::string& table);
  // Groups `ids` into distinct ids (unique_, in first-seen order) and
  // position_[i] = index of ids[i] in unique_; then routes the distinct
  // ids to calls of at most rows_per_call rows per shard (calls_[0..n)).
  // Returns the number of calls.
  size_t Plan(absl::Span<const uint64_t> ids, int64_t rows_per_call);
  // Runs calls_[0..n) at once; PullRows when `pull`, else PushRows.
  // `bsp`: the pushes are BSP (a deadline is retried in place while the
  // replica is alive; see Push).
  absl::Status RunCalls(size_t n, bool pull, bool bsp = false);
  // Whether `address` answers a TableStatus of `table` within
  // min(timeout_ms, 5 s).
  bool Alive(const std::string& address, const std::string& table);

  const std::string job_id_;
  const std::vector<std::vector<std::string>> replicas_;
  const EmbeddingClientOptions options_;
  const std::string client_id_;
  // Per shard, the index in replicas_[s] of the replica in use.
  std::vector<size_t> current_;
  // The next push call's sequence number.
  uint64_t next_sequence_ = 0;
  int64_t retried_calls_ = 0;
  int64_t failovers_ = 0;
  // By address, one per server.
  std::map<std::string, std::unique_ptr<EmbeddingServer::Stub>> stubs_;
  std::map<std::string, int32_t> dims_;
  // Reused across calls.
  std::vector<uint64_t> unique_;
  std::vector<uint32_t> position_;
  std::vector<float> unique_rows_;
  std::vector<std::unique_ptr<Call>> calls_;
  // Row caches, by table.
  std::map<std::string, std::unique_ptr<RowCache>> caches_;
};

}  // namespace psd

#endif  // PSD_WORKER_EMBEDDING_CLIENT_H_
