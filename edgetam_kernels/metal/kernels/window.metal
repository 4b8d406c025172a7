// Patch-latent cross-attention of EdgeTAM's 2D Spatial Perceiver: patch latent w of batch b
// attends only to the ws x ws tokens of window (w / nw, w % nw) of the H x W grid. k and v are
// rows of the shared projection kv = Wkv LN(x) ((B * H * W, 2 * inner), k first), found by index
// arithmetic on the grid, with no gather copy and no pos.
//
// One simdgroup per (latent, head), 4 per threadgroup. Lanes take one window token each for the
// scores (simd_max / simd_sum online softmax over chunks of 32 tokens), then one value dim each.
#include "common.h"

#define WIN_NSG 4
#define WIN_MAXDH 256  // 8 fp32 accumulators per lane
#define WG_ROWS 0      // latent rows: B * nw * nw
#define WG_LAT 1       // nw * nw
#define WG_NW 2
#define WG_WS 3
#define WG_W 4         // grid width
#define WG_HW 5        // H * W
#define WG_INNER 6
#define WG_DH 7
#define WG_LEN 8

template <typename T>
kernel void window_attention(
    device const T* q [[buffer(0)]],
    device const T* kv [[buffer(1)]],
    device T* out [[buffer(2)]],
    constant long* g [[buffer(3)]],
    constant float& scale [[buffer(4)]],
    uint2 tg [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float p_s[WIN_NSG][SIMD_WIDTH];
  const long rows = g[WG_ROWS], inner = g[WG_INNER], dh = g[WG_DH];
  const long ws = g[WG_WS], n_tok = ws * ws;
  const long r_raw = long(tg.x) * WIN_NSG + sg;
  const bool live = r_raw < rows;
  const long r = live ? r_raw : rows - 1;  // spare simdgroups shadow the last latent
  const long h = tg.y;
  const long b = r / g[WG_LAT], w = r % g[WG_LAT];
  const long y0 = (w / g[WG_NW]) * ws, x0 = (w % g[WG_NW]) * ws;
  device const T* qr = q + r * inner + h * dh;

  float m = NEG_BIG, l = 0.0f, o[WIN_MAXDH / SIMD_WIDTH];
  for (int e = 0; e < WIN_MAXDH / SIMD_WIDTH; ++e) o[e] = 0.0f;

  for (long t0 = 0; t0 < n_tok; t0 += SIMD_WIDTH) {
    const long t = t0 + lane;
    float score = NEG_BIG;
    if (t < n_tok) {
      long row = b * g[WG_HW] + (y0 + t / ws) * g[WG_W] + x0 + t % ws;
      device const T* kr = kv + row * 2 * inner + h * dh;
      float acc = 0.0f;
      for (long e = 0; e < dh; ++e) acc += float(qr[e]) * float(kr[e]);
      score = acc * scale;
    }
    const float m_new = max(m, simd_max(score));
    const float p = precise::exp(score - m_new);
    const float alpha = precise::exp(m - m_new);
    l = l * alpha + simd_sum(p);
    m = m_new;
    p_s[sg][lane] = p;
    simdgroup_barrier(mem_flags::mem_threadgroup);
    const long count = n_tok - t0 < SIMD_WIDTH ? n_tok - t0 : long(SIMD_WIDTH);
    for (int e = 0; e < WIN_MAXDH / SIMD_WIDTH; ++e) {
      const long d = e * SIMD_WIDTH + lane;
      float acc = o[e] * alpha;
      if (d < dh) {
        for (long j = 0; j < count; ++j) {
          long tj = t0 + j;
          long row = b * g[WG_HW] + (y0 + tj / ws) * g[WG_W] + x0 + tj % ws;
          acc += p_s[sg][j] * float(kv[row * 2 * inner + inner + h * dh + d]);
        }
      }
      o[e] = acc;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);  // p_s read before the next chunk writes it
  }
  if (live) {
    for (int e = 0; e < WIN_MAXDH / SIMD_WIDTH; ++e) {
      const long d = e * SIMD_WIDTH + lane;
      if (d < dh) out[r * inner + h * dh + d] = T(o[e] / l);
    }
  }
}

#define INSTANTIATE_WINDOW(T)                                                             \
  template [[host_name("window_attention_" #T)]] kernel void window_attention<T>(         \
      device const T* q [[buffer(0)]], device const T* kv [[buffer(1)]],                  \
      device T* out [[buffer(2)]], constant long* g [[buffer(3)]],                        \
      constant float& scale [[buffer(4)]], uint2 tg [[threadgroup_position_in_grid]],     \
      uint sg [[simdgroup_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);

INSTANTIATE_WINDOW(float)
INSTANTIATE_WINDOW(half)
#if EDGETAM_HAS_BFLOAT
INSTANTIATE_WINDOW(bfloat)
#endif
