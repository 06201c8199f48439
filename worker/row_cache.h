// A worker's cache of embedding rows (issue 25; EmbeddingTableSpec
// cache_staleness_steps and cache_rows in proto/job.proto), as the hot-row
// caches of HugeCTR, Monolith and XDL: a pull at step t may be answered
// from a copy of the row fetched at step t' >= t - staleness_steps; older
// copies are misses (fetched again). At most capacity_rows rows are held;
// inserting into a full cache drops the least recently used row (a hit or
// an insert makes a row the most recently used).
//
// Rows are dim float32 values; a row costs about 4 dim + 64 bytes (list
// node, map slot). The cache does not see this worker's own pushes: a
// cached copy lacks every update made since it was fetched, by anyone.
// So it must not be used under BSP (whose results must not depend on
// timing or caching): the caller (the trainer) bypasses it there.
//
// Not thread-safe: one caller at a time (as EmbeddingClient).
#ifndef PSD_WORKER_ROW_CACHE_H_
#define PSD_WORKER_ROW_CACHE_H_

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace psd {

class RowCache {
 public:
  // dim in [1, 65536], staleness_steps in [0, 1000], capacity_rows in
  // [1, 10^8]. Errors: INVALID_ARGUMENT naming the argument.
  static absl::StatusOr<RowCache> Create(int32_t dim, int32_t staleness_steps,
                                         int64_t capacity_rows);

  // When row `id` is held with a copy fetched at step >= step -
  // staleness_steps: copies its dim floats to `out`, makes it the most
  // recently used, counts a hit and returns true. Otherwise counts a miss
  // and returns false (a too-old copy is dropped).
  bool Lookup(uint64_t id, int64_t step, float* out);

  // Stores `row` (dim floats) as row `id` fetched at step `step`,
  // replacing a held copy; drops the least recently used row when full.
  void Insert(uint64_t id, int64_t step, const float* row);

  // Drops every row (counters are kept).
  void Clear();

  int32_t dim() const { return dim_; }
  int32_t staleness_steps() const { return staleness_; }
  int64_t capacity_rows() const { return capacity_; }
  int64_t size() const { return static_cast<int64_t>(index_.size()); }
  // Lookups answered from the cache, lookups not, and rows dropped to
  // make room (LRU).
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }
  int64_t evictions() const { return evictions_; }

 private:
  RowCache(int32_t dim, int32_t staleness, int64_t capacity)
      : dim_(dim), staleness_(staleness), capacity_(capacity) {}
  struct Entry {
    uint64_t id;
    int64_t step;
    std::vector<float> row;
  };
  int32_t dim_;
  int32_t staleness_;
  int64_t capacity_;
  // Most recently used first.
  std::list<Entry> lru_;
  absl::flat_hash_map<uint64_t, std::list<Entry>::iterator> index_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  int64_t evictions_ = 0;
};

}  // namespace psd

#endif  // PSD_WORKER_ROW_CACHE_H_
