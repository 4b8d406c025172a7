// AVX2 + FMA + F16C path. ISA flags for this file only; selected at run time by cpuid.
#if defined(__x86_64__) || defined(_M_X64)
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include "../api.h"
#define EDGETAM_ISA avx2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#include "../simd/avx2.h"
#include "../kernels/rope_attention.h"
#include "../kernels/spatial_perceiver.h"
#include "../kernels/perceiver_attention.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
