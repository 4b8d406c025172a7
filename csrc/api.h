// Torch-free interface between the kernels (csrc/kernels, compiled once per ISA) and their
// callers (the torch registration layer, the C++ test drivers). Plain structs, raw pointers.
#pragma once
#include <cstdint>

namespace edgetam_cpu {

// Element type of tensors in memory.
enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
// Precision of the attention matmuls. Accumulation and softmax are always fp32.
enum Compute : int { kComputeF32 = 0, kComputeBF16 = 1, kComputeF16 = 2 };

// Instruction-set paths, ordered within each architecture.
enum Isa : int {
  kScalar = 0,
  kAvx2 = 1,        // AVX2 + FMA + F16C
  kAvx512 = 2,      // AVX-512 F/BW/DQ/VL
  kAvx512Bf16 = 3,  // + AVX512_BF16 (vdpbf16ps)
  kAvx512Amx = 4,   // + AMX tiles (tdpbf16ps) for bf16 compute
  kNeon = 5,        // aarch64 AdvSIMD, fp32
  kNeonFp16 = 6,    // + FEAT_FP16 arithmetic
  kNeonBf16 = 7,    // + FEAT_BF16 (bfdot)
  kIsaCount = 8,
};

// A thread pool as a function: runs body(ctx, begin, end) over chunks of [0, n).
struct Parallel {
  void (*run)(void* self, int64_t n, void* ctx, void (*body)(void* ctx, int64_t b, int64_t e));
  void* self;
  int threads;
};

// softmax(rope(q) rope(k)^T * scale) v for (B, H, N, D) contiguous tensors.
// RoPE tables: for each grid column (col tables) / row (row tables) one record of 2 * D/2 floats:
// C[e] = cos(angle of pair e/2), then S[e] = -sin for even e, +sin for odd e, so that a rotated
// half-row is x * C + swap_pairs(x) * S. Column tables rotate dims [0, D/2), row tables [D/2, D).
struct RopeAttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int dtype;    // DType of q, k, v and out
  int compute;  // Compute
  int64_t B, H, Nq, Nk, D, Dv;
  int64_t q_w;                 // query grid columns (token n: col n % q_w, row n / q_w)
  int64_t k_w;                 // key grid columns
  int64_t k_nrope;             // keys [0, k_nrope) are frames; the rest are never rotated
  int64_t k_frame;             // frame length (k_nrope / k_repeat)
  int64_t k_nrot;              // rotated keys at the end of each frame (k_h * k_w)
  const float* q_col_tab;      // [q_w][2][D/2]
  const float* q_row_tab;      // [q_h][2][D/2]
  const float* k_col_tab;      // [k_w][2][D/2]
  const float* k_row_tab;      // [k_h][2][D/2]
  float scale;
  // Optional key validity, one byte per key (nonzero = may be attended), shared by heads and
  // queries: key_mask[b * key_mask_bstride + key] (bstride 0: one mask for the batch). Null:
  // every key. Masked keys get probability exactly 0 (their values must be finite); a batch
  // row with no valid key gives zeros. The kernels need scale > 0 with a mask (masked scores are
  // set to -inf before scaling); the dispatcher runs scale < 0 as -q with -scale and scale 0
  // (every score 0) as zero queries with scale 1.
  const uint8_t* key_mask;
  int64_t key_mask_bstride;
};

// EdgeTAM's 2D spatial perceiver, fp32, for one call over the batch (see reference.py).
// Activations keep a leading dimension rounded up to the SIMD width; weights are row-major
// (out, in) as torch stores them. Per layer, `w` holds n_per_layer pointers in
// reference.PERCEIVER_LAYER_PARAMS order and inner/hidden/inner_s/hidden_s their widths.
struct PerceiverArgs {
  const float* x;         // (B, C, H, W)
  const float* pos;       // (B or 1, C, H, W) or null; added to global keys and values
  int64_t pos_bstride;    // 0 when pos is shared by the batch
  const float* lat1;      // (L1, C) global latents or null
  const float* lat2;      // (L2, C) patch latents or null (L2 a square, one per window)
  int64_t L1, L2, B, C, H, W;
  int64_t depth, heads, n_per_layer;
  bool self_attn;
  float eps;
  int compute;            // Compute of the global latents' cross-attention products (fp32 or
                          // bf16); everything else is fp32. ISAs without AMX compute fp32.
  const float* const* w;  // depth * n_per_layer weight pointers
  const int64_t* inner;   // per layer: cross-attention inner dim
  const int64_t* hidden;  // per layer: feed-forward hidden dim
  const int64_t* inner_s; // per layer: self-attention inner dim
  const int64_t* hidden_s;
  const float* norm_w;
  const float* norm_b;
  float* out;             // (B, L1 + L2, C)
};

// One perceiver cross-attention block (reference.perceiver_attention), fp32, no residual:
// out = Wout softmax(q k^T / sqrt(inner / heads)) v per head, q = Wq LN(latents),
// [k; v] = Wkv LN(x) (k first), pos added to both k and v. Token-major as torch stores them.
struct PerceiverAttnArgs {
  const float* latents;   // (B, L, C)
  const float* x;         // (B, N, C)
  const float* pos;       // (B or 1, N, inner) or null
  int64_t pos_bstride;    // 0 when pos is shared by the batch
  const float* ln_lat_w;  // (C) LayerNorm of the latents
  const float* ln_lat_b;
  const float* ln_x_w;    // (C) LayerNorm of x
  const float* ln_x_b;
  const float* w_q;       // (inner, C)
  const float* w_kv;      // (2 * inner, C)
  const float* w_out;     // (C, inner)
  int64_t B, L, N, C, inner, heads;
  float eps;
  float* out;             // (B, L, C)
};

}  // namespace edgetam_cpu
