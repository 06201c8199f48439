// Process-level setup shared by the psd binaries' main().
#ifndef PSD_COMMON_PROCESS_H_
#define PSD_COMMON_PROCESS_H_

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "absl/status/status.h"

namespace psd {

// Keeps freed memory in the process for reuse: no fresh mmap per large
// tensor buffer, no trimming back to the OS (see docs/PERFORMANCE.md; fresh
// pages cost ~0.36 GB/s to touch on our VMs). Call first thing in main().
void TuneAllocator();

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts
// later, so that WaitForShutdownSignal() receives them. Call in main() before
// starting any thread.
void BlockShutdownSignals();

// Waits for SIGINT or SIGTERM and returns its number.
// REQUIRES: BlockShutdownSignals() was called.
int WaitForShutdownSignal();

// Sends SIGTERM to this process, waking WaitForShutdownSignal() (used when
// a component decides on its own that the process must end).
void RequestShutdown();

// A named console logger (stderr) at `level` ("trace", "debug", "info",
// "warn", "error"). Errors: INVALID_ARGUMENT for an unknown level.
absl::Status SetUpLogging(const std::string& name, const std::string& level);

// The process's logger, created by SetUpLogging (or a default one).
std::shared_ptr<spdlog::logger> Log();

// Writes `contents` to `path` atomically (temp file + rename), so a reader
// polling for the file never sees half of it.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents);

}  // namespace psd

#endif  // PSD_COMMON_PROCESS_H_
