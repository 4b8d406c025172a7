// aarch64 with FEAT_FP16 and FEAT_FHM (ARMv8.2+; mandatory from 8.4): fp16 compute as fp16
// products accumulated in fp32 (FMLAL/FMLAL2) on fp16 operands. Flags for this file only.
#define EDGETAM_F16DOT 1
#define EDGETAM_ISA neonfp16
#include "arm_neon.cpp"
