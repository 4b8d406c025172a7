// softmax(q k^T * scale) v with SAM 2 / EdgeTAM axial RoPE applied while q and k are loaded,
// an optional positional term added to k and v (the perceiver's `k += pos; v += pos`),
// and an fp32 online softmax. Serves rope_attention and the perceivers' dense attentions.
//
// One threadgroup = 4 simdgroups x 32 lanes, BQ = 8 queries of one (batch, head): each simdgroup
// owns 2 queries. Keys stream through threadgroup memory in tiles of 32 (one key per lane for
// the scores, then simd_max / simd_sum for the softmax), head dims in chunks of 64; the output
// accumulators of a query are spread over its simdgroup's lanes (lane owns dims lane + 32 i).
// An optional key mask (rope_attention's key_mask, as 0 / 1 in T, one row per batch row or
// one shared row) gives masked keys probability exactly 0; key tiles with no valid key are
// skipped (the same decision for the whole threadgroup); a query with no valid key writes 0.
#include "common.h"

#define ATT_NSG 4        // simdgroups per threadgroup
#define ATT_QPS 2        // queries per simdgroup
#define ATT_BQ 8         // queries per threadgroup (ATT_NSG * ATT_QPS)
#define ATT_BK 32        // keys per tile: one per lane
#define ATT_DC 64        // head dims per chunk staged in threadgroup memory
#define ATT_MAXD 256     // largest q/k head dim (q stays staged for the whole key loop)
#define ATT_MAXDV 256    // largest v head dim (8 fp32 accumulators per lane per query)
#define ATT_THREADS 128  // ATT_NSG * SIMD_WIDTH

// Layout of the `g` argument (a list of ints; one binding instead of ~30 under Metal's limit).
// Strides and offsets are in elements; element d of a head vector is contiguous.
#define G_NQ 0
#define G_NK 1
#define G_D 2
#define G_DV 3
#define G_QB 4   // q: batch, head, token strides, offset
#define G_QH 5
#define G_QN 6
#define G_QO 7
#define G_KB 8
#define G_KH 9
#define G_KN 10
#define G_KO 11
#define G_VB 12
#define G_VH 13
#define G_VN 14
#define G_VO 15
#define G_OB 16
#define G_OH 17
#define G_ON 18
#define G_OO 19
#define G_PB 20  // pos: batch, head, token, channel strides; used when G_HAS_POS
#define G_PH 21
#define G_PN 22
#define G_PC 23
#define G_HAS_POS 24
#define G_QW 25     // q grid width; 0: q is not rotated
#define G_KW 26     // k grid width
#define G_NROT 27   // rotated tokens per key frame (k_h * k_w), the frame's last ones
#define G_FRAME 28  // tokens per key frame
#define G_NROPE 29  // keys [0, NROPE) form the frames; later keys are never rotated
#define G_ROUND 30  // compute dtype: ROUND_NONE / ROUND_HALF / ROUND_BF16
#define G_HAS_MASK 31  // key_mask bound (else the buffer is a dummy, never read)
#define G_MB 32        // key_mask batch stride (0: one row for the batch)
#define G_LEN 33

// Rotate the interleaved pair (x0, x1) = dims (2p, 2p+1) at grid position (row, col): pairs
// p < D/4 turn by col * freq[p], the others by row * freq[p - D/4]. fp32, as Meta's code.
inline float2 rope_pair(float x0, float x1, long p, long d, long row, long col,
                        device const float* freqs) {
  long quarter = d / 4;
  float angle = p < quarter ? float(col) * freqs[p] : float(row) * freqs[p - quarter];
  float c = precise::cos(angle);
  float s = precise::sin(angle);
  return float2(x0 * c - x1 * s, x0 * s + x1 * c);
}

template <typename T>
kernel void rope_attention(
    device const T* q [[buffer(0)]],
    device const T* k [[buffer(1)]],
    device const T* v [[buffer(2)]],
    device const T* pos [[buffer(3)]],
    device const float* freqs [[buffer(4)]],
    device T* out [[buffer(5)]],
    constant long* g [[buffer(6)]],
    constant float& scale [[buffer(7)]],
    device const T* key_mask [[buffer(8)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float q_s[ATT_BQ][ATT_MAXD];
  threadgroup float k_s[ATT_BK][ATT_DC + 1];  // +1: lanes read different rows, no bank clash
  threadgroup float v_s[ATT_BK][ATT_DC];
  threadgroup float p_s[ATT_BQ][ATT_BK];

  const long n_q = g[G_NQ], n_k = g[G_NK], d = g[G_D], dv = g[G_DV];
  const long round_mode = g[G_ROUND];
  const long b = tg.z, h = tg.y, q0 = long(tg.x) * ATT_BQ;
  device const T* qb = q + g[G_QO] + b * g[G_QB] + h * g[G_QH];
  device const T* kb = k + g[G_KO] + b * g[G_KB] + h * g[G_KH];
  device const T* vb = v + g[G_VO] + b * g[G_VB] + h * g[G_VH];
  device const T* pb = pos + b * g[G_PB] + h * g[G_PH];
  const bool has_pos = g[G_HAS_POS] != 0;
  const bool has_mask = g[G_HAS_MASK] != 0;
  device const T* kmb = key_mask + b * g[G_MB];

  // Stage this threadgroup's queries, rotated on the q grid and rounded like the reference
  // (rotation in fp32, cast back to T, then to the compute dtype).
  for (long i = tid; i < ATT_BQ * (d / 2); i += ATT_THREADS) {
    long r = i / (d / 2), p = i % (d / 2), n = q0 + r;
    float y0 = 0.0f, y1 = 0.0f;
    if (n < n_q) {
      float x0 = float(qb[n * g[G_QN] + 2 * p]);
      float x1 = float(qb[n * g[G_QN] + 2 * p + 1]);
      if (g[G_QW] > 0) {
        float2 y = rope_pair(x0, x1, p, d, n / g[G_QW], n % g[G_QW], freqs);
        x0 = float(T(y.x));
        x1 = float(T(y.y));
      }
      y0 = round_to(x0, round_mode);
      y1 = round_to(x1, round_mode);
    }
    q_s[r][2 * p] = y0;
    q_s[r][2 * p + 1] = y1;
  }

  float m[ATT_QPS], l[ATT_QPS], o[ATT_QPS][ATT_MAXDV / SIMD_WIDTH];
  for (int qi = 0; qi < ATT_QPS; ++qi) {
    m[qi] = NEG_BIG;
    l[qi] = 0.0f;
    for (int e = 0; e < ATT_MAXDV / SIMD_WIDTH; ++e) o[qi][e] = 0.0f;
  }

  for (long k0 = 0; k0 < n_k; k0 += ATT_BK) {
    if (has_mask) {  // uniform over the threadgroup: same batch row, same tile
      bool any = false;
      for (long t = k0; t < n_k && t < k0 + ATT_BK; ++t) any = any || float(kmb[t]) != 0.0f;
      if (!any) continue;
    }
    // Scores: lane j of each simdgroup computes key k0 + j against the simdgroup's queries.
    float s[ATT_QPS];
    for (int qi = 0; qi < ATT_QPS; ++qi) s[qi] = 0.0f;
    for (long c0 = 0; c0 < d; c0 += ATT_DC) {
      threadgroup_barrier(mem_flags::mem_threadgroup);  // k_s (and q_s, p_s) free to overwrite
      for (long i = tid; i < ATT_BK * (ATT_DC / 2); i += ATT_THREADS) {
        long j = i / (ATT_DC / 2), p = c0 / 2 + i % (ATT_DC / 2), t = k0 + j;
        float y0 = 0.0f, y1 = 0.0f;
        if (t < n_k && 2 * p < d) {
          float x0 = float(kb[t * g[G_KN] + 2 * p]);
          float x1 = float(kb[t * g[G_KN] + 2 * p + 1]);
          if (has_pos) {
            x0 = float(T(x0 + float(pb[t * g[G_PN] + (2 * p) * g[G_PC]])));
            x1 = float(T(x1 + float(pb[t * g[G_PN] + (2 * p + 1) * g[G_PC]])));
          }
          if (t < g[G_NROPE]) {
            long f = t % g[G_FRAME] - (g[G_FRAME] - g[G_NROT]);  // index on the k grid
            if (f >= 0) {
              float2 y = rope_pair(x0, x1, p, d, f / g[G_KW], f % g[G_KW], freqs);
              x0 = float(T(y.x));
              x1 = float(T(y.y));
            }
          }
          y0 = round_to(x0, round_mode);
          y1 = round_to(x1, round_mode);
        }
        k_s[j][2 * (p - c0 / 2)] = y0;
        k_s[j][2 * (p - c0 / 2) + 1] = y1;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      long dc = d - c0 < ATT_DC ? d - c0 : long(ATT_DC);
      for (int qi = 0; qi < ATT_QPS; ++qi) {
        int r = sg * ATT_QPS + qi;
        float acc = 0.0f;
        for (long e = 0; e < dc; ++e) acc += q_s[r][c0 + e] * k_s[lane][e];
        s[qi] += acc;
      }
    }

    // Online softmax, all in fp32; every lane of a simdgroup holds the same m and l.
    float alpha[ATT_QPS];
    const bool valid = k0 + lane < n_k && (!has_mask || float(kmb[k0 + lane]) != 0.0f);
    for (int qi = 0; qi < ATT_QPS; ++qi) {
      float score = valid ? s[qi] * scale : NEG_BIG;
      float m_new = max(m[qi], simd_max(score));  // a real score: the tile has a valid key
      float p = valid ? precise::exp(score - m_new) : 0.0f;
      alpha[qi] = precise::exp(m[qi] - m_new);
      l[qi] = l[qi] * alpha[qi] + simd_sum(p);
      m[qi] = m_new;
      p_s[sg * ATT_QPS + qi][lane] = p;
    }

    // o = o * alpha + p v, value dims in chunks staged in threadgroup memory.
    for (long c0 = 0; c0 < dv; c0 += ATT_DC) {
      threadgroup_barrier(mem_flags::mem_threadgroup);  // v_s free; p_s written
      for (long i = tid; i < ATT_BK * ATT_DC; i += ATT_THREADS) {
        long j = i / ATT_DC, e = i % ATT_DC, t = k0 + j, dd = c0 + e;
        float x = 0.0f;
        if (t < n_k && dd < dv) {
          x = float(vb[t * g[G_VN] + dd]);
          if (has_pos) {
            x = float(T(x + float(pb[t * g[G_PN] + dd * g[G_PC]])));
          }
          x = round_to(x, round_mode);
        }
        v_s[j][e] = x;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int qi = 0; qi < ATT_QPS; ++qi) {
        int r = sg * ATT_QPS + qi;
        for (int e = 0; e < ATT_DC / SIMD_WIDTH; ++e) {
          int slot = int(c0 / SIMD_WIDTH) + e;
          float acc = o[qi][slot] * alpha[qi];
          for (int j = 0; j < ATT_BK; ++j) acc += p_s[r][j] * v_s[j][e * SIMD_WIDTH + lane];
          o[qi][slot] = acc;
        }
      }
    }
  }

  // Normalize and store (as the reference: the compute dtype's result, cast to T).
  device T* ob = out + g[G_OO] + b * g[G_OB] + h * g[G_OH];
  for (int qi = 0; qi < ATT_QPS; ++qi) {
    long n = q0 + sg * ATT_QPS + qi;
    if (n >= n_q) continue;
    for (int e = 0; e < ATT_MAXDV / SIMD_WIDTH; ++e) {
      long dd = e * SIMD_WIDTH + lane;
      // l is 0 only when every key was masked (each valid tile adds exp(0) for its max)
      float y = l[qi] > 0.0f ? o[qi][e] / l[qi] : 0.0f;
      if (dd < dv) ob[n * g[G_ON] + dd] = T(round_to(y, round_mode));
    }
  }
}

template [[host_name("rope_attention_float")]] kernel void rope_attention<float>(
    device const float* q [[buffer(0)]], device const float* k [[buffer(1)]],
    device const float* v [[buffer(2)]], device const float* pos [[buffer(3)]],
    device const float* freqs [[buffer(4)]], device float* out [[buffer(5)]],
    constant long* g [[buffer(6)]], constant float& scale [[buffer(7)]],
    device const float* key_mask [[buffer(8)]],
    uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
template [[host_name("rope_attention_half")]] kernel void rope_attention<half>(
    device const half* q [[buffer(0)]], device const half* k [[buffer(1)]],
    device const half* v [[buffer(2)]], device const half* pos [[buffer(3)]],
    device const float* freqs [[buffer(4)]], device half* out [[buffer(5)]],
    constant long* g [[buffer(6)]], constant float& scale [[buffer(7)]],
    device const half* key_mask [[buffer(8)]],
    uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
#if EDGETAM_HAS_BFLOAT
template [[host_name("rope_attention_bfloat")]] kernel void rope_attention<bfloat>(
    device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]],
    device const bfloat* v [[buffer(2)]], device const bfloat* pos [[buffer(3)]],
    device const float* freqs [[buffer(4)]], device bfloat* out [[buffer(5)]],
    constant long* g [[buffer(6)]], constant float& scale [[buffer(7)]],
    device const bfloat* key_mask [[buffer(8)]],
    uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
#endif
