// Persistent worker threads, woken per parallel region.
//
// Workers spin briefly on a generation counter before sleeping on a condition
// variable: back-to-back kernels (the usual case in a training step) then
// start without a futex round trip, while an idle process does not burn CPU.
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace sigma {
namespace {

thread_local bool in_parallel_region = false;

int default_threads() {
  if (const char* env = std::getenv("SIGMA_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

class Pool {
 public:
  Pool() : threads_(default_threads()) {}
  ~Pool() { stop(); }

  int threads() const { return threads_; }
  void set_threads(int n) {
    n = std::max(1, n);
    if (n == threads_) return;
    stop();
    threads_ = n;
  }

  void run(const std::function<void(int, int)>& fn, int nth) {
    if (nth <= 0 || nth > threads_) nth = threads_;
    if (nth == 1 || in_parallel_region) {
      // Serial: one thread, or nested inside another region.
      if (in_parallel_region) {
        for (int t = 0; t < nth; ++t) fn(t, nth);
      } else {
        in_parallel_region = true;
        fn(0, 1);
        in_parallel_region = false;
      }
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);  // one region at a time
    start(nth - 1);
    job_ = &fn;
    job_threads_ = nth;
    // Every started worker acknowledges every region (those with id >= nth
    // just decrement), so no worker can lag behind into the next region.
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    in_parallel_region = true;
    fn(0, nth);
    in_parallel_region = false;
    // Wait for the workers that take part in this region.
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) != 0) {
      if (++spins > 4000) std::this_thread::yield();
    }
    job_ = nullptr;
  }

 private:
  void start(int workers) {
    while (static_cast<int>(workers_.size()) < workers) {
      int id = static_cast<int>(workers_.size()) + 1;
      // The worker must start from the generation current now (before the
      // caller bumps it for the region that needs this worker), not from
      // whatever it reads once the OS gets round to starting the thread.
      uint64_t seen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, id, seen] { loop(id, seen); });
    }
  }

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

  void loop(int id, uint64_t seen) {
    in_parallel_region = true;
    for (;;) {
      // Spin a little, then sleep.
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen && spins < 20000) ++spins;
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lk(mutex_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      if (quit_) return;
      const std::function<void(int, int)>* job = job_;
      int nth = job_threads_;
      if (job != nullptr && id < nth) (*job)(id, nth);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_, run_mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  // Written by the caller before the release on generation_, read by workers
  // after the acquire: no further synchronisation needed.
  const std::function<void(int, int)>* job_ = nullptr;
  int job_threads_ = 1;
  bool quit_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void set_num_threads(int n) { pool().set_threads(n); }
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
