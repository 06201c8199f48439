// ThreadSanitizer support for Debian's abseil, linked into every binary and
// test under --config=tsan only (through //third_party:abseil).
//
// Debian's libabsl_synchronization is not built with -fsanitize=thread, so
// TSan never sees an absl::Mutex being locked: every access that the mutex
// orders would be reported as a data race. This file interposes the
// out-of-line entry points of absl::Mutex, absl::CondVar and
// absl::Notification (the executable's definitions win over the shared
// library's), calls the real function found with dlsym(RTLD_NEXT), and
// tells TSan what happened with the annotations of
// <sanitizer/tsan_interface.h>, as abseil itself does when it is built with
// TSan (ABSL_TSAN_MUTEX_* in absl/synchronization/mutex.cc).
//
// - The real call runs between __tsan_mutex_pre_* and __tsan_mutex_post_*,
//   where TSan ignores memory accesses: absl evaluates absl::Condition
//   functions (psd code, which reads guarded state) inside Lock, Unlock and
//   Await, under the real lock.
// - Await, the LockWhen family and CondVar::Wait release the mutex while
//   they wait: they are annotated as an unlock followed by a lock.
// - A thread-local depth counter annotates only the outermost interposed
//   call, in case the library calls one entry point from another through
//   its PLT (e.g. Notification::Notify locks its own Mutex).
//
// The symbol names are those of abseil 20220623 as Debian builds it (inline
// namespace absl::debian3). If one is missing, dlsym fails and the process
// aborts with a message at the first call.

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace {

thread_local int depth = 0;

void* Real(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "absl_tsan_shim: dlsym(%s) failed: %s\n", name,
                 dlerror());
    std::abort();
  }
  return f;
}

// Runs the real function `name` (type Fn) with the given arguments.
#define PSD_REAL(name, Fn, ...)                                  \
  ([&] {                                                         \
    static Fn real = reinterpret_cast<Fn>(Real(#name));          \
    return real(__VA_ARGS__);                                    \
  }())

struct Depth {
  Depth() { ++depth; }
  ~Depth() { --depth; }
  bool outermost() const { return depth == 1; }
};

void Lock(void* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
}
void Locked(void* mu, unsigned flags) { __tsan_mutex_post_lock(mu, flags, 0); }
void Unlock(void* mu, unsigned flags) { __tsan_mutex_pre_unlock(mu, flags); }
void Unlocked(void* mu, unsigned flags) { __tsan_mutex_post_unlock(mu, flags); }

using Cond = const absl::Condition&;
using VoidFn = void (*)(void*);
using BoolFn = bool (*)(void*);
using CondFn = void (*)(void*, Cond);
using CondTimeoutFn = bool (*)(void*, Cond, absl::Duration);
using CondDeadlineFn = bool (*)(void*, Cond, absl::Time);
using WaitFn = void (*)(void*, void*);
using WaitTimeoutFn = bool (*)(void*, void*, absl::Duration);
using WaitDeadlineFn = bool (*)(void*, void*, absl::Time);
using NotifyWaitFn = void (*)(const void*);
using NotifyTimeoutFn = bool (*)(const void*, absl::Duration);
using NotifyDeadlineFn = bool (*)(const void*, absl::Time);

}  // namespace

// Plain lock and unlock: the real call inside the annotation.
#define PSD_LOCK(name, flags)                   \
  extern "C" void name(void* mu) {              \
    Depth d;                                    \
    if (d.outermost()) Lock(mu, flags);         \
    PSD_REAL(name, VoidFn, mu);                 \
    if (d.outermost()) Locked(mu, flags);       \
  }
#define PSD_UNLOCK(name, flags)                 \
  extern "C" void name(void* mu) {              \
    Depth d;                                    \
    if (d.outermost()) Unlock(mu, flags);       \
    PSD_REAL(name, VoidFn, mu);                 \
    if (d.outermost()) Unlocked(mu, flags);     \
  }
#define PSD_TRYLOCK(name, flags)                                       \
  extern "C" bool name(void* mu) {                                     \
    Depth d;                                                           \
    if (d.outermost()) Lock(mu, flags | __tsan_mutex_try_lock);        \
    bool ok = PSD_REAL(name, BoolFn, mu);                              \
    if (d.outermost())                                                 \
      Locked(mu, flags | __tsan_mutex_try_lock |                       \
                     (ok ? 0 : __tsan_mutex_try_lock_failed));         \
    return ok;                                                         \
  }

PSD_LOCK(_ZN4absl7debian35Mutex4LockEv, 0)
PSD_LOCK(_ZN4absl7debian35Mutex10ReaderLockEv, __tsan_mutex_read_lock)
PSD_UNLOCK(_ZN4absl7debian35Mutex6UnlockEv, 0)
PSD_UNLOCK(_ZN4absl7debian35Mutex12ReaderUnlockEv, __tsan_mutex_read_lock)
PSD_TRYLOCK(_ZN4absl7debian35Mutex7TryLockEv, 0)
PSD_TRYLOCK(_ZN4absl7debian35Mutex13ReaderTryLockEv, __tsan_mutex_read_lock)

// LockWhen family: acquires the lock once the condition holds (the
// condition is evaluated inside the annotation, under the real lock).
#define PSD_LOCK_WHEN(name, flags, Fn, ...)        \
  {                                                \
    Depth d;                                       \
    if (d.outermost()) Lock(mu, flags);            \
    auto r = PSD_REAL(name, Fn, __VA_ARGS__);      \
    if (d.outermost()) Locked(mu, flags);          \
    return r;                                      \
  }
extern "C" void _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(void* mu,
                                                                  Cond c) {
  Depth d;
  if (d.outermost()) Lock(mu, 0);
  PSD_REAL(_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE, CondFn, mu, c);
  if (d.outermost()) Locked(mu, 0);
}
extern "C" void _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE(
    void* mu, Cond c) {
  Depth d;
  if (d.outermost()) Lock(mu, __tsan_mutex_read_lock);
  PSD_REAL(_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE, CondFn,
           mu, c);
  if (d.outermost()) Locked(mu, __tsan_mutex_read_lock);
}
extern "C" bool
_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    void* mu, Cond c, absl::Duration t)
    PSD_LOCK_WHEN(
        _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
        0, CondTimeoutFn, mu, c, t)
extern "C" bool
_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    void* mu, Cond c, absl::Time t)
    PSD_LOCK_WHEN(
        _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
        0, CondDeadlineFn, mu, c, t)
extern "C" bool
_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    void* mu, Cond c, absl::Duration t)
    PSD_LOCK_WHEN(
        _ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
        __tsan_mutex_read_lock, CondTimeoutFn, mu, c, t)
extern "C" bool
_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    void* mu, Cond c, absl::Time t)
    PSD_LOCK_WHEN(
        _ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
        __tsan_mutex_read_lock, CondDeadlineFn, mu, c, t)

// Await and CondVar::Wait: REQUIRES the lock held (exclusively: psd awaits
// only under writer locks); released while waiting, held again on return.
#define PSD_RELOCK(mutex, Fn, name, ...)                \
  {                                                     \
    Depth d;                                            \
    if (d.outermost()) Unlock(mutex, 0);                \
    auto r = PSD_REAL(name, Fn, __VA_ARGS__);           \
    if (d.outermost()) {                                \
      Unlocked(mutex, 0);                               \
      Lock(mutex, 0);                                   \
      Locked(mutex, 0);                                 \
    }                                                   \
    return r;                                           \
  }
extern "C" void _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(void* mu,
                                                               Cond c) {
  Depth d;
  if (d.outermost()) Unlock(mu, 0);
  PSD_REAL(_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE, CondFn, mu, c);
  if (d.outermost()) {
    Unlocked(mu, 0);
    Lock(mu, 0);
    Locked(mu, 0);
  }
}
extern "C" bool
_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    void* mu, Cond c, absl::Duration t)
    PSD_RELOCK(
        mu, CondTimeoutFn,
        _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE,
        mu, c, t)
extern "C" bool
_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    void* mu, Cond c, absl::Time t)
    PSD_RELOCK(
        mu, CondDeadlineFn,
        _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE,
        mu, c, t)
extern "C" void _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(void* cv,
                                                           void* mu) {
  Depth d;
  if (d.outermost()) Unlock(mu, 0);
  PSD_REAL(_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, WaitFn, cv, mu);
  if (d.outermost()) {
    Unlocked(mu, 0);
    Lock(mu, 0);
    Locked(mu, 0);
  }
}
extern "C" bool
_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(
    void* cv, void* mu, absl::Duration t)
    PSD_RELOCK(
        mu, WaitTimeoutFn,
        _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE,
        cv, mu, t)
extern "C" bool
_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(
    void* cv, void* mu, absl::Time t)
    PSD_RELOCK(
        mu, WaitDeadlineFn,
        _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE, cv,
        mu, t)

// Notification: Notify() happens before every wait that sees it.
extern "C" void _ZN4absl7debian312Notification6NotifyEv(void* n) {
  Depth d;
  if (d.outermost()) __tsan_release(n);
  PSD_REAL(_ZN4absl7debian312Notification6NotifyEv, VoidFn, n);
}
extern "C" void _ZNK4absl7debian312Notification19WaitForNotificationEv(
    const void* n) {
  Depth d;
  PSD_REAL(_ZNK4absl7debian312Notification19WaitForNotificationEv,
           NotifyWaitFn, n);
  if (d.outermost()) __tsan_acquire(const_cast<void*>(n));
}
extern "C" bool
_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(
    const void* n, absl::Duration t) {
  Depth d;
  bool ok = PSD_REAL(
      _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE,
      NotifyTimeoutFn, n, t);
  if (d.outermost() && ok) __tsan_acquire(const_cast<void*>(n));
  return ok;
}
extern "C" bool
_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(
    const void* n, absl::Time t) {
  Depth d;
  bool ok = PSD_REAL(
      _ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE,
      NotifyDeadlineFn, n, t);
  if (d.outermost() && ok) __tsan_acquire(const_cast<void*>(n));
  return ok;
}
