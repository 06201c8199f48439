// Shared memory between a worker and the parameter servers on its host: a
// POSIX shared-memory object (shm_open(3), on /dev/shm) that carries the
// tensor bytes of pushes and pulls instead of the gRPC messages, which then
// carry only SharedSlice references (proto/parameter_server.proto
// SharedRegion, SharedSlice). The gRPC API stays the contract: a server
// that cannot map a worker's region says so, and the worker sends the bytes
// in the messages. See "Shared memory" in docs/ARCHITECTURE.md.
//
// Layout: a 64-byte header whose first 16 bytes are the region's nonce,
// then whatever the creator lays out (SharedSlice offsets are from the
// region's start).
#ifndef PSD_COMMON_SHARED_MEMORY_H_
#define PSD_COMMON_SHARED_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/proto.h"

namespace psd {

class SharedMemory {
 public:
  // Bytes before the first slice: the nonce and room to spare.
  static constexpr uint64_t kHeaderBytes = 64;
  static constexpr size_t kNonceBytes = 16;

  // Creates a region of `size` bytes (>= kHeaderBytes) named
  // "/psd-<pid>-<random>", mode 0600, zero-filled, its pages reserved
  // (posix_fallocate), with a fresh random nonce in its header; it is
  // unlinked when this object is destroyed. Errors: INVALID_ARGUMENT (size
  // too small), UNAVAILABLE (shm_open, ftruncate, posix_fallocate or mmap
  // failed: no /dev/shm, /dev/shm too small, out of memory), with errno's
  // text.
  //
  // Trust: the object is its creator's user's. A process of that user can
  // shrink or rewrite it under a mapping (and could kill the processes
  // anyway); peers over the network cannot reach it.
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Create(uint64_t size);

  // Maps the region another process on this host created with Create.
  // Checks, before trusting it: the name's form, that the object is a
  // regular file owned by this process's effective user, of region.size()
  // bytes (<= max_size), whose header holds region.nonce(). Errors:
  // INVALID_ARGUMENT (a malformed name or nonce, naming the field),
  // RESOURCE_EXHAUSTED (size > max_size), FAILED_PRECONDITION (no such
  // object here, another owner, size or nonce: not the same host).
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Attach(
      const SharedRegion& region, uint64_t max_size);

  // Removes "/psd-*" objects whose creator process no longer exists (a
  // worker that crashed before its destructor unlinked them): a creator
  // holds an flock(2) on its object while it lives, so this works across
  // pid namespaces sharing /dev/shm. Returns how many were removed. Best
  // effort: errors are ignored.
  static int RemoveStale();

  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  // What a peer needs to attach it.
  const SharedRegion& region() const { return region_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return region_.size(); }

  // INVALID_ARGUMENT, naming `what` (e.g. "gradients[3].shared"), unless
  // slice lies inside the region after the header and has `want_size`
  // bytes.
  absl::Status CheckSlice(const SharedSlice& slice, uint64_t want_size,
                          const std::string& what) const;

 private:
  SharedMemory(SharedRegion region, uint8_t* data, int lock_fd)
      : region_(std::move(region)), data_(data), lock_fd_(lock_fd) {}

  const SharedRegion region_;
  uint8_t* const data_;
  // Created here: the descriptor holding the creator's flock, and the
  // destructor unlinks the object; -1 when attached.
  const int lock_fd_;
};

}  // namespace psd

#endif  // PSD_COMMON_SHARED_MEMORY_H_
