// Building blocks shared by the kernels, written once against the SIMD vocabulary `V` of the
// including translation unit: aligned scratch, row loads with dtype conversion, RoPE rotation,
// and the register-blocked matmul micro-kernel. Everything has internal linkage.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../api.h"

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Online softmax (the attentions): the running max is raised only when a score exceeds it by
// more than this many log2 units, and then to that score minus it. The result is exact all
// the same (the max only keeps exp from overflowing; probabilities stay <= 2^kLazyMax), and the
// max soon stops moving, so the running output is rarely rescaled.
constexpr float kLazyMax = 8.0f;
// Both attentions: after the first tile, probabilities are computed against the running max
// as it stands, in one pass that also tracks the column max; only when some probability of a
// column group exceeds 2^kLazyTrig is that group recomputed with the max raised (to its maximum
// minus kLazyMax). So a new column maximum moves the max only if it beats the old one by
// 2^(kLazyTrig - kLazyMax): the max rarely moves, O^T is rarely rescaled, and the scores are
// read once. Sums stay below Nk * 2^kLazyTrig.
constexpr float kLazyTrig = 16.0f;

// Per-thread scratch blocks, kept between calls: a fresh malloc of a few MB is an mmap whose
// pages fault in on first touch, every call. Slots let nested users on one thread coexist.
struct ScratchSlot {
  char* p = nullptr;
  int64_t cap = 0;
  ~ScratchSlot() { std::free(p); }
};
inline char* thread_scratch(int slot, int64_t bytes) {
  static thread_local ScratchSlot slots[4];
  ScratchSlot& s = slots[slot];
  if (bytes > s.cap) {
    std::free(s.p);
    s.cap = round_up(bytes, 1 << 16);
    s.p = static_cast<char*>(std::aligned_alloc(64, size_t(s.cap)));
  }
  return s.p;
}

// Scratch carved into 64-byte aligned buffers. No STL here: ISA translation units must not
// instantiate templates that other translation units share (see docs/cpu.md).
struct Arena {
  char* base = nullptr;
  int64_t used = 0, cap = 0;
  Arena(int64_t bytes, int slot) : base(thread_scratch(slot, bytes > 0 ? bytes : 64)), cap(bytes) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  template <class T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(base + used);
    used += round_up(int64_t(sizeof(T)) * n, 64);
    return p;
  }
};
template <class T>
inline int64_t arena_bytes(int64_t n) { return round_up(int64_t(sizeof(T)) * n, 64); }

// Load n elements of `dtype` at element offset `off` of `src` into fp32 `dst`.
inline void load_row(const void* src, int dtype, int64_t off, int64_t n, float* dst) {
  constexpr int W = V::W;
  int64_t i = 0;
  if (dtype == edgetam_cpu::kF32) {
    std::memcpy(dst, static_cast<const float*>(src) + off, size_t(n) * 4);
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src) + off;
  if (dtype == edgetam_cpu::kBF16) {
    for (; i + W <= n; i += W) V::store(dst + i, V::load_bf16(s + i));
    for (; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  } else {
    for (; i + W <= n; i += W) V::store(dst + i, V::load_f16(s + i));
    for (; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  }
}

// Store n fp32 values of `src` times `mul` as `dtype` at element offset `off` of `dst`.
inline void store_row(const float* src, float mul, int dtype, int64_t off, int64_t n, void* dst) {
  constexpr int W = V::W;
  int64_t i = 0;
  const typename V::f m = V::set1(mul);
  if (dtype == edgetam_cpu::kF32) {
    float* d = static_cast<float*>(dst) + off;
    for (; i + W <= n; i += W) V::store(d + i, V::mul(V::load(src + i), m));
    for (; i < n; ++i) d[i] = src[i] * mul;
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst) + off;
  if (dtype == edgetam_cpu::kBF16) {
    for (; i + W <= n; i += W) V::store_bf16(d + i, V::mul(V::load(src + i), m));
    for (; i < n; ++i) d[i] = f32_to_bf16(src[i] * mul);
  } else {
    for (; i + W <= n; i += W) V::store_f16(d + i, V::mul(V::load(src + i), m));
    for (; i < n; ++i) d[i] = f32_to_f16(src[i] * mul);
  }
}

// Round n values in place to the precision of `compute` (storage stays fp32): how the paths
// without a native reduced-precision dot reproduce reduced-precision inputs exactly.
inline void round_row(float* x, int64_t n, int compute) {
  constexpr int W = V::W;
  int64_t i = 0;
  if (compute == edgetam_cpu::kComputeBF16) {
    for (; i + W <= n; i += W) V::store(x + i, V::round_bf16(V::load(x + i)));
    for (; i < n; ++i) x[i] = round_bf16_scalar(x[i]);
  } else if (compute == edgetam_cpu::kComputeF16) {
    for (; i + W <= n; i += W) V::store(x + i, V::round_f16(V::load(x + i)));
    for (; i < n; ++i) x[i] = round_f16_scalar(x[i]);
  }
}

// Rotate interleaved pairs of x[0, n) (n even) by a table record: x*C + swap_pairs(x)*S.
inline void rotate_half(float* x, const float* tab, int64_t n) {
  constexpr int W = V::W;
  const float* c = tab;
  const float* s = tab + n;
  int64_t e = 0;
  if constexpr (W >= 2) {
    for (; e + W <= n; e += W) {
      typename V::f xv = V::load(x + e);
      V::store(x + e, V::fma(V::swap_pairs(xv), V::load(s + e), V::mul(xv, V::load(c + e))));
    }
  }
  for (; e < n; e += 2) {
    float x0 = x[e], x1 = x[e + 1];
    x[e] = x0 * c[e] + x1 * s[e];
    x[e + 1] = x1 * c[e + 1] + x0 * s[e + 1];
  }
}

inline void scale_row(float* x, int64_t n, float mul) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(x + i, V::mul(V::load(x + i), V::set1(mul)));
  for (; i < n; ++i) x[i] *= mul;
}

// Lane-wise max over n vectors at stride ld (the softmax's column max), four independent chains
// so the max latency does not serialize the loop.
inline typename V::f col_max(const float* x, int64_t ld, int64_t n) {
  typename V::f m0 = V::set1(-__builtin_inff()), m1 = m0, m2 = m0, m3 = m0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    m0 = V::max(m0, V::load(x + j * ld));
    m1 = V::max(m1, V::load(x + (j + 1) * ld));
    m2 = V::max(m2, V::load(x + (j + 2) * ld));
    m3 = V::max(m3, V::load(x + (j + 3) * ld));
  }
  for (; j < n; ++j) m0 = V::max(m0, V::load(x + j * ld));
  return V::max(V::max(m0, m1), V::max(m2, m3));
}

// ------------------------------------------------------------------------------------------
// Micro-kernel: C[mr x nr*W] (+)= A[mr x K] * B[K x nr*W], A read by broadcast at
// A[i*sai + k*sak] (so A may be stored transposed), B rows of ldb floats. With kDot the
// elements are 32-bit bf16 (fp16) pairs and each step is a native 2-way dot (vdpbf16ps / bfdot;
// fmlal + fmlal2 for fp16, whose B operand holds each 4-column group's halves planar).
// With `acc`, C is loaded first and, when `rs` is given, row i scaled by rs[i] (the online
// softmax rescale folded into the load).
// ------------------------------------------------------------------------------------------
template <int kDot, int mr, int nr>
void micro(int64_t K, const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb,
           float* C, int64_t ldc, bool acc, const float* rs) {
  constexpr int W = V::W;
  typename V::f c[mr][nr];
#pragma GCC unroll 8
  for (int i = 0; i < mr; ++i) {
    typename V::f s = V::set1(rs ? rs[i] : 1.0f);
#pragma GCC unroll 8
    for (int j = 0; j < nr; ++j)
      c[i][j] = acc ? (rs ? V::mul(V::load(C + i * ldc + j * W), s) : V::load(C + i * ldc + j * W))
                    : V::zero();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    typename V::f b[nr];
#pragma GCC unroll 8
    for (int j = 0; j < nr; ++j) b[j] = V::load(B + k * ldb + j * W);
    const float* a = A + k * sak;
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
      typename V::f av = V::bcast(a + i * sai);
#pragma GCC unroll 8
      for (int j = 0; j < nr; ++j) {
        if constexpr (kDot == 2)
          c[i][j] = V::dot_f16(c[i][j], av, b[j]);
        else if constexpr (kDot == 1)
          c[i][j] = V::dot_bf16(c[i][j], av, b[j]);
        else
          c[i][j] = V::fma(av, b[j], c[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < mr; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < nr; ++j) V::store(C + i * ldc + j * W, c[i][j]);
}

using MicroFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                         int64_t, bool, const float*);

template <int kDot, int mr, int nr = V::NR>
MicroFn pick_nr(int64_t n) {
  if constexpr (nr == 1) {
    return &micro<kDot, mr, 1>;
  } else {
    return n >= nr ? &micro<kDot, mr, nr> : pick_nr<kDot, mr, nr - 1>(n);
  }
}
template <int kDot, int mr = V::MR>
MicroFn pick(int64_t m, int64_t n) {
  if constexpr (mr == 1) {
    return pick_nr<kDot, 1>(n);
  } else {
    return m >= mr ? pick_nr<kDot, mr>(n) : pick<kDot, mr - 1>(m, n);
  }
}

// C[M x N] (+)= A[M x K] B[K x N]; N a multiple of W. Column strips outer so a strip of B
// stays in cache while every row block of A streams past it.
// kc > 0 splits K into chunks so a chunk of B stays in L1 while all row blocks of A use it.
// kDot: 0 fp32 FMA, 1 bf16 pairs (V::dot_bf16), 2 fp16 pairs (V::dot_f16).
template <int kDot>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t sai, int64_t sak,
          const float* B, int64_t ldb, float* C, int64_t ldc, bool acc, const float* rs,
          int64_t kc = 0) {
  constexpr int64_t W = V::W, MR = V::MR, NR = V::NR;
  if (kc > 0 && K > kc) {
    for (int64_t k0 = 0; k0 < K; k0 += kc)
      gemm<kDot>(M, N, min64(kc, K - k0), A + k0 * sak, sai, sak, B + k0 * ldb, ldb, C, ldc,
                 acc || k0 > 0, k0 > 0 ? nullptr : rs);
    return;
  }
  for (int64_t n0 = 0; n0 < N; n0 += NR * W) {
    const int64_t nv = min64(NR, (N - n0) / W);
    const MicroFn full = pick<kDot>(MR, nv);
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = min64(MR, M - m0);
      MicroFn fn = mr == MR ? full : pick<kDot>(mr, nv);
      fn(K, A + m0 * sai, sai, sak, B + n0, ldb, C + m0 * ldc + n0, ldc, acc,
         rs ? rs + m0 : nullptr);
    }
  }
}

}  // namespace
