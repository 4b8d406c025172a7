// Kernels that test the emulator itself (ids, simdgroup functions, threadgroup memory, binding,
// and the faults it must report). Built into the runner next to the real kernels.
#include <metal_stdlib>
using namespace metal;

// Per thread: grid position x, threadgroup position x, thread in group, simdgroup, lane,
// threads in this (possibly partial) threadgroup.
kernel void emu_ids(device long* out [[buffer(0)]],
                    uint gid [[thread_position_in_grid]],
                    uint tg [[threadgroup_position_in_grid]],
                    uint tid [[thread_index_in_threadgroup]],
                    uint sg [[simdgroup_index_in_threadgroup]],
                    uint lane [[thread_index_in_simdgroup]],
                    uint tpg [[threads_per_threadgroup]]) {
  device long* o = out + 6 * gid;
  o[0] = gid;
  o[1] = tg;
  o[2] = tid;
  o[3] = sg;
  o[4] = lane;
  o[5] = tpg;
}

kernel void emu_simd(device const float* x [[buffer(0)]],
                     device float* out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]],
                     uint lane [[thread_index_in_simdgroup]]) {
  float v = x[gid];
  device float* o = out + 6 * gid;
  o[0] = simd_sum(v);
  o[1] = simd_max(v);
  o[2] = simd_shuffle_xor(v, ushort(1));
  o[3] = simd_prefix_exclusive_sum(v);
  o[4] = simd_broadcast(v, ushort(3));
  o[5] = simd_shuffle_down(v, ushort(2));
}

// Reverses each threadgroup's slice through threadgroup memory. With sync == 0 the barrier is
// skipped: a data race that the ThreadSanitizer build must report.
kernel void emu_tg_reverse(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           constant long& sync [[buffer(2)]],
                           uint gid [[thread_position_in_grid]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint n [[threads_per_threadgroup]]) {
  threadgroup float tile[256];
  tile[tid] = x[gid];
  if (sync != 0) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[gid] = tile[n - 1 - tid];
}

// Scalars and lists bind as compile_shader binds them.
kernel void emu_scalars(device float* out [[buffer(0)]],
                        constant long& i [[buffer(1)]],
                        constant float& f [[buffer(2)]],
                        constant long* list [[buffer(3)]],
                        uint gid [[thread_position_in_grid]]) {
  out[0] = float(i);
  out[1] = f;
  out[2] = float(list[0]);
  out[3] = float(list[2]);
}

// Faults the emulator must report instead of hanging or passing silently.
kernel void emu_divergent_barrier(device float* out [[buffer(0)]],
                                  uint tid [[thread_index_in_threadgroup]]) {
  if (tid < 16) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[tid] = 1.0f;
}

kernel void emu_out_of_bounds(device float* out [[buffer(0)]],
                              constant long& n [[buffer(1)]],
                              uint gid [[thread_position_in_grid]]) {
  out[gid + n] = 1.0f;
}
