// Run-time ISA selection and the torch-free op entry points (used by register.cpp and by the
// C++ test drivers in tests/backends/csrc).
#pragma once
#include <cstdint>

#include "api.h"

namespace edgetam_cpu {

const char* isa_name(int isa);
bool isa_supported(int isa);  // built into this library and supported by this CPU
int best_isa();
int current_isa();
// Force a path (any supported Isa), or -1 for the best one. Returns false if unsupported.
bool set_isa(int isa);

// Fills the RoPE tables of `a` from the grids and theta, then runs the current ISA's kernel.
void rope_attention(RopeAttnArgs a, int64_t q_h, int64_t k_h, double theta, const Parallel& par);

void spatial_perceiver(const PerceiverArgs& a, const Parallel& par);

void perceiver_attention(const PerceiverAttnArgs& a, const Parallel& par);

}  // namespace edgetam_cpu
