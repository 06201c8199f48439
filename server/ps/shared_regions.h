// The workers' shared-memory regions a parameter server has mapped
// (common/shared_memory.h), by name: attached when a worker asks
// (AttachSharedMemory), or on first use by a push or pull (after this
// server restarted, or evicted the mapping).
#ifndef PSD_SERVER_PS_SHARED_REGIONS_H_
#define PSD_SERVER_PS_SHARED_REGIONS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/proto.h"
#include "common/shared_memory.h"

namespace psd {

// Thread-safe.
class SharedRegions {
 public:
  struct Options {
    // Off: every request naming a region fails with FAILED_PRECONDITION,
    // and workers send tensor bytes in the messages.
    bool enabled = true;
    // The largest region mapped, bytes. Default 4 GiB.
    uint64_t max_region_bytes = uint64_t{4} << 30;
    // Regions mapped at once; past it the least recently attached one is
    // unmapped (it is mapped again if used again). Default 256.
    int max_regions = 256;
  };

  explicit SharedRegions(Options options) : options_(options) {}

  // The mapping of `region` for job `job_id`. A call in flight keeps the
  // mapping alive after DropJob or an eviction. Errors: those of
  // SharedMemory::Attach; FAILED_PRECONDITION when shared memory is off, or
  // for a region known here under another nonce or size.
  absl::StatusOr<std::shared_ptr<const SharedMemory>> Get(
      const std::string& job_id, const SharedRegion& region);

  // Unmaps the regions attached for `job_id`.
  void DropJob(const std::string& job_id);

  // Regions mapped now.
  int size() const;

 private:
  struct Entry {
    std::shared_ptr<const SharedMemory> memory;
    std::string job_id;
    uint64_t attached = 0;  // order of attachment, for eviction
  };

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> by_name_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace psd

#endif  // PSD_SERVER_PS_SHARED_REGIONS_H_
