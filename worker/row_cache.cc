#include "worker/row_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace psd {

absl::StatusOr<RowCache> RowCache::Create(int32_t dim, int32_t staleness_steps,
                                          int64_t capacity_rows) {
  if (dim < 1 || dim > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim: must be in [1, 65536], got ", dim));
  }
  if (staleness_steps < 0 || staleness_steps > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staleness_steps: must be in [0, 1000], got ", staleness_steps));
  }
  if (capacity_rows < 1 || capacity_rows > 100000000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capacity_rows: must be in [1, 10^8], got ", capacity_rows));
  }
  return RowCache(dim, staleness_steps, capacity_rows);
}

bool RowCache::Lookup(uint64_t id, int64_t step, float* out) {
  auto it = index_.find(id);
  if (it == index_.end()) {
    ++misses_;
    return false;
  }
  if (it->second->step < step - staleness_) {
    lru_.erase(it->second);
    index_.erase(it);
    ++misses_;
    return false;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  std::copy(it->second->row.begin(), it->second->row.end(), out);
  ++hits_;
  return true;
}

void RowCache::Insert(uint64_t id, int64_t step, const float* row) {
  auto it = index_.find(id);
  if (it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    it->second->step = step;
    std::copy(row, row + dim_, it->second->row.begin());
    return;
  }
  if (static_cast<int64_t>(index_.size()) >= capacity_) {
    // Reuse the least recently used entry's storage.
    auto last = std::prev(lru_.end());
    index_.erase(last->id);
    ++evictions_;
    lru_.splice(lru_.begin(), lru_, last);
  } else {
    lru_.push_front(Entry{0, 0, std::vector<float>(dim_)});
  }
  Entry& e = lru_.front();
  e.id = id;
  e.step = step;
  std::copy(row, row + dim_, e.row.begin());
  index_[id] = lru_.begin();
}

void RowCache::Clear() {
  lru_.clear();
  index_.clear();
}

}  // namespace psd
