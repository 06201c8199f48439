// Snapshots of sparse embedding tables (issue 7 follow-up): one psd_server's
// shards of a table, written to a RocksDB database of their own (by
// psd_server at <data_dir>/embeddings, beside the dense snapshots'
// <data_dir>/snapshots), and read back after a restart.
//
// What is written: an EmbeddingTableCapture (server/embedding/embedding_store.h): every
// row record (int64 update count, weights, optimizer slots) of the shards the
// server holds, and the table's dedup logs (so a push the snapshot holds is a
// duplicate after a restore, and one it lacks is applied).
//
// Crash safety: generations. Writing generation g (1 + the newest complete
// one) first deletes what is left of any incomplete generation after the
// newest complete one, then writes the row batches and the dedup record
// (unsynced), then, last, the manifest (one synced WriteBatch, which syncs
// the WAL and so every record before it), which in the same batch deletes
// the generations beyond keep_last. A generation without its manifest is
// never read (and is deleted by the next Write), so a crash at any point
// leaves the previous complete generation readable. Every record's CRC-32
// (zlib) is in the manifest, and the manifest carries its own, so a
// damaged snapshot gives DATA_LOSS, never garbage.
//
// On-disk format (keys are byte strings; <job> the job id, <table> the
// table name, <gen> the generation as 20 decimal digits, zero-padded,
// <batch> the batch index as 10):
//   m/<job>/<table>/<gen>          manifest: fixed32 little-endian CRC-32 of
//                                  the rest, then a serialized
//                                  EmbeddingSnapshotManifest
//                                  (proto/embedding.proto)
//   r/<job>/<table>/<gen>/<batch>  a row batch record (below)
//   d/<job>/<table>/<gen>          the dedup logs: a serialized
//                                  EmbeddingDedupLogs; its CRC-32 and entry
//                                  count are in the manifest
// A row batch record is a 16-byte header, little-endian: fixed32 magic
// 0x45445350 ("PSDE"), uint32 record_floats F, uint64 rows n; then n rows,
// each a uint64 row id followed by F float32 words of its record (the first
// two are the int64 update count's bytes). Its CRC-32 covers the whole
// record. Batches hold about EmbeddingSnapshotOptions.batch_bytes each.
//
// Thread-safe. Writes are serialized by an internal mutex (held across
// RocksDB writes; only snapshot writers wait on it); reads take no lock and
// see a generation only once its manifest is written.
#ifndef PSD_SERVER_EMBEDDING_EMBEDDING_SNAPSHOT_H_
#define PSD_SERVER_EMBEDDING_EMBEDDING_SNAPSHOT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/embedding.pb.h"
#include "server/embedding/embedding_store.h"

namespace psd {

struct EmbeddingSnapshotOptions {
  // Complete generations kept per (job, table), >= 1. With 2 the previous
  // one is still there if the newest turns out damaged. Default: 2.
  int keep_last = 2;
  // Target bytes of one row batch record (at least one row). Default: 4 MiB.
  int64_t batch_bytes = 4 << 20;
};

// One generation read back and verified.
struct EmbeddingSnapshot {
  EmbeddingSnapshotManifest manifest;
  EmbeddingTableCapture capture;
};

class EmbeddingSnapshotStore {
 public:
  // Opens (creating it and missing parents) the RocksDB database at `dir`.
  // One process at a time may hold it. Errors name `dir` and carry
  // RocksDB's message: FAILED_PRECONDITION (cannot create or write it),
  // UNAVAILABLE (locked by another process, I/O), DATA_LOSS (corrupt).
  static absl::StatusOr<std::unique_ptr<EmbeddingSnapshotStore>> Open(
      const std::string& dir, EmbeddingSnapshotOptions options = {});
  ~EmbeddingSnapshotStore();
  EmbeddingSnapshotStore(const EmbeddingSnapshotStore&) = delete;
  EmbeddingSnapshotStore& operator=(const EmbeddingSnapshotStore&) = delete;

  // Writes `capture` as the table's next generation with the caller's
  // `metadata` (see the file comment); returns its manifest (generation,
  // rows, total_bytes, ...). REQUIRES: capture from EmbeddingStore::Capture
  // (consistent sizes). Errors: INVALID_ARGUMENT (job id empty or with '/'
  // or NUL; inconsistent capture); RocksDB's, naming the table:
  // RESOURCE_EXHAUSTED (disk full), UNAVAILABLE (I/O). After an error the
  // previous generation is still the newest complete one.
  // `keep_last` > 0 overrides EmbeddingSnapshotOptions.keep_last for this
  // write (the generations kept after it); capture.step goes to the
  // manifest's step.
  absl::StatusOr<EmbeddingSnapshotManifest> Write(
      const EmbeddingTableCapture& capture,
      const std::map<std::string, std::string>& metadata = {},
      int keep_last = 0);

  // The table's complete generations (those with a manifest), newest
  // first. Nothing verified. Errors: INVALID_ARGUMENT (job id), RocksDB's.
  absl::StatusOr<std::vector<int64_t>> Generations(const std::string& job_id,
                                                   const std::string& table);

  // Reads and verifies one generation: the manifest's CRC, that it parses
  // and names this job, table and generation; every row batch present,
  // its CRC equal to the manifest's, its header and size consistent
  // (record floats, row count); the dedup record likewise. Errors:
  // NOT_FOUND (no such generation); DATA_LOSS naming the table, the
  // generation and what is wrong, e.g. "embedding snapshot of table \"emb\"
  // of job j, generation 3: row batch 2: checksum mismatch (stored
  // 0x1234abcd, computed 0x89ab0123)"; UNAVAILABLE (I/O).
  absl::StatusOr<EmbeddingSnapshot> Read(const std::string& job_id,
                                         const std::string& table,
                                         int64_t generation);

  // The newest generation that verifies; damaged ones (DATA_LOSS) are
  // skipped and appended to *skipped (when not null) as (generation,
  // status). Errors: NOT_FOUND naming the table when it has no complete
  // generation; DATA_LOSS (the newest one's error) when none verifies;
  // other errors at once.
  absl::StatusOr<EmbeddingSnapshot> ReadNewestValid(
      const std::string& job_id, const std::string& table,
      std::vector<std::pair<int64_t, absl::Status>>* skipped = nullptr);

  // The newest generation whose manifest step (a step snapshot's BSP step,
  // EmbeddingTableCapture.step) is `step` and that verifies; damaged
  // generations are skipped as by ReadNewestValid. Reads (and verifies)
  // each newer generation on the way: O(keep_last x rows). Errors:
  // INVALID_ARGUMENT naming restore_step (step <= 0); NOT_FOUND naming
  // restore_step, listing the steps there are; DATA_LOSS when only a
  // damaged generation could have been it.
  absl::StatusOr<EmbeddingSnapshot> ReadStep(
      const std::string& job_id, const std::string& table, int64_t step,
      std::vector<std::pair<int64_t, absl::Status>>* skipped = nullptr);

  // Where it lives (the `dir` given to Open).
  const std::string& dir() const;

 private:
  class Impl;
  explicit EmbeddingSnapshotStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The keys of the on-disk format above, for tools and tests.
std::string EmbeddingSnapshotManifestKey(const std::string& job_id,
                                         const std::string& table,
                                         int64_t generation);
std::string EmbeddingSnapshotBatchKey(const std::string& job_id,
                                      const std::string& table,
                                      int64_t generation, int32_t batch);
std::string EmbeddingSnapshotDedupKey(const std::string& job_id,
                                      const std::string& table,
                                      int64_t generation);

}  // namespace psd

#endif  // PSD_SERVER_EMBEDDING_EMBEDDING_SNAPSHOT_H_
