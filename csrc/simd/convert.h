// Scalar fp32 <-> bf16 / fp16 conversions by bit manipulation (round to nearest even), used for
// tails and by the scalar path. Internal linkage: each ISA translation unit gets its own copy,
// so no function compiled with one ISA's flags can be picked by the linker for another.
#pragma once
#include <cstdint>
#include <cstring>

namespace {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_to_f32(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // a float in [0, 2^-14): the half subnormal is round(value * 2^24)
    float v = bits_to_f32(a) * 16777216.0f;
    // round to nearest even; v < 1024 is exact in float, so the usual trick works
    float r = (v + 8388608.0f) - 8388608.0f;
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xfffu + mant_odd;  // round to nearest even at bit 13
  return uint16_t(sign | uint16_t(((a >> 13) - (112u << 10)) & 0x7fffu));
}

inline float round_bf16_scalar(float f) { return bf16_to_f32(f32_to_bf16(f)); }
inline float round_f16_scalar(float f) { return f16_to_f32(f32_to_f16(f)); }

// 2^x for x <= 0 style arguments: the same range reduction and polynomial as the vector paths.
inline float exp2_scalar(float x) {
  if (x != x) return x;
  x = x < -127.0f ? -127.0f : x;
  x = x > 128.0f ? 128.0f : x;
  float n = (x + 12582912.0f) - 12582912.0f;  // round to nearest (|x| < 2^22)
  float f = x - n;
  float p = 1.5252734e-05f;
  p = p * f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  p = p * f + 1.0f;
  int e = int(n) + 127;
  return p * bits_to_f32(uint32_t(e) << 23);
}

}  // namespace
