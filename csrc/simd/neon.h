// The SIMD vocabulary on aarch64 AdvSIMD (4 fp32 lanes). EDGETAM_BF16DOT selects BFDOT
// (FEAT_BF16, ARMv8.6) for bf16 dots; the translation unit must then enable +bf16.
#pragma once
#include <arm_neon.h>
#include "convert.h"

namespace {

struct V {
  using f = float32x4_t;
  static constexpr int W = 4;
  static constexpr int MR = 6;  // 6 x 4 accumulators + 4 B vectors + 1 broadcast: 29 of 32
  static constexpr int NR = 4;
  static constexpr bool kBf16Dot = EDGETAM_BF16DOT;
  static constexpr bool kF16Dot = EDGETAM_F16DOT;

  static f zero() { return vdupq_n_f32(0.0f); }
  static f set1(float x) { return vdupq_n_f32(x); }
  static f load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, f x) { vst1q_f32(p, x); }
  static f bcast(const float* p) { return vld1q_dup_f32(p); }
  static f fma(f a, f b, f c) { return vfmaq_f32(c, a, b); }
  static f add(f a, f b) { return vaddq_f32(a, b); }
  static f sub(f a, f b) { return vsubq_f32(a, b); }
  static f mul(f a, f b) { return vmulq_f32(a, b); }
  static f div(f a, f b) { return vdivq_f32(a, b); }
  static f abs(f a) { return vabsq_f32(a); }
  static f max(f a, f b) { return vmaxq_f32(a, b); }  // FMAX: NaN in either wins
  static f swap_pairs(f x) { return vrev64q_f32(x); }
  static f exp2(f x) {
    x = vmaxq_f32(x, vdupq_n_f32(-127.0f));
    x = vminq_f32(x, vdupq_n_f32(128.0f));
    f n = vrndnq_f32(x);
    f t = vsubq_f32(x, n);
    f p = vdupq_n_f32(1.5252734e-05f);
    p = vfmaq_f32(vdupq_n_f32(1.5403530e-04f), p, t);
    p = vfmaq_f32(vdupq_n_f32(1.3333558e-03f), p, t);
    p = vfmaq_f32(vdupq_n_f32(9.6181291e-03f), p, t);
    p = vfmaq_f32(vdupq_n_f32(5.5504109e-02f), p, t);
    p = vfmaq_f32(vdupq_n_f32(2.4022651e-01f), p, t);
    p = vfmaq_f32(vdupq_n_f32(6.9314718e-01f), p, t);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, t);
    int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vmulq_f32(p, vreinterpretq_f32_s32(vshlq_n_s32(e, 23)));
  }
  static float hsum(f x) { return vaddvq_f32(x); }
  static float hmax(f x) { return vmaxvq_f32(x); }
  static f load_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
  static f load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static uint32x4_t bf16_bits(f x) {
    uint32x4_t b = vreinterpretq_u32_f32(x);
    uint32x4_t odd = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
    b = vaddq_u32(b, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
    return vshrq_n_u32(b, 16);
  }
  static void store_bf16(uint16_t* p, f x) { vst1_u16(p, vmovn_u32(bf16_bits(x))); }
  static void store_f16(uint16_t* p, f x) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(x))); }
  static f round_bf16(f x) { return vreinterpretq_f32_u32(vshlq_n_u32(bf16_bits(x), 16)); }
  static f round_f16(f x) { return vcvt_f32_f16(vcvt_f16_f32(x)); }
  static void store_pairs(uint32_t* p, f lo, f hi) {
    vst1q_u32(p, vorrq_u32(bf16_bits(lo), vshlq_n_u32(bf16_bits(hi), 16)));
  }
  // fp16 pairs, interleaved (lo, hi) per word: the broadcast A operand.
  static void store_pairs_f16(uint32_t* p, f lo, f hi) {
    const float16x4_t l = vcvt_f16_f32(lo), h = vcvt_f16_f32(hi);
    vst1q_u16(reinterpret_cast<uint16_t*>(p),
              vreinterpretq_u16_f16(vcombine_f16(vzip1_f16(l, h), vzip2_f16(l, h))));
  }
  // fp16 pairs, planar per group of 4 columns (4 lo halves, then 4 hi): the B operand of fmlal.
  static void store_pairs_f16_planar(uint32_t* p, f lo, f hi) {
    vst1q_u16(reinterpret_cast<uint16_t*>(p),
              vreinterpretq_u16_f16(vcombine_f16(vcvt_f16_f32(lo), vcvt_f16_f32(hi))));
  }
  // acc[c] += a.lo * b.lo[c] + a.hi * b.hi[c]: fp16 products accumulated in fp32 (FEAT_FHM).
  static f dot_f16(f acc, f a, f b) {
#if EDGETAM_F16DOT
    const float16x8_t bh = vreinterpretq_f16_f32(b);
    const float16x4_t ah = vget_low_f16(vreinterpretq_f16_f32(a));
    acc = vfmlalq_lane_low_f16(acc, bh, ah, 0);
    return vfmlalq_lane_high_f16(acc, bh, ah, 1);
#else
    return dot_bf16(acc, a, b);  // never called without kF16Dot
#endif
  }
  static f dot_bf16(f acc, f a, f b) {
#if EDGETAM_BF16DOT
    return vbfdotq_f32(acc, vreinterpretq_bf16_f32(a), vreinterpretq_bf16_f32(b));
#else
    uint32x4_t ua = vreinterpretq_u32_f32(a), ub = vreinterpretq_u32_f32(b);
    uint32x4_t hi = vdupq_n_u32(0xffff0000u);
    acc = vfmaq_f32(acc, vreinterpretq_f32_u32(vshlq_n_u32(ua, 16)), vreinterpretq_f32_u32(vshlq_n_u32(ub, 16)));
    return vfmaq_f32(acc, vreinterpretq_f32_u32(vandq_u32(ua, hi)), vreinterpretq_f32_u32(vandq_u32(ub, hi)));
#endif
  }
};

}  // namespace
