// aarch64 AdvSIMD path (baseline on every aarch64 CPU): fp32, bf16 / fp16 emulated in fp32.
#if defined(__aarch64__)
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <arm_neon.h>
#include "../api.h"
#ifndef EDGETAM_ISA
#define EDGETAM_ISA neon
#endif
#ifndef EDGETAM_BF16DOT
#define EDGETAM_BF16DOT 0
#endif
#ifndef EDGETAM_F16DOT
#define EDGETAM_F16DOT 0
#endif
#if EDGETAM_BF16DOT
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("arch=armv8.2-a+fp16+fp16fml+bf16"))), apply_to = function)
#else
#pragma GCC target("arch=armv8.2-a+fp16+fp16fml+bf16")
#endif
#elif EDGETAM_F16DOT
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("arch=armv8.2-a+fp16+fp16fml"))), apply_to = function)
#else
#pragma GCC target("arch=armv8.2-a+fp16+fp16fml")
#endif
#endif
#include "../simd/neon.h"
#include "../kernels/rope_attention.h"
#include "../kernels/spatial_perceiver.h"
#include "../kernels/perceiver_attention.h"
#if (EDGETAM_BF16DOT || EDGETAM_F16DOT) && defined(__clang__)
#pragma clang attribute pop
#endif
#endif
