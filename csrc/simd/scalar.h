// The SIMD vocabulary with one lane: the portable fallback and the reference for the others.
#pragma once
#include "convert.h"

namespace {

struct V {
  using f = float;
  static constexpr int W = 1;   // lanes
  static constexpr int MR = 4;  // micro-tile rows
  static constexpr int NR = 4;  // micro-tile column vectors
  static constexpr bool kF16Dot = false;
  // fp16 pair operands exist only on paths with a native fp16 dot (kF16Dot); never called here.
  static void store_pairs_f16(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static void store_pairs_f16_planar(uint32_t* p, f lo, f hi) { store_pairs(p, lo, hi); }
  static f dot_f16(f acc, f a, f b) { return dot_bf16(acc, a, b); }
  static constexpr bool kBf16Dot = false;
  static constexpr const char* kName = "scalar";

  static f zero() { return 0.0f; }
  static f set1(float x) { return x; }
  static f load(const float* p) { return *p; }
  static void store(float* p, f x) { *p = x; }
  static f bcast(const float* p) { return *p; }
  static f fma(f a, f b, f c) { return a * b + c; }
  static f add(f a, f b) { return a + b; }
  static f sub(f a, f b) { return a - b; }
  static f mul(f a, f b) { return a * b; }
  static f div(f a, f b) { return a / b; }
  static f abs(f a) { return bits_to_f32(f32_to_bits(a) & 0x7fffffffu); }
  static f max(f a, f b) { return a < b ? b : (b != b ? b : a); }  // NaN in b wins
  static f swap_pairs(f x) { return x; }  // unused with one lane
  static f exp2(f x) { return exp2_scalar(x); }
  static float hsum(f x) { return x; }
  static float hmax(f x) { return x; }
  static f load_bf16(const uint16_t* p) { return bf16_to_f32(*p); }
  static f load_f16(const uint16_t* p) { return f16_to_f32(*p); }
  static void store_bf16(uint16_t* p, f x) { *p = f32_to_bf16(x); }
  static void store_f16(uint16_t* p, f x) { *p = f32_to_f16(x); }
  static f round_bf16(f x) { return round_bf16_scalar(x); }
  static f round_f16(f x) { return round_f16_scalar(x); }
  static void store_pairs(uint32_t* p, f lo, f hi) {
    *p = uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16);
  }
  static f dot_bf16(f acc, f a, f b) {  // emulation; only native paths call it
    uint32_t ua = f32_to_bits(a), ub = f32_to_bits(b);
    acc += bits_to_f32(ua << 16) * bits_to_f32(ub << 16);
    return acc + bits_to_f32(ua & 0xffff0000u) * bits_to_f32(ub & 0xffff0000u);
  }
};

}  // namespace
