#include "server/ps/shared_regions.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace psd {

absl::StatusOr<std::shared_ptr<const SharedMemory>> SharedRegions::Get(
    const std::string& job_id, const SharedRegion& region) {
  if (!options_.enabled) {
    return absl::FailedPreconditionError(
        "shared_region: shared memory is off on this server "
        "(--shared_memory=false)");
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = by_name_.find(region.name());
    if (it != by_name_.end()) {
      const SharedRegion& known = it->second.memory->region();
      if (known.nonce() != region.nonce() || known.size() != region.size()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "shared_region: ", region.name(),
            " is mapped here with another nonce or size"));
      }
      return it->second.memory;
    }
  }
  // Outside the lock: system calls.
  auto attached = SharedMemory::Attach(region, options_.max_region_bytes);
  if (!attached.ok()) return attached.status();
  std::shared_ptr<const SharedMemory> memory = std::move(*attached);
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = by_name_.try_emplace(region.name());
  if (!inserted) return it->second.memory;  // attached meanwhile
  it->second = Entry{memory, job_id, next_++};
  while (static_cast<int>(by_name_.size()) > options_.max_regions) {
    auto oldest = by_name_.begin();
    for (auto e = by_name_.begin(); e != by_name_.end(); ++e) {
      if (e->second.attached < oldest->second.attached) oldest = e;
    }
    by_name_.erase(oldest);
  }
  return memory;
}

void SharedRegions::DropJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  for (auto it = by_name_.begin(); it != by_name_.end();) {
    it = it->second.job_id == job_id ? by_name_.erase(it) : std::next(it);
  }
}

int SharedRegions::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(by_name_.size());
}

}  // namespace psd
