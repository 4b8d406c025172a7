// Row-wise LayerNorm and a tiled linear layer (x W^T + bias, optional exact GELU / ReLU, optional
// residual): the perceivers' projections and feed-forwards.
#include "common.h"

// ---- LayerNorm over the C channels of each row: one simdgroup per row, 4 rows per group ----
#define LN_ROWS 4
// `g`: rows, C, then the input and output addressing. Row r = (outer o, inner n) with
// o = r / inner_count, n = r % inner_count, so (B, C, H, W) memory (channel stride H*W) and
// (B, N, C) tokens read the same way; element = base + o * s_outer + n * s_inner + c * s_chan.
#define LN_ROWS_N 0
#define LN_C 1
#define LN_INNER 2
#define LN_X_OUTER 3
#define LN_X_INNER 4
#define LN_X_CHAN 5
#define LN_Y_OFF 6
#define LN_Y_OUTER 7
#define LN_Y_INNER 8
#define LN_LEN 9

template <typename T>
kernel void layer_norm(
    device const T* x [[buffer(0)]],
    device const T* w [[buffer(1)]],
    device const T* bias [[buffer(2)]],
    device T* y [[buffer(3)]],
    constant long* g [[buffer(4)]],
    constant float& eps [[buffer(5)]],
    uint tg [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  const long rows = g[LN_ROWS_N], c = g[LN_C];
  const long r_raw = long(tg) * LN_ROWS + sg;
  const bool live = r_raw < rows;
  const long r = live ? r_raw : rows - 1;  // spare simdgroups shadow the last row, write nothing
  const long o = r / g[LN_INNER], n = r % g[LN_INNER];
  device const T* xr = x + o * g[LN_X_OUTER] + n * g[LN_X_INNER];
  const long xc = g[LN_X_CHAN];

  float sum = 0.0f;
  for (long i = lane; i < c; i += SIMD_WIDTH) sum += float(xr[i * xc]);
  const float mean = simd_sum(sum) / float(c);
  float sq = 0.0f;  // two passes: no cancellation in the variance
  for (long i = lane; i < c; i += SIMD_WIDTH) {
    float t = float(xr[i * xc]) - mean;
    sq += t * t;
  }
  const float rstd = precise::rsqrt(simd_sum(sq) / float(c) + eps);
  if (live) {
    device T* yr = y + g[LN_Y_OFF] + o * g[LN_Y_OUTER] + n * g[LN_Y_INNER];
    for (long i = lane; i < c; i += SIMD_WIDTH) {
      yr[i] = T((float(xr[i * xc]) - mean) * rstd * float(w[i]) + float(bias[i]));
    }
  }
}

// ---- y[m, n] = act(sum_k x[m, k] w[n, k] + bias[n]) + res[m, n] ----
// 16 x 16 output tile per threadgroup, one output per thread, K in steps of 16 through
// threadgroup memory.
#define LIN_TILE 16
#define LIN_M 0
#define LIN_N 1
#define LIN_K 2
#define LIN_X_OFF 3   // x element (m, k) = x[X_OFF + m * X_RS + k]
#define LIN_X_RS 4
#define LIN_W_OFF 5   // w element (n, k) = w[W_OFF + n * K + k]
#define LIN_Y_RS 6    // y and res element (m, n) at m * Y_RS + n
#define LIN_HAS_BIAS 7
#define LIN_HAS_RES 8
#define LIN_ACT 9     // 0: none, 1: exact GELU, 2: ReLU
#define LIN_LEN 10

template <typename T>
kernel void linear_layer(
    device const T* x [[buffer(0)]],
    device const T* w [[buffer(1)]],
    device const T* bias [[buffer(2)]],
    device const T* res [[buffer(3)]],
    device T* y [[buffer(4)]],
    constant long* g [[buffer(5)]],
    uint2 tg [[threadgroup_position_in_grid]],
    uint2 lid [[thread_position_in_threadgroup]]) {
  threadgroup float xs[LIN_TILE][LIN_TILE + 1];
  threadgroup float ws[LIN_TILE][LIN_TILE + 1];
  const long m_count = g[LIN_M], n_count = g[LIN_N], k_count = g[LIN_K];
  const long m0 = long(tg.y) * LIN_TILE, n0 = long(tg.x) * LIN_TILE;
  const long m = m0 + lid.y, n = n0 + lid.x;

  float acc = 0.0f;
  for (long k0 = 0; k0 < k_count; k0 += LIN_TILE) {
    // Thread (x, y) stages x[m0 + y, k0 + x] and w[n0 + y, k0 + x].
    const long kk = k0 + lid.x;
    const long wm = n0 + lid.y;
    xs[lid.y][lid.x] = (m < m_count && kk < k_count)
                           ? float(x[g[LIN_X_OFF] + m * g[LIN_X_RS] + kk]) : 0.0f;
    ws[lid.y][lid.x] = (wm < n_count && kk < k_count)
                           ? float(w[g[LIN_W_OFF] + wm * k_count + kk]) : 0.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = 0; e < LIN_TILE; ++e) acc += xs[lid.y][e] * ws[lid.x][e];
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (m < m_count && n < n_count) {
    if (g[LIN_HAS_BIAS] != 0) acc += float(bias[n]);
    if (g[LIN_ACT] == 1) {
      acc = float(T(acc));  // the reference rounds the pre-activation to T
      acc = gelu_erf(acc);
    } else if (g[LIN_ACT] == 2) {
      acc = max(acc, 0.0f);
    }
    if (g[LIN_HAS_RES] != 0) acc = float(T(acc)) + float(res[m * g[LIN_Y_RS] + n]);
    y[m * g[LIN_Y_RS] + n] = T(acc);
  }
}

#define INSTANTIATE_LAYERS(T)                                                              \
  template [[host_name("layer_norm_" #T)]] kernel void layer_norm<T>(                      \
      device const T* x [[buffer(0)]], device const T* w [[buffer(1)]],                    \
      device const T* bias [[buffer(2)]], device T* y [[buffer(3)]],                       \
      constant long* g [[buffer(4)]], constant float& eps [[buffer(5)]],                   \
      uint tg [[threadgroup_position_in_grid]], uint sg [[simdgroup_index_in_threadgroup]], \
      uint lane [[thread_index_in_simdgroup]]);                                            \
  template [[host_name("linear_" #T)]] kernel void linear_layer<T>(                              \
      device const T* x [[buffer(0)]], device const T* w [[buffer(1)]],                    \
      device const T* bias [[buffer(2)]], device const T* res [[buffer(3)]],               \
      device T* y [[buffer(4)]], constant long* g [[buffer(5)]],                           \
      uint2 tg [[threadgroup_position_in_grid]],                                           \
      uint2 lid [[thread_position_in_threadgroup]]);

INSTANTIATE_LAYERS(float)
INSTANTIATE_LAYERS(half)
#if EDGETAM_HAS_BFLOAT
INSTANTIATE_LAYERS(bfloat)
#endif
