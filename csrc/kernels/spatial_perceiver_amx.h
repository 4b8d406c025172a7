// The perceiver's global-latent attention with bf16 products on Intel AMX tiles (the
// perceiver's bf16 compute; fp32 accumulation, fp32 softmax). Included only by
// csrc/isa/x86_amx.cpp, before spatial_perceiver.h, which calls it for PerceiverArgs::compute ==
// kComputeBF16. At EdgeTAM's shape these two products are 61 % of the perceiver's FLOPs; every
// other stage stays fp32.
//
// Same orientation as block_attention (keys down, queries across), so that both B operands are
// VNNI pairs read straight from channel-major rows and the softmax runs down columns:
//   S^T = K Q^T    A: key rows in bf16 (keys scattered from the channel-major K^T),
//                  B: VNNI pairs of Q^T (rows 2p, 2p + 1 interleaved);
//   O^T += V^T P^T A: rows of V^T in bf16, B: VNNI pairs of P^T, written by the softmax itself.
#pragma once
#include "rope_attention_amx.h"
#include "perceiver_heads.h"

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

constexpr int64_t kAmxPKeys = 128;    // keys per tile (a multiple of 32)
constexpr int64_t kAmxPQueries = 64;  // queries per block (a multiple of 32)

struct AmxPerceiverScratch {
  uint32_t* qv;  // (dkp / 2, nqp) VNNI pairs of Q^T
  uint16_t* ka;  // (nkp, dkp) key rows
  uint16_t* vb;  // (dvp, nkp) rows of V^T
  float* st;     // (kAmxPKeys, kAmxPQueries) scores
  uint32_t* pv;  // (kAmxPKeys / 2, kAmxPQueries) VNNI pairs of P^T
  float *ot, *m, *l, *alpha;
  int64_t dkp, dvp, nkp, nqp;
  static int64_t bytes(int64_t dk, int64_t dv, int64_t nk, int64_t nq) {
    const int64_t dkp = round_up(dk, 32), dvp = round_up(dv, 32), nkp = round_up(nk, 32);
    const int64_t Q = kAmxPQueries;
    return arena_bytes<uint32_t>(dkp / 2 * round_up(nq, Q)) + arena_bytes<uint16_t>(nkp * dkp) +
           arena_bytes<uint16_t>(dvp * nkp) + arena_bytes<float>(kAmxPKeys * Q) +
           arena_bytes<uint32_t>(kAmxPKeys / 2 * Q) + arena_bytes<float>(dvp * Q) +
           3 * arena_bytes<float>(Q);
  }
  AmxPerceiverScratch(Arena& ar, int64_t dk, int64_t dv, int64_t nk, int64_t nq)
      : dkp(round_up(dk, 32)), dvp(round_up(dv, 32)), nkp(round_up(nk, 32)),
        nqp(round_up(nq, kAmxPQueries)) {
    const int64_t Q = kAmxPQueries;
    qv = ar.take<uint32_t>(dkp / 2 * nqp);
    ka = ar.take<uint16_t>(nkp * dkp);
    vb = ar.take<uint16_t>(dvp * nkp);
    st = ar.take<float>(kAmxPKeys * Q);
    pv = ar.take<uint32_t>(kAmxPKeys / 2 * Q);
    ot = ar.take<float>(dvp * Q);
    m = ar.take<float>(Q);
    l = ar.take<float>(Q);
    alpha = ar.take<float>(Q);
  }
};

// Lanes [i, min(i + 16, n)) of a row, zero past n (padding queries, keys and dims).
inline __m512 load_upto(const float* row, int64_t i, int64_t n) {
  if (i + 16 <= n) return _mm512_loadu_ps(row + i);
  if (i >= n) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(__mmask16((1u << (n - i)) - 1), row + i);
}

// Operands of one head in bf16: Q^T pairs (queries [0, nq)), key rows, V^T rows; zero padding.
void amx_pack(const HeadAttn& a, int64_t nq, AmxPerceiverScratch& t) {
  const int64_t dk = a.dk, dv = a.dv, nk = a.nk, dkp = t.dkp, nkp = t.nkp;
  for (int64_t p = 0; p < dkp / 2; ++p) {
    const float* r0 = a.qt + 2 * p * a.ldq;
    const float* r1 = r0 + a.ldq;
    const int64_t n0 = 2 * p < dk ? nq : 0, n1 = 2 * p + 1 < dk ? nq : 0;
    for (int64_t q = 0; q < t.nqp; q += 16)
      V::store_pairs(t.qv + p * t.nqp + q, load_upto(r0, q, n0), load_upto(r1, q, n1));
  }
  // Keys: 16 at a time, pair p of each lands in word p of its row (a scatter with the row
  // stride; rows past nk are zeroed once here).
  if (nkp > nk) std::memset(t.ka + nk * dkp, 0, sizeof(uint16_t) * size_t((nkp - nk) * dkp));
  uint32_t* kw = reinterpret_cast<uint32_t*>(t.ka);
  const __m512i rows = _mm512_mullo_epi32(_mm512_set1_epi32(int(dkp / 2)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                            11, 12, 13, 14, 15));
  for (int64_t k = 0; k < nk; k += 16) {
    const __mmask16 live = k + 16 <= nk ? __mmask16(0xffff) : __mmask16((1u << (nk - k)) - 1);
    for (int64_t p = 0; p < dkp / 2; ++p) {
      const float* r0 = a.kt + 2 * p * a.ldk;
      const __m512 lo = 2 * p < dk ? load_upto(r0, k, nk) : _mm512_setzero_ps();
      const __m512 hi = 2 * p + 1 < dk ? load_upto(r0 + a.ldk, k, nk) : _mm512_setzero_ps();
      const __m512i w = _mm512_or_si512(V::bf16_bits(lo), _mm512_slli_epi32(V::bf16_bits(hi), 16));
      _mm512_mask_i32scatter_epi32(kw + k * (dkp / 2) + p, live, rows, w, 4);
    }
  }
  for (int64_t d = 0; d < t.dvp; ++d)
    for (int64_t k = 0; k < nkp; k += 16)
      V::store_bf16(t.vb + d * nkp + k,
                    d < dv ? load_upto(a.vt + d * a.ldv, k, nk) : _mm512_setzero_ps());
}

// One column group's probabilities against the max mx: exp2(st - mx) down the columns as VNNI
// pairs of P^T (zero past nk, up to nkp); returns their sum, and in *xmax the largest st - mx.
inline vf amx_probs(const float* sp, uint32_t* pp, int64_t nk, int64_t nkp, vf mx, vf* xmax) {
  constexpr int64_t Q = kAmxPQueries;
  vf sum = V::zero(), sum1 = V::zero(), xm0 = V::set1(-__builtin_inff()), xm1 = xm0;
  int64_t j = 0;
  for (; j + 2 <= nk; j += 2) {
    const vf x0 = V::sub(V::load(sp + j * Q), mx), x1 = V::sub(V::load(sp + (j + 1) * Q), mx);
    xm0 = V::max(xm0, x0);
    xm1 = V::max(xm1, x1);
    const vf p0 = V::exp2(x0), p1 = V::exp2(x1);
    V::store_pairs(pp + (j / 2) * Q, p0, p1);
    sum = V::add(sum, p0);
    sum1 = V::add(sum1, p1);
  }
  if (j < nk) {
    const vf x0 = V::sub(V::load(sp + j * Q), mx);
    xm0 = V::max(xm0, x0);
    const vf p0 = V::exp2(x0);
    V::store_pairs(pp + (j / 2) * Q, p0, V::zero());
    sum = V::add(sum, p0);
    j += 2;
  }
  for (; j < nkp; j += 2) V::store_pairs(pp + (j / 2) * Q, V::zero(), V::zero());
  *xmax = V::max(xm0, xm1);
  return V::add(sum, sum1);
}

// Keys [k0, k0 + nk) for the query block's columns: softmax down the columns of st (as
// block_attention: base-2 logits; after the first tile one pass against the running max, which
// moves only when a probability would exceed 2^kLazyTrig, and then to the column max minus
// kLazyMax; st is still there to redo the pass), P^T written as VNNI pairs, alpha the factor for
// the running output. Returns whether any max moved.
bool amx_softmax(AmxPerceiverScratch& t, int64_t nk, bool first) {
  constexpr int64_t Q = kAmxPQueries;
  const int64_t nkp = round_up(nk, 32);
  bool moved = false;
  for (int64_t i0 = 0; i0 < Q; i0 += 16) {
    const float* sp = t.st + i0;
    uint32_t* pp = t.pv + i0;
    const vf mo = V::load(t.m + i0);
    vf mn = mo, xmax, sum;
    bool redo = first;
    if (!first) {
      sum = amx_probs(sp, pp, nk, nkp, mo, &xmax);
      redo = !(V::hmax(xmax) <= kLazyTrig);  // NaN: redo (harmless)
    }
    if (redo) {
      mn = V::max(mo, V::sub(col_max(sp, Q, nk), V::set1(kLazyMax)));
      sum = amx_probs(sp, pp, nk, nkp, mn, &xmax);
      moved = moved || !(V::hmax(V::sub(mn, mo)) == 0.0f);
    }
    const vf alpha = V::exp2(V::sub(mo, mn));
    V::store(t.l + i0, V::fma(V::load(t.l + i0), alpha, sum));
    V::store(t.m + i0, mn);
    V::store(t.alpha + i0, alpha);
  }
  return moved;
}

// block_attention's partial result (a.pm / a.pl set) for queries [0, nq) over all a.nk keys,
// with bf16 products: a.ot gets columns [0, nq) of the unnormalized O^T, pm / pl the running max
// and sum. The calling thread must hold AMX tile state (amx_permitted).
void amx_global_attention(const HeadAttn& a, int64_t nq) {
  constexpr int64_t Q = kAmxPQueries, NT = kAmxPKeys;
  Arena ar(AmxPerceiverScratch::bytes(a.dk, a.dv, a.nk, nq), 3);
  AmxPerceiverScratch t(ar, a.dk, a.dv, a.nk, nq);
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  amx_pack(a, nq, t);
  for (int64_t q0 = 0; q0 < nq; q0 += Q) {
    for (int64_t i = 0; i < Q; ++i) {
      t.m[i] = -__builtin_inff();
      t.l[i] = 0.0f;
    }
    std::memset(t.ot, 0, sizeof(float) * size_t(t.dvp * Q));
    for (int64_t k0 = 0; k0 < a.nk; k0 += NT) {
      const int64_t nk = min64(NT, a.nk - k0), nkt = round_up(nk, 32);
      for (int64_t i0 = 0; i0 < nkt; i0 += 32)
        for (int64_t j0 = 0; j0 < Q; j0 += 32)
          amx_block(t.dkp, t.ka + (k0 + i0) * t.dkp, t.dkp, t.qv + q0 + j0, t.nqp,
                    t.st + i0 * Q + j0, Q, false);
      if (amx_softmax(t, nk, k0 == 0) && k0 > 0)
        for (int64_t d = 0; d < a.dv; ++d)
          for (int64_t i0 = 0; i0 < Q; i0 += 16)
            V::store(t.ot + d * Q + i0, V::mul(V::load(t.ot + d * Q + i0), V::load(t.alpha + i0)));
      for (int64_t d0 = 0; d0 < t.dvp; d0 += 32)
        for (int64_t j0 = 0; j0 < Q; j0 += 32)
          amx_block(nkt, t.vb + d0 * t.nkp + k0, t.nkp, t.pv + j0, Q, t.ot + d0 * Q + j0, Q, true);
    }
    const int64_t n = min64(Q, nq - q0);
    for (int64_t d = 0; d < a.dv; ++d)
      std::memcpy(a.ot + d * a.ldo + q0, t.ot + d * Q, sizeof(float) * size_t(n));
    std::memcpy(a.pm + q0, t.m, sizeof(float) * size_t(n));
    std::memcpy(a.pl + q0, t.l, sizeof(float) * size_t(n));
  }
  _tile_release();
}

}  // namespace
}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
