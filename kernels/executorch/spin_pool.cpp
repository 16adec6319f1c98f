// A small work-claiming thread pool for the packed kernels' parallel loops in ExecuTorch.
//
// Why not ExecuTorch's own pthreadpool, which the kernels used before: on two threads the TWN
// MobileNetV2 at 224 often ran slower than on one (2.7-5.5 ms per process, median 4.3, against 3.9;
// 2-core AMD EPYC VM). pthreadpool's Linux build (its sources since 2024) spins a waiting worker for
// 1000 pauses, a few microseconds, before it sleeps on a futex, and waits for the workers it woke;
// a batch-1 program has longer gaps than that between its parallel ops (Python between
// inferences, ops small enough for one thread).
//
// Here the caller never waits for a helper that has not started: each participant's share of a
// job is a claim word, and each task is taken by a compare-and-swap (the owner from the front,
// the others from the back), so a sleeping or descheduled helper's share is done by the caller. A
// helper spins for kSpinNs after its last task (yielding the CPU now and then, so another pool's
// worker on the same core can run), then sleeps on a futex that the next job wakes. Measured
// against the pthreadpool (BENCHMARKS.md, "Two threads"): MobileNetV2-224 TWN on two threads
// 4.08 -> 2.85 ms; the 32x32 students no faster (ShuffleNet v2 7-19% slower).
#include "spin_pool.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace distill_et {
namespace {

constexpr int kMaxHelpers = 63;
// How long a helper stays awake after its last task: longer than the gap between two batch-1
// inferences called back to back (tens of microseconds), short against a camera's frame period.
constexpr int64_t kSpinNs = 200 * 1000;
constexpr int64_t kYieldNs = 20 * 1000;  // a sched_yield this often while spinning

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

inline int64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
  if (word->load() == expected) sched_yield();
#endif
}

void futex_wake_all(std::atomic<uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}

// One participant's share of a job, (begin << 32) | end: the owner takes tasks from the front,
// the others steal from the back, each by a compare-and-swap.
struct alignas(64) Share {
  std::atomic<uint64_t> range{0};

  bool take(bool front, uint32_t* i) {
    uint64_t w = range.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t b = (uint32_t)(w >> 32), e = (uint32_t)w;
      if (b >= e) return false;
      const uint64_t next = front ? w + (1ull << 32) : w - 1;
      if (range.compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
        *i = front ? b : e - 1;
        return true;
      }
    }
  }
};

struct Pool {
  // Participant 0 is the caller, participant k + 1 helper k. A job is published only after the
  // previous one's tasks are all done, so whoever takes a task holds an unfinished task of the
  // current job, and reads that job's task and ctx after its (acquire) claim.
  Share shares[kMaxHelpers + 1];
  alignas(64) std::atomic<int64_t> done{0};
  alignas(64) std::atomic<uint32_t> epoch{0};  // the futex word: bumped by every job
  std::atomic<int> sleepers{0};
  std::atomic<int> width{0};  // participants [0, width) share the current job
  DlTask task = nullptr;
  void* ctx = nullptr;
  std::mutex caller;  // one job at a time; a second concurrent caller runs its loop itself
  std::mutex grow;
  std::atomic<int> started{0};

  void run_task(uint32_t i) {
    task(ctx, (int64_t)i);
    done.fetch_add(1, std::memory_order_release);
  }

  // Participant p's own share first (the same rows every op of an inference: they stay in its
  // core's cache from one op to the next), then the others' from their backs; true if it ran any.
  bool work(int p) {
    const int n = width.load(std::memory_order_relaxed);
    bool any = false;
    uint32_t i;
    while (shares[p].take(true, &i)) run_task(i), any = true;
    for (int d = 1; d < n; ++d)
      while (shares[(p + d) % n].take(false, &i)) run_task(i), any = true;
    return any;
  }

  bool has_work() {
    const int n = width.load(std::memory_order_relaxed);
    for (int q = 0; q < n; ++q) {
      const uint64_t w = shares[q].range.load(std::memory_order_acquire);
      if ((uint32_t)(w >> 32) < (uint32_t)w) return true;
    }
    return false;
  }

  void helper(int k) {
    int64_t idle_since = now_ns(), last_yield = idle_since;
    for (;;) {
      if (k + 1 < width.load(std::memory_order_relaxed) && work(k + 1)) {
        idle_since = last_yield = now_ns();
        continue;
      }
      for (int i = 0; i < 64; ++i) relax();
      const int64_t t = now_ns();
      if (t - idle_since < kSpinNs) {
        if (t - last_yield >= kYieldNs) sched_yield(), last_yield = t;
        continue;
      }
      // Asleep until the next job. The job's epoch bump and this sleepers count are both seq_cst:
      // either the caller sees a sleeper and wakes it, or the helper sees the new epoch (the wait
      // then returns at once) and with it the job.
      const uint32_t e = epoch.load(std::memory_order_seq_cst);
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      if (!has_work()) futex_wait(&epoch, e);
      sleepers.fetch_sub(1, std::memory_order_seq_cst);
      idle_since = last_yield = now_ns();
    }
  }

  // Starts helpers until there are n (threads that live as long as the process).
  void ensure(int n) {
    if (started.load(std::memory_order_acquire) >= n) return;
    std::lock_guard<std::mutex> lock(grow);
    for (int k = started.load(); k < n; ++k) {
      std::thread t([this, k] { helper(k); });
#if defined(__linux__)
      pthread_setname_np(t.native_handle(), "distill-pool");
#endif
      t.detach();
      started.store(k + 1, std::memory_order_release);
    }
  }

  void run(DlTask fn, void* c, int64_t n, int nthreads) {
    // A loop inside a task (this pool's job in progress on this thread) or beside another
    // thread's job runs on its caller alone.
    static thread_local bool in_job = false;
    std::unique_lock<std::mutex> lock(caller, std::defer_lock);
    if (in_job || n > (int64_t)UINT32_MAX || !lock.try_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(c, i);
      return;
    }
    in_job = true;
    const int parts = (int)std::min<int64_t>({(int64_t)nthreads, n, (int64_t)kMaxHelpers + 1});
    ensure(parts - 1);
    task = fn, ctx = c;
    done.store(0, std::memory_order_relaxed);
    width.store(parts, std::memory_order_relaxed);
    for (int p = 0; p < parts; ++p)  // contiguous shares, as even as n allows
      shares[p].range.store(((uint64_t)(n * p / parts) << 32) | (uint64_t)(n * (p + 1) / parts),
                            std::memory_order_release);
    epoch.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&epoch);
    work(0);
    while (done.load(std::memory_order_acquire) < n) relax();  // tasks helpers took and still run
    in_job = false;
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: detached helpers may still spin at exit
  return *p;
}

}  // namespace

void spin_parallel_for(DlTask task, void* ctx, int64_t n, int nthreads) {
  if (nthreads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) task(ctx, i);
    return;
  }
  pool().run(task, ctx, n, nthreads);
}

}  // namespace distill_et
