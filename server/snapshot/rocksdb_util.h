// Helpers shared by the servers' RocksDB stores (server/snapshot/snapshot_store.h,
// server/embedding/embedding_snapshot.h).
#ifndef PSD_SERVER_SNAPSHOT_ROCKSDB_UTIL_H_
#define PSD_SERVER_SNAPSHOT_ROCKSDB_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include <rocksdb/status.h>

#include "absl/status/status.h"

namespace psd {

// RocksDB's status as ours, with `context` before RocksDB's message:
// RESOURCE_EXHAUSTED (no space), DATA_LOSS (corruption), NOT_FOUND,
// FAILED_PRECONDITION (invalid argument, not supported, a path that is
// missing, not a directory, read-only or not permitted), UNAVAILABLE
// (other I/O errors, busy, timed out, try again, aborted, incomplete,
// shutting down), INTERNAL (anything else). OK stays OK.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& context);

// The end of the key range of `prefix`: every key starting with `prefix`
// is in [prefix, PrefixEnd(prefix)). REQUIRES: prefix ends in '/' (its
// successor byte is '0').
std::string PrefixEnd(std::string prefix);

// zlib's CRC-32 of data[0, size) continuing from `crc` (0 to start); safe
// for size 0 with a null `data` (returns `crc`). Both stores keep one per
// record and per manifest.
uint32_t Crc32(uint32_t crc, const void* data, size_t size);

// "0x%08x", for checksums in error messages.
std::string Hex32(uint32_t v);

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_ROCKSDB_UTIL_H_
