// Helpers shared by the libFuzzer harnesses in tests/fuzz (README.md there):
// a reader that takes typed values from the fuzz bytes, and FUZZ_REQUIRE,
// which reports a broken invariant as a crash (abort), which is what
// libFuzzer and the corpus replay test (replay_main.cc) look for.
#ifndef PSD_TESTS_FUZZ_FUZZ_UTIL_H_
#define PSD_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/status/status.h"

// Aborts with the condition and `message` (a std::string or const char*)
// when `cond` is false: the harness found a bug.
#define FUZZ_REQUIRE(cond, message)                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "%s:%d: FUZZ_REQUIRE(%s) failed: %s\n",        \
                   __FILE__, __LINE__, #cond,                             \
                   std::string(message).c_str());                         \
      std::abort();                                                       \
    }                                                                     \
  } while (0)

namespace psd {
namespace fuzz {

// Takes values from the front of the fuzz input; past its end, zeros.
// (The harnesses also build under gcc, without clang's FuzzedDataProvider.)
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }

  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }

  // Little-endian, `bytes` (<= 8) of them.
  uint64_t Uint(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{Byte()} << (8 * i);
    return v;
  }

  // At most `max` bytes.
  std::string Bytes(size_t max) {
    const size_t n = max < remaining() ? max : remaining();
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }

  // A chunk: a 2-byte little-endian length, then that many bytes (fewer at
  // the end of the input).
  std::string Chunk() { return Bytes(Uint(2)); }

  std::string Rest() { return Bytes(remaining()); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// An error status must say what is wrong.
inline void RequireClearError(const absl::Status& status) {
  FUZZ_REQUIRE(!status.ok() && !status.message().empty(), status.ToString());
}

}  // namespace fuzz
}  // namespace psd

#endif  // PSD_TESTS_FUZZ_FUZZ_UTIL_H_
