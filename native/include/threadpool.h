// A small persistent thread pool for the kernels. Plain C++, no Node-API.
//
// The calling thread always takes part (it claims tasks like the workers,
// and takes them all when no worker is awake in time), so `parallel_run`
// with one thread is a plain function call. Nested calls (a kernel running
// inside another kernel's parallel region) run serially on the caller.
// Thread-safe: several JS threads (worker_threads) may call kernels and
// set_num_threads at once; regions run one at a time and set_num_threads
// waits for the running one.
#pragma once
#include <cstdint>
#include <functional>

namespace sigma {

// Sets the number of threads kernels use (>= 1). Workers are started lazily.
// Waits for a region running on another thread; returns false (and changes
// nothing) when called from inside a region, where it would wait for itself.
bool set_num_threads(int n);
// The number of threads kernels use. Default: hardware_concurrency, or the
// SIGMA_THREADS environment variable when set.
int num_threads();

// Runs fn(tid, nth) for tid = 0..nth-1 concurrently and returns when all are
// done; each tid runs exactly once, on whichever thread claims it (a thread
// may run several: one that woke late, or the thread count dropped below nth). nth = 0 means num_threads(). Must
// not allocate per call. An exception thrown by fn is rethrown on the caller
// after every thread has finished.
void parallel_run(const std::function<void(int tid, int nth)>& fn, int nth = 0);

// Splits [0, n) into at most num_threads() contiguous chunks of at least
// `grain` items and runs fn(begin, end) on each.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

// A grain for parallel_for: enough items that each chunk holds at least
// `min_work` units of work (and at least `min_items` items). Below that,
// waking another thread costs more than it saves (short sequences, few rows).
inline int64_t grain_for(int64_t work_per_item, int64_t min_work, int64_t min_items = 1) {
  const int64_t g = min_work / (work_per_item > 1 ? work_per_item : 1);
  return g > min_items ? g : min_items;
}

}  // namespace sigma
