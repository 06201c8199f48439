// Resident memory of the calling process, for tests that assert a bad
// request made a server in the same process allocate nothing lasting.
#ifndef PSD_TESTS_RESIDENT_MEMORY_H_
#define PSD_TESTS_RESIDENT_MEMORY_H_

#include <unistd.h>

#include <cstdint>
#include <cstdio>

namespace psd {

// Resident set size in bytes (Linux /proc/self/statm); -1 if unreadable.
inline int64_t ResidentBytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  const int read = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  if (read != 2) return -1;
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

}  // namespace psd

#endif  // PSD_TESTS_RESIDENT_MEMORY_H_
