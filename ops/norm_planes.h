// The per-plane loops of zoo's normalisation kernels (ops::batch_norm, ops::group_norm): sums, squared deviations,
// y = x * scale + shift and dx = dy * a + x * b + c over one contiguous plane of S elements (float32 or bfloat16,
// computed in float32 vectors of 8 with AVX2 + FMA, the vectors' lanes added in double), and the same over one
// channels-last item's [S, C] rows, a channel per lane.
#pragma once

#include "ops/channels_last.h"
#include "ops/simd.h"

#include <cmath>

#include <torch/torch.h>

#include <algorithm>

namespace zoo::ops::planes {

/// A norm's weight, bias or running statistic that the kernels take: absent, or a contiguous float32 CPU vector [c].
inline bool absent_or_float_vector(const torch::Tensor& t, int64_t c) {
  return !t.defined() || (t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.dim() == 1 && t.size(0) == c &&
                          t.is_contiguous());
}

/// Whether x is channels-last in memory and not contiguous, [N, S..., C] (each position's C channels side by side),
/// with C a multiple of 8 (whole float32 vectors): what the norms' channels-last kernels take (the rows_* loops
/// below, one item per task).
inline bool channels_last_rows(const torch::Tensor& x) {
  return x.size(1) % 8 == 0 && (channels_last_only(x) || (x.dim() == 5 && !x.is_contiguous() &&
                                                          x.is_contiguous(torch::MemoryFormat::ChannelsLast3d)));
}

/// The memory format the norms' kernels read x in (and write y and dx in): channels-last where channels_last_rows.
inline torch::MemoryFormat layout_of(const torch::Tensor& x) {
  if (!channels_last_rows(x)) return torch::MemoryFormat::Contiguous;
  return x.dim() == 4 ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::ChannelsLast3d;
}

/// The data of a weight or bias the kernels take (absent_or_float_vector), or nullptr for an absent one (numel 0).
inline const float* data_or_null(const torch::Tensor& t) { return t.numel() > 0 ? t.data_ptr<float>() : nullptr; }

/// Tasks per parallel chunk, a task being about 3 passes over `per_task` elements.
inline int64_t grain(int64_t per_task) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, 3 * per_task)); }

/// The gradients a norm's backward fills: dx where x needs one; dweight and dbias (float32 [C]) where present
/// (numel > 0) and needed. The autograd function's inputs start with x, weight, bias.
struct Gradients {
  torch::Tensor dx, dweight, dbias;
};
inline Gradients empty_gradients(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                 const torch::Tensor& weight, const torch::Tensor& bias) {
  const auto parameters = x.options().dtype(torch::kFloat32);
  const int64_t c = x.size(1);
  return {ctx->needs_input_grad(0) ? torch::empty_like(x) : torch::Tensor(),
          ctx->needs_input_grad(1) && weight.numel() > 0 ? torch::empty({c}, parameters) : torch::Tensor(),
          ctx->needs_input_grad(2) && bias.numel() > 0 ? torch::empty({c}, parameters) : torch::Tensor()};
}

}  // namespace zoo::ops::planes

#ifdef ZOO_X86_KERNELS
namespace zoo::ops::planes {

// One image plane of one channel at a time (S contiguous floats): sums in float32 vectors (4 x 8 lanes), added in
// double across planes.
// The 8 lanes of a + b + c + d added in double as a tree (4 + 4, 2 + 2, 1 + 1), without a round trip through memory.
ZOO_AVX2_FMA inline double add_lanes(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 v = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
  const __m256d four =
      _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  const __m128d two = _mm_add_pd(_mm256_castpd256_pd128(four), _mm256_extractf128_pd(four, 1));
  return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
}

// A plane's last n < 8 elements, when the plane has 8 or more, are read as its last whole vector, x + S - 8: the
// lanes [8 - n, 8) are the new ones (tail_lanes sets them), the others were done by the vector loop. Stores write
// the overlap again with the same values (y and dx never alias x or dy). A scalar loop over a 36-element plane's
// 4 left-over elements had cost a 6 x 6 GroupNorm more than its vectors.
ZOO_AVX2_FMA inline __m256 tail_lanes(int64_t n) {
  return _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps(static_cast<float>(8 - n)), _CMP_GE_OQ);
}

template <typename T>
ZOO_AVX2_FMA double plane_sum(const T* x, int64_t S) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= S; i += 32) {
    a0 = _mm256_add_ps(a0, load8(x + i));
    a1 = _mm256_add_ps(a1, load8(x + i + 8));
    a2 = _mm256_add_ps(a2, load8(x + i + 16));
    a3 = _mm256_add_ps(a3, load8(x + i + 24));
  }
  for (; i + 8 <= S; i += 8) a0 = _mm256_add_ps(a0, load8(x + i));
  if (i < S && S >= 8) {
    a1 = _mm256_add_ps(a1, _mm256_and_ps(load8(x + S - 8), tail_lanes(S - i)));
    i = S;
  }
  double s = add_lanes(a0, a1, a2, a3);
  for (; i < S; ++i) s += static_cast<float>(x[i]);
  return s;
}

template <typename T>
ZOO_AVX2_FMA double plane_squared_deviations(const T* x, int64_t S, float mean) {
  const __m256 m = _mm256_set1_ps(mean);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= S; i += 32) {
    const __m256 d0 = _mm256_sub_ps(load8(x + i), m), d1 = _mm256_sub_ps(load8(x + i + 8), m);
    const __m256 d2 = _mm256_sub_ps(load8(x + i + 16), m), d3 = _mm256_sub_ps(load8(x + i + 24), m);
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
    a2 = _mm256_fmadd_ps(d2, d2, a2);
    a3 = _mm256_fmadd_ps(d3, d3, a3);
  }
  for (; i + 8 <= S; i += 8) {
    const __m256 d = _mm256_sub_ps(load8(x + i), m);
    a0 = _mm256_fmadd_ps(d, d, a0);
  }
  if (i < S && S >= 8) {
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(load8(x + S - 8), m), tail_lanes(S - i));
    a1 = _mm256_fmadd_ps(d, d, a1);
    i = S;
  }
  double s = add_lanes(a0, a1, a2, a3);
  for (; i < S; ++i) {
    const float d = static_cast<float>(x[i]) - mean;
    s += static_cast<double>(d) * d;
  }
  return s;
}

/// y = x * scale + shift.
template <typename T>
ZOO_AVX2_FMA void plane_affine(const T* x, T* y, int64_t S, float scale, float shift) {
  const __m256 a = _mm256_set1_ps(scale), b = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= S; i += 8) store8(y + i, _mm256_fmadd_ps(load8(x + i), a, b));
  if (i < S && S >= 8) {
    store8(y + S - 8, _mm256_fmadd_ps(load8(x + S - 8), a, b));
    i = S;
  }
  for (; i < S; ++i) y[i] = static_cast<T>(std::fma(static_cast<float>(x[i]), scale, shift));
}

/// sum(dy) and sum(dy * (x - mean)) of a plane, added to `sums`.
template <typename T>
ZOO_AVX2_FMA void plane_gradient_sums(const T* dy, const T* x, int64_t S, float mean, double& sum_dy,
                                      double& sum_dy_xmu) {
  const __m256 m = _mm256_set1_ps(mean);
  __m256 g0 = _mm256_setzero_ps(), g1 = g0, d0 = g0, d1 = g0;
  int64_t i = 0;
  for (; i + 16 <= S; i += 16) {
    const __m256 y0 = load8(dy + i), y1 = load8(dy + i + 8);
    g0 = _mm256_add_ps(g0, y0);
    g1 = _mm256_add_ps(g1, y1);
    d0 = _mm256_fmadd_ps(y0, _mm256_sub_ps(load8(x + i), m), d0);
    d1 = _mm256_fmadd_ps(y1, _mm256_sub_ps(load8(x + i + 8), m), d1);
  }
  for (; i + 8 <= S; i += 8) {
    const __m256 y0 = load8(dy + i);
    g0 = _mm256_add_ps(g0, y0);
    d0 = _mm256_fmadd_ps(y0, _mm256_sub_ps(load8(x + i), m), d0);
  }
  if (i < S && S >= 8) {
    const __m256 live = tail_lanes(S - i), y0 = load8(dy + S - 8);
    g1 = _mm256_add_ps(g1, _mm256_and_ps(y0, live));
    d1 = _mm256_add_ps(d1, _mm256_and_ps(_mm256_mul_ps(y0, _mm256_sub_ps(load8(x + S - 8), m)), live));
    i = S;
  }
  const __m256 zero = _mm256_setzero_ps();
  double g = add_lanes(g0, g1, zero, zero), d = add_lanes(d0, d1, zero, zero);
  for (; i < S; ++i) {
    const float g_i = static_cast<float>(dy[i]);
    g += g_i;
    d += static_cast<double>(g_i) * (static_cast<float>(x[i]) - mean);
  }
  sum_dy += g;
  sum_dy_xmu += d;
}

/// dx = dy * a + x * b + c.
template <typename T>
ZOO_AVX2_FMA void plane_input_gradient(const T* dy, const T* x, T* dx, int64_t S, float a, float b, float c) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 8 <= S; i += 8) store8(dx + i, _mm256_fmadd_ps(load8(dy + i), va, _mm256_fmadd_ps(load8(x + i), vb, vc)));
  if (i < S && S >= 8) {
    store8(dx + S - 8, _mm256_fmadd_ps(load8(dy + S - 8), va, _mm256_fmadd_ps(load8(x + S - 8), vb, vc)));
    i = S;
  }
  for (; i < S; ++i)
    dx[i] = static_cast<T>(std::fma(static_cast<float>(dy[i]), a, std::fma(static_cast<float>(x[i]), b, c)));
}

// Channels-last: one item's S positions of C channels each ([S, C], C a multiple of 8), each channel's sums over the
// positions in one float32 lane (blocks of 32 channels in four vector registers, then single vectors of 8).

/// Columns [c0, c0 + 8 V) of sums += sum_p x[p, c] (Squares false) or sum_p (x[p, c] - centre[c])^2 (true).
template <int V, bool Squares, typename T>
ZOO_AVX2_FMA inline void column_sums(const T* x, int64_t S, int64_t C, const float* centre, float* sums) {
  __m256 acc[V], m[V];
  for (int v = 0; v < V; ++v) {
    acc[v] = _mm256_setzero_ps();
    m[v] = Squares ? _mm256_loadu_ps(centre + 8 * v) : acc[v];
  }
  for (int64_t p = 0; p < S; ++p)
    for (int v = 0; v < V; ++v) {
      const __m256 d = _mm256_sub_ps(load8(x + p * C + 8 * v), m[v]);
      acc[v] = Squares ? _mm256_fmadd_ps(d, d, acc[v]) : _mm256_add_ps(acc[v], d);
    }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(sums + 8 * v, acc[v]);
}

/// sums[c] = sum_p x[p, c] (centre null) or sum_p (x[p, c] - centre[c])^2, in float32.
template <typename T>
ZOO_AVX2_FMA void rows_sums(const T* x, int64_t S, int64_t C, const float* centre, float* sums) {
  int64_t c = 0;
  for (; c + 32 <= C; c += 32)
    centre ? column_sums<4, true>(x + c, S, C, centre + c, sums + c)
           : column_sums<4, false>(x + c, S, C, nullptr, sums + c);
  for (; c < C; c += 8)
    centre ? column_sums<1, true>(x + c, S, C, centre + c, sums + c)
           : column_sums<1, false>(x + c, S, C, nullptr, sums + c);
}

/// Columns [c0, c0 + 8 V) of g_sums += sum_p dy[p, c] and d_sums += sum_p dy[p, c] (x[p, c] - centre[c]).
template <int V, typename T>
ZOO_AVX2_FMA inline void column_gradient_sums(const T* dy, const T* x, int64_t S, int64_t C, const float* centre,
                                              float* g_sums, float* d_sums) {
  __m256 g[V], d[V], m[V];
  for (int v = 0; v < V; ++v) {
    g[v] = d[v] = _mm256_setzero_ps();
    m[v] = _mm256_loadu_ps(centre + 8 * v);
  }
  for (int64_t p = 0; p < S; ++p)
    for (int v = 0; v < V; ++v) {
      const __m256 y = load8(dy + p * C + 8 * v);
      g[v] = _mm256_add_ps(g[v], y);
      d[v] = _mm256_fmadd_ps(y, _mm256_sub_ps(load8(x + p * C + 8 * v), m[v]), d[v]);
    }
  for (int v = 0; v < V; ++v) {
    _mm256_storeu_ps(g_sums + 8 * v, g[v]);
    _mm256_storeu_ps(d_sums + 8 * v, d[v]);
  }
}

/// g_sums[c] = sum_p dy[p, c] and d_sums[c] = sum_p dy[p, c] (x[p, c] - centre[c]), in float32.
template <typename T>
ZOO_AVX2_FMA void rows_gradient_sums(const T* dy, const T* x, int64_t S, int64_t C, const float* centre, float* g_sums,
                                     float* d_sums) {
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) column_gradient_sums<4>(dy + c, x + c, S, C, centre + c, g_sums + c, d_sums + c);
  for (; c < C; c += 8) column_gradient_sums<1>(dy + c, x + c, S, C, centre + c, g_sums + c, d_sums + c);
}

/// y[p, c] = x[p, c] * scale[c] + shift[c].
template <typename T>
ZOO_AVX2_FMA void rows_affine(const T* x, T* y, int64_t S, int64_t C, const float* scale, const float* shift) {
  for (int64_t p = 0; p < S; ++p)
    for (int64_t c = 0; c < C; c += 8)
      store8(y + p * C + c,
             _mm256_fmadd_ps(load8(x + p * C + c), _mm256_loadu_ps(scale + c), _mm256_loadu_ps(shift + c)));
}

/// dx[p, c] = dy[p, c] * a[c] + x[p, c] * b[c] + e[c].
template <typename T>
ZOO_AVX2_FMA void rows_input_gradient(const T* dy, const T* x, T* dx, int64_t S, int64_t C, const float* a,
                                      const float* b, const float* e) {
  for (int64_t p = 0; p < S; ++p)
    for (int64_t c = 0; c < C; c += 8)
      store8(dx + p * C + c,
             _mm256_fmadd_ps(load8(dy + p * C + c), _mm256_loadu_ps(a + c),
                             _mm256_fmadd_ps(load8(x + p * C + c), _mm256_loadu_ps(b + c), _mm256_loadu_ps(e + c))));
}

}  // namespace zoo::ops::planes
#endif  // ZOO_X86_KERNELS
