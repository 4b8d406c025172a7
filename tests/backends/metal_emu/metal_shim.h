// Lets g++ compile Metal Shading Language sources as C++20 and run them on the emulator
// (emu_runtime.h). Included through the fake <metal_stdlib> in this folder.
//
// Modelled: address-space qualifiers (as no-ops; `constant` as const), `kernel`, MSL scalar and
// vector types (half = _Float16, bfloat = a rounding fp32 wrapper), the math functions our
// kernels use (metal::, metal::precise::, metal::fast:: all map to libm), as_type, barriers and
// the simdgroup functions. Not modelled: textures, simdgroup_matrix, atomics, Metal's memory
// model (barriers here are full fences), fast-math accuracy.
//
// `threadgroup` becomes `static`: a kernel-scope threadgroup array is then one object shared by
// the threads of the (single) threadgroup the emulator runs at a time. Consequently
// threadgroup-qualified *parameters* are not supported; kernels declare their threadgroup
// arrays at kernel scope.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "emu_runtime.h"

#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310  // MSL 3.1 (macOS 14): the first with bfloat
#endif
#define __METAL_EMULATOR__ 1

#define kernel
#define device
#define constant const
#define thread
#define threadgroup static

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef _Float16 half;

// bfloat: storage-only in g++ 12, so a wrapper converting to fp32 with round-to-nearest-even.
struct bfloat {
  std::uint16_t bits = 0;
  bfloat() = default;
  bfloat(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {
      bits = std::uint16_t((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));  // keep NaN a NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = std::uint16_t(u >> 16);
    }
  }
  bfloat(double d) : bfloat(float(d)) {}
  bfloat(int i) : bfloat(float(i)) {}
  bfloat(half h) : bfloat(float(h)) {}
  operator float() const {
    std::uint32_t u = std::uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
inline bfloat operator+(bfloat a, bfloat b) { return bfloat(float(a) + float(b)); }
inline bfloat operator-(bfloat a, bfloat b) { return bfloat(float(a) - float(b)); }
inline bfloat operator*(bfloat a, bfloat b) { return bfloat(float(a) * float(b)); }
inline bfloat operator/(bfloat a, bfloat b) { return bfloat(float(a) / float(b)); }

// ---- vector types: .x .y .z .w, elementwise arithmetic, conversions between element types ----
namespace metal_emu_detail {
template <typename T, int N>
struct vec;
template <typename T>
struct vec<T, 2> {
  static constexpr int size = 2;
  T x{}, y{};
  vec() = default;
  vec(T a, T b) : x(a), y(b) {}
  explicit vec(T s) : x(s), y(s) {}
  template <typename U>
  explicit vec(const vec<U, 2>& o) : x(T(o.x)), y(T(o.y)) {}
  T& operator[](int i) { return i == 0 ? x : y; }
  T operator[](int i) const { return i == 0 ? x : y; }
};
template <typename T>
struct vec<T, 3> {
  static constexpr int size = 3;
  T x{}, y{}, z{};
  vec() = default;
  vec(T a, T b, T c) : x(a), y(b), z(c) {}
  explicit vec(T s) : x(s), y(s), z(s) {}
  template <typename U>
  explicit vec(const vec<U, 3>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)) {}
  T& operator[](int i) { return i == 0 ? x : i == 1 ? y : z; }
  T operator[](int i) const { return i == 0 ? x : i == 1 ? y : z; }
};
template <typename T>
struct vec<T, 4> {
  static constexpr int size = 4;
  T x{}, y{}, z{}, w{};
  vec() = default;
  vec(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}
  explicit vec(T s) : x(s), y(s), z(s), w(s) {}
  template <typename U>
  explicit vec(const vec<U, 4>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)), w(T(o.w)) {}
  T& operator[](int i) { return i == 0 ? x : i == 1 ? y : i == 2 ? z : w; }
  T operator[](int i) const { return i == 0 ? x : i == 1 ? y : i == 2 ? z : w; }
};
#define EMU_VEC_OP(op)                                                          \
  template <typename T, int N>                                                  \
  vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {               \
    vec<T, N> r;                                                                \
    for (int i = 0; i < N; ++i) r[i] = a[i] op b[i];                            \
    return r;                                                                   \
  }                                                                             \
  template <typename T, int N, typename S>                                      \
  vec<T, N> operator op(const vec<T, N>& a, S s) {                              \
    vec<T, N> r;                                                                \
    for (int i = 0; i < N; ++i) r[i] = a[i] op T(s);                            \
    return r;                                                                   \
  }                                                                             \
  template <typename T, int N, typename S>                                      \
  vec<T, N> operator op(S s, const vec<T, N>& a) {                              \
    vec<T, N> r;                                                                \
    for (int i = 0; i < N; ++i) r[i] = T(s) op a[i];                            \
    return r;                                                                   \
  }                                                                             \
  template <typename T, int N>                                                  \
  vec<T, N>& operator op##=(vec<T, N>& a, const vec<T, N>& b) { return a = a op b; }
EMU_VEC_OP(+)
EMU_VEC_OP(-)
EMU_VEC_OP(*)
EMU_VEC_OP(/)
#undef EMU_VEC_OP
}  // namespace metal_emu_detail

#define EMU_VEC_TYPES(T)                              \
  typedef metal_emu_detail::vec<T, 2> T##2;           \
  typedef metal_emu_detail::vec<T, 3> T##3;           \
  typedef metal_emu_detail::vec<T, 4> T##4;
EMU_VEC_TYPES(float)
EMU_VEC_TYPES(half)
EMU_VEC_TYPES(bfloat)
EMU_VEC_TYPES(int)
EMU_VEC_TYPES(uint)
EMU_VEC_TYPES(short)
EMU_VEC_TYPES(ushort)
EMU_VEC_TYPES(long)
#undef EMU_VEC_TYPES

namespace metal {

using std::numeric_limits;

enum class mem_flags : unsigned { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(unsigned(a) | unsigned(b)); }

// Barriers are full fences here; Metal's weaker device-memory ordering is not modelled.
inline void threadgroup_barrier(mem_flags) { emu::threadgroup_barrier(); }
inline void simdgroup_barrier(mem_flags) { emu::simdgroup_barrier(); }

template <typename To, typename From>
To as_type(From f) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs equal sizes");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

// ---- math: computed in fp32 (or the argument's type) with libm, i.e. precise ----
#define EMU_MATH1(name, expr)                                                   \
  inline float name(float x) { return expr; }                                   \
  inline half name(half x) { return half(name(float(x))); }                     \
  inline bfloat name(bfloat x) { return bfloat(name(float(x))); }
#define EMU_MATH_ALL                                                            \
  EMU_MATH1(exp, std::exp(x))                                                   \
  EMU_MATH1(exp2, std::exp2(x))                                                 \
  EMU_MATH1(log, std::log(x))                                                   \
  EMU_MATH1(log2, std::log2(x))                                                 \
  EMU_MATH1(sqrt, std::sqrt(x))                                                 \
  EMU_MATH1(rsqrt, 1.0f / std::sqrt(x))                                         \
  EMU_MATH1(sin, std::sin(x))                                                   \
  EMU_MATH1(cos, std::cos(x))                                                   \
  EMU_MATH1(tanh, std::tanh(x))                                                 \
  EMU_MATH1(fabs, std::fabs(x))                                                 \
  EMU_MATH1(abs, std::fabs(x))                                                  \
  EMU_MATH1(floor, std::floor(x))                                               \
  EMU_MATH1(ceil, std::ceil(x))                                                 \
  inline float pow(float a, float b) { return std::pow(a, b); }                 \
  inline float powr(float a, float b) { return std::pow(a, b); }                \
  inline float fma(float a, float b, float c) { return std::fma(a, b, c); }     \
  inline float sincos(float x, thread float& c) { c = std::cos(x); return std::sin(x); }
EMU_MATH_ALL
namespace precise {
EMU_MATH_ALL
}
namespace fast {
EMU_MATH_ALL
}
#undef EMU_MATH_ALL
#undef EMU_MATH1

template <typename T>
T max(T a, T b) { return a > b ? a : b; }
template <typename T>
T min(T a, T b) { return a < b ? a : b; }
inline float fmax(float a, float b) { return std::fmax(a, b); }
inline float fmin(float a, float b) { return std::fmin(a, b); }
template <typename T>
T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
inline bool isnan(float x) { return std::isnan(x); }
inline bool isinf(float x) { return std::isinf(x); }
inline bool isfinite(float x) { return std::isfinite(x); }
template <typename T>
T select(T a, T b, bool c) { return c ? b : a; }
template <typename T, int N>
T dot(const metal_emu_detail::vec<T, N>& a, const metal_emu_detail::vec<T, N>& b) {
  T s = T(0);
  for (int i = 0; i < N; ++i) s += a[i] * b[i];
  return s;
}

// ---- simdgroup functions: every active lane must call them together (uniform control flow);
// divergent calls are reported by the runtime instead of being emulated ----
namespace simd_detail_ {
template <typename T>
struct Lanes {
  T v[emu::kSimdWidth];
  unsigned n;
};
template <typename T>
Lanes<T> gather(T x) {
  static_assert(std::is_trivially_copyable_v<T>, "simd function on a non-trivial type");
  Lanes<T> l;
  l.n = emu::simd_exchange(&x, sizeof(T), l.v);
  return l;
}
}  // namespace simd_detail_

template <typename T>
T simd_sum(T x) {
  auto l = simd_detail_::gather(x);
  // Pairwise tree over the lanes, the usual hardware reduction shape.
  T buf[emu::kSimdWidth];
  unsigned n = l.n;
  for (unsigned i = 0; i < n; ++i) buf[i] = l.v[i];
  while (n > 1) {
    unsigned h = (n + 1) / 2;
    for (unsigned i = 0; i + h < n; ++i) buf[i] = buf[i] + buf[i + h];
    n = h;
  }
  return buf[0];
}
template <typename T>
T simd_max(T x) {
  auto l = simd_detail_::gather(x);
  T m = l.v[0];
  for (unsigned i = 1; i < l.n; ++i) m = max(m, l.v[i]);
  return m;
}
template <typename T>
T simd_min(T x) {
  auto l = simd_detail_::gather(x);
  T m = l.v[0];
  for (unsigned i = 1; i < l.n; ++i) m = min(m, l.v[i]);
  return m;
}
template <typename T>
T simd_prefix_exclusive_sum(T x) {
  auto l = simd_detail_::gather(x);
  T s = T(0);
  for (unsigned i = 0; i < emu::lane_id(); ++i) s = s + l.v[i];
  return s;
}
template <typename T>
T simd_prefix_inclusive_sum(T x) {
  auto l = simd_detail_::gather(x);
  T s = T(0);
  for (unsigned i = 0; i <= emu::lane_id(); ++i) s = s + l.v[i];
  return s;
}
// Reading an inactive lane (outside the partial simdgroup) is undefined in Metal: the
// emulator returns the caller's own value.
template <typename T>
T simd_shuffle(T x, ushort lane) {
  auto l = simd_detail_::gather(x);
  return lane < l.n ? l.v[lane] : x;
}
template <typename T>
T simd_broadcast(T x, ushort lane) { return simd_shuffle(x, lane); }
template <typename T>
T simd_broadcast_first(T x) { return simd_shuffle(x, ushort(0)); }
template <typename T>
T simd_shuffle_xor(T x, ushort mask) { return simd_shuffle(x, ushort(emu::lane_id() ^ mask)); }
template <typename T>
T simd_shuffle_down(T x, ushort delta) {
  auto l = simd_detail_::gather(x);
  unsigned src = emu::lane_id() + delta;
  return src < l.n ? l.v[src] : x;
}
template <typename T>
T simd_shuffle_up(T x, ushort delta) {
  auto l = simd_detail_::gather(x);
  return emu::lane_id() >= delta ? l.v[emu::lane_id() - delta] : x;
}
inline bool simd_all(bool b) {
  auto l = simd_detail_::gather(b);
  for (unsigned i = 0; i < l.n; ++i) if (!l.v[i]) return false;
  return true;
}
inline bool simd_any(bool b) {
  auto l = simd_detail_::gather(b);
  for (unsigned i = 0; i < l.n; ++i) if (l.v[i]) return true;
  return false;
}

}  // namespace metal
