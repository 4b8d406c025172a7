// AVX-512 + AVX512_BF16 + AMX (tile, bf16): fp32 kernels as x86_avx512bf16.cpp; bf16 compute
// of the RoPE attention and of the perceiver's global attention on AMX tiles. ISA flags for
// this file only; used when cpuid reports AMX and Linux grants the tile state.
#if defined(__x86_64__) && defined(__linux__)
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include "../api.h"
#define EDGETAM_BF16DOT 1
#define EDGETAM_ISA avx512amx
#define EDGETAM_ATTN_ENTRY rope_attention_generic
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c")
#endif
#include "../simd/avx512.h"
#include "../kernels/rope_attention_amx.h"
#define EDGETAM_PERCEIVER_AMX 1
#include "../kernels/spatial_perceiver_amx.h"
#include "../kernels/spatial_perceiver.h"
#include "../kernels/perceiver_attention.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
