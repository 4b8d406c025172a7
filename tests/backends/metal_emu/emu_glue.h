// Included by the generated bindings (bindgen.py) after a .metal file: converts the emulator's
// per-thread ids to the type a kernel declared for a [[builtin]] parameter.
#pragma once
#include <type_traits>

template <typename P>
P emu_builtin(emu::U3 v) {
  if constexpr (std::is_arithmetic_v<P>) {
    return P(v.x);
  } else if constexpr (P::size == 2) {
    return P(decltype(P{}.x)(v.x), decltype(P{}.x)(v.y));
  } else {
    return P(decltype(P{}.x)(v.x), decltype(P{}.x)(v.y), decltype(P{}.x)(v.z));
  }
}

template <typename P>
P emu_builtin(unsigned v) {
  static_assert(std::is_arithmetic_v<P>, "a scalar builtin bound to a vector parameter");
  return P(v);
}
