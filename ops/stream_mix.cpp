#include "ops/stream_mix.h"

#include "ops/autocast.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cmath>

namespace zoo::ops {

namespace {

using torch::Tensor;

/// The plain path, and what the kernel's second derivatives go through: torch::matmul, with float32 operands when
/// their types differ (a backward outside autocast gets the operands autocast saw in mixed types).
Tensor reference(const Tensor& h, const Tensor& x) {
  return h.scalar_type() == x.scalar_type() ? torch::matmul(h, x) : torch::matmul(float32(h), float32(x));
}

bool kernel_type(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kBFloat16; }

/// What torch::matmul(h, x) returns here: autocast's type under CPU autocast, else the operands' promoted type.
torch::ScalarType product_type(const Tensor& h, const Tensor& x) {
  return cpu_autocast_type().value_or(torch::promote_types(h.scalar_type(), x.scalar_type()));
}

bool kernel_applies(const Tensor& h, const Tensor& x, bool fast) {
  if (!fast || !cpu_has_avx2_fma() || torch::jit::tracer::isTracing()) return false;
  if (h.dim() != 3 || x.dim() != 3 || !h.device().is_cpu() || !x.device().is_cpu() || x.numel() == 0) return false;
  const int64_t n = x.size(1);
  return n >= 1 && n <= 8 && h.size(0) == x.size(0) && h.size(1) == n && h.size(2) == n && x.is_contiguous() &&
         kernel_type(h.scalar_type()) && kernel_type(x.scalar_type()) && kernel_type(product_type(h, x));
}

#ifdef ZOO_X86_KERNELS
/// One item's mixing: out_t = sum_s H[t, s] x_s over L positions (N streams; H row-major, float32).
template <int N, typename X, typename Y>
ZOO_AVX2_FMA void mix_item(const float* H, const X* x, Y* out, int64_t L) {
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) {
    __m256 xs[N];
    for (int s = 0; s < N; ++s) xs[s] = load8(x + s * L + l);
    for (int t = 0; t < N; ++t) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(H[t * N]), xs[0]);
      for (int s = 1; s < N; ++s) acc = _mm256_fmadd_ps(_mm256_set1_ps(H[t * N + s]), xs[s], acc);
      store8(out + t * L + l, acc);
    }
  }
  for (; l < L; ++l) {
    for (int t = 0; t < N; ++t) {
      float acc = H[t * N] * static_cast<float>(x[l]);
      for (int s = 1; s < N; ++s) acc = std::fma(H[t * N + s], static_cast<float>(x[s * L + l]), acc);
      out[t * L + l] = static_cast<Y>(acc);
    }
  }
}

/// Eight float32 lanes summed in a fixed order.
ZOO_AVX2_FMA inline float lane_sum(__m256 v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));
}

/// One item's backward: dx_s = sum_t H[t, s] g_t, dH[t, s] = <g_t, x_s>, in one pass over g and x.
template <int N, typename X, typename G>
ZOO_AVX2_FMA void mix_item_backward(const float* H, const X* x, const G* g, X* dx, float* dH, int64_t L) {
  __m256 acc[N * N];
  for (int i = 0; i < N * N; ++i) acc[i] = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) {
    __m256 gs[N], xs[N];
    for (int t = 0; t < N; ++t) gs[t] = load8(g + t * L + l);
    for (int s = 0; s < N; ++s) xs[s] = load8(x + s * L + l);
    for (int s = 0; s < N; ++s) {
      __m256 d = _mm256_mul_ps(_mm256_set1_ps(H[s]), gs[0]);
      for (int t = 1; t < N; ++t) d = _mm256_fmadd_ps(_mm256_set1_ps(H[t * N + s]), gs[t], d);
      store8(dx + s * L + l, d);
    }
    for (int t = 0; t < N; ++t)
      for (int s = 0; s < N; ++s) acc[t * N + s] = _mm256_fmadd_ps(gs[t], xs[s], acc[t * N + s]);
  }
  float sums[N * N];
  for (int i = 0; i < N * N; ++i) sums[i] = lane_sum(acc[i]);
  for (; l < L; ++l) {
    float gs[N], xs[N];
    for (int t = 0; t < N; ++t) gs[t] = static_cast<float>(g[t * L + l]);
    for (int s = 0; s < N; ++s) xs[s] = static_cast<float>(x[s * L + l]);
    for (int s = 0; s < N; ++s) {
      float d = H[s] * gs[0];
      for (int t = 1; t < N; ++t) d = std::fma(H[t * N + s], gs[t], d);
      dx[s * L + l] = static_cast<X>(d);
    }
    for (int t = 0; t < N; ++t)
      for (int s = 0; s < N; ++s) sums[t * N + s] = std::fma(gs[t], xs[s], sums[t * N + s]);
  }
  for (int i = 0; i < N * N; ++i) dH[i] = sums[i];
}

/// Calls f with the stream count as a compile-time constant (1 .. 8).
template <typename F>
void with_streams(int64_t n, F&& f) {
  switch (n) {
    case 1:
      return f(std::integral_constant<int, 1>());
    case 2:
      return f(std::integral_constant<int, 2>());
    case 3:
      return f(std::integral_constant<int, 3>());
    case 4:
      return f(std::integral_constant<int, 4>());
    case 5:
      return f(std::integral_constant<int, 5>());
    case 6:
      return f(std::integral_constant<int, 6>());
    case 7:
      return f(std::integral_constant<int, 7>());
    default:
      return f(std::integral_constant<int, 8>());
  }
}

/// Calls f with a null pointer of the C++ type of t (float or c10::BFloat16), to pick a kernel's template.
template <typename F>
void with_type(torch::ScalarType t, F&& f) {
  if (t == torch::kBFloat16) return f(static_cast<c10::BFloat16*>(nullptr));
  f(static_cast<float*>(nullptr));
}

/// Items per task: about kGrain multiply-adds each.
int64_t items_per_task(int64_t n, int64_t L) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, n * n * L)); }
#endif

struct MixFunction : public torch::autograd::Function<MixFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& h, const Tensor& x) {
    const int64_t B = x.size(0), n = x.size(1), L = x.size(2);
    const auto hf = h.to(torch::kFloat32).contiguous();
    auto out = torch::empty({B, n, L}, x.options().dtype(product_type(h, x)));
#ifdef ZOO_X86_KERNELS
    with_type(x.scalar_type(), [&](auto* xt) {
      using X = std::remove_pointer_t<decltype(xt)>;
      with_type(out.scalar_type(), [&](auto* yt) {
        using Y = std::remove_pointer_t<decltype(yt)>;
        with_streams(n, [&](auto streams) {
          constexpr int N = decltype(streams)::value;
          const float* H = hf.data_ptr<float>();
          const X* xp = x.data_ptr<X>();
          Y* yp = out.data_ptr<Y>();
          at::parallel_for(0, B, items_per_task(n, L), [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) mix_item<N, X, Y>(H + b * n * n, xp + b * n * L, yp + b * n * L, L);
          });
        });
      });
    });
#endif
    ctx->save_for_backward({h, x});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &x = saved[1];
    if (torch::GradMode::is_enabled())  // create_graph: gradients that are differentiable again
      return gradients_through(
          ctx, {h, x}, [&] { return reference(h, x); }, grads[0], 2);
    const int64_t B = x.size(0), n = x.size(1), L = x.size(2);
    const auto hf = h.to(torch::kFloat32).contiguous();
    auto g = grads[0].contiguous();
    if (!kernel_type(g.scalar_type())) g = g.to(torch::kFloat32);
    auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    auto dh = torch::empty({B, n, n}, h.options().dtype(torch::kFloat32));
#ifdef ZOO_X86_KERNELS
    with_type(x.scalar_type(), [&](auto* xt) {
      using X = std::remove_pointer_t<decltype(xt)>;
      with_type(g.scalar_type(), [&](auto* gt) {
        using G = std::remove_pointer_t<decltype(gt)>;
        with_streams(n, [&](auto streams) {
          constexpr int N = decltype(streams)::value;
          const float* H = hf.data_ptr<float>();
          const X* xp = x.data_ptr<X>();
          const G* gp = g.data_ptr<G>();
          X* dxp = dx.data_ptr<X>();
          float* dhp = dh.data_ptr<float>();
          at::parallel_for(0, B, items_per_task(n, L), [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
              mix_item_backward<N, X, G>(H + b * n * n, xp + b * n * L, gp + b * n * L, dxp + b * n * L,
                                         dhp + b * n * n, L);
          });
        });
      });
    });
#endif
    return {dh.to(h.scalar_type()), dx};
  }
};

}  // namespace

Tensor mix_streams(const Tensor& h, const Tensor& x, bool fast) {
  return kernel_applies(h, x, fast) ? MixFunction::apply(h, x) : torch::matmul(h, x);
}

}  // namespace zoo::ops
