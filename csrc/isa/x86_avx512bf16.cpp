// AVX-512 + AVX512_BF16: the same kernels as x86_avx512.cpp, with bf16 dots on vdpbf16ps.
#define EDGETAM_BF16DOT 1
#define EDGETAM_ISA avx512bf16
#include "x86_avx512.cpp"
