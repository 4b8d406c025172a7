// Building blocks of the spatial perceiver (spatial_perceiver.h), written once against the SIMD
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

// A small number per thread, fixed for the thread's life: the first perceiver work item a
// thread runs numbers it. Only used to prefer an owner's items (parallel_owned); any numbering
// is correct, a good one keeps data in one core's caches.
inline int64_t worker_id() {
  static int64_t next = 0;
  static thread_local int64_t id = -1;
  if (id < 0) id = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
  return id;
}

// Runs f(i) for i in [0, n) like parallel_items, but item i belongs to worker i % T and workers
// take their own items first, then help with the others' (so a descheduled thread still delays
// only what it holds). Latent column chunks go through here: their columns are read and written
// by every stage of a layer, and a chunk that changed cores between stages would pay a
// cross-core transfer for every cache line (measured: 1.3-2x per item at 2 threads).
template <class F>
void parallel_owned(const Parallel& par, int64_t n, const F& f) {
  const int64_t T = min64(min64(par.threads, n), 64);
  if (T <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  int64_t taken[64] = {};  // per owner: how many of its items were claimed (may overshoot)
  parallel_items(par, n, [&](int64_t) {
    // Each of the n tickets claims exactly one item: fewer than n claims were made before it.
    const int64_t me = worker_id() % T;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t o = (me + k) % T, cnt = (n - o + T - 1) / T;  // items o, o + T, ...
      if (__atomic_load_n(&taken[o], __ATOMIC_RELAXED) >= cnt) continue;
      const int64_t j = __atomic_fetch_add(&taken[o], 1, __ATOMIC_RELAXED);
      if (j < cnt) {
        f(o + j * T);
        return;
      }
    }
  });
}

// Runs f(c0, c1) over column chunks of [0, n) of `width` columns (a multiple of V::W; the last
// chunk may be narrower, its end rounded up to V::W), in parallel, chunk i owned by worker i % T.
template <class F>
void parallel_cols(const Parallel& par, int64_t n, int64_t width, const F& f) {
  const int64_t nw = round_up(n, V::W);
  parallel_owned(par, ceil_div(nw, width), [&](int64_t i) {
    f(i * width, min64(nw, (i + 1) * width));
  });
}

// LayerNorm over channels of a channel-major (C, ldx) block, columns [n0, n1): statistics per
// column (mean, 1 / std: scratch indexed by column; callers give disjoint column ranges to
// different threads), vectorized across columns.
void ln_stats(const float* x, int64_t ldx, int64_t C, float eps, int64_t n0, int64_t n1,
              float* mean, float* rstd) {
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
}

// y (C, ldy) = LN(x) with the statistics of ln_stats and the affine weight w, bias b.
void ln_apply(const float* x, int64_t ldx, int64_t C, const float* w, const float* b, float* y,
              int64_t ldy, int64_t n0, int64_t n1, const float* mean, const float* rstd) {
  constexpr int64_t W = V::W;
  int64_t nv = n0 + (n1 - n0) / W * W;
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

void ln_channels(const float* x, int64_t ldx, int64_t C, const float* w, const float* b,
                 float eps, float* y, int64_t ldy, int64_t n0, int64_t n1, float* mean,
                 float* rstd) {
  ln_stats(x, ldx, C, eps, n0, n1, mean, rstd);
  ln_apply(x, ldx, C, w, b, y, ldy, n0, n1, mean, rstd);
}

// Exact-erf GELU, 0.5 x + 0.5 |x| erf(|x| / sqrt 2), in place over n values. erf is Eigen's
// (and XLA's) rational approximation z P(z^2) / Q(z^2) on z clamped to [-4, 4] (erf(4) rounds
// to 1 in fp32), absolute error 6.5e-8 in exact arithmetic; about 2/3 of the cost of the
// Abramowitz-Stegun form (no exp2). GELU error as evaluated in fp32 (AVX-512, vs float64):
// at most 2.1e-7 max(|x|, 1), 1.1e-6 absolute (A-S: 1.7e-7 and 3.8e-7).
// It runs on z = -|x| / sqrt 2 (so only a max clamps it) with P scaled by -0.5: the quotient
// is 0.5 erf(|x| / sqrt 2).
void gelu(float* x, int64_t n) {
  constexpr int64_t W = V::W;
  const vf nrs2 = V::set1(-0.70710678118654752f), lo = V::set1(-4.0f), half = V::set1(0.5f);
  const float pc[] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                      -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                      -1.60960333262415e-02f};
  const float qc[] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                      -7.37332916720468e-03f, -1.42647390514189e-02f};
  vf pv[7], qv[5];
  for (int i = 0; i < 7; ++i) pv[i] = V::set1(-0.5f * pc[i]);
  for (int i = 0; i < 5; ++i) qv[i] = V::set1(qc[i]);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf xv = V::load(x + i), a = V::abs(xv);
    const vf z = V::max(V::mul(a, nrs2), lo), z2 = V::mul(z, z);
    vf p = pv[0], q = qv[0];
    for (int k = 1; k < 7; ++k) p = V::fma(p, z2, pv[k]);
    for (int k = 1; k < 5; ++k) q = V::fma(q, z2, qv[k]);
    V::store(x + i, V::fma(a, V::div(V::mul(z, p), q), V::mul(half, xv)));
  }
  for (; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

// out^T[:, c0:c1] (+)= Wt in^T[:, c0:c1] for a weight Wt (O, I) row-major as torch stores it.
inline void project(int64_t O, int64_t I, const float* w, const float* in, int64_t ldi,
                    float* out, int64_t ldo, int64_t c0, int64_t c1, bool acc) {
  gemm<false>(O, c1 - c0, I, w, I, 1, in + c0, ldi, out + c0, ldo, acc, nullptr);
}

// Latent state of one perceiver call that every thread shares (columns are split between
// threads): the latents and the attention operands, (rows, ld) each.
struct LatentBufs {
  float *lat, *q, *k, *v, *o;
  int64_t ld;  // leading dimension of every (rows, L) block
};

// Per-thread scratch of one latent column chunk (at most kChunk columns): LayerNorm output,
// feed-forward hidden activations, statistics. Private to the thread that runs the chunk, so
// it stays in that core's caches instead of bouncing between cores with the columns.
struct ColScratch {
  static constexpr int64_t kChunk = 64;  // latent columns per work item: a multiple of every V::W
  static constexpr int64_t ld = kChunk + 16;  // see ld_cols
  float *ln, *h, *mean, *rstd;
  static int64_t bytes(int64_t rows, int64_t hidden) {
    return arena_bytes<float>(rows * ld) + arena_bytes<float>(hidden * ld) +
           2 * arena_bytes<float>(kChunk);
  }
  ColScratch(Arena& ar, int64_t rows, int64_t hidden) {
    ln = ar.take<float>(rows * ld);
    h = ar.take<float>(hidden * ld);
    mean = ar.take<float>(kChunk);
    rstd = ar.take<float>(kChunk);
  }
  // ln = LN(x) over C channels for columns [0, n) of x (ldx), zero in the padding columns
  // [n, nc) (they then stay zero through every product).
  void norm(const float* x, int64_t ldx, int64_t C, const float* w, const float* b, float eps,
            int64_t n, int64_t nc) {
    ln_channels(x, ldx, C, w, b, eps, ln, ld, 0, n, mean, rstd);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = n; j < nc; ++j) ln[c * ld + j] = 0.0f;
  }
};

// lat[:, 0:nc] += FF(lat): W2 gelu(W1 LN(lat)), residual in the GEMM. n real columns, nc
// columns in all (padding up to the vector width). f: LN weight, LN bias, W1 (hidden, C),
// W2 (C, hidden).
void feed_forward_cols(float* lat, int64_t ld, int64_t C, const float* const* f, int64_t hidden,
                       float eps, int64_t n, int64_t nc, ColScratch& s) {
  s.norm(lat, ld, C, f[0], f[1], eps, n, nc);
  project(hidden, C, f[2], s.ln, s.ld, s.h, s.ld, 0, nc, false);
  for (int64_t r = 0; r < hidden; ++r) gelu(s.h + r * s.ld, nc);
  project(C, hidden, f[3], s.h, s.ld, lat, ld, 0, nc, true);
}

}  // namespace
}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
