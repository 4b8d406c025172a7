// RoPE flash attention, written once against the SIMD vocabulary `V` of the including ISA
// translation unit, which defines EDGETAM_ISA (the namespace of its entry points).
//
// Per (batch, head, block of Mb queries):
//   Q^T   the block's queries, rotated on the q grid as they are loaded, stored transposed
//         [D x Mb] (bf16 pairs [D/2 x Mb] on native-dot paths) so the score micro-kernel
//         broadcasts key elements and loads 16 queries per vector;
//   per key tile of NT keys: rotate the keys as they are loaded (EdgeTAM / SAM 2 rule: frames of
//         k_frame tokens whose last k_nrot are rotated on the k grid; trailing keys never),
//         S^T = K Q^T [NT x Mb], online softmax down the columns (one query per lane: no
//         horizontal reductions), O^T = alpha O^T + V^T P^T [Dv x Mb] with V as the broadcast
//         operand (faster than O = P V, whose broadcast operand P^T is re-read for every strip
//         of O); O transposed back once per block.
// Keys are rotated once per head when several query blocks share them (AttnPlan::keys), and
// fp32 values then packed into micro-panels (AttnPlan::vpk); else keys per tile and V read in
// place. Queries once per block.
#pragma once
#include "common.h"

#ifndef EDGETAM_ATTN_ENTRY
#define EDGETAM_ATTN_ENTRY rope_attention
#endif

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kKeyTile = 96;  // keys per tile: a multiple of every MR, even (bf16 pairs)
// Q^T, S^T / P and O^T rows are padded by 64 bytes: at 128 queries a row is 512 bytes, and an
// unpadded panel read down its rows (the micro-kernel's B operand) maps onto half of the L1
// sets only, so the P^T strip and the Q^T panel keep evicting themselves (padding: 1.01-1.07x
// at 4096 x 4096 x 256, 2 threads).
constexpr int64_t kRowPad = 16;

struct AttnPlan {
  int64_t Mb;      // queries per block
  int64_t ldq;     // Mb rounded up to W, plus kRowPad: leading dim of Q^T, S^T, P, O^T
  int64_t Dvp;     // Dv rounded up to W
  bool dot;        // native reduced-precision dot (pairs)
  bool f16;        // ... in fp16 (else bf16)
  bool v_direct;   // P V reads v straight from the input
  // Every key of every head rotated and rounded once, in the tile layout (rows of D fp32, or
  // of D bf16 / fp16 on dot paths), when several query blocks share a head; else null and each
  // block prepares its tiles itself.
  const void* keys;
  // fp32 with the key pre-pass: V of every head as micro-panels, [head][channel block of MR]
  // [key][MR] (channels past Dv zero), so the second product's broadcast operand is one
  // contiguous run per micro-tile. Read in place (96 rows 1 KB apart per micro-tile) it cost
  // that product about 13 % at 1 thread. Else null.
  float* vpk;
};

// Rotate a key/query row already loaded as fp32, then round it as the reference does: back to
// the input dtype, then to the compute precision (a no-op for fp32).
inline void rotate_row(float* row, int64_t D, const float* col_tab, const float* row_tab,
                       int64_t col, int64_t r) {
  const int64_t Dh = D / 2;
  rotate_half(row, col_tab + col * D, Dh);
  rotate_half(row + Dh, row_tab + r * D, Dh);
}

inline int dtype_as_compute(int dtype) {
  return dtype == kBF16 ? kComputeBF16 : dtype == kF16 ? kComputeF16 : kComputeF32;
}

struct AttnScratch {
  float *row0, *row1, *qt, *kr, *s, *pt, *pp, *vb, *o, *m, *l, *alpha;
  static int64_t bytes(const RopeAttnArgs& a, const AttnPlan& p) {
    const int64_t rowlen = max64(a.D, p.Dvp);
    return 2 * arena_bytes<float>(rowlen) + arena_bytes<float>(a.D * p.ldq) +
           arena_bytes<float>(kKeyTile * a.D) + 2 * arena_bytes<float>(kKeyTile * p.ldq) +
           arena_bytes<float>((kKeyTile / 2 + 1) * p.ldq) +
           arena_bytes<float>(max64(kKeyTile + 1, 16) * p.Dvp) +
           arena_bytes<float>(p.ldq * p.Dvp) +
           3 * arena_bytes<float>(p.ldq);
  }
  AttnScratch(Arena& ar, const RopeAttnArgs& a, const AttnPlan& p) {
    const int64_t rowlen = max64(a.D, p.Dvp);
    row0 = ar.take<float>(rowlen);
    row1 = ar.take<float>(rowlen);
    qt = ar.take<float>(a.D * p.ldq);
    kr = ar.take<float>(kKeyTile * a.D);
    s = ar.take<float>(kKeyTile * p.ldq);
    pt = ar.take<float>(kKeyTile * p.ldq);  // P^T, apart from S^T so a group can be redone
    pp = ar.take<float>((kKeyTile / 2 + 1) * p.ldq);
    vb = ar.take<float>(max64(kKeyTile + 1, 16) * p.Dvp);
    o = ar.take<float>(p.ldq * p.Dvp);
    m = ar.take<float>(p.ldq);
    l = ar.take<float>(p.ldq);
    alpha = ar.take<float>(p.ldq);
  }
};

// key_mask (api.h) of the batch row of head bh, or null when every key is valid.
inline const uint8_t* key_mask_row(const RopeAttnArgs& a, int64_t bh) {
  return a.key_mask ? a.key_mask + (bh / a.H) * a.key_mask_bstride : nullptr;
}

inline bool any_valid(const uint8_t* km, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (km[j]) return true;
  return false;
}

inline uint32_t pack_pair(float lo, float hi) {
  return uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16);
}

// Key `key` of head bh, rotated where the rule says so and rounded to the compute precision, as
// row j of a tile `dst` (fp32 rows of D, or bf16 / fp16 rows of D on dot paths); row0: scratch.
inline void prepare_key(const RopeAttnArgs& a, const AttnPlan& p, int64_t bh, int64_t key,
                        float* row0, void* dst, int64_t j) {
  const int64_t D = a.D;
  float* row = p.dot ? row0 : static_cast<float*>(dst) + j * D;
  load_row(a.k, a.dtype, (bh * a.Nk + key) * D, D, row);
  if (key < a.k_nrope) {
    const int64_t t = key % a.k_frame - (a.k_frame - a.k_nrot);
    if (t >= 0) {
      rotate_row(row, D, a.k_col_tab, a.k_row_tab, t % a.k_w, t / a.k_w);
      round_row(row, D, dtype_as_compute(a.dtype));
    }
  }
  if (p.dot)
    store_row(row, 1.0f, p.f16 ? kF16 : kBF16, j * D, D, dst);
  else
    round_row(row, D, a.compute);
}

void attn_block(const RopeAttnArgs& a, const AttnPlan& p, int64_t bh, int64_t q0,
                AttnScratch& s) {
  constexpr int64_t W = V::W;
  using vf = typename V::f;
  const int64_t D = a.D, Dv = a.Dv, Dvp = p.Dvp;
  const int64_t nq = min64(p.Mb, a.Nq - q0);
  const int64_t nqp = round_up(nq, W);  // columns computed (queries and pad lanes)
  const int64_t ldq = nqp + kRowPad;
  const int in_round = dtype_as_compute(a.dtype);
  const int cmp = a.compute;
  const bool dot = p.dot;
  const int64_t kd = dot ? D / 2 : D;  // reduction length in 32-bit elements

  // Q^T, rotated (pad columns zero so their scores are finite and unused).
  std::memset(s.qt, 0, sizeof(float) * size_t(kd * ldq));
  uint32_t* qtp = reinterpret_cast<uint32_t*>(s.qt);
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t n = q0 + i;
    load_row(a.q, a.dtype, (bh * a.Nq + n) * D, D, s.row0);
    rotate_row(s.row0, D, a.q_col_tab, a.q_row_tab, n % a.q_w, n / a.q_w);
    round_row(s.row0, D, in_round);
    if (dot && p.f16) {  // B operand of fmlal: halves planar within each group of 4 queries
      uint16_t* h = reinterpret_cast<uint16_t*>(s.qt);
      const int64_t g = (i / 4) * 8 + i % 4;
      for (int64_t d = 0; d < D; d += 2) {
        h[(d / 2) * ldq * 2 + g] = f32_to_f16(s.row0[d]);
        h[(d / 2) * ldq * 2 + g + 4] = f32_to_f16(s.row0[d + 1]);
      }
    } else if (dot) {
      for (int64_t d = 0; d < D; d += 2) qtp[(d / 2) * ldq + i] = pack_pair(s.row0[d], s.row0[d + 1]);
    } else {
      round_row(s.row0, D, cmp);
      for (int64_t d = 0; d < D; ++d) s.qt[d * ldq + i] = s.row0[d];
    }
  }
  for (int64_t i = 0; i < ldq; ++i) {
    s.m[i] = -__builtin_inff();
    s.l[i] = 0.0f;
  }
  const vf cmul = V::set1(a.scale * kLog2e);
  const uint8_t* km = key_mask_row(a, bh);
  bool first = true;  // no tile accumulated yet (tiles whose keys are all masked are skipped)

  for (int64_t k0 = 0; k0 < a.Nk; k0 += kKeyTile) {
    const int64_t nk = min64(kKeyTile, a.Nk - k0);
    if (km && !any_valid(km + k0, nk)) continue;
    // Keys of the tile, rotated where the rule says so (or prepared once for every block).
    const float* kt = s.kr;
    if (p.keys) {
      const int64_t off = (bh * a.Nk + k0) * D;
      kt = dot ? reinterpret_cast<const float*>(static_cast<const uint16_t*>(p.keys) + off)
               : static_cast<const float*>(p.keys) + off;
    } else {
      for (int64_t j = 0; j < nk; ++j) prepare_key(a, p, bh, k0 + j, s.row0, s.kr, j);
    }
    // S^T = K Q^T
    if (dot && p.f16)
      gemm<2>(nk, nqp, kd, kt, kd, 1, s.qt, ldq, s.s, ldq, false, nullptr);
    else if (dot)
      gemm<1>(nk, nqp, kd, kt, kd, 1, s.qt, ldq, s.s, ldq, false, nullptr);
    else
      gemm<false>(nk, nqp, kd, kt, kd, 1, s.qt, ldq, s.s, ldq, false, nullptr);
    if (km) {  // masked keys' scores to -inf (the tile has a valid key: every max stays finite)
      const vf fill = V::set1(-__builtin_inff());  // scale > 0 with a mask (api.h)
      for (int64_t j = 0; j < nk; ++j)
        if (!km[k0 + j])
          for (int64_t i0 = 0; i0 < nqp; i0 += W) V::store(s.s + j * ldq + i0, fill);
    }
    // Online softmax down each column (query) into P^T (kLazyTrig).
    bool rescale = false;
    for (int64_t i0 = 0; i0 < nqp; i0 += W) {
      const vf mo = V::load(s.m + i0);
      vf mn = mo, sum = V::zero();
      bool redo = first;
      if (!redo) {  // against the running max; the largest exponent tracked on the way
        const vf neg = V::sub(V::zero(), mo);
        vf xm0 = V::set1(-__builtin_inff()), xm1 = xm0, sum1 = sum;
        int64_t j = 0;
        for (; j + 2 <= nk; j += 2) {  // two chains: max and add latencies overlap
          const vf x0 = V::fma(V::load(s.s + j * ldq + i0), cmul, neg);
          const vf x1 = V::fma(V::load(s.s + (j + 1) * ldq + i0), cmul, neg);
          xm0 = V::max(xm0, x0);
          xm1 = V::max(xm1, x1);
          vf p0 = V::exp2(x0), p1 = V::exp2(x1);
          if (!dot && cmp == kComputeBF16) p0 = V::round_bf16(p0), p1 = V::round_bf16(p1);
          if (!dot && cmp == kComputeF16) p0 = V::round_f16(p0), p1 = V::round_f16(p1);
          V::store(s.pt + j * ldq + i0, p0);
          V::store(s.pt + (j + 1) * ldq + i0, p1);
          sum = V::add(sum, p0);
          sum1 = V::add(sum1, p1);
        }
        for (; j < nk; ++j) {
          const vf x0 = V::fma(V::load(s.s + j * ldq + i0), cmul, neg);
          xm0 = V::max(xm0, x0);
          vf p0 = V::exp2(x0);
          if (!dot && cmp == kComputeBF16) p0 = V::round_bf16(p0);
          if (!dot && cmp == kComputeF16) p0 = V::round_f16(p0);
          V::store(s.pt + j * ldq + i0, p0);
          sum = V::add(sum, p0);
        }
        sum = V::add(sum, sum1);
        redo = !(V::hmax(V::max(xm0, xm1)) <= kLazyTrig);  // NaN: redo (harmless)
      }
      if (redo) {  // first tile, or the max must move: raise it, recompute the group
        const vf mx = col_max(s.s + i0, ldq, nk);
        mn = V::max(mo, V::sub(V::mul(mx, cmul), V::set1(kLazyMax)));
        const vf neg = V::sub(V::zero(), mn);
        sum = V::zero();
        for (int64_t j = 0; j < nk; ++j) {
          vf pj = V::exp2(V::fma(V::load(s.s + j * ldq + i0), cmul, neg));
          if (!dot && cmp == kComputeBF16) pj = V::round_bf16(pj);
          if (!dot && cmp == kComputeF16) pj = V::round_f16(pj);
          V::store(s.pt + j * ldq + i0, pj);
          sum = V::add(sum, pj);
        }
        rescale = rescale || !(V::hmax(V::sub(mn, mo)) == 0.0f);  // NaN: rescale (harmless)
      }
      const vf alpha = V::exp2(V::sub(mo, mn));
      V::store(s.l + i0, V::fma(V::load(s.l + i0), alpha, sum));
      V::store(s.m + i0, mn);
      V::store(s.alpha + i0, alpha);
    }
    if (km) {  // exp2 bottoms out at 2^-125: masked keys' probabilities to exactly 0
      const vf z = V::zero();
      for (int64_t j = 0; j < nk; ++j)
        if (!km[k0 + j])
          for (int64_t i0 = 0; i0 < nqp; i0 += W) V::store(s.pt + j * ldq + i0, z);
    }
    if (!first && rescale) {  // O^T columns (queries) by alpha
      for (int64_t d = 0; d < Dv; ++d) {
        float* od = s.o + d * ldq;
        for (int64_t i0 = 0; i0 < nqp; i0 += W)
          V::store(od + i0, V::mul(V::load(od + i0), V::load(s.alpha + i0)));
      }
    }
    // V operand (A of O^T += V^T P^T: element (channel c, key j) at vsrc[c + j * ldv]).
    const float* vsrc;
    int64_t ldv = Dvp;
    const int64_t kp = dot ? (nk + 1) / 2 : nk;
    if (dot) {
      uint32_t* pp = reinterpret_cast<uint32_t*>(s.pp);
      uint32_t* vp = reinterpret_cast<uint32_t*>(s.vb);
      const vf z = V::zero();
      for (int64_t jp = 0; jp < kp; ++jp) {
        const bool has2 = 2 * jp + 1 < nk;
        for (int64_t i0 = 0; i0 < nqp; i0 += W) {  // P pairs: the B operand
          const vf lo = V::load(s.pt + 2 * jp * ldq + i0);
          const vf hi = has2 ? V::load(s.pt + (2 * jp + 1) * ldq + i0) : z;
          if (p.f16)
            V::store_pairs_f16_planar(pp + jp * ldq + i0, lo, hi);
          else
            V::store_pairs(pp + jp * ldq + i0, lo, hi);
        }
        std::memset(s.row0 + Dv, 0, sizeof(float) * size_t(Dvp - Dv));
        std::memset(s.row1, 0, sizeof(float) * size_t(Dvp));
        load_row(a.v, a.dtype, (bh * a.Nk + k0 + 2 * jp) * Dv, Dv, s.row0);
        if (has2) load_row(a.v, a.dtype, (bh * a.Nk + k0 + 2 * jp + 1) * Dv, Dv, s.row1);
        for (int64_t c = 0; c < Dvp; c += W) {  // V pairs: the broadcast A operand
          if (p.f16)
            V::store_pairs_f16(vp + jp * Dvp + c, V::load(s.row0 + c), V::load(s.row1 + c));
          else
            V::store_pairs(vp + jp * Dvp + c, V::load(s.row0 + c), V::load(s.row1 + c));
        }
      }
      vsrc = s.vb;
    } else if (p.vpk) {
      vsrc = nullptr;  // the packed panels below
    } else if (p.v_direct) {
      vsrc = static_cast<const float*>(a.v) + (bh * a.Nk + k0) * Dv;
      ldv = Dv;
    } else {
      for (int64_t j = 0; j < nk; ++j) {
        float* row = s.vb + j * Dvp;
        load_row(a.v, a.dtype, (bh * a.Nk + k0 + j) * Dv, Dv, row);
        round_row(row, Dv, cmp);
      }
      vsrc = s.vb;
    }
    // O^T = alpha O^T + V^T P^T (first tile: no accumulation)
    if (dot && p.f16)
      gemm<2>(Dv, nqp, kp, vsrc, 1, ldv, s.pp, ldq, s.o, ldq, !first, nullptr);
    else if (dot)
      gemm<1>(Dv, nqp, kp, vsrc, 1, ldv, s.pp, ldq, s.o, ldq, !first, nullptr);
    else if (p.vpk)  // as gemm<false>, with A one packed panel per block of MR channels
      for (int64_t n0 = 0; n0 < nqp; n0 += V::NR * W) {
        const int64_t nv = min64(V::NR, (nqp - n0) / W), nb = ceil_div(Dv, int64_t(V::MR));
        const MicroFn full = pick<0>(V::MR, nv);
        for (int64_t mb = 0; mb < nb; ++mb) {
          const int64_t m0 = mb * V::MR, mr = min64(V::MR, Dv - m0);
          MicroFn fn = mr == V::MR ? full : pick<0>(mr, nv);
          fn(nk, p.vpk + ((bh * nb + mb) * a.Nk + k0) * V::MR, 1, V::MR, s.pt + n0, ldq,
             s.o + m0 * ldq + n0, ldq, !first, nullptr);
        }
      }
    else
      gemm<false>(Dv, nqp, kp, vsrc, 1, ldv, s.pt, ldq, s.o, ldq, !first, nullptr);
    first = false;
  }
  if (first) {  // every key masked: zeros, not 0 / 0
    for (int64_t d = 0; d < Dv; ++d) std::memset(s.o + d * ldq, 0, sizeof(float) * size_t(nq));
    for (int64_t i = 0; i < nq; ++i) s.l[i] = 1.0f;
  }
  // O = (O^T)^T / l, a 16-query slab at a time through rows of the (now free) V buffer.
  for (int64_t i = 0; i < nq; ++i) s.l[i] = 1.0f / s.l[i];
  for (int64_t i0 = 0; i0 < nq; i0 += 16) {
    const int64_t ni = min64(16, nq - i0);
    for (int64_t d = 0; d < Dv; ++d)
      for (int64_t i = 0; i < ni; ++i) s.vb[i * Dvp + d] = s.o[d * ldq + i0 + i];
    for (int64_t i = 0; i < ni; ++i)
      store_row(s.vb + i * Dvp, s.l[i0 + i], a.dtype, (bh * a.Nq + q0 + i0 + i) * Dv, Dv, a.out);
  }
}

struct AttnJob {
  const RopeAttnArgs* a;
  AttnPlan p;
  int64_t nqb;
};

// Prepares keys [it * kKeyTile, ...) of every head into AttnPlan::keys (items: heads x tiles).
void keys_body(void* ctx, int64_t b, int64_t e) {
  const AttnJob& job = *static_cast<const AttnJob*>(ctx);
  const RopeAttnArgs& a = *job.a;
  const int64_t tiles = ceil_div(a.Nk, kKeyTile);
  Arena ar(arena_bytes<float>(a.D), 1);
  float* row0 = ar.take<float>(a.D);
  void* keys = const_cast<void*>(job.p.keys);
  for (int64_t it = b; it < e; ++it) {
    const int64_t bh = it / tiles, k0 = (it % tiles) * kKeyTile;
    for (int64_t key = k0; key < min64(a.Nk, k0 + kKeyTile); ++key)
      prepare_key(a, job.p, bh, key, row0, keys, bh * a.Nk + key);
    if (job.p.vpk) {  // the same keys' values into the micro-panels
      constexpr int64_t MR = V::MR;
      const int64_t nb = ceil_div(a.Dv, MR), full = a.Dv / MR, pstride = a.Nk * MR;
      for (int64_t key = k0; key < min64(a.Nk, k0 + kKeyTile); ++key) {  // a row at a time
        const float* src = static_cast<const float*>(a.v) + (bh * a.Nk + key) * a.Dv;
        float* dst = job.p.vpk + (bh * nb * a.Nk + key) * MR;
        for (int64_t mb = 0; mb < full; ++mb)
          std::memcpy(dst + mb * pstride, src + mb * MR, sizeof(float) * MR);
        for (int64_t c = 0; full < nb && c < MR; ++c)  // short last panel: zero past Dv
          dst[full * pstride + c] = full * MR + c < a.Dv ? src[full * MR + c] : 0.0f;
      }
    }
  }
}

void attn_body(void* ctx, int64_t b, int64_t e) {
  const AttnJob& job = *static_cast<const AttnJob*>(ctx);
  Arena ar(AttnScratch::bytes(*job.a, job.p), 0);
  AttnScratch s(ar, *job.a, job.p);
  for (int64_t it = b; it < e; ++it)
    attn_block(*job.a, job.p, it / job.nqb, (it % job.nqb) * job.p.Mb, s);
}

}  // namespace

void EDGETAM_ATTN_ENTRY(const RopeAttnArgs& a, const Parallel& par) {
  constexpr int64_t W = V::W;
  AttnJob job;
  job.a = &a;
  AttnPlan& p = job.p;
  p.f16 = V::kF16Dot && a.compute == kComputeF16;
  p.dot = (V::kBf16Dot && a.compute == kComputeBF16) || p.f16;
  // Enough blocks for every thread, but no block narrower than one micro-tile strip.
  int64_t Mb = 128;
  const int64_t bh = a.B * a.H;
  while (Mb > V::NR * W && bh * ceil_div(a.Nq, Mb) < 4 * int64_t(par.threads)) Mb /= 2;
  p.Mb = Mb;
  p.ldq = round_up(Mb, W) + kRowPad;
  p.Dvp = round_up(a.Dv, W);
  p.v_direct = !p.dot && a.dtype == kF32 && a.compute == kComputeF32;  // any Dv: A operand
  job.nqb = ceil_div(a.Nq, Mb);
  p.keys = nullptr;
  p.vpk = nullptr;
  const int64_t key_bytes = bh * a.Nk * a.D * (p.dot ? 2 : 4);
  // Keys shared by several blocks: rotate and round them once (up to 64 MB: the buffer stays
  // allocated between calls).
  if (job.nqb > 1 && key_bytes <= (int64_t(64) << 20)) {
    p.keys = thread_scratch(3, key_bytes);
    const int64_t vpk_bytes = bh * ceil_div(a.Dv, int64_t(V::MR)) * V::MR * a.Nk * 4;
    if (p.v_direct && vpk_bytes <= (int64_t(64) << 20))  // same cap as the keys
      p.vpk = reinterpret_cast<float*>(thread_scratch(2, vpk_bytes));
    par.run(par.self, bh * ceil_div(a.Nk, kKeyTile), &job, &keys_body);
  }
  par.run(par.self, bh * job.nqb, &job, &attn_body);
}

}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
