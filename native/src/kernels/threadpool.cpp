// Persistent worker threads, woken per parallel region.
//
// Workers spin on a generation counter for a while (SIGMA_SPIN_US
// microseconds, default 100) before sleeping on a condition variable:
// back-to-back kernels (a training step; a decode step's two dozen products
// with a little TypeScript between them) then start without a futex round
// trip, while an idle process does not burn CPU.
//
// The caller does not hand each worker its share: the region's tasks are
// claimed one by one from a shared counter by whichever thread gets there,
// the caller included. A worker that is slow to wake (asleep past its spin,
// or its virtual CPU descheduled by a hypervisor: tens of microseconds on a
// cloud VM) then costs nothing, since the caller takes its task too, where
// before a small region waited for it (a width-128 model's attention over 100
// positions: 5 µs of work took ~30 µs on two threads of a KVM guest).
//
// One pool serves the whole process, and the addon may be loaded by several
// JS threads at once (worker_threads). A region holds `run_mutex_` from start
// to end, and so does set_threads: a second JS thread that wants the pool
// waits for the running region (a region never waits for anything a JS thread
// holds, so this cannot deadlock), and set_threads waits for it too instead of
// stopping workers under it. An exception thrown by a region's function (out
// of memory for a scratch buffer) is caught on whichever thread ran it and
// rethrown on the caller once every task of the region has finished.
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sigma {
namespace {

thread_local bool in_parallel_region = false;

// Sets in_parallel_region for a scope, restoring it even when fn throws.
struct RegionFlag {
  bool saved;
  RegionFlag() : saved(in_parallel_region) { in_parallel_region = true; }
  ~RegionFlag() { in_parallel_region = saved; }
};

int default_threads() {
  if (const char* env = std::getenv("SIGMA_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// How long an idle worker spins before it sleeps (SIGMA_SPIN_US; 0 = at once).
std::chrono::microseconds spin_time() {
  if (const char* env = std::getenv("SIGMA_SPIN_US")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == 0 && v >= 0 && v <= 1000000) return std::chrono::microseconds(v);
  }
  return std::chrono::microseconds(100);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Pool {
 public:
  Pool() : threads_(default_threads()) {}
  ~Pool() { stop(); }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  bool set_threads(int n) {
    n = std::max(1, n);
    // Called inside a region (not reachable from JS: no JS runs there) it
    // would wait for itself.
    if (in_parallel_region) return false;
    std::lock_guard<std::mutex> run_lock(run_mutex_);  // waits for a running region
    if (n == threads_.load(std::memory_order_relaxed)) return true;
    stop();
    threads_.store(n, std::memory_order_relaxed);
    return true;
  }

  // fn(t, nth) runs exactly once for every t in [0, nth), whatever the
  // thread count is now: with fewer threads than nth (set_threads from
  // another JS thread since the caller chose nth), a thread runs several t.
  void run(const std::function<void(int, int)>& fn, int nth) {
    if (nth <= 0) nth = threads();
    if (in_parallel_region) {
      // Nested inside another region: serial on this thread.
      for (int t = 0; t < nth; ++t) fn(t, nth);
      return;
    }
    if (nth == 1 || threads() == 1) {
      RegionFlag flag;
      for (int t = 0; t < nth; ++t) fn(t, nth);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);  // one region at a time, in the whole process
    const int physical = std::min(nth, threads_.load(std::memory_order_relaxed));
    if (physical <= 1) {
      RegionFlag flag;
      for (int t = 0; t < nth; ++t) fn(t, nth);
      return;
    }
    start(physical - 1);
    job_ = &fn;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    // The region's tasks, all unclaimed: the release publishes job_ to
    // whoever claims one (a claim is an RMW on claim_, so it reads this store
    // or a later claim in its release sequence).
    claim_.store(static_cast<uint64_t>(nth) << 32, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    {
      RegionFlag flag;
      take_tasks();
    }
    // Every task is claimed: wait for those that workers took to finish (none
    // when the workers were still waking up; they then find nothing to take).
    int spins = 0;
    while (done_.load(std::memory_order_acquire) != static_cast<uint32_t>(nth)) {
      if (++spins > 4000) std::this_thread::yield();
    }
    job_ = nullptr;
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  // Claims the running region's tasks one at a time until none is left, and
  // runs them; an exception is kept for the caller. claim_ holds the task
  // count (high half) and the next task (low half) in one word, so a claim
  // that succeeds takes a task of the region running now, whose job_ stays
  // valid until that task is done: a thread that wakes late, even regions
  // late, takes only what is still unclaimed, and the caller never waits for
  // a thread that has not started.
  void take_tasks() {
    uint64_t c = claim_.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t tasks = static_cast<uint32_t>(c >> 32), next = static_cast<uint32_t>(c);
      if (next >= tasks) return;
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      try {
        (*job_)(static_cast<int>(next), static_cast<int>(tasks));
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
      c = claim_.load(std::memory_order_acquire);
    }
  }

  void start(int workers) {
    while (static_cast<int>(workers_.size()) < workers) {
      // The worker must start from the generation current now (before the
      // caller bumps it for the region that needs this worker), not from
      // whatever it reads once the OS gets round to starting the thread.
      uint64_t seen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, seen] { loop(seen); });
    }
  }

  // Only with run_mutex_ held (or from the destructor): no region is running.
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mutex_);
      quit_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    quit_ = false;
  }

  void loop(uint64_t seen) {
    in_parallel_region = true;
    for (;;) {
      // Spin a while, then sleep.
      const auto until = std::chrono::steady_clock::now() + spin_;
      while (generation_.load(std::memory_order_acquire) == seen) {
        for (int i = 0; i < 32 && generation_.load(std::memory_order_acquire) == seen; ++i) cpu_relax();
        if (std::chrono::steady_clock::now() >= until) break;
      }
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lk(mutex_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      if (quit_) return;
      take_tasks();
    }
  }

  std::atomic<int> threads_;
  const std::chrono::microseconds spin_ = spin_time();
  std::vector<std::thread> workers_;
  std::mutex mutex_, run_mutex_, error_mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  // The running region's tasks: count << 32 | next unclaimed; and how many are done.
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint32_t> done_{0};
  // Written by the caller (holding run_mutex_) before the release store of
  // claim_, read by a thread only after it claims a task: the region cannot
  // end, nor job_ change, before that task is done. quit_ is written under
  // mutex_ before the generation bump that wakes the workers to read it.
  const std::function<void(int, int)>* job_ = nullptr;
  bool quit_ = false;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

bool set_num_threads(int n) { return pool().set_threads(n); }
int num_threads() { return pool().threads(); }

void parallel_run(const std::function<void(int, int)>& fn, int nth) { pool().run(fn, nth); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t max_chunks = (n + grain - 1) / grain;
  int nth = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (nth <= 1) {
    fn(0, n);
    return;
  }
  parallel_run(
      [&](int tid, int nt) {
        int64_t b = n * tid / nt, e = n * (tid + 1) / nt;
        if (b < e) fn(b, e);
      },
      nth);
}

}  // namespace sigma
