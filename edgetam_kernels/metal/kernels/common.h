// Helpers shared by the EdgeTAM Metal kernels. Inlined into the source handed to
// torch.mps.compile_shader by edgetam_kernels/metal/_source.py (which resolves #include "...").
#ifndef EDGETAM_METAL_COMMON_H
#define EDGETAM_METAL_COMMON_H

#include <metal_stdlib>
using namespace metal;

#define SIMD_WIDTH 32

// bfloat needs MSL 3.1 (macOS 14). The host retries without it (EDGETAM_METAL_NO_BFLOAT) if a
// compiler still rejects it, so fp32 and fp16 never depend on bf16 support.
#if __METAL_VERSION__ >= 310 && !defined(EDGETAM_METAL_NO_BFLOAT)
#define EDGETAM_HAS_BFLOAT 1
#else
#define EDGETAM_HAS_BFLOAT 0
#endif

// "Minus infinity" for masked scores and empty running maxima. Finite on purpose: if the library
// is compiled with fast math (which assumes no infinities), exp(NEG_BIG - m) is still 0.
#define NEG_BIG (-1.0e30f)

// Compute-dtype emulation: values are rounded through a lower precision, then computed in fp32.
#define ROUND_NONE 0
#define ROUND_HALF 1
#define ROUND_BF16 2

// fp32 -> bf16 -> fp32 with round-to-nearest-even, on the bits (needs no bfloat type).
inline float round_bf16(float x) {
  uint b = as_type<uint>(x);
  if ((b & 0x7f800000u) == 0x7f800000u) {
    return x;  // inf and NaN pass through
  }
  b += 0x7fffu + ((b >> 16) & 1u);
  return as_type<float>(b & 0xffff0000u);
}

inline float round_to(float x, long mode) {
  if (mode == ROUND_HALF) {
    return float(half(x));
  }
  if (mode == ROUND_BF16) {
    return round_bf16(x);
  }
  return x;
}

// erf is not part of the Metal standard library. Numerical Recipes' erfc (Chebyshev fit,
// fractional error < 1.2e-7) is ample for GELU in fp32.
inline float erf_approx(float x) {
  float z = fabs(x);
  float t = 1.0f / (1.0f + 0.5f * z);
  float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
               t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
               t * (-0.82215223f + t * 0.17087277f))))))));
  float r = t * precise::exp(-z * z + poly);
  return x >= 0.0f ? 1.0f - r : r - 1.0f;
}

// Exact (erf) GELU, as torch.nn.GELU() computes it.
inline float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f));
}

#endif  // EDGETAM_METAL_COMMON_H
