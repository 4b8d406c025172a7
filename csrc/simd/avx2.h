// The SIMD vocabulary on AVX2 + FMA + F16C (8 fp32 lanes). Include only from a translation unit
// compiled for those (see csrc/isa/).
#pragma once
#include <immintrin.h>
#include "convert.h"

namespace {

struct V {
  using f = __m256;
  static constexpr int W = 8;
  static constexpr int MR = 6;  // 6 x 2 accumulators + 2 B vectors + 1 broadcast: 15 of 16
  static constexpr int NR = 2;
  static constexpr bool kF16Dot = false;
  // fp16 pair operands exist only on paths with a native fp16 dot (kF16Dot); never called here.
  static void store_pairs_f16(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static void store_pairs_f16_planar(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static f dot_f16(f acc, f a, f b) { return dot_bf16(acc, a, b); }
  static constexpr bool kBf16Dot = false;

  static f zero() { return _mm256_setzero_ps(); }
  static f set1(float x) { return _mm256_set1_ps(x); }
  static f load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, f x) { _mm256_storeu_ps(p, x); }
  static f bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static f fma(f a, f b, f c) { return _mm256_fmadd_ps(a, b, c); }
  static f add(f a, f b) { return _mm256_add_ps(a, b); }
  static f sub(f a, f b) { return _mm256_sub_ps(a, b); }
  static f mul(f a, f b) { return _mm256_mul_ps(a, b); }
  static f div(f a, f b) { return _mm256_div_ps(a, b); }
  static f abs(f a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static f max(f a, f b) { return _mm256_max_ps(a, b); }  // NaN in b wins
  static f swap_pairs(f x) { return _mm256_permute_ps(x, 0xb1); }
  static f exp2(f x) {
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);  // operand order keeps NaN
    x = _mm256_min_ps(_mm256_set1_ps(128.0f), x);
    f n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f t = _mm256_sub_ps(x, n);
    f p = _mm256_set1_ps(1.5252734e-05f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.5403530e-04f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.3333558e-03f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(9.6181291e-03f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(5.5504109e-02f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.4022651e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(6.9314718e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
  }
  static float hsum(f x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(f x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static f load_bf16(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static f load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  static __m256i bf16_bits(f x) {
    __m256i b = _mm256_castps_si256(x);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    b = _mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
    return _mm256_srli_epi32(b, 16);
  }
  static void store_bf16(uint16_t* p, f x) {
    __m256i b = bf16_bits(x);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);
    _mm_storeu_si128((__m128i*)p, _mm256_castsi256_si128(packed));
  }
  static void store_f16(uint16_t* p, f x) {
    _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static f round_bf16(f x) { return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(x), 16)); }
  static f round_f16(f x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)); }
  static void store_pairs(uint32_t* p, f lo, f hi) {
    __m256i r = _mm256_or_si256(bf16_bits(lo), _mm256_slli_epi32(bf16_bits(hi), 16));
    _mm256_storeu_si256((__m256i*)p, r);
  }
  static f dot_bf16(f acc, f a, f b) {  // emulation; only native paths call it
    __m256i ua = _mm256_castps_si256(a), ub = _mm256_castps_si256(b);
    __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
    acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(ua, 16)),
                          _mm256_castsi256_ps(_mm256_slli_epi32(ub, 16)), acc);
    return _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(ua, hi)),
                           _mm256_castsi256_ps(_mm256_and_si256(ub, hi)), acc);
  }
};

}  // namespace
