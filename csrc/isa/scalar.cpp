// Portable path: one-lane vocabulary, no ISA flags. Always built; the fallback everywhere.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include "../api.h"
#define EDGETAM_ISA scalar
#include "../simd/scalar.h"
#include "../kernels/attention_impl.h"
#include "../kernels/perceiver_impl.h"
#include "../kernels/perceiver_block.h"
