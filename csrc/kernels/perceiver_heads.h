// The perceiver's attentions on channel-major operands (see perceiver_layers.h), one head each:
//   block_attention   queries attend to every key: flash-style, S^T = K Q^T per tile of keys
//                     (one query per SIMD lane, so the online softmax runs down the columns with
//                     no horizontal reductions), O^T = alpha O^T + V^T P^T. Both products are the
//                     register-blocked micro-kernel of common.h reading K^T and V^T in place.
//   window_attention  patch latents, each over its ws x ws window: vectorized along image rows.
#pragma once
#include "perceiver_layers.h"

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

constexpr int64_t kPerceiverKeys = 96;     // keys per tile: a multiple of every MR
constexpr int64_t kPerceiverQueries = 64;  // queries per block: one micro-tile strip on AVX-512

// Queries are scaled once, by 1 / sqrt(head dim) and log2(e): the softmax runs in base 2.
inline float softmax_scale(int64_t dh) { return 1.4426950408889634f / std::sqrt(float(dh)); }

void scale_rows(float* x, int64_t ld, int64_t rows, int64_t c0, int64_t c1, float s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; c += V::W) V::store(x + r * ld + c, V::mul(V::load(x + r * ld + c), V::set1(s)));
}

// One head. Element (c, j) of an operand X lives at X[c * ldX + j]: qt (dk, queries) already
// scaled by scale * log2(e) (the softmax runs in base 2), kt (dk, keys), vt (dv, keys),
// ot (dv, queries). With pm / pl set, the result is a partial one over this subset of keys, for
// merge_partials: ot unnormalized, and per query the running max (base-2 logits) in pm and the
// softmax denominator in pl. Keys are ks apart in kt and vt: element (c, j) of kt is at
// kt[c * ldk + j * ks]; ks = 1 is the channel-major layout above, and token-major K / V rows
// (perceiver_attention.h: ldk = ldv = 1, ks = the row length) read the same way, since the
// micro-kernel broadcasts its A operand from any strides. amx_global_attention needs ks = 1.
struct HeadAttn {
  const float *qt, *kt, *vt;
  float* ot;
  int64_t ldq, ldk, ldv, ldo, nk, dk, dv;
  float* pm = nullptr;
  float* pl = nullptr;
  int64_t ks = 1;
};

struct BlockScratch {
  float *s, *o, *m, *l, *alpha;
  static int64_t bytes(int64_t dv) {
    const int64_t Q = kPerceiverQueries;
    return arena_bytes<float>(kPerceiverKeys * Q) + arena_bytes<float>(dv * Q) +
           3 * arena_bytes<float>(Q);
  }
  BlockScratch(Arena& ar, int64_t dv) {
    const int64_t Q = kPerceiverQueries;
    s = ar.take<float>(kPerceiverKeys * Q);
    o = ar.take<float>(dv * Q);
    m = ar.take<float>(Q);
    l = ar.take<float>(Q);
    alpha = ar.take<float>(Q);
  }
};

// One column group's probabilities in place: s <- exp2(s - mx) down n rows of stride ld;
// returns their sum (two chains: the add latency stays hidden), in *xmax the largest s - mx.
inline vf probs_in_place(float* s, int64_t ld, int64_t n, vf mx, vf* xmax) {
  vf sum = V::zero(), sum1 = V::zero(), xm0 = V::set1(-__builtin_inff()), xm1 = xm0;
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    float* sp = s + j * ld;
    const vf x0 = V::sub(V::load(sp), mx), x1 = V::sub(V::load(sp + ld), mx);
    xm0 = V::max(xm0, x0);
    xm1 = V::max(xm1, x1);
    const vf p0 = V::exp2(x0), p1 = V::exp2(x1);
    V::store(sp, p0);
    V::store(sp + ld, p1);
    sum = V::add(sum, p0);
    sum1 = V::add(sum1, p1);
  }
  if (j < n) {
    float* sp = s + j * ld;
    const vf x0 = V::sub(V::load(sp), mx);
    xm0 = V::max(xm0, x0);
    const vf p0 = V::exp2(x0);
    V::store(sp, p0);
    sum = V::add(sum, p0);
  }
  *xmax = V::max(xm0, xm1);
  return V::add(sum, sum1);
}

// Queries [q0, q0 + nq), nq <= kPerceiverQueries, of one head. Reads query columns up to
// q0 + round_up(nq, V::W) (lanes past nq: any finite values, never used). A full result is
// normalized and written to exactly columns [q0, q0 + nq) of ot; a partial one accumulates in
// ot in place, up to the rounded-up column (callers leave those columns unused).
void block_attention(const HeadAttn& a, int64_t q0, int64_t nq, BlockScratch& t) {
  constexpr int64_t W = V::W;
  const int64_t ldb = round_up(nq, W);
  const bool partial = a.pm != nullptr;
  float* o = partial ? a.ot + q0 : t.o;
  const int64_t ldo = partial ? a.ldo : ldb;
  for (int64_t i = 0; i < ldb; ++i) {
    t.m[i] = -__builtin_inff();
    t.l[i] = 0.0f;
  }
  for (int64_t k0 = 0; k0 < a.nk; k0 += kPerceiverKeys) {
    const int64_t nk = min64(kPerceiverKeys, a.nk - k0);
    gemm<false>(nk, ldb, a.dk, a.kt + k0 * a.ks, a.ks, a.ldk, a.qt + q0, a.ldq, t.s, ldb, false,
                nullptr);
    // Online softmax down the columns. After the first tile, one pass against the running max
    // as it stands, tracking the largest exponent; only a column group where a probability
    // would exceed 2^kLazyTrig gets its scores back (the same product for its W queries) and
    // the max raised to its maximum minus kLazyMax. So the max, and O^T, rarely move.
    bool rescale = false;
    for (int64_t i0 = 0; i0 < ldb; i0 += W) {
      const vf mo = V::load(t.m + i0);
      vf mn = mo, sum, xmax;
      bool redo = k0 == 0;
      if (!redo) {
        sum = probs_in_place(t.s + i0, ldb, nk, mo, &xmax);
        redo = !(V::hmax(xmax) <= kLazyTrig);  // NaN: redo (harmless)
        if (redo)  // the group's scores again (overwritten by probabilities)
          gemm<false>(nk, W, a.dk, a.kt + k0 * a.ks, a.ks, a.ldk, a.qt + q0 + i0, a.ldq,
                      t.s + i0, ldb, false, nullptr);
      }
      if (redo) {  // first tile, or the max must move
        mn = V::max(mo, V::sub(col_max(t.s + i0, ldb, nk), V::set1(kLazyMax)));
        sum = probs_in_place(t.s + i0, ldb, nk, mn, &xmax);
        rescale = rescale || !(V::hmax(V::sub(mn, mo)) == 0.0f);
      }
      const vf alpha = V::exp2(V::sub(mo, mn));
      V::store(t.l + i0, V::fma(V::load(t.l + i0), alpha, sum));
      V::store(t.m + i0, mn);
      V::store(t.alpha + i0, alpha);
    }
    if (k0 > 0 && rescale) {  // rescale the running output's columns (queries)
      for (int64_t d = 0; d < a.dv; ++d) {
        float* od = o + d * ldo;
        for (int64_t i0 = 0; i0 < ldb; i0 += W)
          V::store(od + i0, V::mul(V::load(od + i0), V::load(t.alpha + i0)));
      }
    }
    gemm<false>(a.dv, ldb, nk, a.vt + k0 * a.ks, a.ldv, a.ks, t.s, ldb, o, ldo, k0 > 0, nullptr);
  }
  if (partial) {
    for (int64_t i = 0; i < nq; ++i) {
      a.pm[q0 + i] = t.m[i];
      a.pl[q0 + i] = t.l[i];
    }
    return;
  }
  for (int64_t i = 0; i < ldb; ++i) t.l[i] = 1.0f / t.l[i];
  const int64_t nv = nq / W * W;
  for (int64_t d = 0; d < a.dv; ++d) {
    const float* od = t.o + d * ldb;
    float* dst = a.ot + d * a.ldo + q0;
    int64_t i = 0;
    for (; i < nv; i += W) V::store(dst + i, V::mul(V::load(od + i), V::load(t.l + i)));
    for (; i < nq; ++i) dst[i] = od[i] * t.l[i];
  }
}

// Combines the partial results of block_attention over P disjoint key subsets, for query
// columns [c0, c1) (c0 a multiple of V::W; lanes past c1 read padding and are never stored):
// subset p's output is rows [p * pstride, p * pstride + dv) of po, its max and sum at
// pm / pl + p * mstride.
// wts: scratch of P * V::W floats.
void merge_partials(int64_t P, int64_t dv, const float* po, int64_t pstride, const float* pm,
                    const float* pl, int64_t mstride, int64_t ld, float* ot, int64_t c0,
                    int64_t c1, float* wts) {
  constexpr int64_t W = V::W;
  for (int64_t i0 = c0; i0 < c1; i0 += W) {
    vf mx = V::load(pm + i0);
    for (int64_t p = 1; p < P; ++p) mx = V::max(mx, V::load(pm + p * mstride + i0));
    vf l = V::zero();
    for (int64_t p = 0; p < P; ++p) {
      const vf w = V::exp2(V::sub(V::load(pm + p * mstride + i0), mx));
      V::store(wts + p * W, w);
      l = V::fma(w, V::load(pl + p * mstride + i0), l);
    }
    const vf inv = V::div(V::set1(1.0f), l);
    for (int64_t p = 0; p < P; ++p) V::store(wts + p * W, V::mul(V::load(wts + p * W), inv));
    for (int64_t d = 0; d < dv; ++d) {
      vf acc = V::zero();
      for (int64_t p = 0; p < P; ++p)
        acc = V::fma(V::load(wts + p * W), V::load(po + (p * pstride + d) * ld + i0), acc);
      if (i0 + W <= c1) {
        V::store(ot + d * ld + i0, acc);
      } else {  // the last vector may reach into columns that belong to someone else
        float tail[V::W];
        V::store(tail, acc);
        for (int64_t i = i0; i < c1; ++i) ot[d * ld + i] = tail[i - i0];
      }
    }
  }
}

// Patch latents of one window row jy and one head: latent jy * nw + x / ws attends to the
// ws x ws tokens of its window. Lane x of a vector over an image row belongs to latent x / ws,
// so each product runs over whole image rows: s[dy][x] = sum_c q[c][x / ws] k[c][row dy, x].
// Element (c, j) of qt / ot is at [c * ldq + j] with j the patch latent (qt scaled as for
// block_attention); kt, vt are
// channel-major over the window row's ws * Wimg tokens (vector reads run up to V::W - 1
// columns past them: padding).
struct WindowAttn {
  const float *qt, *kt, *vt;
  float* ot;
  int64_t ldq, ldk, ldo, dh, Wimg, nw, ws;
};

struct WindowScratch {
  float *q, *s, *m, *l, *acc;
  static int64_t bytes(int64_t dh, int64_t Wimg, int64_t ws) {
    const int64_t Wp = round_up(Wimg, V::W);
    return arena_bytes<float>(dh * Wp + V::W) + arena_bytes<float>(ws * Wp) +
           3 * arena_bytes<float>(Wp + ws);
  }
  WindowScratch(Arena& ar, int64_t dh, int64_t Wimg, int64_t ws) {
    const int64_t Wp = round_up(Wimg, V::W);
    q = ar.take<float>(dh * Wp + V::W);  // the expansion's last vector store may run over
    s = ar.take<float>(ws * Wp);
    m = ar.take<float>(Wp + ws);  // m, l, acc: window_sums reads up to ws - 1 past Wp
    l = ar.take<float>(Wp + ws);
    acc = ar.take<float>(Wp + ws);
  }
};

// r[x] = sum of v[x + i], i < ws, for x < Wp (a window's sum at its first lane x = g * ws;
// other lanes are never read): ws shifted vector loads instead of a scalar loop per window.
inline void window_sums(const float* v, int64_t Wp, int64_t ws, float* r) {
  for (int64_t x = 0; x < Wp; x += V::W) {
    vf acc = V::load(v + x);
    for (int64_t i = 1; i < ws; ++i) acc = V::add(acc, V::load(v + x + i));
    V::store(r + x, acc);
  }
}

void window_attention(const WindowAttn& a, int64_t jy, WindowScratch& t) {
  constexpr int64_t W = V::W;
  const int64_t Wimg = a.Wimg, ws = a.ws, nw = a.nw, Wp = round_up(Wimg, W);
  const int64_t lat0 = jy * nw;  // first latent of the window row
  // q expanded along the image row by whole-vector stores: each runs up to W - 1 lanes past
  // its window, which the next window's store (or the next row's) overwrites.
  for (int64_t d = 0; d < a.dh; ++d) {
    const float* src = a.qt + d * a.ldq + lat0;
    float* dst = t.q + d * Wp;
    for (int64_t g = 0; g < nw; ++g) {
      const vf qv = V::set1(src[g]);
      for (int64_t x = g * ws; x < (g + 1) * ws; x += W) V::store(dst + x, qv);
    }
    for (int64_t x = Wimg; x < Wp; ++x) dst[x] = 0.0f;
  }
  // Scores, four image rows of the window row at a time (one q load per four FMAs), and their
  // max down the rows (NaN wins, as in the reference) into m.
  for (int64_t x = 0; x < Wp; x += W) {
    vf mx = V::set1(-__builtin_inff());
    int64_t dy = 0;
    for (; dy + 4 <= ws; dy += 4) {
      const float* kr = a.kt + dy * Wimg + x;
      vf s0 = V::zero(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t d = 0; d < a.dh; ++d) {
        const vf qv = V::load(t.q + d * Wp + x);
        const float* k = kr + d * a.ldk;
        s0 = V::fma(qv, V::load(k), s0);
        s1 = V::fma(qv, V::load(k + Wimg), s1);
        s2 = V::fma(qv, V::load(k + 2 * Wimg), s2);
        s3 = V::fma(qv, V::load(k + 3 * Wimg), s3);
      }
      float* s = t.s + dy * Wp + x;
      V::store(s, s0);
      V::store(s + Wp, s1);
      V::store(s + 2 * Wp, s2);
      V::store(s + 3 * Wp, s3);
      mx = V::max(V::max(V::max(mx, s0), s1), V::max(s2, s3));
    }
    for (; dy < ws; ++dy) {
      const float* kr = a.kt + dy * Wimg + x;
      vf s0 = V::zero();
      for (int64_t d = 0; d < a.dh; ++d)
        s0 = V::fma(V::load(t.q + d * Wp + x), V::load(kr + d * a.ldk), s0);
      V::store(t.s + dy * Wp + x, s0);
      mx = V::max(mx, s0);
    }
    V::store(t.m + x, mx);
  }
  // Max per latent over its ws lanes, spread back over them (stores as for q).
  for (int64_t g = 0; g < nw; ++g) {
    float mx = -__builtin_inff();
    for (int64_t x = g * ws; x < (g + 1) * ws; ++x) {
      const float v = t.m[x];
      mx = (v > mx || v != v) ? v : mx;
    }
    t.acc[g] = mx;
  }
  for (int64_t g = 0; g < nw; ++g) {
    const vf mv = V::set1(t.acc[g]);
    for (int64_t x = g * ws; x < (g + 1) * ws; x += W) V::store(t.m + x, mv);
  }
  for (int64_t x = Wimg; x < Wp; ++x) t.m[x] = 0.0f;
  for (int64_t x = 0; x < Wp; x += W) {
    const vf mv = V::load(t.m + x);
    vf l = V::zero();
    for (int64_t dy = 0; dy < ws; ++dy) {
      float* s = t.s + dy * Wp + x;
      const vf p = V::exp2(V::sub(V::load(s), mv));
      V::store(s, p);
      l = V::add(l, p);
    }
    V::store(t.l + x, l);
  }
  window_sums(t.l, Wp, ws, t.m);  // t.m is free again: row sums at each window's first lane
  for (int64_t g = 0; g < nw; ++g) t.l[g] = 1.0f / t.m[g * ws];
  for (int64_t d = 0; d < a.dh; ++d) {
    const float* vr = a.vt + d * a.ldk;
    for (int64_t x = 0; x < Wp; x += W) {
      vf acc = V::zero();
      for (int64_t dy = 0; dy < ws; ++dy)
        acc = V::fma(V::load(t.s + dy * Wp + x), V::load(vr + dy * Wimg + x), acc);
      V::store(t.acc + x, acc);
    }
    window_sums(t.acc, Wp, ws, t.m);
    float* dst = a.ot + d * a.ldo + lat0;
    for (int64_t g = 0; g < nw; ++g) dst[g] = t.m[g * ws] * t.l[g];
  }
}

}  // namespace
}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
