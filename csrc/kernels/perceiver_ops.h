// Building blocks of the spatial perceiver (perceiver_impl.h), written once against the SIMD
// vocabulary `V`. Activations are channel-major: a (C, ld) block holds one token or latent per
// column, so LayerNorm statistics vectorize across columns and every projection is
// `out^T = W in^T`, a GEMM whose A operand is the weight as torch stores it (no transposes).
#pragma once
#include <cmath>

#include "common.h"

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

using vf = typename V::f;

// Leading dimension for n columns: a multiple of every SIMD width, plus one cache line, so rows
// of a (rows, ld) block do not all land in the same L1 sets (n = 4096 would alias every row).
inline int64_t ld_cols(int64_t n) { return round_up(n, 16) + 16; }

// Runs f(i) for i in [0, n) on the pool; items are handed out dynamically (see register.cpp).
template <class F>
void parallel_items(const Parallel& par, int64_t n, const F& f) {
  if (n <= 0) return;
  if (n == 1 || par.threads <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  par.run(par.self, n, const_cast<F*>(&f), [](void* c, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) (*static_cast<const F*>(c))(i);
  });
}

// Runs f(c0, c1) over column chunks of [0, n) of `width` columns (a multiple of V::W; the last
// chunk may be narrower, its end rounded up to V::W), in parallel.
template <class F>
void parallel_cols(const Parallel& par, int64_t n, int64_t width, const F& f) {
  const int64_t nw = round_up(n, V::W);
  parallel_items(par, ceil_div(nw, width), [&](int64_t i) {
    f(i * width, min64(nw, (i + 1) * width));
  });
}

// LayerNorm over channels of a channel-major (C, ldx) block, columns [n0, n1): y (C, ldy).
// Statistics per column are vectorized across columns; mean and rstd are scratch indexed by
// column (callers give disjoint column ranges to different threads).
void ln_channels(const float* x, int64_t ldx, int64_t C, const float* w, const float* b,
                 float eps, float* y, int64_t ldy, int64_t n0, int64_t n1, float* mean,
                 float* rstd) {
  constexpr int64_t W = V::W;
  for (int64_t n = n0; n < n1; ++n) mean[n] = rstd[n] = 0.0f;
  int64_t nv = n0 + (n1 - n0) / W * W;
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * ldx;
    int64_t n = n0;
    for (; n < nv; n += W) V::store(mean + n, V::add(V::load(mean + n), V::load(xc + n)));
    for (; n < n1; ++n) mean[n] += xc[n];
  }
  const float invc = 1.0f / float(C);
  for (int64_t n = n0; n < n1; ++n) mean[n] *= invc;
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * ldx;
    int64_t n = n0;
    for (; n < nv; n += W) {
      vf d = V::sub(V::load(xc + n), V::load(mean + n));
      V::store(rstd + n, V::fma(d, d, V::load(rstd + n)));
    }
    for (; n < n1; ++n) rstd[n] += (xc[n] - mean[n]) * (xc[n] - mean[n]);
  }
  for (int64_t n = n0; n < n1; ++n) rstd[n] = 1.0f / std::sqrt(rstd[n] * invc + eps);
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * ldx;
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

// out^T[:, c0:c1] (+)= Wt in^T[:, c0:c1] for a weight Wt (O, I) row-major as torch stores it.
inline void project(int64_t O, int64_t I, const float* w, const float* in, int64_t ldi,
                    float* out, int64_t ldo, int64_t c0, int64_t c1, bool acc) {
  gemm<false>(O, c1 - c0, I, w, I, 1, in + c0, ldi, out + c0, ldo, acc, nullptr);
}

// Scratch of one perceiver call that every thread shares (columns are split between threads).
struct LatentBufs {
  float *lat, *ln, *q, *k, *v, *o, *h, *mean, *rstd;
  int64_t ld;  // leading dimension of every (rows, L) block
};

// Columns [c0, c1) of the latents += FF(latents): W2 gelu(W1 LN(lat)), residual in the GEMM.
// f: LN weight, LN bias, W1 (hidden, C), W2 (C, hidden). L: real columns (LN skips padding).
void feed_forward_cols(const LatentBufs& t, int64_t C, int64_t L, const float* const* f,
                       int64_t hidden, float eps, int64_t c0, int64_t c1) {
  ln_channels(t.lat, t.ld, C, f[0], f[1], eps, t.ln, t.ld, c0, min64(c1, L), t.mean, t.rstd);
  project(hidden, C, f[2], t.ln, t.ld, t.h, t.ld, c0, c1, false);
  for (int64_t r = 0; r < hidden; ++r) gelu(t.h + r * t.ld + c0, c1 - c0);
  project(C, hidden, f[3], t.h, t.ld, t.lat, t.ld, c0, c1, true);
}

}  // namespace
}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
