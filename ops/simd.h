// What zoo's hand-written AVX2 kernels (PackedWeight, conv3x3) need: ZOO_X86_KERNELS is defined where they are
// compiled (x86-64 with GCC or Clang, each kernel marked target("avx2,fma")), and cpu_has_avx2_fma() says at run
// time whether this CPU may run them.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ZOO_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace zoo::ops {

inline bool cpu_has_avx2_fma() {
#ifdef ZOO_X86_KERNELS
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace zoo::ops
