// EdgeTAM's 2D spatial perceiver in one call, written once against the SIMD vocabulary `V`.
//
// Per batch element and layer:
//   LN_x(x) is computed straight from the (C, H*W) channel-major input (statistics vectorized
//   across tokens), then K^T = Wk LN_x(x)^T and V = LN_x(x) Wv^T once, shared by both groups;
//   global latents attend over all tokens with pos added to K^T and V; each patch latent reads
//   its window's columns of K^T and rows of V by token index (no window-partition copy).
//   Residual adds are fused into the output projections (the matmul accumulates into the
//   latents). A patch latent's self-attention has a single key, so softmax is 1 and it reduces
//   to Wout Wv LN(latent): Q and K are never computed for it.
#pragma once
#include <cmath>

#include "common.h"

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

using vf = typename V::f;

inline int64_t padw(int64_t n) { return round_up(n, V::W); }

// Per-thread work split of [0, n) in chunks that are multiples of `align`.
template <class F>
void parallel_chunks(const Parallel& par, int64_t n, int64_t align, const F& f) {
  struct Ctx {
    const F* f;
    int64_t n, chunk;
  };
  const int64_t parts = max64(1, min64(int64_t(par.threads), ceil_div(n, align)));
  Ctx ctx{&f, n, round_up(ceil_div(n, parts), align)};
  const int64_t count = ceil_div(n, ctx.chunk);
  if (count <= 1) {
    f(int64_t(0), n);
    return;
  }
  par.run(par.self, count, &ctx, [](void* c, int64_t b, int64_t e) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    for (int64_t i = b; i < e; ++i) (*x.f)(i * x.chunk, min64(x.n, (i + 1) * x.chunk));
  });
}

// LayerNorm of `rows` rows of length C (leading dims ldx, ldy); padding of y untouched.
void ln_rows(const float* x, int64_t ldx, int64_t rows, int64_t C, const float* w, const float* b,
             float eps, float* y, int64_t ldy) {
  constexpr int64_t W = V::W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    int64_t c = 0;
    vf acc = V::zero();
    float sum = 0.0f;
    for (; c + W <= C; c += W) acc = V::add(acc, V::load(xr + c));
    sum = V::hsum(acc);
    for (; c < C; ++c) sum += xr[c];
    const float mean = sum / float(C);
    const vf mv = V::set1(mean);
    acc = V::zero();
    float ss = 0.0f;
    for (c = 0; c + W <= C; c += W) {
      vf d = V::sub(V::load(xr + c), mv);
      acc = V::fma(d, d, acc);
    }
    ss = V::hsum(acc);
    for (; c < C; ++c) ss += (xr[c] - mean) * (xr[c] - mean);
    const float rstd = 1.0f / std::sqrt(ss / float(C) + eps);
    const vf rv = V::set1(rstd);
    for (c = 0; c + W <= C; c += W)
      V::store(yr + c, V::fma(V::mul(V::sub(V::load(xr + c), mv), rv), V::load(w + c), V::load(b + c)));
    for (; c < C; ++c) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
  }
}

// LayerNorm over channels of a channel-major (C, N) block, tokens [n0, n1): y (C, ldy).
// Statistics per token are vectorized across tokens (no transpose of the input).
void ln_channels(const float* x, int64_t N, int64_t C, const float* w, const float* b, float eps,
                 float* y, int64_t ldy, int64_t n0, int64_t n1, float* mean, float* rstd) {
  constexpr int64_t W = V::W;
  for (int64_t n = n0; n < n1; ++n) mean[n] = rstd[n] = 0.0f;
  int64_t nv = n0 + (n1 - n0) / W * W;
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * N;
    int64_t n = n0;
    for (; n < nv; n += W) V::store(mean + n, V::add(V::load(mean + n), V::load(xc + n)));
    for (; n < n1; ++n) mean[n] += xc[n];
  }
  const float invc = 1.0f / float(C);
  for (int64_t n = n0; n < n1; ++n) mean[n] *= invc;
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * N;
    int64_t n = n0;
    for (; n < nv; n += W) {
      vf d = V::sub(V::load(xc + n), V::load(mean + n));
      V::store(rstd + n, V::fma(d, d, V::load(rstd + n)));
    }
    for (; n < n1; ++n) rstd[n] += (xc[n] - mean[n]) * (xc[n] - mean[n]);
  }
  for (int64_t n = n0; n < n1; ++n) rstd[n] = 1.0f / std::sqrt(rstd[n] * invc + eps);
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * N;
    float* yc = y + c * ldy;
    const vf wv = V::set1(w[c]), bv = V::set1(b[c]);
    int64_t n = n0;
    for (; n < nv; n += W)
      V::store(yc + n, V::fma(V::mul(V::sub(V::load(xc + n), V::load(mean + n)), V::load(rstd + n)), wv, bv));
    for (; n < n1; ++n) yc[n] = (xc[n] - mean[n]) * rstd[n] * w[c] + b[c];
  }
}

// Exact-erf GELU, 0.5 (x + |x| erf(|x| / sqrt 2)), erf by Abramowitz-Stegun 7.1.26
// (absolute error 1.5e-7), in place over n values.
void gelu(float* x, int64_t n) {
  constexpr int64_t W = V::W;
  const vf one = V::set1(1.0f), half = V::set1(0.5f), p = V::set1(0.3275911f);
  const vf a1 = V::set1(0.254829592f), a2 = V::set1(-0.284496736f), a3 = V::set1(1.421413741f),
           a4 = V::set1(-1.453152027f), a5 = V::set1(1.061405429f);
  const vf rs2 = V::set1(0.70710678118654752f), nl2e = V::set1(-1.4426950408889634f);
  int64_t i = 0;
  auto one_vec = [&](vf xv) {
    vf z = V::mul(V::abs(xv), rs2);
    vf t = V::div(one, V::fma(p, z, one));
    vf poly = V::fma(V::fma(V::fma(V::fma(a5, t, a4), t, a3), t, a2), t, a1);
    vf e = V::exp2(V::mul(V::mul(z, z), nl2e));
    vf erf = V::sub(one, V::mul(V::mul(poly, t), e));
    return V::mul(half, V::fma(V::abs(xv), erf, xv));
  };
  for (; i + W <= n; i += W) V::store(x + i, one_vec(V::load(x + i)));
  for (; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

// out (I, ldo) = W^T for W (O, I) row-major, columns beyond O zero.
void transpose_weight(const float* w, int64_t O, int64_t I, float* out, int64_t ldo) {
  for (int64_t i = 0; i < I; ++i) {
    float* r = out + i * ldo;
    for (int64_t o = 0; o < O; ++o) r[o] = w[o * I + i];
    for (int64_t o = O; o < ldo; ++o) r[o] = 0.0f;
  }
}

// Unnormalized softmax of rows [0, rows) over their first n entries (scaled by `scale`):
// exp(x - max) in place, entries [n, ld) zeroed, 1 / row sum in inv_sum.
void softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld, float scale, float* inv_sum) {
  constexpr int64_t W = V::W;
  const float c = scale * 1.4426950408889634f;
  const vf cv = V::set1(c);
  for (int64_t r = 0; r < rows; ++r) {
    float* x = s + r * ld;
    int64_t j = 0;
    vf mv = V::set1(-__builtin_inff());
    for (; j + W <= n; j += W) mv = V::max(mv, V::load(x + j));
    float m = V::hmax(mv);
    for (; j < n; ++j) m = (x[j] > m || x[j] != x[j]) ? x[j] : m;
    const vf mc = V::set1(m * c);
    vf sv = V::zero();
    float sum = 0.0f;
    for (j = 0; j + W <= n; j += W) {
      vf e = V::exp2(V::sub(V::mul(V::load(x + j), cv), mc));
      V::store(x + j, e);
      sv = V::add(sv, e);
    }
    for (; j < n; ++j) {
      x[j] = exp2_scalar(x[j] * c - m * c);
      sum += x[j];
    }
    sum += V::hsum(sv);
    inv_sum[r] = 1.0f / sum;  // applied to the (narrower) output rows instead of P
    for (j = n; j < ld; ++j) x[j] = 0.0f;
  }
}

// O (L, ldo) = softmax(Q K^T * scale) V for one head, query rows in parallel blocks.
// q (L, ldq) with dk columns used, kt (dk, ldk) transposed keys, v (N, ldv) with dvp columns
// (a multiple of W, zero beyond the head's width so O's padding stays zero).
void attention_head(const Parallel& par, int64_t L, int64_t N, int64_t dk, int64_t dvp,
                    const float* q, int64_t ldq, const float* kt, int64_t ldk, const float* v,
                    int64_t ldv, float* o, int64_t ldo, float scale) {
  const int64_t Np = padw(N);
  const int64_t block = 8 * V::MR;
  parallel_chunks(par, L, block, [&](int64_t r0, int64_t r1) {
    Arena ar(arena_bytes<float>(block * Np) + arena_bytes<float>(block), 1);
    float* s = ar.take<float>(block * Np);
    float* inv = ar.take<float>(block);
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t m = min64(block, r1 - b0);
      gemm<false>(m, Np, dk, q + b0 * ldq, ldq, 1, kt, ldk, s, Np, false, nullptr);
      softmax_rows(s, m, N, Np, scale, inv);
      gemm<false>(m, dvp, N, s, Np, 1, v, ldv, o + b0 * ldo, ldo, false, nullptr, 128);
      for (int64_t i = 0; i < m; ++i) scale_row(o + (b0 + i) * ldo, dvp, inv[i]);
    }
  });
}

// Multi-head attention: q (L, ldq), kt (inner, ldk), v (N, ldv) -> o (L, ldo), inner columns.
// One head runs in place; several are copied to W-padded buffers one at a time.
void attention(const Parallel& par, int64_t L, int64_t N, int64_t inner, int64_t heads,
               const float* q, int64_t ldq, const float* kt, int64_t ldk, const float* v,
               int64_t ldv, float* o, int64_t ldo) {
  const int64_t dh = inner / heads, dhp = padw(dh);
  const float scale = 1.0f / std::sqrt(float(dh));
  if (heads == 1) {
    attention_head(par, L, N, dh, dhp, q, ldq, kt, ldk, v, ldv, o, ldo, scale);
    return;
  }
  Arena ar(arena_bytes<float>(N * dhp) + arena_bytes<float>(L * dhp), 2);
  float* vh = ar.take<float>(N * dhp);
  float* oh = ar.take<float>(L * dhp);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < dhp; ++c) vh[n * dhp + c] = c < dh ? v[n * ldv + h * dh + c] : 0.0f;
    attention_head(par, L, N, dh, dhp, q + h * dh, ldq, kt + h * dh * ldk, ldk, vh, dhp, oh, dhp,
                   scale);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t c = 0; c < dh; ++c) o[l * ldo + h * dh + c] = oh[l * dhp + c];
  }
}

// Rows [0, L) of `lat` (L, ldl) += FF(lat): W2 gelu(W1 LN(lat)), residual fused into the matmul.
void feed_forward(const Parallel& par, float* lat, int64_t L, int64_t C, int64_t ldl,
                  const float* const* p, int64_t hidden, float eps, float* ln, float* h,
                  float* w1t, float* w2t) {
  const int64_t Hp = padw(hidden);
  transpose_weight(p[2], hidden, C, w1t, Hp);
  transpose_weight(p[3], C, hidden, w2t, ldl);
  ln_rows(lat, ldl, L, C, p[0], p[1], eps, ln, ldl);
  parallel_chunks(par, L, V::MR, [&](int64_t r0, int64_t r1) {
    gemm<false>(r1 - r0, Hp, C, ln + r0 * ldl, ldl, 1, w1t, Hp, h + r0 * Hp, Hp, false, nullptr);
    gelu(h + r0 * Hp, (r1 - r0) * Hp);
    gemm<false>(r1 - r0, ldl, hidden, h + r0 * Hp, Hp, 1, w2t, ldl, lat + r0 * ldl, ldl, true,
                nullptr);
  });
}

struct PerceiverBufs {
  float *xnT, *mean, *rstd, *kt, *ktp, *v, *vp, *g, *pl, *ln, *lnT, *q, *o, *h, *kts, *wa, *wb,
      *score, *posT;
};

void perceiver_batch(const PerceiverArgs& a, const Parallel& par, int64_t b, PerceiverBufs& t,
                     int64_t Ip, int64_t Hp) {
  const int64_t C = a.C, N = a.H * a.W, Np = padw(N), Cp = padw(C);
  const int64_t L1 = a.lat1 ? a.L1 : 0, L2 = a.lat2 ? a.L2 : 0, L1p = padw(L1);
  const float* x = a.x + b * C * N;
  // Padding that no writer covers must be zero (the scratch is reused between calls).
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = N; n < Np; ++n) t.xnT[c * Np + n] = 0.0f;
  if (a.pos && L1)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = C; c < Ip; ++c) t.posT[n * Ip + c] = 0.0f;
  const float* pos = a.pos ? a.pos + b * a.pos_bstride : nullptr;
  for (int64_t l = 0; l < L1; ++l)
    for (int64_t c = 0; c < Cp; ++c) t.g[l * Cp + c] = c < C ? a.lat1[l * C + c] : 0.0f;
  for (int64_t l = 0; l < L2; ++l)
    for (int64_t c = 0; c < Cp; ++c) t.pl[l * Cp + c] = c < C ? a.lat2[l * C + c] : 0.0f;
  const int64_t nw = L2 ? int64_t(std::sqrt(double(L2)) + 0.5) : 1, ws = a.H / nw;
  if (pos && L1) {  // pos token-major once per batch element (both layers add it to V)
    for (int64_t n0 = 0; n0 < N; n0 += 16)
      for (int64_t c0 = 0; c0 < C; c0 += 16)
        for (int64_t n = n0; n < min64(N, n0 + 16); ++n)
          for (int64_t c = c0; c < min64(C, c0 + 16); ++c) t.posT[n * Ip + c] = pos[c * N + n];
  }

  for (int64_t layer = 0; layer < a.depth; ++layer) {
    const float* const* p = a.w + layer * a.n_per_layer;
    const int64_t inner = a.inner[layer], hidden = a.hidden[layer];
    // Memory features: LN_x, K^T = Wk LN_x(x)^T and V = LN_x(x) Wv^T, once for both groups.
    parallel_chunks(par, N, V::W, [&](int64_t n0, int64_t n1) {
      ln_channels(x, N, C, p[2], p[3], a.eps, t.xnT, Np, n0, n1, t.mean, t.rstd);
    });
    transpose_weight(p[5] + inner * C, inner, C, t.wa, Ip);  // Wv^T
    parallel_chunks(par, Np, V::NR * V::W, [&](int64_t c0, int64_t c1) {
      gemm<false>(inner, c1 - c0, C, p[5], C, 1, t.xnT + c0, Np, t.kt + c0, Np, false, nullptr);
    });
    parallel_chunks(par, N, V::MR, [&](int64_t r0, int64_t r1) {
      gemm<false>(r1 - r0, Ip, C, t.xnT + r0, 1, Np, t.wa, Ip, t.v + r0 * Ip, Ip, false, nullptr);
    });
    transpose_weight(p[6], C, inner, t.wb, Cp);  // Wout^T
    transpose_weight(p[4], inner, C, t.wa, Ip);  // Wq^T

    if (L1) {  // global latents: all tokens, pos on keys and values
      const float* kt = t.kt;
      const float* vv = t.v;
      if (pos) {
        for (int64_t c = 0; c < inner; ++c)
          for (int64_t n = 0; n < Np; ++n)
            t.ktp[c * Np + n] = n < N ? t.kt[c * Np + n] + pos[c * N + n] : 0.0f;
        for (int64_t i = 0; i < N * Ip; i += V::W)
          V::store(t.vp + i, V::add(V::load(t.v + i), V::load(t.posT + i)));
        kt = t.ktp;
        vv = t.vp;
      }
      ln_rows(t.g, Cp, L1, C, p[0], p[1], a.eps, t.ln, Cp);
      gemm<false>(L1, Ip, C, t.ln, Cp, 1, t.wa, Ip, t.q, Ip, false, nullptr);
      attention(par, L1, N, inner, a.heads, t.q, Ip, kt, Np, vv, Ip, t.o, Ip);
      gemm<false>(L1, Cp, inner, t.o, Ip, 1, t.wb, Cp, t.g, Cp, true, nullptr);
    }
    if (L2) {  // patch latents: each reads its window's keys and values by token index
      ln_rows(t.pl, Cp, L2, C, p[0], p[1], a.eps, t.ln, Cp);
      gemm<false>(L2, Ip, C, t.ln, Cp, 1, t.wa, Ip, t.q, Ip, false, nullptr);
      const int64_t T = ws * ws, dh = inner / a.heads;
      const float scale = 1.0f / std::sqrt(float(dh));
      float* sc = t.score;
      for (int64_t j = 0; j < L2; ++j) {
        const int64_t y0 = (j / nw) * ws, x0 = (j % nw) * ws;
        float* o = t.o + j * Ip;
        for (int64_t c = 0; c < Ip; ++c) o[c] = 0.0f;
        for (int64_t h = 0; h < a.heads; ++h) {
          const float* q = t.q + j * Ip + h * dh;
          for (int64_t tt = 0; tt < T; ++tt) sc[tt] = 0.0f;
          for (int64_t c = 0; c < dh; ++c) {
            const float qc = q[c];
            const float* kr = t.kt + (h * dh + c) * Np;
            for (int64_t dy = 0; dy < ws; ++dy)
              for (int64_t dx = 0; dx < ws; ++dx)
                sc[dy * ws + dx] += qc * kr[(y0 + dy) * a.W + x0 + dx];
          }
          float m = -__builtin_inff();
          for (int64_t tt = 0; tt < T; ++tt) m = (sc[tt] > m || sc[tt] != sc[tt]) ? sc[tt] : m;
          float sum = 0.0f;
          for (int64_t tt = 0; tt < T; ++tt) {
            sc[tt] = exp2_scalar((sc[tt] - m) * scale * 1.4426950408889634f);
            sum += sc[tt];
          }
          const float inv = 1.0f / sum;
          for (int64_t tt = 0; tt < T; ++tt) {
            const float pt = sc[tt] * inv;
            const float* vr = t.v + ((y0 + tt / ws) * a.W + x0 + tt % ws) * Ip + h * dh;
            float* oh = o + h * dh;
            int64_t c = 0;
            for (; c + V::W <= dh; c += V::W)
              V::store(oh + c, V::fma(V::set1(pt), V::load(vr + c), V::load(oh + c)));
            for (; c < dh; ++c) oh[c] += pt * vr[c];
          }
        }
      }
      gemm<false>(L2, Cp, inner, t.o, Ip, 1, t.wb, Cp, t.pl, Cp, true, nullptr);
    }
    if (L1) feed_forward(par, t.g, L1, C, Cp, p + 7, hidden, a.eps, t.ln, t.h, t.wa, t.wb);
    if (L2) feed_forward(par, t.pl, L2, C, Cp, p + 7, hidden, a.eps, t.ln, t.h, t.wa, t.wb);
    if (!a.self_attn) continue;

    const int64_t inner_s = a.inner_s[layer], hidden_s = a.hidden_s[layer];
    const float* const* s = p + 11;
    transpose_weight(s[3] + inner_s * C, inner_s, C, t.wa, Ip);  // Wv^T
    transpose_weight(s[4], C, inner_s, t.wb, Cp);                // Wout^T
    if (L1) {
      ln_rows(t.g, Cp, L1, C, s[0], s[1], a.eps, t.ln, Cp);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < L1p; ++l) t.lnT[c * L1p + l] = l < L1 ? t.ln[l * Cp + c] : 0.0f;
      gemm<false>(inner_s, L1p, C, s[3], C, 1, t.lnT, L1p, t.kts, L1p, false, nullptr);  // K^T
      gemm<false>(L1, Ip, C, t.ln, Cp, 1, t.wa, Ip, t.v, Ip, false, nullptr);            // V
      float* wq = t.h;  // Wq^T in the FF buffer, free here
      transpose_weight(s[2], inner_s, C, wq, Ip);
      gemm<false>(L1, Ip, C, t.ln, Cp, 1, wq, Ip, t.q, Ip, false, nullptr);
      attention(par, L1, L1, inner_s, a.heads, t.q, Ip, t.kts, L1p, t.v, Ip, t.o, Ip);
      gemm<false>(L1, Cp, inner_s, t.o, Ip, 1, t.wb, Cp, t.g, Cp, true, nullptr);
    }
    if (L2) {  // one key per sequence: softmax is 1, the output is Wout Wv LN(latent)
      ln_rows(t.pl, Cp, L2, C, s[0], s[1], a.eps, t.ln, Cp);
      gemm<false>(L2, Ip, C, t.ln, Cp, 1, t.wa, Ip, t.o, Ip, false, nullptr);
      gemm<false>(L2, Cp, inner_s, t.o, Ip, 1, t.wb, Cp, t.pl, Cp, true, nullptr);
    }
    if (L1) feed_forward(par, t.g, L1, C, Cp, s + 5, hidden_s, a.eps, t.ln, t.h, t.wa, t.wb);
    if (L2) feed_forward(par, t.pl, L2, C, Cp, s + 5, hidden_s, a.eps, t.ln, t.h, t.wa, t.wb);
  }
  float* out = a.out + b * (L1 + L2) * C;
  ln_rows(t.g, Cp, L1, C, a.norm_w, a.norm_b, a.eps, out, C);
  ln_rows(t.pl, Cp, L2, C, a.norm_w, a.norm_b, a.eps, out + L1 * C, C);
}

}  // namespace

void spatial_perceiver(const PerceiverArgs& a, const Parallel& par) {
  const int64_t C = a.C, N = a.H * a.W, Np = padw(N), Cp = padw(C);
  const int64_t L1 = a.lat1 ? a.L1 : 0, L2 = a.lat2 ? a.L2 : 0, L1p = padw(L1);
  const int64_t Lm = max64(max64(L1, L2), 1);
  int64_t inner = 1, hidden = 1;
  for (int64_t l = 0; l < a.depth; ++l) {
    inner = max64(inner, a.inner[l]);
    hidden = max64(hidden, a.hidden[l]);
    if (a.self_attn) {
      inner = max64(inner, a.inner_s[l]);
      hidden = max64(hidden, a.hidden_s[l]);
    }
  }
  inner = max64(inner, C);
  const int64_t Ip = padw(inner), Hp = padw(max64(hidden, inner));
  const int64_t nw = L2 ? int64_t(std::sqrt(double(L2)) + 0.5) : 1, ws = a.H / nw;
  const int64_t wsz = max64(C, Hp) * max64(Cp, Hp);  // any transposed weight
  const int64_t sizes[] = {C * Np, Np, Np, inner * Np, inner * Np, N * Ip, N * Ip, L1 * Cp,
                           L2 * Cp, Lm * Cp, C * L1p, Lm * Ip, Lm * Ip, max64(Lm * Hp, C * Ip),
                           inner * L1p, wsz, wsz, ws * ws, N * Ip};
  int64_t bytes = 0;
  for (int64_t n : sizes) bytes += arena_bytes<float>(max64(n, 1));
  Arena ar(bytes, 0);
  PerceiverBufs t;
  float** slots[] = {&t.xnT, &t.mean, &t.rstd, &t.kt, &t.ktp, &t.v, &t.vp, &t.g, &t.pl,
                     &t.ln, &t.lnT, &t.q, &t.o, &t.h, &t.kts, &t.wa, &t.wb, &t.score, &t.posT};
  for (int i = 0; i < 19; ++i) *slots[i] = ar.take<float>(max64(sizes[i], 1));
  for (int64_t b = 0; b < a.B; ++b) perceiver_batch(a, par, b, t, Ip, Hp);
}

}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
