#include "ops/max_pool.h"

#include "ops/autocast.h"
#include "ops/simd.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace zoo::ops {

namespace {

using torch::Tensor;

// LibTorch 1.13 has no bfloat16 kernel for max_pool3d: such an input is pooled in float32 (exactly: the maximum is
// one of the inputs) and narrowed back.
torch::Tensor reference(const Tensor& x, int axes) {
  if (axes == 2) return torch::max_pool2d(x, {2, 2}, {2, 2}, {0, 0}, {1, 1});
  const bool widen = x.scalar_type() == torch::kBFloat16;
  const auto y = torch::max_pool3d(widen ? x.to(torch::kFloat32) : x, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1});
  return widen ? y.to(x.scalar_type()) : y;
}

#ifdef ZOO_X86_KERNELS
// AVX2 kernels: 8 windows at a time. A window's four elements are two adjacent pairs in two rows; loading 16
// elements of a row and splitting them into even and odd lanes gives the windows' first and second elements, in the
// lane order [0 1 4 5 2 3 6 7] (_mm256_shuffle_ps works within 128-bit halves), put back in order before storing.
// bfloat16 is widened to float32 exactly on load (ops/simd.h) and, since the maximum is one of the inputs, narrowed
// exactly on store by taking the upper halves (narrow_exact: no rounding to compute, 0.40 -> 0.38 ms forward for
// [64, 32, 28, 28]); its backward copies or zeroes the gradient's 16-bit patterns without widening them (0.48 ->
// 0.40 ms). A row of Wo windows is done in groups of 8; its last Wo % 8 windows again as the last 8 of the
// row (recomputing a few: the same values land in the same places). A row narrower than 8 windows is done as 8
// windows when what spills over lands in rows that are written afterwards (the input's rows are whole windows and
// the spill stays within this slice's windows: Pooling::spills), otherwise through masked loads and stores that
// touch no element outside the row.
/// The first `count` 32-bit lanes set.
ZOO_AVX2_FMA inline __m256i first_lanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/// Elements [0, 16) of a row as two float32 vectors; only the first `count` (even) are read, the others are 0.
ZOO_AVX2_FMA inline void load16(const float* p, int64_t count, __m256& lo, __m256& hi) {
  lo = _mm256_maskload_ps(p, first_lanes(count));
  hi = _mm256_maskload_ps(p + 8, first_lanes(count - 8));
}
ZOO_AVX2_FMA inline void load16(const c10::BFloat16* p, int64_t count, __m256& lo, __m256& hi) {
  alignas(32) c10::BFloat16 v[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v),
                     _mm256_maskload_epi32(reinterpret_cast<const int*>(p), first_lanes(count / 2)));
  lo = load8(v);
  hi = load8(v + 8);
}
/// The first `count` (even) of 16 elements stored; the rest of the row untouched.
ZOO_AVX2_FMA inline void store16(float* p, int64_t count, __m256 lo, __m256 hi) {
  _mm256_maskstore_ps(p, first_lanes(count), lo);
  _mm256_maskstore_ps(p + 8, first_lanes(count - 8), hi);
}
ZOO_AVX2_FMA inline void store16(c10::BFloat16* p, int64_t count, __m256 lo, __m256 hi) {
  const __m256i v = _mm256_set_m128i(narrow_exact(hi), narrow_exact(lo));
  _mm256_maskstore_epi32(reinterpret_cast<int*>(p), first_lanes(count / 2), v);
}
/// Eight lanes stored: float32 as they are; bfloat16 values (every lane here is one of the inputs) narrowed exactly.
ZOO_AVX2_FMA inline void store8_exact(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
ZOO_AVX2_FMA inline void store8_exact(c10::BFloat16* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_exact(v));
}
/// Lanes [0 1 4 5 2 3 6 7] back to [0 .. 7].
ZOO_AVX2_FMA inline __m256 in_order(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}
/// Where `v` takes over from `best` by LibTorch's rule: v > best, or v is NaN.
ZOO_AVX2_FMA inline __m256 takes_over(__m256 v, __m256 best) {
  return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

/// Eight windows of R rows of 2 (R = 2: a 2x2 window; R = 4: a 2x2x2 window, its two depth slices' rows in order):
/// rows[r] points at 16 elements of the window's row r. The position stored is the window's element in row-major
/// order, 2 r + (0 or 1). With n < 8, only the first n windows are read and written.
template <int R, typename T>
ZOO_AVX2_FMA inline void pool8(std::array<const T*, R> rows, T* out, uint8_t* pos, int64_t n = 8) {
  __m256 best = _mm256_setzero_ps(), k = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    __m256 lo, hi;
    if (n == 8) {
      lo = load8(rows[r]);
      hi = load8(rows[r] + 8);
    } else {
      load16(rows[r], 2 * n, lo, hi);
    }
    const __m256 even = _mm256_shuffle_ps(lo, hi, 0x88), odd = _mm256_shuffle_ps(lo, hi, 0xDD);
    if (r == 0) {
      best = even;
    } else {
      const __m256 m = takes_over(even, best);
      best = _mm256_blendv_ps(best, even, m);
      k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(2 * r)), m);
    }
    const __m256 m = takes_over(odd, best);
    best = _mm256_blendv_ps(best, odd, m);
    k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(2 * r + 1)), m);
  }
  const __m256i k32 = _mm256_castps_si256(in_order(k));
  const __m128i k16 = _mm_packs_epi32(_mm256_castsi256_si128(k32), _mm256_extracti128_si256(k32, 1));
  if (n == 8) {
    store8_exact(out, in_order(best));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(pos), _mm_packus_epi16(k16, k16));
    return;
  }
  T o[8];
  alignas(16) uint8_t where[16];
  store8_exact(o, in_order(best));
  _mm_store_si128(reinterpret_cast<__m128i*>(where), _mm_packus_epi16(k16, k16));
  std::copy(o, o + n, out);
  std::copy(where, where + n, pos);
}

/// Each row pointer moved `by` elements on.
template <typename P, size_t R>
std::array<P*, R> shifted(std::array<P*, R> rows, int64_t by) {
  for (auto& row : rows) row += by;
  return rows;
}

/// One output row: windows [0, Wo) of the R input rows.
template <int R, typename T>
ZOO_AVX2_FMA void pool_row_avx2(std::array<const T*, R> rows, T* out, uint8_t* pos, int64_t Wo, bool spill) {
  if (Wo < 8) return pool8<R>(rows, out, pos, spill ? 8 : Wo);
  for (int64_t j = 0; j < Wo; j += 8) {
    const int64_t at = std::min(j, Wo - 8);
    pool8<R>(shifted(rows, 2 * at), out + at, pos + at);
  }
}

/// g where k == which, else 0.
ZOO_AVX2_FMA inline __m256 gradient_at(__m256 g, __m256i k, int which) {
  return _mm256_and_ps(g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_set1_epi32(which))));
}

/// unpool8 (below) for bfloat16, on the 16-bit patterns: a gradient is copied or zeroed, never computed, so no lane
/// is widened or rounded (a NaN keeps its bits).
template <int R>
ZOO_AVX2_FMA inline void unpool8_bits(const c10::BFloat16* g, const uint8_t* pos, std::array<c10::BFloat16*, R> rows,
                                      int64_t n) {
  __m128i gv, k;
  if (n == 8) {
    gv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g));
    k = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pos)));
  } else {
    alignas(16) c10::BFloat16 gs[8] = {};
    alignas(16) uint8_t ks[16] = {};
    std::copy(g, g + n, gs);
    std::copy(pos, pos + n, ks);
    gv = _mm_load_si128(reinterpret_cast<const __m128i*>(gs));
    k = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ks)));
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m128i e0 = _mm_and_si128(gv, _mm_cmpeq_epi16(k, _mm_set1_epi16(static_cast<int16_t>(2 * r))));
    const __m128i e1 = _mm_and_si128(gv, _mm_cmpeq_epi16(k, _mm_set1_epi16(static_cast<int16_t>(2 * r + 1))));
    // (e0, e1) interleaved: windows 0-3, then 4-7, two elements each.
    const __m128i first = _mm_unpacklo_epi16(e0, e1), second = _mm_unpackhi_epi16(e0, e1);
    if (n == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(rows[r]), first);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(rows[r] + 8), second);
    } else {  // 2n elements: n 32-bit lanes
      _mm256_maskstore_epi32(reinterpret_cast<int*>(rows[r]), first_lanes(n), _mm256_set_m128i(second, first));
    }
  }
}

/// Eight windows' gradients g at positions pos into 16 elements of each of the R rows: the gradient at each
/// window's maximum, zeros at its other elements. With n < 8, only the first n windows (2n elements of each row).
template <int R, typename T>
ZOO_AVX2_FMA inline void unpool8(const T* g, const uint8_t* pos, std::array<T*, R> rows, int64_t n = 8) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return unpool8_bits<R>(g, pos, rows, n);
  __m256 gv;
  __m256i k;
  if (n == 8) {
    gv = load8(g);
    k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pos)));
  } else {
    T gs[8] = {};
    uint8_t ks[8] = {};
    std::copy(g, g + n, gs);
    std::copy(pos, pos + n, ks);
    gv = load8(gs);
    k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ks)));
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 e0 = gradient_at(gv, k, 2 * r), e1 = gradient_at(gv, k, 2 * r + 1);
    // Interleave (e0, e1) into the row: unpack works within 128-bit halves.
    const __m256 lo = _mm256_unpacklo_ps(e0, e1), hi = _mm256_unpackhi_ps(e0, e1);
    const __m256 first = _mm256_permute2f128_ps(lo, hi, 0x20), second = _mm256_permute2f128_ps(lo, hi, 0x31);
    if (n == 8) {
      store8(rows[r], first);
      store8(rows[r] + 8, second);
    } else {
      store16(rows[r], 2 * n, first, second);
    }
  }
}

/// One output row's gradient into its R input rows (windows [0, Wo)).
template <int R, typename T>
ZOO_AVX2_FMA void unpool_row_avx2(const T* g, const uint8_t* pos, std::array<T*, R> rows, int64_t Wo, bool spill) {
  if (Wo < 8) return unpool8<R>(g, pos, rows, spill ? 8 : Wo);
  for (int64_t j = 0; j < Wo; j += 8) {
    const int64_t at = std::min(j, Wo - 8);
    unpool8<R>(g + at, pos + at, shifted(rows, 2 * at));
  }
}
#endif

/// The shape of a pooling: `planes` channel planes (2-D) or volumes (3-D) of D x H x W (D = 1 for 2-D), windows of
/// R rows (2 for 2x2, 4 for 2x2x2).
struct Pooling {
  int64_t planes, D, H, W;
  int R;
  int64_t Do() const { return R == 4 ? D / 2 : 1; }
  int64_t Ho() const { return H / 2; }
  int64_t Wo() const { return W / 2; }
  /// Whether 8 windows from the start of output row i (of any plane and slice) may be read and written though the
  /// row has fewer: with W = 2 Wo, what they write past the row is in the rows of later output rows of the same
  /// slice (rewritten when those are done, in order), and what they read is in the same slice.
  bool spills(int64_t i) const {
    return W == 2 * Wo() && (2 * i + 1) * W + 16 <= 2 * Ho() * W && i * Wo() + 8 <= Ho() * Wo();
  }
  /// Row r (0 .. R-1) of the windows of output row (od, i) of plane p, as an offset into the input.
  int64_t row(int64_t p, int64_t od, int64_t i, int r) const {
    return ((p * D + (R == 4 ? 2 * od + r / 2 : 0)) * H + 2 * i + r % 2) * W;
  }
};

/// fn(p, od, i) for every plane p and output row (od, i), the planes split over LibTorch's threads.
template <typename Fn>
void each_output_row(const Pooling& s, const Fn& fn) {
  at::parallel_for(0, s.planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t od = 0; od < s.Do(); ++od)
        for (int64_t i = 0; i < s.Ho(); ++i) fn(p, od, i);
  });
}

/// The outputs and the position (0 .. 2R-1, row-major) of the maximum in each window.
template <int R, typename T>
void pool_forward(const T* x, T* y, uint8_t* where, const Pooling& s) {
  const int64_t Wo = s.Wo();
  [[maybe_unused]] const bool vector = cpu_has_avx2_fma();
  each_output_row(s, [&](int64_t p, int64_t od, int64_t i) {
    std::array<const T*, R> rows;
    for (int r = 0; r < R; ++r) rows[r] = x + s.row(p, od, i, r);
    const int64_t at = ((p * s.Do() + od) * s.Ho() + i) * Wo;
    T* out = y + at;
    uint8_t* pos = where + at;
#ifdef ZOO_X86_KERNELS
    if constexpr (!std::is_same_v<T, double>)
      if (vector) return pool_row_avx2<R>(rows, out, pos, Wo, s.spills(i));
#endif
    for (int64_t j = 0; j < Wo; ++j) {
      // LibTorch's rule, starting from the first element: a larger value or a NaN takes over.
      float best = static_cast<float>(rows[0][2 * j]);
      uint8_t k = 0;
      for (int e = 1; e < 2 * R; ++e) {
        const float v = static_cast<float>(rows[e / 2][2 * j + e % 2]);
        if (v > best || std::isnan(v)) best = v, k = static_cast<uint8_t>(e);
      }
      out[j] = static_cast<T>(best);
      pos[j] = k;
    }
  });
}

/// gx gets each window's gradient at the window's maximum and zeros at its other elements; elements in no window
/// (an odd last slice, row or column) are left as they are (the caller zero-fills gx for odd sizes).
template <int R, typename T>
void pool_backward(const T* gy, const uint8_t* where, T* gx, const Pooling& s) {
  const int64_t Wo = s.Wo();
  [[maybe_unused]] const bool vector = cpu_has_avx2_fma();
  each_output_row(s, [&](int64_t p, int64_t od, int64_t i) {
    std::array<T*, R> rows;
    for (int r = 0; r < R; ++r) rows[r] = gx + s.row(p, od, i, r);
    const int64_t at = ((p * s.Do() + od) * s.Ho() + i) * Wo;
    const T* g = gy + at;
    const uint8_t* pos = where + at;
#ifdef ZOO_X86_KERNELS
    if constexpr (!std::is_same_v<T, double>)
      if (vector) return unpool_row_avx2<R>(g, pos, rows, Wo, s.spills(i));
#endif
    for (int64_t j = 0; j < Wo; ++j) {
      for (int e = 0; e < 2 * R; ++e) rows[e / 2][2 * j + e % 2] = T(0);
      rows[pos[j] / 2][2 * j + pos[j] % 2] = g[j];
    }
  });
}

/// 2x2 (R = 2, over the last two axes) or 2x2x2 (R = 4, over the last three) max pooling with stride 2.
template <int R>
struct MaxPoolFunction : public torch::autograd::Function<MaxPoolFunction<R>> {
  static constexpr int kAxes = R == 4 ? 3 : 2;

  static Pooling shape(const Tensor& x) {
    const int64_t D = R == 4 ? x.size(-3) : 1, H = x.size(-2), W = x.size(-1);
    return {x.numel() / (D * H * W), D, H, W, R};
  }

  /// {y, where}: the pooled maps and each window's position of its maximum (not differentiable).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x) {
    const auto s = shape(x);
    auto sizes = x.sizes().vec();
    for (int a = 1; a <= kAxes; ++a) sizes[sizes.size() - a] /= 2;
    auto y = torch::empty(sizes, x.options());
    auto where = torch::empty(sizes, x.options().dtype(torch::kUInt8));
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool", [&] {
      pool_forward<R, scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), s);
    });
    ctx->save_for_backward({x, where});
    ctx->mark_non_differentiable({where});
    return {y, where};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &where = saved[1];
    if (torch::GradMode::is_enabled()) {  // create_graph: a gradient that is differentiable again
      const auto y = reference(x, kAxes);
      return {torch::autograd::grad({y}, {x}, {grads[0]}, /*retain_graph=*/true, /*create_graph=*/true)[0]};
    }
    const auto gy = grads[0].to(x.scalar_type()).contiguous();
    const auto s = shape(x);
    const bool odd = s.H % 2 || s.W % 2 || (R == 4 && s.D % 2);
    auto gx = odd ? torch::zeros_like(x, torch::MemoryFormat::Contiguous)
                  : torch::empty_like(x, torch::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool_backward", [&] {
      pool_backward<R, scalar_t>(gy.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), s);
    });
    return {gx};
  }
};

/// The gradient of max-unpooling: each window's gradient at the window's maximum, one per window of `g` (the
/// unpooled maps' gradient).
template <int R, typename T>
void unpool_gather(const T* g, const uint8_t* where, T* gy, const Pooling& s) {
  const int64_t Wo = s.Wo();
  each_output_row(s, [&](int64_t p, int64_t od, int64_t i) {
    std::array<const T*, R> rows;
    for (int r = 0; r < R; ++r) rows[r] = g + s.row(p, od, i, r);
    const int64_t at = ((p * s.Do() + od) * s.Ho() + i) * Wo;
    for (int64_t j = 0; j < Wo; ++j) gy[at + j] = rows[where[at + j] / 2][2 * j + where[at + j] % 2];
  });
}

/// Max-unpooling with zoo's switches: y's elements at their windows' maxima in maps of `sizes`, zeros elsewhere
/// (the max pooling's backward loop, run forwards); its gradient gathers them back.
template <int R>
struct MaxUnpoolFunction : public torch::autograd::Function<MaxUnpoolFunction<R>> {
  static constexpr int kAxes = R == 4 ? 3 : 2;

  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& y, const Tensor& where,
                        const std::vector<int64_t>& sizes) {
    auto out = torch::empty(sizes, y.options());
    const auto s = MaxPoolFunction<R>::shape(out);
    const bool odd = s.H % 2 || s.W % 2 || (R == 4 && s.D % 2);
    if (odd) out.zero_();  // the elements in no window
    if (y.numel() > 0)
      AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, y.scalar_type(), "max_unpool", [&] {
        pool_backward<R, scalar_t>(y.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), out.data_ptr<scalar_t>(), s);
      });
    ctx->save_for_backward({where});
    ctx->saved_data["type"] = static_cast<int64_t>(y.scalar_type());
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto where = ctx->get_saved_variables()[0];
    const auto type = static_cast<torch::ScalarType>(ctx->saved_data["type"].toInt());
    const auto g = grads[0].to(type).contiguous();
    if (torch::GradMode::is_enabled()) {  // create_graph: the same gather through LibTorch's autograd
      const auto size = g.sizes().slice(static_cast<size_t>(g.dim() - kAxes));
      const auto idx = switch_indices(where, size).flatten(-kAxes);
      return {g.flatten(-kAxes).gather(-1, idx).view(where.sizes()), Tensor(), Tensor()};
    }
    auto gy = torch::empty(where.sizes(), g.options());
    if (gy.numel() > 0)
      AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, type, "max_unpool_backward", [&] {
        unpool_gather<R, scalar_t>(g.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), gy.data_ptr<scalar_t>(),
                                   MaxPoolFunction<R>::shape(g));
      });
    return {gy, Tensor(), Tensor()};
  }
};

/// The loop runs for contiguous float, double and bfloat16 CPU tensors with every pooled axis at least 2, when not
/// tracing.
bool loop_applies(const Tensor& x, int axes, bool fast) {
  const auto type = x.scalar_type();
  bool fits = x.numel() > 0;
  for (int a = 1; a <= axes; ++a) fits = fits && x.size(-a) >= 2;
  return fast && !torch::jit::tracer::isTracing() && x.device().is_cpu() &&
         (x.dim() == axes + 1 || x.dim() == axes + 2) && x.is_contiguous() &&
         (type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kBFloat16) && fits;
}

}  // namespace

Tensor max_pool2x2(const Tensor& x, bool fast) {
  return loop_applies(x, 2, fast) ? MaxPoolFunction<2>::apply(x)[0] : reference(x, 2);
}

Tensor max_pool2x2x2(const Tensor& x, bool fast) {
  return loop_applies(x, 3, fast) ? MaxPoolFunction<4>::apply(x)[0] : reference(x, 3);
}

std::tuple<Tensor, Tensor> max_pool_with_switches(const Tensor& x, int64_t axes, bool fast) {
  TORCH_CHECK(axes == 2 || axes == 3, "max_pool_with_switches pools 2 or 3 axes, got ", axes);
  if (loop_applies(x, static_cast<int>(axes), fast)) {
    const auto out = axes == 2 ? MaxPoolFunction<2>::apply(x) : MaxPoolFunction<4>::apply(x);
    return {out[0], out[1]};
  }
  if (axes == 2) return torch::max_pool2d_with_indices(x, {2, 2}, {2, 2}, {0, 0}, {1, 1});
  // LibTorch 1.13 has no bfloat16 CPU kernel for 3-D max pooling with indices: float32 there.
  return torch::max_pool3d_with_indices(float32(x), {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1});
}

Tensor switch_indices(const Tensor& where, at::IntArrayRef size) {
  const auto axes = static_cast<int64_t>(size.size());
  TORCH_CHECK((axes == 2 || axes == 3) && where.dim() >= axes, "switch_indices: 2 or 3 spatial sizes, got ", size);
  const auto e = where.to(torch::kInt64);
  const auto longs = torch::TensorOptions().dtype(torch::kInt64).device(where.device());
  // Output position along axis a (of the last `axes`), broadcast over the others.
  auto grid = [&](int64_t a) {
    std::vector<int64_t> shape(static_cast<size_t>(axes), 1);
    shape[static_cast<size_t>(a)] = where.size(where.dim() - axes + a);
    return torch::arange(shape[static_cast<size_t>(a)], longs).view(shape);
  };
  // The window's element e = (depth,) row, column in binary: column e % 2, row (e / 2) % 2, depth e / 4.
  const auto bit = [&](int64_t b) { return torch::div(e, int64_t{1} << b, "floor").remainder(2); };
  const int64_t H = size[axes - 2], W = size[axes - 1];
  auto flat = (2 * grid(axes - 2) + bit(1)) * W + 2 * grid(axes - 1) + bit(0);
  if (axes == 3) flat = flat + (2 * grid(0) + bit(2)) * (H * W);
  return flat;
}

Tensor max_unpool(const Tensor& y, const Tensor& switches, at::IntArrayRef size) {
  const auto axes = static_cast<int64_t>(size.size());
  TORCH_CHECK(axes == 2 || axes == 3, "max_unpool unpools 2 or 3 axes, got the output size ", size);
  if (switches.scalar_type() != torch::kUInt8) {  // LibTorch's indices
    // LibTorch 1.13 has no bfloat16 CPU kernel for max-unpooling: float32 there.
    const auto h = float32(y);
    return axes == 2 ? torch::max_unpool2d(h, switches, size)
                     : torch::max_unpool3d(h, switches, size, {2, 2, 2}, {0, 0, 0});
  }
  TORCH_CHECK(switches.sizes() == y.sizes(), "max_unpool: switches ", switches.sizes(), " for maps ", y.sizes());
  for (int64_t a = 0; a < axes; ++a)
    TORCH_CHECK(size[a] / 2 == y.size(y.dim() - axes + a), "max_unpool: maps ", y.sizes(), " do not pool from ", size);
  auto sizes = y.sizes().vec();
  for (int64_t a = 0; a < axes; ++a) sizes[sizes.size() - static_cast<size_t>(axes - a)] = size[a];
  return axes == 2 ? MaxUnpoolFunction<2>::apply(y.contiguous(), switches.contiguous(), sizes)
                   : MaxUnpoolFunction<4>::apply(y.contiguous(), switches.contiguous(), sizes);
}

}  // namespace zoo::ops
