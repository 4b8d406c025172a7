// aarch64 with FEAT_BF16 (ARMv8.6): the kernels of arm_neon.cpp with bf16 dots on BFDOT.
// Flags for this file only; chosen at run time when getauxval reports HWCAP2_BF16.
#define EDGETAM_BF16DOT 1
#define EDGETAM_ISA neonbf16
#include "arm_neon.cpp"
