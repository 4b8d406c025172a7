// aarch64 with FEAT_BF16 (ARMv8.6) and FEAT_FHM: the kernels of arm_neon.cpp with bf16 dots on
// BFDOT and fp16 dots on FMLAL/FMLAL2. Flags for this file only; chosen at run time when
// getauxval reports HWCAP2_BF16, HWCAP_ASIMDHP and HWCAP_ASIMDFHM.
#define EDGETAM_BF16DOT 1
#define EDGETAM_F16DOT 1
#define EDGETAM_ISA neonbf16
#include "arm_neon.cpp"
