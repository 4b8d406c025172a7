// EdgeTAM's 2D spatial perceiver in one call, written once against the SIMD vocabulary `V`.
//
// Everything is channel-major (perceiver_layers.h): memory tokens as (C, N) columns, exactly the
// layout x arrives in, and both latent groups as one (C, L1 + L2) block, global latents first.
// Per batch element and layer:
//   latents: Q^T = Wq LN(lat)^T for both groups at once (same weights);
//   tokens, one chunk per work item (whole window rows when there are patch latents), in cache:
//     LN_x, [K^T; V^T] = Wkv LN_x^T, the window attention of the chunk's patch latents, + pos,
//     then the global latents' attention over the chunk's keys as a partial result (running
//     max, sum, unnormalized output), so keys and values are never written to memory;
//   per latent column: merge the global partials, lat += Wout O^T, then the feed-forward,
//     residuals fused into the GEMMs;
//   latent self-attention: global latents attend to each other; a patch latent's sequence is
//     itself alone, so softmax is 1 and its output is Wout Wv LN(lat) (Q and K never computed).
// One final LayerNorm, written token-major (B, L1 + L2, C).
#pragma once
#include "perceiver_heads.h"
#ifndef EDGETAM_PERCEIVER_AMX
#define EDGETAM_PERCEIVER_AMX 0  // x86_amx.cpp: bf16 compute of the global attention on AMX
#endif


namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

constexpr int64_t kTokenChunk = 256;  // tokens per work item without patch latents
// With patch latents a work item is whole window rows, about this many tokens: fewer global
// partial results to write and merge (the merge reads each once).
constexpr int64_t kWindowChunk = 512;

struct Plan {
  int64_t N, L1, L2, L, ld;  // tokens, latents (global, patch, both), latent leading dim
  int64_t nw, ws, rows;      // window grid, window size, window rows per chunk (patch latents)
  int64_t chunk, nchunks, lc;  // tokens per work item, items, its leading dim
  int64_t inner_x;           // widest cross-attention inner dim (partials' row stride)
};

struct Partials {
  float *o, *m, *l;  // per chunk: (inner_x, ld) outputs, (heads, ld) maxima and sums
  float* xstat;      // x's LayerNorm statistics: mean (N), then 1 / std (N)
};

// Per-thread scratch of the token stage.
struct TokenScratch {
  static int64_t bytes(const PerceiverArgs& a, const Plan& pl, int64_t dh) {
    return arena_bytes<float>(a.C * pl.lc) + arena_bytes<float>(2 * pl.inner_x * pl.lc) +
           BlockScratch::bytes(dh) + WindowScratch::bytes(dh, a.W, pl.ws);
  }
};

// One chunk of tokens [n0, n0 + len): see the file comment. x's LayerNorm statistics are the
// same in every layer (x is): the first layer computes them into xstat (mean, then 1 / std, N
// each), the others read them.
void token_chunk(const PerceiverArgs& a, const Plan& pl, const LatentBufs& b, const Partials& pt,
                 const float* const* p, int64_t inner, const float* x, const float* pos,
                 int64_t ci, int64_t dh_max, float* xstat, bool first_layer) {
  const int64_t C = a.C, N = pl.N, lc = pl.lc, ld = b.ld, heads = a.heads, dh = inner / heads;
  const int64_t n0 = ci * pl.chunk, len = min64(pl.chunk, N - n0), lenw = round_up(len, V::W);
  Arena ar(TokenScratch::bytes(a, pl, dh_max), 1);
  float* xs = ar.take<float>(C * lc);
  float* kv = ar.take<float>(2 * pl.inner_x * lc);
  float* mean = xstat + n0;  // indexed by column within the chunk
  float* rstd = xstat + N + n0;
  for (int64_t c0 = 0; c0 < len; c0 += ColScratch::kChunk) {  // pieces whose passes stay in L1
    const int64_t c1 = min64(len, c0 + ColScratch::kChunk);
    if (first_layer) ln_stats(x + n0, N, C, a.eps, c0, c1, mean, rstd);
    ln_apply(x + n0, N, C, p[2], p[3], xs, lc, c0, c1, mean, rstd);
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = len; n < lc; ++n) xs[c * lc + n] = 0.0f;
  project(2 * inner, C, p[5], xs, lc, kv, lc, 0, lenw, false);
  for (int64_t r = 0; r < 2 * inner; ++r)  // padding read by the window rows' last lanes
    for (int64_t n = lenw; n < lc; ++n) kv[r * lc + n] = 0.0f;
  if (pl.L2) {
    WindowScratch ws(ar, dh, a.W, pl.ws);
    const int64_t row = pl.ws * a.W;  // tokens per window row
    for (int64_t r = 0; r < len / row; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        float* k = kv + h * dh * lc + r * row;
        WindowAttn wa{b.q + h * dh * ld + pl.L1, k, k + inner * lc, b.o + h * dh * ld + pl.L1,
                      ld, lc, ld, dh, a.W, pl.nw, pl.ws};
        window_attention(wa, ci * pl.rows + r, ws);
      }
  }
  if (!pl.L1) return;
  if (pos) {  // global latents see keys and values with pos
    const int64_t nv = len / V::W * V::W;
    for (int64_t r = 0; r < 2 * inner; ++r) {
      const float* pr = pos + (r % inner) * N + n0;
      float* kr = kv + r * lc;
      int64_t n = 0;
      for (; n < nv; n += V::W) V::store(kr + n, V::add(V::load(kr + n), V::load(pr + n)));
      for (; n < len; ++n) kr[n] += pr[n];
    }
  }
  BlockScratch bs(ar, dh);
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t slot = ci * heads + h;
    HeadAttn ha{b.q + h * dh * ld, kv + h * dh * lc, kv + (inner + h * dh) * lc,
                pt.o + (ci * pl.inner_x + h * dh) * ld, ld, lc, lc, ld, len, dh, dh,
                pt.m + slot * ld, pt.l + slot * ld};
#if EDGETAM_PERCEIVER_AMX
    if (a.compute == kComputeBF16) {
      amx_global_attention(ha, pl.L1);
      continue;
    }
#endif
    for (int64_t q0 = 0; q0 < pl.L1; q0 += kPerceiverQueries)
      block_attention(ha, q0, min64(kPerceiverQueries, pl.L1 - q0), bs);
  }
}

// Latent column chunk [c0, c1) (c1 - c0 <= ColScratch::kChunk), the columns' share of the
// latent side of a layer, in the order the stages need it. Each runs as one work item, so the
// chunk's columns stay on one core through the layer (parallel_cols).
struct ColCtx {
  const PerceiverArgs& a;
  const Plan& pl;
  const LatentBufs& b;
  const Partials& pt;
  int64_t c0, c1, n;  // columns, and how many of them are real (the rest padding)
  ColScratch& s;
  float* lat() const { return b.lat + c0; }
};

// Latents in, transposed: columns [c0, c0 + n) of the (C, ld) block.
void load_latents(const ColCtx& x) {
  const PerceiverArgs& a = x.a;
  for (int64_t c = 0; c < a.C; ++c) {
    float* r = x.b.lat + c * x.b.ld;
    for (int64_t l = x.c0; l < x.c0 + x.n; ++l)
      r[l] = l < x.pl.L1 ? a.lat1[l * a.C + c] : a.lat2[(l - x.pl.L1) * a.C + c];
  }
}

// Q^T of `layer`'s cross-attention: Wq LN(lat)^T, scaled for the base-2 softmax.
void cross_queries(const ColCtx& x, int64_t layer) {
  const PerceiverArgs& a = x.a;
  const float* const* p = a.w + layer * a.n_per_layer;
  const int64_t inner = a.inner[layer], ld = x.b.ld, nc = x.c1 - x.c0;
  x.s.norm(x.lat(), ld, a.C, p[0], p[1], a.eps, x.n, nc);
  project(inner, a.C, p[4], x.s.ln, x.s.ld, x.b.q + x.c0, ld, 0, nc, false);
  scale_rows(x.b.q, ld, inner, x.c0, x.c1, softmax_scale(inner / a.heads));
}

// After the token stage: merge the global partials, lat += Wout O^T, the feed-forward, then
// the self-attention's operands (V for every column; Q, K for global ones; a patch latent's
// output is its V).
void cross_out(const ColCtx& x, int64_t layer) {
  const PerceiverArgs& a = x.a;
  const Plan& pl = x.pl;
  const LatentBufs& b = x.b;
  const float* const* p = a.w + layer * a.n_per_layer;
  const int64_t inner = a.inner[layer], dh = inner / a.heads, ld = b.ld, nc = x.c1 - x.c0;
  const int64_t c0 = x.c0, c1 = x.c1;
  if (c0 < pl.L1) {
    Arena ar(arena_bytes<float>(pl.nchunks * V::W), 2);
    float* wts = ar.take<float>(pl.nchunks * V::W);
    for (int64_t h = 0; h < a.heads; ++h)
      merge_partials(pl.nchunks, dh, x.pt.o + h * dh * ld, pl.inner_x, x.pt.m + h * ld,
                     x.pt.l + h * ld, a.heads * ld, ld, b.o + h * dh * ld, c0, min64(c1, pl.L1),
                     wts);
  }
  project(a.C, inner, p[6], b.o, ld, b.lat, ld, c0, c1, true);
  feed_forward_cols(x.lat(), ld, a.C, p + 7, a.hidden[layer], a.eps, x.n, nc, x.s);
  if (!a.self_attn) return;
  const float* const* s = p + 11;
  const int64_t inner_s = a.inner_s[layer];
  x.s.norm(x.lat(), ld, a.C, s[0], s[1], a.eps, x.n, nc);
  project(inner_s, a.C, s[3] + inner_s * a.C, x.s.ln, x.s.ld, b.v + c0, ld, 0, nc, false);
  if (c0 < pl.L1) {
    project(inner_s, a.C, s[2], x.s.ln, x.s.ld, b.q + c0, ld, 0, nc, false);
    scale_rows(b.q, ld, inner_s, c0, c1, softmax_scale(inner_s / a.heads));
    project(inner_s, a.C, s[3], x.s.ln, x.s.ld, b.k + c0, ld, 0, nc, false);
  }
  for (int64_t r = 0; r < inner_s; ++r)  // patch latents: softmax over one key is 1
    for (int64_t l = max64(c0, pl.L1); l < c0 + x.n; ++l) b.o[r * ld + l] = b.v[r * ld + l];
}

// The chunk's global latents attend to every global latent (Q, K, V from cross_out).
void self_attention(const ColCtx& x, int64_t layer) {
  const PerceiverArgs& a = x.a;
  const LatentBufs& b = x.b;
  const int64_t L1 = x.pl.L1, dh = a.inner_s[layer] / a.heads, ld = b.ld;
  if (x.c0 >= L1) return;
  Arena ar(BlockScratch::bytes(dh), 2);
  BlockScratch bs(ar, dh);
  for (int64_t h = 0; h < a.heads; ++h) {
    HeadAttn ha{b.q + h * dh * ld, b.k + h * dh * ld, b.v + h * dh * ld,
                b.o + h * dh * ld, ld, ld, ld, ld, L1, dh, dh};
    for (int64_t q0 = x.c0; q0 < min64(x.c1, L1); q0 += kPerceiverQueries)
      block_attention(ha, q0, min64(kPerceiverQueries, min64(x.c1, L1) - q0), bs);
  }
}

// After the self-attention: lat += Wout O^T, the feed-forward.
void self_out(const ColCtx& x, int64_t layer) {
  const PerceiverArgs& a = x.a;
  const float* const* s = a.w + layer * a.n_per_layer + 11;
  const int64_t ld = x.b.ld;
  project(a.C, a.inner_s[layer], s[4], x.b.o, ld, x.b.lat, ld, x.c0, x.c1, true);
  feed_forward_cols(x.lat(), ld, a.C, s + 5, a.hidden_s[layer], a.eps, x.n, x.c1 - x.c0, x.s);
}

// The last layer's end: the final LayerNorm, written token-major to out (L, C).
void final_norm(const ColCtx& x, float* out) {
  const PerceiverArgs& a = x.a;
  x.s.norm(x.lat(), x.b.ld, a.C, a.norm_w, a.norm_b, a.eps, x.n, x.c1 - x.c0);
  for (int64_t l = 0; l < x.n; ++l)
    for (int64_t c = 0; c < a.C; ++c) out[(x.c0 + l) * a.C + c] = x.s.ln[c * x.s.ld + l];
}

void perceiver_batch(const PerceiverArgs& a, const Parallel& par, int64_t bi, const Plan& pl,
                     const LatentBufs& b, const Partials& pt) {
  const int64_t L1 = pl.L1, L = pl.L;
  const float* x = a.x + bi * a.C * pl.N;
  const float* pos = (a.pos && L1) ? a.pos + bi * a.pos_bstride : nullptr;
  float* out = a.out + bi * L * a.C;
  int64_t dh_max = 1, rows = a.C, hidden = 1;  // per-thread scratch sizes (every layer)
  for (int64_t layer = 0; layer < a.depth; ++layer) {
    dh_max = max64(dh_max, a.inner[layer] / a.heads);
    rows = max64(rows, a.inner[layer]);
    hidden = max64(hidden, a.hidden[layer]);
    if (a.self_attn) hidden = max64(hidden, a.hidden_s[layer]);
  }
  // Runs stage(ctx) on every latent column chunk, each chunk on its owner thread.
  auto cols = [&](auto stage) {
    parallel_cols(par, L, ColScratch::kChunk, [&](int64_t c0, int64_t c1) {
      Arena ar(ColScratch::bytes(rows, hidden), 1);
      ColScratch s(ar, rows, hidden);
      const ColCtx cx{a, pl, b, pt, c0, c1, min64(c1, L) - c0, s};
      stage(cx);
    });
  };
  cols([&](const ColCtx& cx) {
    load_latents(cx);
    cross_queries(cx, 0);
  });

  for (int64_t layer = 0; layer < a.depth; ++layer) {
    const float* const* p = a.w + layer * a.n_per_layer;
    const int64_t inner = a.inner[layer];
    const bool last = layer + 1 == a.depth;
    parallel_items(par, pl.nchunks, [&](int64_t ci) {
      token_chunk(a, pl, b, pt, p, inner, x, pos, ci, dh_max, pt.xstat, layer == 0);
    });
    // Without self-attention the layer's end follows the feed-forward in the same item.
    cols([&](const ColCtx& cx) {
      cross_out(cx, layer);
      if (a.self_attn) return;
      if (last)
        final_norm(cx, out);
      else
        cross_queries(cx, layer + 1);
    });
    if (!a.self_attn) continue;

    // A chunk's self-attention output is read only by the chunk itself: no wait between them.
    cols([&](const ColCtx& cx) {
      self_attention(cx, layer);
      self_out(cx, layer);
      if (last)
        final_norm(cx, out);
      else
        cross_queries(cx, layer + 1);
    });
  }
}

}  // namespace

void spatial_perceiver(const PerceiverArgs& a, const Parallel& par) {
  const int64_t C = a.C;
  Plan pl;
  pl.N = a.H * a.W;
  pl.L1 = a.lat1 ? a.L1 : 0;
  pl.L2 = a.lat2 ? a.L2 : 0;
  pl.L = pl.L1 + pl.L2;
  pl.nw = pl.L2 ? int64_t(std::sqrt(double(pl.L2)) + 0.5) : 1;
  pl.ws = a.H / pl.nw;
  pl.rows = pl.L2 ? min64(pl.nw, max64(1, kWindowChunk / (pl.ws * a.W))) : 0;
  pl.chunk = pl.L2 ? pl.rows * pl.ws * a.W : min64(kTokenChunk, pl.N);
  pl.nchunks = ceil_div(pl.N, pl.chunk);
  pl.lc = ld_cols(pl.chunk);
  int64_t inner = C;  // rows of the shared latent blocks
  pl.inner_x = 1;
  for (int64_t l = 0; l < a.depth; ++l) {
    pl.inner_x = max64(pl.inner_x, a.inner[l]);
    inner = max64(inner, a.inner[l]);
    if (a.self_attn) inner = max64(inner, a.inner_s[l]);
  }
  LatentBufs b;
  b.ld = pl.ld = ld_cols(pl.L);
  const int64_t ld = b.ld, P = pl.L1 ? pl.nchunks : 0;
  const int64_t sizes[] = {C * ld, inner * ld, inner * ld, inner * ld, inner * ld,
                           P * pl.inner_x * ld, P * a.heads * ld, P * a.heads * ld, 2 * pl.N};
  int64_t bytes = 0;
  for (int64_t n : sizes) bytes += arena_bytes<float>(max64(n, 1));
  Arena ar(bytes, 0);
  Partials pt;
  float** slots[] = {&b.lat, &b.q, &b.k, &b.v, &b.o, &pt.o, &pt.m, &pt.l, &pt.xstat};
  for (int i = 0; i < 9; ++i) *slots[i] = ar.take<float>(max64(sizes[i], 1));
  // Padding columns go through the products as whole vectors but hold no latent: zero them
  // once (the scratch is reused between calls), and they stay zero (products of zeros).
  float* const latent_bufs[] = {b.lat, b.q, b.k, b.v, b.o};
  for (int i = 0; i < 5; ++i) {
    const int64_t rows = i == 0 ? C : inner;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t l = pl.L; l < ld; ++l) latent_bufs[i][r * ld + l] = 0.0f;
  }
  for (int64_t bi = 0; bi < a.B; ++bi) perceiver_batch(a, par, bi, pl, b, pt);
}

}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
