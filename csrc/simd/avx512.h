// The SIMD vocabulary on AVX-512 (16 fp32 lanes). Include only from a translation unit compiled
// for AVX-512 (see csrc/isa/). EDGETAM_BF16DOT selects vdpbf16ps (AVX512_BF16) for bf16 dots.
#pragma once
#include <immintrin.h>
#include "convert.h"

namespace {

struct V {
  using f = __m512;
  static constexpr int W = 16;
  static constexpr int MR = 6;  // 6 x 4 accumulators + 4 B vectors: 28 of 32 registers
  static constexpr int NR = 4;
  static constexpr bool kF16Dot = false;
  // fp16 pair operands exist only on paths with a native fp16 dot (kF16Dot); never called here.
  static void store_pairs_f16(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static void store_pairs_f16_planar(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static f dot_f16(f acc, f a, f b) { return dot_bf16(acc, a, b); }
  static constexpr bool kBf16Dot = EDGETAM_BF16DOT;

  static f zero() { return _mm512_setzero_ps(); }
  static f set1(float x) { return _mm512_set1_ps(x); }
  static f load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, f x) { _mm512_storeu_ps(p, x); }
  static f bcast(const float* p) { return _mm512_set1_ps(*p); }
  static f fma(f a, f b, f c) { return _mm512_fmadd_ps(a, b, c); }
  static f add(f a, f b) { return _mm512_add_ps(a, b); }
  static f sub(f a, f b) { return _mm512_sub_ps(a, b); }
  static f mul(f a, f b) { return _mm512_mul_ps(a, b); }
  static f div(f a, f b) { return _mm512_div_ps(a, b); }
  static f abs(f a) { return _mm512_abs_ps(a); }
  static f max(f a, f b) { return _mm512_max_ps(a, b); }  // NaN in b wins
  static f swap_pairs(f x) { return _mm512_permute_ps(x, 0xb1); }
  // 2^x = 2^floor(x) p(x - floor(x)): vreduceps gives the fraction, vscalefps applies
  // 2^floor(x) itself (overflow to inf included); p is a degree-6 minimax fit of 2^t on [0, 1)
  // (relative error 7.7e-8 as evaluated; two instructions fewer than rounding to nearest and a
  // degree-7 polynomial). Below -125 the result is about 2^-125, not 0: still a normal number
  // (denormals would stall later FMAs), and negligible wherever it is summed with the
  // softmax's terms of 1 and more.
  static f exp2(f x) {
    x = _mm512_max_ps(_mm512_set1_ps(-125.0f), x);  // operand order keeps NaN
    f t = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    f p = _mm512_set1_ps(2.17022549e-04f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.24396884e-03f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(9.67884064e-03f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(5.54833412e-02f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(2.40229830e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(6.93147004e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, x);
  }
  static float hsum(f x) { return _mm512_reduce_add_ps(x); }
  static float hmax(f x) { return _mm512_reduce_max_ps(x); }
  static f load_bf16(const uint16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static f load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  }
  // bf16 bit patterns (round to nearest even) in the low half of each 32-bit lane
  static __m512i bf16_bits(f x) {
    __m512i b = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_srli_epi32(b, 16);
  }
  static void store_bf16(uint16_t* p, f x) {
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(bf16_bits(x)));
  }
  static void store_f16(uint16_t* p, f x) {
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static f round_bf16(f x) { return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(x), 16)); }
  static f round_f16(f x) { return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)); }
  // (lo, hi) -> 16 bf16 pairs, lo in the low half of each 32-bit word (the layout bf16 dots read)
  static void store_pairs(uint32_t* p, f lo, f hi) {
#if EDGETAM_BF16DOT  // one conversion of both (lo in elements 0-15), then interleave
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    const __m512i r = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
#else
    const __m512i r = _mm512_or_si512(bf16_bits(lo), _mm512_slli_epi32(bf16_bits(hi), 16));
#endif
    _mm512_storeu_si512((void*)p, r);
  }
  static f dot_bf16(f acc, f a, f b) {
#if EDGETAM_BF16DOT
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(a), (__m512bh)_mm512_castps_si512(b));
#else
    __m512i ua = _mm512_castps_si512(a), ub = _mm512_castps_si512(b);
    __m512i hi = _mm512_set1_epi32(int(0xffff0000u));
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(ua, 16)),
                          _mm512_castsi512_ps(_mm512_slli_epi32(ub, 16)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(ua, hi)),
                           _mm512_castsi512_ps(_mm512_and_si512(ub, hi)), acc);
#endif
  }
};

}  // namespace
