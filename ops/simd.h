// What zoo's hand-written AVX2 kernels (PackedWeight, conv3x3, max_pool2x2) need: ZOO_X86_KERNELS is defined where
// they are compiled (x86-64 with GCC or Clang; each kernel marked ZOO_AVX2_FMA, target("avx2,fma")), and
// cpu_has_avx2_fma() says at run time whether this CPU may run them. ScalarOnly makes it answer false in the current
// thread, as on a CPU without AVX2, so that tests can run the fallback paths a CPU without AVX2 takes.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ZOO_X86_KERNELS 1
#include <immintrin.h>
/// Marks a kernel (and every helper it inlines) as compiled for AVX2 + FMA, whatever the rest of the build targets.
#define ZOO_AVX2_FMA __attribute__((target("avx2,fma")))
/// The same for the AVX512-BF16 kernels (conv2d_bf16, linear_bf16, conv2d_one_channel), which run where
/// cpu_has_avx512_bf16() says so (ops/conv2d_bf16.h).
#define ZOO_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
/// The same for the AMX kernels (ops/conv_weight_gradient.cpp, the 3-D first layer in ops/conv3d.cpp), which run where
/// cpu_has_amx_bf16() and amx_tiles_present() say so.
#define ZOO_AMX_BF16 __attribute__((target("amx-tile,amx-bf16")))
#endif

namespace zoo::ops {

#ifdef ZOO_X86_KERNELS
/// The AMX tile registers' shapes (LDTILECFG's 64-byte operand): palette 1, tiles 0-7 of 16 rows x 64 bytes, what
/// zoo's AMX kernels use (ops/conv_weight_gradient.cpp, ops/conv3d.cpp). configure_tiles() in each thread before its
/// tile instructions (after amx_tiles_present(), which asks the OS for them), release_tiles() after.
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

ZOO_AMX_BF16 inline void configure_tiles() {
  TileConfig config;
  std::memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  // GCC does not count LDTILECFG's operand as read memory and drops the stores above without this.
  __asm__ volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

ZOO_AMX_BF16 inline void release_tiles() { _tile_release(); }

/// Eight elements as float32 lanes: float32 as it is, bfloat16 widened (exactly).
ZOO_AVX2_FMA inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
ZOO_AVX2_FMA inline __m256 load8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
/// Eight float32 lanes as bfloat16, rounded to nearest even with NaN as 0x7FC0: the bits of c10::BFloat16(float).
ZOO_AVX2_FMA inline __m128i to_bfloat16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i bits = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  return _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
}
/// Eight float32 lanes that hold bfloat16 values (widened by load8, or picked among such lanes, as a maximum is) back
/// as those bfloat16: their upper halves, exactly, with no rounding to do (a NaN keeps its bits).
ZOO_AVX2_FMA inline __m128i narrow_exact(__m256 v) {
  const __m256i bits = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
}
/// Two adjacent bfloat16 (a pair along a dot product's axis, what vdpbf16ps multiplies in each 32-bit lane) in every
/// 32-bit lane.
ZOO_AVX512_BF16 inline __m512bh pair_everywhere(const c10::BFloat16* p) {
  int32_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(bits));
}
/// AVX-512 masks of the first n of 16 (32) lanes, none for n <= 0: a row's tail in the AVX512-BF16 kernels.
inline __mmask16 first16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1U << n) - 1);
}
inline __mmask32 first32(int64_t n) {
  return n >= 32 ? 0xFFFFFFFFU : n <= 0 ? 0 : static_cast<__mmask32>((1U << n) - 1);
}
/// Eight float32 lanes stored as float32, or as bfloat16 (to_bfloat16).
ZOO_AVX2_FMA inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
ZOO_AVX2_FMA inline void store8(c10::BFloat16* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bfloat16(v));
}
// Eight rows of eight 16-bit values transposed in registers: r[i] holds row i on entry and column i on exit.
inline void transpose8x8(__m128i (&r)[8]) {
  __m128i a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);  // (2i, 0) (2i + 1, 0) (2i, 1) ... (2i + 1, 3)
    a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    b[4 * i] = _mm_unpacklo_epi32(a[4 * i], a[4 * i + 2]);  // rows 4i .. 4i + 3 of columns 0 and 1
    b[4 * i + 1] = _mm_unpackhi_epi32(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm_unpacklo_epi32(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm_unpackhi_epi32(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    r[2 * i] = _mm_unpacklo_epi64(b[i], b[i + 4]);
    r[2 * i + 1] = _mm_unpackhi_epi64(b[i], b[i + 4]);
  }
}

#endif

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

/// A convolution's stride, padding or dilation with one value per axis, as torch's convolutions read it: a single
/// value stands for every one of `dims` axes.
inline std::vector<int64_t> per_axis(c10::IntArrayRef v, size_t dims) {
  return v.size() == 1 ? std::vector<int64_t>(dims, v[0]) : v.vec();
}

/// Whether such a stride, padding or dilation (one value for every axis, or one per axis) is `value` on every one of
/// `dims` axes.
inline bool all_equal(c10::IntArrayRef v, size_t dims, int64_t value) {
  return (v.size() == 1 || v.size() == dims) && std::all_of(v.begin(), v.end(), [&](int64_t e) { return e == value; });
}

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

/// While one lives, float arithmetic in this thread flushes denormal results to zero and reads denormal operands as
/// zero (the MXCSR's FTZ and DAZ bits on x86-64, as torch.set_flush_denormal(True) sets them for a whole thread); the
/// previous mode comes back when it ends. On x86 an operation whose result or operand is denormal (below 2^-126 in
/// float32) takes a microcode assist of about a hundred cycles: the mHC mixing's backward, where products of tiny
/// logit gradients and small weights fall there, took 20x longer in such steps (ops/mhc_mixing.h). Elsewhere a no-op.
/// Work handed to other threads (OpenMP's, OpenBLAS's own) keeps their mode.
class FlushDenormals {
 public:
#ifdef ZOO_X86_KERNELS
  static constexpr unsigned int kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  FlushDenormals() : previous_(_mm_getcsr()) { _mm_setcsr(previous_ | kFlushToZero | kDenormalsAreZero); }
  ~FlushDenormals() { _mm_setcsr(previous_); }
#else
  FlushDenormals() = default;
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

#ifdef ZOO_X86_KERNELS
 private:
  unsigned int previous_;
#endif
};

}  // namespace zoo::ops
