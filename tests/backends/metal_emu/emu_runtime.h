// Runtime of the Metal emulator: what the shim's barriers and simdgroup functions call into,
// and how generated bindings register kernels. Plain C++; deliberately free of the shim's
// macros (`thread`, `device`...) so it can use std::thread.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emu {

constexpr unsigned kSimdWidth = 32;  // Apple GPUs: 32 threads per simdgroup

struct U3 {
  unsigned x, y, z;
};

// Everything Metal can hand a kernel through [[attributes]], for one thread.
struct ThreadIds {
  U3 thread_position_in_grid, thread_position_in_threadgroup, threadgroup_position_in_grid;
  U3 threads_per_threadgroup, threadgroups_per_grid, threads_per_grid;
  U3 dispatch_threads_per_threadgroup;
  unsigned thread_index_in_threadgroup, simdgroup_index_in_threadgroup, thread_index_in_simdgroup;
  unsigned threads_per_simdgroup, simdgroups_per_threadgroup;
};

// How a kernel argument is bound, as torch.mps.compile_shader binds Python values:
// tensor -> device pointer, int -> constant long&, float -> constant float&,
// list of ints -> constant long*, list of floats -> constant float*.
enum class ArgKind { Pointer, Reference };

struct ParamInfo {
  ArgKind kind;
  const char* space;  // "device" or "constant"
  const char* type;   // element type as written, e.g. "float", "half", "long"
  bool writable;     // non-const device pointer
  const char* name;
};

using Launcher = void (*)(void* const* args, const ThreadIds& ids);

struct KernelInfo {
  const char* name;
  Launcher launch;
  std::vector<ParamInfo> params;
};

// Called by generated bindings at static-initialization time.
struct Registrar {
  Registrar(const char* name, Launcher launch, std::vector<ParamInfo> params);
};
const KernelInfo* find_kernel(const std::string& name);
std::vector<const KernelInfo*> all_kernels();

// Runs a dispatchThreads(threads, group) of `k`: threadgroups one after another, each with its
// threads as real OS threads. Returns an error message, empty on success.
std::string dispatch(const KernelInfo& k, void* const* args, U3 threads, U3 group);

// Called by the shim from kernel code.
void threadgroup_barrier();
void simdgroup_barrier();
// Exchange `bytes` bytes among the active lanes of the caller's simdgroup: writes 32 slots of
// `bytes` bytes into `all` (inactive lanes' slots zeroed); returns the number of active lanes.
unsigned simd_exchange(const void* mine, std::size_t bytes, void* all);
unsigned lane_id();
[[noreturn]] void fail(const std::string& why);

}  // namespace emu
