// RoPE flash attention with bf16 compute on Intel AMX (TDPBF16PS: 16x16 fp32 tiles, fp32
// accumulation). Included only by csrc/isa/x86_amx.cpp, after the SIMD vocabulary `V`
// (AVX-512) and the generic kernels (used for fp32 / fp16 compute).
//
// Per (batch, head, block of Mb queries): Q rotated once into bf16 rows (A tiles); per tile of
// NT keys: keys rotated as loaded and written as VNNI pairs of K^T (B tiles), S = Q K^T in
// 32 x 32 register blocks of four tiles, online softmax along rows (fp32), P rounded to bf16
// rows (A tiles), V interleaved into VNNI row pairs (B tiles), O += P V accumulated in fp32.
#pragma once
#include <sys/syscall.h>
#include <unistd.h>

#include "attention_impl.h"

namespace edgetam_cpu {
namespace EDGETAM_ISA {
namespace {

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

constexpr int64_t kAmxKeys = 128;  // keys per tile (multiple of 32)

struct AmxPlan {
  int64_t Mb, Mbp, Dp, Dvp;
};

struct AmxScratch {
  uint16_t* qb;   // [Mbp x Dp] bf16 rotated queries
  uint32_t* kpt;  // [Dp/2 x kAmxKeys] VNNI pairs of rotated K^T
  float* s;       // [Mbp x kAmxKeys] scores
  uint16_t* pb;   // [Mbp x kAmxKeys] bf16 probabilities
  uint32_t* vp;   // [kAmxKeys/2 x Dvp] VNNI pairs of V
  float *o, *m, *l, *row;
  static int64_t bytes(const RopeAttnArgs& a, const AmxPlan& p) {
    return arena_bytes<uint16_t>(p.Mbp * p.Dp) + arena_bytes<uint32_t>(p.Dp / 2 * kAmxKeys) +
           arena_bytes<float>(p.Mbp * kAmxKeys) + arena_bytes<uint16_t>(p.Mbp * kAmxKeys) +
           arena_bytes<uint32_t>(kAmxKeys / 2 * p.Dvp) + arena_bytes<float>(p.Mbp * p.Dvp) +
           2 * arena_bytes<float>(p.Mbp) + arena_bytes<float>(2 * max64(p.Dp, p.Dvp));
  }
  AmxScratch(Arena& ar, const AmxPlan& p) {
    qb = ar.take<uint16_t>(p.Mbp * p.Dp);
    kpt = ar.take<uint32_t>(p.Dp / 2 * kAmxKeys);
    s = ar.take<float>(p.Mbp * kAmxKeys);
    pb = ar.take<uint16_t>(p.Mbp * kAmxKeys);
    vp = ar.take<uint32_t>(kAmxKeys / 2 * p.Dvp);
    o = ar.take<float>(p.Mbp * p.Dvp);
    m = ar.take<float>(p.Mbp);
    l = ar.take<float>(p.Mbp);
    row = ar.take<float>(2 * max64(p.Dp, p.Dvp));
  }
};

// C[32 x 32] (fp32, ldc floats) (+)= A[32 x K] (bf16 rows, lda elements) * B (VNNI pairs,
// K/2 rows of ldb 32-bit words). Tiles 0-3: C, 4-5: A, 6-7: B.
inline void amx_block(int64_t K, const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
                      float* C, int64_t ldc, bool acc) {
  if (acc) {
    _tile_loadd(0, C, ldc * 4);
    _tile_loadd(1, C + 16, ldc * 4);
    _tile_loadd(2, C + 16 * ldc, ldc * 4);
    _tile_loadd(3, C + 16 * ldc + 16, ldc * 4);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t k = 0; k < K; k += 32) {
    _tile_loadd(4, A + k, lda * 2);
    _tile_loadd(5, A + 16 * lda + k, lda * 2);
    _tile_loadd(6, B + (k / 2) * ldb, ldb * 4);
    _tile_loadd(7, B + (k / 2) * ldb + 16, ldb * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, ldc * 4);
  _tile_stored(1, C + 16, ldc * 4);
  _tile_stored(2, C + 16 * ldc, ldc * 4);
  _tile_stored(3, C + 16 * ldc + 16, ldc * 4);
}

void amx_block_attention(const RopeAttnArgs& a, const AmxPlan& p, int64_t bh, int64_t q0,
                         AmxScratch& s) {
  const int64_t D = a.D, Dv = a.Dv, Dp = p.Dp, Dvp = p.Dvp, NT = kAmxKeys;
  const int64_t nq = min64(p.Mb, a.Nq - q0);
  const int64_t Mbp = round_up(nq, 32);
  const int in_round = dtype_as_compute(a.dtype);
  std::memset(s.qb, 0, sizeof(uint16_t) * size_t(Mbp * Dp));
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t n = q0 + i;
    load_row(a.q, a.dtype, (bh * a.Nq + n) * D, D, s.row);
    rotate_row(s.row, D, a.q_col_tab, a.q_row_tab, n % a.q_w, n / a.q_w);
    store_row(s.row, 1.0f, kBF16, i * Dp, D, s.qb);  // (rounding to the input dtype first
    // is a no-op for bf16 / fp32 inputs and negligible next to bf16 for fp16 inputs)
  }
  (void)in_round;
  for (int64_t i = 0; i < Mbp; ++i) {
    s.m[i] = -__builtin_inff();
    s.l[i] = 0.0f;
  }
  std::memset(s.o, 0, sizeof(float) * size_t(Mbp * Dvp));
  const __m512 cmul = _mm512_set1_ps(a.scale * kLog2e);
  const uint8_t* km = key_mask_row(a, bh);
  const __m512i stride = _mm512_mullo_epi32(_mm512_set1_epi32(int(NT)),
                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                              11, 12, 13, 14, 15));

  for (int64_t k0 = 0; k0 < a.Nk; k0 += NT) {
    const int64_t nk = min64(NT, a.Nk - k0);
    const int64_t nkp = round_up(nk, 32);
    if (km && !any_valid(km + k0, nk)) continue;  // no valid key in the tile
    if (nk < NT) std::memset(s.kpt, 0, sizeof(uint32_t) * size_t(Dp / 2 * NT));
    // Keys: rotate, round to bf16, scatter the pair words into K^T VNNI layout.
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t key = k0 + j;
      std::memset(s.row + D, 0, sizeof(float) * size_t(Dp - D));
      load_row(a.k, a.dtype, (bh * a.Nk + key) * D, D, s.row);
      if (key < a.k_nrope) {
        const int64_t t = key % a.k_frame - (a.k_frame - a.k_nrot);
        if (t >= 0) rotate_row(s.row, D, a.k_col_tab, a.k_row_tab, t % a.k_w, t / a.k_w);
      }
      uint16_t* kb = reinterpret_cast<uint16_t*>(s.row + Dp);  // bf16 copy of the row
      store_row(s.row, 1.0f, kBF16, 0, Dp, kb);
      const uint32_t* words = reinterpret_cast<const uint32_t*>(kb);
      for (int64_t kk = 0; kk < Dp / 2; kk += 16)
        _mm512_i32scatter_epi32(s.kpt + kk * NT + j, stride,
                                _mm512_loadu_si512(words + kk), 4);
    }
    // S = Q K^T
    for (int64_t i0 = 0; i0 < Mbp; i0 += 32)
      for (int64_t j0 = 0; j0 < nkp; j0 += 32)
        amx_block(Dp, s.qb + i0 * Dp, Dp, s.kpt + j0, NT, s.s + i0 * NT + j0, NT, false);
    // Online softmax along rows; P as bf16 rows; rescale O rows whose max moved.
    for (int64_t i = 0; i < Mbp; ++i) {
      float* sr = s.s + i * NT;
      for (int64_t j = nk; j < nkp; ++j) sr[j] = -__builtin_inff();
      if (km)  // scale > 0 with a mask (api.h): -inf stays -inf once scaled
        for (int64_t j = 0; j < nk; ++j)
          if (!km[k0 + j]) sr[j] = -__builtin_inff();
      __m512 mx = _mm512_set1_ps(-__builtin_inff());
      for (int64_t j = 0; j < nkp; j += 16)
        mx = _mm512_max_ps(mx, _mm512_mul_ps(_mm512_loadu_ps(sr + j), cmul));
      const float mo = s.m[i];
      float mn = _mm512_reduce_max_ps(mx);
      mn = mn > mo ? mn : mo;
      const __m512 mv = _mm512_set1_ps(mn);
      __m512 sum = _mm512_setzero_ps();
      uint16_t* pr = s.pb + i * NT;
      for (int64_t j = 0; j < nkp; j += 16) {
        __m512 pj = V::exp2(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(sr + j), cmul), mv));
        sum = _mm512_add_ps(sum, pj);
        V::store_bf16(pr + j, pj);
      }
      if (km)  // exp2 bottoms out at 2^-125: masked keys' probabilities to exactly 0
        for (int64_t j = 0; j < nk; ++j)
          if (!km[k0 + j]) pr[j] = 0;
      const float alpha = exp2_scalar(mo - mn);
      s.l[i] = s.l[i] * alpha + _mm512_reduce_add_ps(sum);
      s.m[i] = mn;
      if (alpha != 1.0f) scale_row(s.o + i * Dvp, Dvp, alpha);
    }
    // V as VNNI row pairs (zero rows past the tile's keys).
    for (int64_t jp = 0; jp < nkp / 2; ++jp) {
      float* r0 = s.row;
      float* r1 = s.row + Dvp;
      std::memset(s.row, 0, sizeof(float) * size_t(2 * Dvp));
      if (2 * jp < nk) load_row(a.v, a.dtype, (bh * a.Nk + k0 + 2 * jp) * Dv, Dv, r0);
      if (2 * jp + 1 < nk) load_row(a.v, a.dtype, (bh * a.Nk + k0 + 2 * jp + 1) * Dv, Dv, r1);
      for (int64_t c = 0; c < Dvp; c += 16)
        V::store_pairs(s.vp + jp * Dvp + c, V::load(r0 + c), V::load(r1 + c));
    }
    // O += P V
    for (int64_t i0 = 0; i0 < Mbp; i0 += 32)
      for (int64_t c0 = 0; c0 < Dvp; c0 += 32)
        amx_block(nkp, s.pb + i0 * NT, NT, s.vp + c0, Dvp, s.o + i0 * Dvp + c0, Dvp, true);
  }
  for (int64_t i = 0; i < nq; ++i)
    store_row(s.o + i * Dvp, s.l[i] > 0.0f ? 1.0f / s.l[i] : 0.0f,  // 0: every key masked
              a.dtype, (bh * a.Nq + q0 + i) * Dv, Dv, a.out);
}

struct AmxJob {
  const RopeAttnArgs* a;
  AmxPlan p;
  int64_t nqb;
};

void amx_body(void* ctx, int64_t b, int64_t e) {
  const AmxJob& job = *static_cast<const AmxJob*>(ctx);
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  {
    Arena ar(AmxScratch::bytes(*job.a, job.p), 0);
    AmxScratch s(ar, job.p);
    for (int64_t it = b; it < e; ++it)
      amx_block_attention(*job.a, job.p, it / job.nqb, (it % job.nqb) * job.p.Mb, s);
  }
  _tile_release();
}

}  // namespace

void rope_attention(const RopeAttnArgs& a, const Parallel& par) {
  if (a.compute != kComputeBF16) {
    rope_attention_generic(a, par);
    return;
  }
  AmxJob job;
  job.a = &a;
  // Large query blocks: packing a key tile (rotation, VNNI scatter) is paid once per block.
  int64_t Mb = 512;
  const int64_t bh = a.B * a.H;
  while (Mb > 32 && bh * ceil_div(a.Nq, Mb) < 2 * int64_t(par.threads)) Mb /= 2;
  job.p.Mb = Mb;
  job.p.Mbp = round_up(Mb, 32);
  job.p.Dp = round_up(a.D, 32);
  job.p.Dvp = round_up(a.Dv, 32);
  job.nqb = ceil_div(a.Nq, Mb);
  par.run(par.self, bh * job.nqb, &job, &amx_body);
}

// Linux grants AMX tile data to a process on request (arch_prctl ARCH_REQ_XCOMP_PERM).
bool amx_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

}  // namespace EDGETAM_ISA
}  // namespace edgetam_cpu
