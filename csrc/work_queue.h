// Hands a kernel's work items [0, n) to a thread pool dynamically (an atomic counter) rather than
// splitting them statically: on a shared machine or a busy phone a descheduled thread then
// delays only its own item. The kernels' items are coarse (a block of queries, a chunk of
// tokens), so they go one at a time unless there are many. One helper for every pool we run on
// (torch's in register.cpp, ExecuTorch's in executorch/kernels.cpp); torch-free.
#pragma once

#include <atomic>
#include <cstdint>

namespace edgetam_cpu {

// parallel_for(workers, worker) must run worker(begin, end) over [0, workers) on the pool.
template <class ParallelFor>
void hand_out(int64_t n, int64_t threads, void* ctx, void (*body)(void*, int64_t, int64_t),
              ParallelFor&& parallel_for) {
  if (threads <= 1 || n <= 1) {
    body(ctx, 0, n);
    return;
  }
  const int64_t chunk = n <= 256 ? 1 : (n + 16 * threads - 1) / (16 * threads);
  std::atomic<int64_t> next{0};
  parallel_for(threads < n ? threads : n, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t b = next.fetch_add(chunk);
      if (b >= n) break;
      body(ctx, b, b + chunk < n ? b + chunk : n);
    }
  });
}

}  // namespace edgetam_cpu
