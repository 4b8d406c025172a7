// AVX-512 F/BW/DQ/VL path. ISA flags for this file only (the pragma), so the rest of the library
// runs on any x86-64; dispatch.cpp calls in here only after cpuid said yes.
#if defined(__x86_64__) || defined(_M_X64)
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include "../api.h"
#ifndef EDGETAM_BF16DOT
#define EDGETAM_BF16DOT 0
#define EDGETAM_ISA avx512
#endif
#if defined(__clang__)
#if EDGETAM_BF16DOT
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c"))), apply_to = function)
#else
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), apply_to = function)
#endif
#else
#if EDGETAM_BF16DOT
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#endif
#endif
#include "../simd/avx512.h"
#include "../kernels/rope_attention.h"
#include "../kernels/spatial_perceiver.h"
#include "../kernels/perceiver_attention.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
