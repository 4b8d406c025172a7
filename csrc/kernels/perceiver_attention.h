// One perceiver cross-attention block, the edgetam::perceiver_attention op (reference.py:
// perceiver_attention), written once against the SIMD vocabulary `V` from the spatial
// perceiver's parts: ColScratch LayerNorm and projections (perceiver_layers.h), block_attention
// with partial results and merge_partials (perceiver_heads.h). fp32 throughout.
//
// Per group of batch elements, three parallel stages:
//   queries  per 64 latent columns: latents transposed in (L * C floats, small), LN,
//            Q^T = Wq LN(lat)^T scaled for the base-2 softmax;
//   tokens   per chunk of keys (and, when chunks are few, per span of queries): LN_x,
//            [K | V] = LN_x Wkv^T, + pos, then block_attention of the span's queries over the
//            chunk's keys as a partial result (running max, sum, unnormalized O^T);
//   output   per 64 latent columns: merge the chunks' partials, out^T = Wout O^T, written
//            back token-major.
// x and pos are read as the token-major rows they arrive in, never transposed: LN_x row by row,
// and the K/V projection takes LN_x's rows as the micro-kernel's broadcast operand (which reads
// any strides) against Wkv^T (transposed once per call, 2 * inner * C floats), so K and V come
// out token-major, pos adds to contiguous rows, and block_attention reads K and V through its
// key stride. Transposing x and pos into channel-major scratch instead would be two strided
// passes over N * (C + inner) floats per call; the products run at the same speed either way.
//
// Keys per chunk depend on N alone and every query column's result is computed the same way
// whichever item or thread runs it, so the result does not depend on the thread count.
#pragma once
#include "perceiver_heads.h"  // block_attention, merge_partials, softmax_scale; the layers

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

// Floats of partial results and latent blocks one batch group may hold (16 MB), and of one
// batch element's partial results (64 MB: bounds memory for very long latent sequences).
constexpr int64_t kBlockGroupFloats = int64_t(1) << 22;
constexpr int64_t kBlockPartialFloats = int64_t(1) << 24;

// Keys per token work item: about N / 8 (items for a few threads), from 64 to 512 (the spatial
// perceiver's window-row items: half the partials to write and merge of 256-key items); longer
// when the partials of L queries (rows per chunk, ldl each) would pass kBlockPartialFloats.
inline int64_t block_key_chunk(int64_t N, int64_t rows, int64_t ldl) {
  int64_t chunk = min64(512, max64(64, round_up(ceil_div(N, 8), 32)));
  const int64_t most = max64(1, kBlockPartialFloats / (rows * ldl));
  if (ceil_div(N, chunk) > most) chunk = round_up(ceil_div(N, most), 32);
  return min64(chunk, N);
}

struct BlockPlan {
  int64_t L, N, C, inner, heads, dh;
  int64_t ldl;              // leading dim of the (rows, L) latent-side blocks
  int64_t ldkv;             // a token's [K | V] row: 2 * inner rounded up to 16, zero padded
  int64_t chunk, nchunks;   // keys per token work item
  int64_t bg;               // batch elements per group
  int64_t lw, nlc;          // latent columns rounded up to V::W; chunks of ColScratch::kChunk
};

// Shared by every thread (each item writes only its own columns or slots).
struct BlockBufs {
  float *q, *o;          // per batch element of the group: (inner, ldl) Q^T and merged O^T
  float *po, *pm, *pl;   // per (batch element, key chunk): (inner, ldl) unnormalized O^T,
                         // (heads, ldl) running max and sum
  float* wkvt;           // (C, ldkv) Wkv^T, columns [2 * inner, ldkv) zero
};

// LayerNorm of one token-major row of C values: ln_stats / ln_apply's two-pass arithmetic
// along the row, with horizontal sums.
void ln_row(const float* x, int64_t C, const float* w, const float* b, float eps, float* y) {
  constexpr int64_t W = V::W;
  const int64_t cv = C / W * W;
  vf acc = V::zero();
  float tail = 0.0f;
  int64_t c = 0;
  for (; c < cv; c += W) acc = V::add(acc, V::load(x + c));
  for (; c < C; ++c) tail += x[c];
  const float invc = 1.0f / float(C);
  const float mean = (V::hsum(acc) + tail) * invc;
  const vf mv = V::set1(mean);
  acc = V::zero();
  tail = 0.0f;
  for (c = 0; c < cv; c += W) {
    const vf d = V::sub(V::load(x + c), mv);
    acc = V::fma(d, d, acc);
  }
  for (; c < C; ++c) tail += (x[c] - mean) * (x[c] - mean);
  const float rstd = 1.0f / std::sqrt((V::hsum(acc) + tail) * invc + eps);
  const vf rv = V::set1(rstd);
  for (c = 0; c < cv; c += W)
    V::store(y + c, V::fma(V::mul(V::sub(V::load(x + c), mv), rv), V::load(w + c), V::load(b + c)));
  for (; c < C; ++c) y[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

inline void add_row(float* y, const float* x, int64_t n) {
  constexpr int64_t W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, V::add(V::load(y + i), V::load(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

// Latent columns [c0, c1) of batch element b (bl within its group): Q^T, as the spatial
// perceiver's cross_queries, from token-major latents.
void block_queries(const PerceiverAttnArgs& a, const BlockPlan& p, const BlockBufs& s, int64_t b,
                   int64_t bl, int64_t c0, int64_t c1) {
  const int64_t C = a.C, n = min64(c1, p.L) - c0, nc = c1 - c0;
  Arena ar(ColScratch::bytes(C, C), 1);
  ColScratch cs(ar, C, C);  // h: the latents transposed, ln: their LayerNorm
  const float* lat = a.latents + (b * p.L + c0) * C;
  for (int64_t l = 0; l < n; ++l)
    for (int64_t c = 0; c < C; ++c) cs.h[c * cs.ld + l] = lat[l * C + c];
  cs.norm(cs.h, cs.ld, C, a.ln_lat_w, a.ln_lat_b, a.eps, n, nc);  // zero columns [n, nc)
  float* q = s.q + bl * p.inner * p.ldl;
  project(p.inner, C, a.w_q, cs.ln, cs.ld, q + c0, p.ldl, 0, nc, false);
  scale_rows(q, p.ldl, p.inner, c0, c1, softmax_scale(p.dh));
}

int64_t token_scratch_bytes(const BlockPlan& p) {
  return arena_bytes<float>(p.chunk * p.C) + arena_bytes<float>(p.chunk * p.ldkv) +
         BlockScratch::bytes(p.dh);
}

// Key chunk ci of batch element b (bl within its group), queries [q0, q1) (q0 a multiple of
// kPerceiverQueries): partial results into the slot of (bl, ci).
void block_tokens(const PerceiverAttnArgs& a, const BlockPlan& p, const BlockBufs& s, int64_t b,
                  int64_t bl, int64_t ci, int64_t q0, int64_t q1) {
  const int64_t C = a.C, inner = p.inner, dh = p.dh, ldkv = p.ldkv, ldl = p.ldl;
  const int64_t n0 = ci * p.chunk, len = min64(p.chunk, p.N - n0);
  Arena ar(token_scratch_bytes(p), 1);
  float* xs = ar.take<float>(p.chunk * C);     // LN_x, token-major (len, C)
  float* kv = ar.take<float>(p.chunk * ldkv);  // [K | V], token-major (len, ldkv)
  const float* x = a.x + (b * p.N + n0) * C;
  const float* pos = a.pos ? a.pos + b * a.pos_bstride + n0 * inner : nullptr;
  for (int64_t t0 = 0; t0 < len; t0 += 48) {  // tiles of tokens whose rows stay in L1
    const int64_t t1 = min64(len, t0 + 48);
    for (int64_t n = t0; n < t1; ++n) ln_row(x + n * C, C, a.ln_x_w, a.ln_x_b, a.eps, xs + n * C);
    gemm<false>(t1 - t0, ldkv, C, xs + t0 * C, C, 1, s.wkvt, ldkv, kv + t0 * ldkv, ldkv, false,
                nullptr);
    if (pos) {
      for (int64_t n = t0; n < t1; ++n) {
        add_row(kv + n * ldkv, pos + n * inner, inner);
        add_row(kv + n * ldkv + inner, pos + n * inner, inner);
      }
    }
  }
  BlockScratch bs(ar, dh);
  const int64_t slot = bl * p.nchunks + ci;
  for (int64_t h = 0; h < p.heads; ++h) {
    HeadAttn ha{s.q + (bl * inner + h * dh) * ldl, kv + h * dh, kv + inner + h * dh,
                s.po + (slot * inner + h * dh) * ldl, ldl, 1, 1, ldl, len, dh, dh,
                s.pm + (slot * p.heads + h) * ldl, s.pl + (slot * p.heads + h) * ldl, ldkv};
    for (int64_t q = q0; q < q1; q += kPerceiverQueries)
      block_attention(ha, q, min64(kPerceiverQueries, q1 - q), bs);
  }
}

// Latent columns [c0, c1) of batch element b: merge the partials of every key chunk, then
// out = (Wout O^T)^T.
void block_output(const PerceiverAttnArgs& a, const BlockPlan& p, const BlockBufs& s, int64_t b,
                  int64_t bl, int64_t c0, int64_t c1) {
  const int64_t C = a.C, inner = p.inner, dh = p.dh, ldl = p.ldl, P = p.nchunks;
  const int64_t n = min64(c1, p.L) - c0, nc = c1 - c0;
  Arena ar(ColScratch::bytes(C, 1) + arena_bytes<float>(P * V::W), 1);
  ColScratch cs(ar, C, 1);
  float* wts = ar.take<float>(P * V::W);
  float* o = s.o + bl * inner * ldl;
  for (int64_t h = 0; h < p.heads; ++h)
    merge_partials(P, dh, s.po + (bl * P * inner + h * dh) * ldl, inner,
                   s.pm + (bl * P * p.heads + h) * ldl, s.pl + (bl * P * p.heads + h) * ldl,
                   p.heads * ldl, ldl, o + h * dh * ldl, c0, c0 + n, wts);
  project(C, inner, a.w_out, o + c0, ldl, cs.ln, cs.ld, 0, nc, false);
  float* out = a.out + (b * p.L + c0) * C;
  for (int64_t l = 0; l < n; ++l)
    for (int64_t c = 0; c < C; ++c) out[l * C + c] = cs.ln[c * cs.ld + l];
}

}  // namespace

void perceiver_attention(const PerceiverAttnArgs& a, const Parallel& par) {
  BlockPlan p;
  p.L = a.L;
  p.N = a.N;
  p.C = a.C;
  p.inner = a.inner;
  p.heads = a.heads;
  p.dh = a.inner / a.heads;
  p.ldl = ld_cols(a.L);
  p.ldkv = round_up(2 * a.inner, 16);
  p.chunk = block_key_chunk(a.N, a.inner + 2 * a.heads, p.ldl);
  p.nchunks = ceil_div(a.N, p.chunk);
  p.lw = round_up(a.L, V::W);
  p.nlc = ceil_div(p.lw, ColScratch::kChunk);
  const int64_t per_batch = (p.nchunks * (p.inner + 2 * p.heads) + 2 * p.inner) * p.ldl;
  p.bg = max64(1, min64(a.B, kBlockGroupFloats / per_batch));

  const int64_t ldl = p.ldl, bg = p.bg, P = p.nchunks;
  const int64_t sizes[] = {bg * p.inner * ldl, bg * p.inner * ldl, bg * P * p.inner * ldl,
                           bg * P * p.heads * ldl, bg * P * p.heads * ldl, a.C * p.ldkv};
  int64_t bytes = 0;
  for (int64_t n : sizes) bytes += arena_bytes<float>(n);
  Arena ar(bytes, 0);
  BlockBufs s;
  float** slots[] = {&s.q, &s.o, &s.po, &s.pm, &s.pl, &s.wkvt};
  for (int i = 0; i < 6; ++i) *slots[i] = ar.take<float>(sizes[i]);
  // Columns past the latents are read as whole vectors but never stored: zero them once (the
  // scratch is reused between calls), so no stale value, denormal or NaN, reaches a product.
  for (int64_t r = 0; r < bg * p.inner; ++r)
    for (int64_t l = a.L; l < ldl; ++l) s.o[r * ldl + l] = 0.0f;
  for (int64_t r = 0; r < bg * P * p.heads; ++r)
    for (int64_t l = a.L; l < ldl; ++l) s.pm[r * ldl + l] = s.pl[r * ldl + l] = 0.0f;

  for (int64_t b0 = 0; b0 < a.B; b0 += bg) {
    const int64_t nb = min64(bg, a.B - b0), nlc = p.nlc, first = b0 == 0 ? 1 : 0;
    // Item 0 of the first group transposes Wkv (the token stage's B operand).
    parallel_items(par, first + nb * nlc, [&](int64_t i) {
      if (i < first) {
        for (int64_t c = 0; c < a.C; ++c) {
          float* row = s.wkvt + c * p.ldkv;
          for (int64_t r = 0; r < 2 * p.inner; ++r) row[r] = a.w_kv[r * a.C + c];
          for (int64_t r = 2 * p.inner; r < p.ldkv; ++r) row[r] = 0.0f;
        }
        return;
      }
      const int64_t bl = (i - first) / nlc, c0 = (i - first) % nlc * ColScratch::kChunk;
      block_queries(a, p, s, b0 + bl, bl, c0, min64(p.lw, c0 + ColScratch::kChunk));
    });
    // Too few key chunks to keep every thread busy: split the queries too (each span then
    // recomputes its chunk's K and V, C / span of the attention's work).
    const int64_t blocks = ceil_div(a.L, kPerceiverQueries);
    const int64_t spans = min64(blocks, ceil_div(2 * int64_t(par.threads), nb * P));
    const int64_t span = ceil_div(blocks, max64(spans, 1)) * kPerceiverQueries;
    const int64_t nqs = ceil_div(a.L, span);
    parallel_items(par, nb * P * nqs, [&](int64_t i) {
      const int64_t qs = i % nqs, ci = i / nqs % P, bl = i / (nqs * P);
      block_tokens(a, p, s, b0 + bl, bl, ci, qs * span, min64(a.L, (qs + 1) * span));
    });
    parallel_items(par, nb * nlc, [&](int64_t i) {
      const int64_t bl = i / nlc, c0 = i % nlc * ColScratch::kChunk;
      block_output(a, p, s, b0 + bl, bl, c0, min64(p.lw, c0 + ColScratch::kChunk));
    });
  }
}

}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
