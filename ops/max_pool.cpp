#include "ops/max_pool.h"

#include "ops/simd.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace zoo::ops {

namespace {

using torch::Tensor;

torch::Tensor reference(const Tensor& x) { return torch::max_pool2d(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}); }

#ifdef ZOO_X86_KERNELS
// AVX2 kernels: 8 windows at a time. A window's four elements are two adjacent pairs in two rows; loading 16
// elements of a row and splitting them into even and odd lanes gives the windows' first and second elements, in the
// lane order [0 1 4 5 2 3 6 7] (_mm256_shuffle_ps works within 128-bit halves), put back in order before storing.
// bfloat16 is widened to float32 exactly on load and, since the maximum is one of the inputs, narrowed exactly on
// store.
ZOO_AVX2_FMA inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
ZOO_AVX2_FMA inline __m256 load8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
ZOO_AVX2_FMA inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
ZOO_AVX2_FMA inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1)));
}
/// Lanes [0 1 4 5 2 3 6 7] back to [0 .. 7].
ZOO_AVX2_FMA inline __m256 in_order(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}
/// Where `v` takes over from `best` by LibTorch's rule: v > best, or v is NaN.
ZOO_AVX2_FMA inline __m256 takes_over(__m256 v, __m256 best) {
  return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

/// Eight windows: a and b point at 16 elements of the top and bottom rows.
template <typename T>
ZOO_AVX2_FMA inline void pool8(const T* a, const T* b, T* out, uint8_t* pos) {
  const __m256 a0 = load8(a), b0 = load8(a + 8), a1 = load8(b), b1 = load8(b + 8);
  __m256 best = _mm256_shuffle_ps(a0, b0, 0x88);  // the windows' elements 0, 1, 2, 3 (row-major)
  const __m256 v1 = _mm256_shuffle_ps(a0, b0, 0xDD), v2 = _mm256_shuffle_ps(a1, b1, 0x88),
               v3 = _mm256_shuffle_ps(a1, b1, 0xDD);
  __m256 k = _mm256_setzero_ps();
  __m256 m = takes_over(v1, best);
  best = _mm256_blendv_ps(best, v1, m);
  k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(1)), m);
  m = takes_over(v2, best);
  best = _mm256_blendv_ps(best, v2, m);
  k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(2)), m);
  m = takes_over(v3, best);
  best = _mm256_blendv_ps(best, v3, m);
  k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(3)), m);
  store8(out, in_order(best));
  const __m256i k32 = _mm256_castps_si256(in_order(k));
  const __m128i k16 = _mm_packs_epi32(_mm256_castsi256_si128(k32), _mm256_extracti128_si256(k32, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(pos), _mm_packus_epi16(k16, k16));
}

/// One output row: windows [0, Wo) of input rows r0, r1; the last few (Wo % 8) through zero-padded copies.
template <typename T>
ZOO_AVX2_FMA void pool_row_avx2(const T* r0, const T* r1, T* out, uint8_t* pos, int64_t Wo) {
  int64_t j = 0;
  for (; j + 8 <= Wo; j += 8) pool8(r0 + 2 * j, r1 + 2 * j, out + j, pos + j);
  if (j == Wo) return;
  const int64_t n = Wo - j;
  T a[16] = {}, b[16] = {}, o[8];
  uint8_t k[8];
  std::copy(r0 + 2 * j, r0 + 2 * Wo, a);
  std::copy(r1 + 2 * j, r1 + 2 * Wo, b);
  pool8(a, b, o, k);
  std::copy(o, o + n, out + j);
  std::copy(k, k + n, pos + j);
}

/// g where k == which, else 0.
ZOO_AVX2_FMA inline __m256 gradient_at(__m256 g, __m256i k, int which) {
  return _mm256_and_ps(g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_set1_epi32(which))));
}

/// Eight windows' gradients g at positions pos into 16 elements of the top (a) and bottom (b) rows: the gradient at
/// each window's maximum, zeros at its other three elements.
template <typename T>
ZOO_AVX2_FMA inline void unpool8(const T* g, const uint8_t* pos, T* a, T* b) {
  const __m256 gv = load8(g);
  const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pos)));
  const __m256 e0 = gradient_at(gv, k, 0), e1 = gradient_at(gv, k, 1), e2 = gradient_at(gv, k, 2),
               e3 = gradient_at(gv, k, 3);
  // Interleave (e0, e1) into the top row and (e2, e3) into the bottom one: unpack works within 128-bit halves.
  const __m256 lo0 = _mm256_unpacklo_ps(e0, e1), hi0 = _mm256_unpackhi_ps(e0, e1);
  const __m256 lo1 = _mm256_unpacklo_ps(e2, e3), hi1 = _mm256_unpackhi_ps(e2, e3);
  store8(a, _mm256_permute2f128_ps(lo0, hi0, 0x20));
  store8(a + 8, _mm256_permute2f128_ps(lo0, hi0, 0x31));
  store8(b, _mm256_permute2f128_ps(lo1, hi1, 0x20));
  store8(b + 8, _mm256_permute2f128_ps(lo1, hi1, 0x31));
}

/// One output row's gradient into input rows r0, r1 (windows [0, Wo); the last few through local copies).
template <typename T>
ZOO_AVX2_FMA void unpool_row_avx2(const T* g, const uint8_t* pos, T* r0, T* r1, int64_t Wo) {
  int64_t j = 0;
  for (; j + 8 <= Wo; j += 8) unpool8(g + j, pos + j, r0 + 2 * j, r1 + 2 * j);
  if (j == Wo) return;
  const int64_t n = Wo - j;
  T gs[8] = {}, a[16], b[16];
  uint8_t k[8] = {};
  std::copy(g + j, g + Wo, gs);
  std::copy(pos + j, pos + Wo, k);
  unpool8(gs, k, a, b);
  std::copy(a, a + 2 * n, r0 + 2 * j);
  std::copy(b, b + 2 * n, r1 + 2 * j);
}
#endif

/// fn(p, i) for every channel plane p and output row i, the planes split over LibTorch's threads.
template <typename Fn>
void each_output_row(int64_t planes, int64_t Ho, const Fn& fn) {
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) fn(p, i);
  });
}

/// Each plane's outputs and the position (0..3, row-major) of the maximum in each 2x2 window.
template <typename T>
void pool_forward(const T* x, T* y, uint8_t* where, int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  [[maybe_unused]] const bool vector = cpu_has_avx2_fma();
  each_output_row(planes, Ho, [&](int64_t p, int64_t i) {
    const T* r0 = x + (p * H + 2 * i) * W;
    const T* r1 = r0 + W;
    T* out = y + (p * Ho + i) * Wo;
    uint8_t* pos = where + (p * Ho + i) * Wo;
#ifdef ZOO_X86_KERNELS
    if constexpr (!std::is_same_v<T, double>)
      if (vector) return pool_row_avx2(r0, r1, out, pos, Wo);
#endif
    for (int64_t j = 0; j < Wo; ++j) {
      // LibTorch's rule, starting from the first element: a larger value or a NaN takes over.
      float best = static_cast<float>(r0[2 * j]);
      uint8_t k = 0;
      const float v1 = static_cast<float>(r0[2 * j + 1]), v2 = static_cast<float>(r1[2 * j]),
                  v3 = static_cast<float>(r1[2 * j + 1]);
      if (v1 > best || std::isnan(v1)) best = v1, k = 1;
      if (v2 > best || std::isnan(v2)) best = v2, k = 2;
      if (v3 > best || std::isnan(v3)) best = v3, k = 3;
      out[j] = static_cast<T>(best);
      pos[j] = k;
    }
  });
}

/// gx (uninitialised) gets each window's gradient at the window's maximum and zeros everywhere else, the odd last
/// row and column included.
template <typename T>
void pool_backward(const T* gy, const uint8_t* where, T* gx, int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  [[maybe_unused]] const bool vector = cpu_has_avx2_fma();
  each_output_row(planes, Ho, [&](int64_t p, int64_t i) {
    T* plane = gx + p * H * W;
    T* r0 = plane + 2 * i * W;
    T* r1 = r0 + W;
    if (W % 2) r0[W - 1] = r1[W - 1] = T(0);
    if (H % 2 && i == Ho - 1) std::fill(plane + (H - 1) * W, plane + H * W, T(0));
    const T* g = gy + (p * Ho + i) * Wo;
    const uint8_t* pos = where + (p * Ho + i) * Wo;
#ifdef ZOO_X86_KERNELS
    if constexpr (!std::is_same_v<T, double>)
      if (vector) return unpool_row_avx2(g, pos, r0, r1, Wo);
#endif
    for (int64_t j = 0; j < Wo; ++j) {
      r0[2 * j] = r0[2 * j + 1] = r1[2 * j] = r1[2 * j + 1] = T(0);
      (pos[j] < 2 ? r0 : r1)[2 * j + (pos[j] & 1)] = g[j];
    }
  });
}

struct MaxPool2x2Function : public torch::autograd::Function<MaxPool2x2Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x) {
    const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / (H * W);
    auto sizes = x.sizes().vec();
    sizes[sizes.size() - 2] = H / 2;
    sizes[sizes.size() - 1] = W / 2;
    auto y = torch::empty(sizes, x.options());
    auto where = torch::empty(sizes, x.options().dtype(torch::kUInt8));
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool2x2", [&] {
      pool_forward<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), planes, H, W);
    });
    ctx->save_for_backward({x, where});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &where = saved[1];
    if (torch::GradMode::is_enabled()) {  // create_graph: a gradient that is differentiable again
      const auto y = reference(x);
      return {torch::autograd::grad({y}, {x}, {grads[0]}, /*retain_graph=*/true, /*create_graph=*/true)[0]};
    }
    const auto gy = grads[0].to(x.scalar_type()).contiguous();
    const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / (H * W);
    auto gx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool2x2_backward", [&] {
      pool_backward<scalar_t>(gy.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), planes, H,
                              W);
    });
    return {gx};
  }
};

}  // namespace

Tensor max_pool2x2(const Tensor& x, bool fast) {
  const auto type = x.scalar_type();
  const bool loop = fast && !torch::jit::tracer::isTracing() && x.device().is_cpu() && (x.dim() == 3 || x.dim() == 4) &&
                    x.is_contiguous() &&
                    (type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kBFloat16) &&
                    x.size(-2) >= 2 && x.size(-1) >= 2 && x.numel() > 0;
  return loop ? MaxPool2x2Function::apply(x) : reference(x);
}

}  // namespace zoo::ops
