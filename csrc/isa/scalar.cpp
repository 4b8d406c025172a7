// Portable path: one-lane vocabulary, no ISA flags. Always built; the fallback everywhere.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include "../api.h"
#define EDGETAM_ISA scalar
#include "../simd/scalar.h"
#include "../kernels/rope_attention.h"
#include "../kernels/spatial_perceiver.h"
#include "../kernels/perceiver_attention.h"
