// Metal execution model on the CPU: each threadgroup's threads are real OS threads that meet at
// barriers; simdgroups of 32 lanes exchange values through shared slots between two barriers.
// Threadgroups run one after another (Metal promises no order or concurrency between them, and
// our kernels never communicate across threadgroups).
#include "emu_runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace emu {

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "metal-emu error: %s\n", why.c_str());
  std::fflush(stderr);
  std::_Exit(3);
}

namespace {

// One synchronization point. Its mutex is the only thing threads share when they meet here.
class Barrier {
 public:
  void reset(unsigned n) {
    std::lock_guard<std::mutex> lk(m_);
    total_ = n;
    waiting_ = 0;
  }
  // `retired` counts threads that returned from the kernel; arriving after one did is a
  // divergent barrier (undefined on a GPU, a hang here), reported instead.
  void arrive_and_wait(const char* what, const std::atomic<unsigned>& retired) {
    std::unique_lock<std::mutex> lk(m_);
    if (unsigned r = retired.load(std::memory_order_relaxed))
      fail(std::string(what) + " reached after " + std::to_string(r) + " of " +
           std::to_string(total_) + " threads had returned (divergent barrier)");
    const unsigned long gen = gen_;
    if (++waiting_ == total_) {
      waiting_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lk, std::chrono::seconds(300), [&] { return gen_ != gen; }))
      fail(std::string(what) + ": " + std::to_string(waiting_) + " of " + std::to_string(total_) +
           " threads waited 300 s for the others (deadlock: barrier in divergent control flow?)");
  }
  unsigned waiting() {
    std::lock_guard<std::mutex> lk(m_);
    return waiting_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  unsigned total_ = 0, waiting_ = 0;
  unsigned long gen_ = 0;
};

// A barrier used over and over by the same threads. Consecutive uses alternate between two
// Barrier objects: with a single mutex, a thread racing ahead to the next use would lock it
// before a slow thread re-locks it on waking from the previous one, and ThreadSanitizer would
// see a happens-before edge Metal does not have, hiding races between the two barriers.
class PhasedBarrier {
 public:
  void reset(unsigned n, const char* what) {
    b_[0].reset(n);
    b_[1].reset(n);
    retired_.store(0, std::memory_order_relaxed);
    what_ = what;
  }
  void arrive_and_wait(unsigned& phase) {
    b_[phase & 1].arrive_and_wait(what_, retired_);
    ++phase;
  }
  // The calling thread has returned from the kernel (relaxed: retiring synchronizes nothing).
  void retire() {
    retired_.fetch_add(1, std::memory_order_relaxed);
    for (auto& b : b_)
      if (unsigned w = b.waiting())
        fail(std::string(what_) + ": a thread returned while " + std::to_string(w) +
             " others waited (divergent barrier)");
  }

 private:
  Barrier b_[2];
  std::atomic<unsigned> retired_{0};
  const char* what_ = "";
};

constexpr std::size_t kSlotBytes = 64;  // largest value a simd function exchanges (a float4x4 would not fit)

struct SimdCtx {
  PhasedBarrier bar;
  unsigned lanes = 0;
  alignas(16) unsigned char slots[kSimdWidth][kSlotBytes];
};

struct GroupCtx {
  PhasedBarrier bar;
  std::vector<std::unique_ptr<SimdCtx>> simd;
};

thread_local GroupCtx* t_group = nullptr;
thread_local SimdCtx* t_simd = nullptr;
thread_local unsigned t_lane = 0;
thread_local unsigned t_group_phase = 0, t_simd_phase = 0;

std::map<std::string, KernelInfo>& registry() {
  static std::map<std::string, KernelInfo> r;
  return r;
}

unsigned ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

}  // namespace

Registrar::Registrar(const char* name, Launcher launch, std::vector<ParamInfo> params) {
  registry()[name] = KernelInfo{name, launch, std::move(params)};
}

const KernelInfo* find_kernel(const std::string& name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : &it->second;
}

std::vector<const KernelInfo*> all_kernels() {
  std::vector<const KernelInfo*> out;
  for (auto& kv : registry()) out.push_back(&kv.second);
  return out;
}

void threadgroup_barrier() {
  if (!t_group) fail("threadgroup_barrier outside a kernel");
  t_group->bar.arrive_and_wait(t_group_phase);
}

void simdgroup_barrier() {
  if (!t_simd) fail("simdgroup_barrier outside a kernel");
  t_simd->bar.arrive_and_wait(t_simd_phase);
}

unsigned lane_id() { return t_lane; }

unsigned simd_exchange(const void* mine, std::size_t bytes, void* all) {
  if (!t_simd) fail("simdgroup function outside a kernel");
  if (bytes > kSlotBytes) fail("simdgroup function on a value wider than 64 bytes");
  SimdCtx& s = *t_simd;
  std::memcpy(s.slots[t_lane], mine, bytes);
  s.bar.arrive_and_wait(t_simd_phase);  // every lane has written its slot
  auto* out = static_cast<unsigned char*>(all);
  std::memset(out, 0, bytes * kSimdWidth);
  for (unsigned l = 0; l < s.lanes; ++l) std::memcpy(out + l * bytes, s.slots[l], bytes);
  s.bar.arrive_and_wait(t_simd_phase);  // every lane has read: slots may be overwritten
  return s.lanes;
}

std::string dispatch(const KernelInfo& k, void* const* args, U3 threads, U3 group) {
  if (!group.x || !group.y || !group.z) return "group_size has a zero dimension";
  if (!threads.x || !threads.y || !threads.z) return "threads has a zero dimension";
  const unsigned nmax = group.x * group.y * group.z;
  if (nmax > 1024) return "group_size holds " + std::to_string(nmax) + " threads; Metal allows at most 1024";
  const U3 ngroups{ceil_div(threads.x, group.x), ceil_div(threads.y, group.y), ceil_div(threads.z, group.z)};
  const unsigned long total_groups = (unsigned long)ngroups.x * ngroups.y * ngroups.z;

  // All workers meet before and after each threadgroup, at two distinct barriers (see
  // PhasedBarrier for why distinct).
  Barrier pool_start, pool_end;
  pool_start.reset(nmax);
  pool_end.reset(nmax);
  const std::atomic<unsigned> none{0};
  GroupCtx ctx;
  U3 actual{};  // this threadgroup's size (edge groups of a non-uniform dispatch are smaller)
  U3 gpos{};

  auto worker = [&](unsigned id) {
    for (unsigned long gi = 0; gi < total_groups; ++gi) {
      if (id == 0) {  // set up the next threadgroup while the others wait at the pool barrier
        gpos = U3{unsigned(gi % ngroups.x), unsigned(gi / ngroups.x % ngroups.y),
                  unsigned(gi / ngroups.x / ngroups.y)};
        actual = U3{std::min(group.x, threads.x - gpos.x * group.x),
                    std::min(group.y, threads.y - gpos.y * group.y),
                    std::min(group.z, threads.z - gpos.z * group.z)};
        const unsigned n = actual.x * actual.y * actual.z;
        ctx.bar.reset(n, "threadgroup_barrier");
        const unsigned nsimd = ceil_div(n, kSimdWidth);
        while (ctx.simd.size() < nsimd) ctx.simd.push_back(std::make_unique<SimdCtx>());
        for (unsigned s = 0; s < nsimd; ++s) {
          ctx.simd[s]->lanes = std::min(kSimdWidth, n - s * kSimdWidth);
          ctx.simd[s]->bar.reset(ctx.simd[s]->lanes, "simdgroup barrier/function");
        }
      }
      pool_start.arrive_and_wait("emulator pool barrier", none);
      const unsigned n = actual.x * actual.y * actual.z;
      if (id < n) {
        ThreadIds t{};
        const U3 local{id % actual.x, id / actual.x % actual.y, id / actual.x / actual.y};
        t.thread_position_in_threadgroup = local;
        t.threadgroup_position_in_grid = gpos;
        t.thread_position_in_grid = U3{gpos.x * group.x + local.x, gpos.y * group.y + local.y,
                                       gpos.z * group.z + local.z};
        t.threads_per_threadgroup = actual;
        t.dispatch_threads_per_threadgroup = group;
        t.threadgroups_per_grid = ngroups;
        t.threads_per_grid = threads;
        t.thread_index_in_threadgroup = id;
        t.simdgroup_index_in_threadgroup = id / kSimdWidth;
        t.thread_index_in_simdgroup = id % kSimdWidth;
        t.threads_per_simdgroup = kSimdWidth;
        t.simdgroups_per_threadgroup = ceil_div(n, kSimdWidth);
        t_group = &ctx;
        t_simd = ctx.simd[id / kSimdWidth].get();
        t_lane = id % kSimdWidth;
        t_group_phase = t_simd_phase = 0;
        k.launch(args, t);
        t_simd->bar.retire();
        ctx.bar.retire();
        t_group = nullptr;
        t_simd = nullptr;
      }
      pool_end.arrive_and_wait("emulator pool barrier", none);
    }
  };
  std::vector<std::thread> ts;
  ts.reserve(nmax);
  for (unsigned i = 0; i < nmax; ++i) ts.emplace_back(worker, i);
  for (auto& t : ts) t.join();
  return "";
}

}  // namespace emu
