// What zoo's hand-written AVX2 kernels (PackedWeight, conv3x3, max_pool2x2) need: ZOO_X86_KERNELS is defined where
// they are compiled (x86-64 with GCC or Clang; each kernel marked ZOO_AVX2_FMA, target("avx2,fma")), and
// cpu_has_avx2_fma() says at run time whether this CPU may run them. ScalarOnly makes it answer false in the current
// thread, as on a CPU without AVX2, so that tests can run the fallback paths a CPU without AVX2 takes.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ZOO_X86_KERNELS 1
#include <immintrin.h>
/// Marks a kernel (and every helper it inlines) as compiled for AVX2 + FMA, whatever the rest of the build targets.
#define ZOO_AVX2_FMA __attribute__((target("avx2,fma")))
#endif

namespace zoo::ops {

namespace detail {
inline bool& scalar_only() {
  thread_local bool on = false;
  return on;
}
}  // namespace detail

inline bool cpu_has_avx2_fma() {
#ifdef ZOO_X86_KERNELS
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && !detail::scalar_only();
#else
  return false;
#endif
}

/// Multiply-adds (or elements) a thread takes on before a second one is woken by at::parallel_for: about 50 us of
/// work (less costs more to hand over than it saves on two cores).
inline constexpr int64_t kGrain = int64_t{1} << 20;

/// v rounded up to a multiple of m.
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/// While one lives, cpu_has_avx2_fma() is false in this thread (the kernels' callers take their fallbacks).
class ScalarOnly {
 public:
  ScalarOnly() : previous_(detail::scalar_only()) { detail::scalar_only() = true; }
  ~ScalarOnly() { detail::scalar_only() = previous_; }
  ScalarOnly(const ScalarOnly&) = delete;
  ScalarOnly& operator=(const ScalarOnly&) = delete;

 private:
  bool previous_;
};

}  // namespace zoo::ops
