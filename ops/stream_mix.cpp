#include "ops/stream_mix.h"

#include "ops/autocast.h"
#include "ops/channels_last.h"
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

/// mix_streams_add's plain path: the mixing in float32, plus p_t f.
Tensor reference_add(const Tensor& h, const Tensor& x, const Tensor& p, const Tensor& f) {
  return torch::matmul(float32(h), float32(x)) + float32(p).unsqueeze(2) * float32(f).unsqueeze(1);
}

bool kernel_type(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kBFloat16; }

/// What torch::matmul(h, x) returns here: autocast's type under CPU autocast, else the operands' promoted type.
torch::ScalarType product_type(const Tensor& h, const Tensor& x) {
  return cpu_autocast_type().value_or(torch::promote_types(h.scalar_type(), x.scalar_type()));
}

bool kernel_applies(const Tensor& h, const Tensor& x, bool fast) {
  if (!fast || !cpu_has_avx2_fma() || torch::jit::tracer::isTracing()) return false;
  if (h.dim() != 3 || x.dim() != 3 || !h.device().is_cpu() || !x.device().is_cpu() || x.numel() == 0) return false;
  const int64_t n = x.size(1), m = h.size(1);
  return n >= 1 && n <= 8 && (m == n || m == 1) && h.size(0) == x.size(0) && h.size(2) == n && x.is_contiguous() &&
         kernel_type(h.scalar_type()) && kernel_type(x.scalar_type()) && kernel_type(product_type(h, x));
}

#ifdef ZOO_X86_KERNELS
/// One item's mixing: out_t = sum_s H[t, s] x_s (+ P[t] f where f is given) over L positions, for M output and N
/// input streams (H row-major [M, N], P [M], float32).
template <int M, int N, typename X, typename F, typename Y>
ZOO_AVX2_FMA void mix_item(const float* H, const float* P, const X* x, const F* f, Y* out, int64_t L) {
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) {
    __m256 xs[N];
    for (int s = 0; s < N; ++s) xs[s] = load8(x + s * L + l);
    const __m256 fs = f ? load8(f + l) : _mm256_setzero_ps();
    for (int t = 0; t < M; ++t) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(H[t * N]), xs[0]);
      for (int s = 1; s < N; ++s) acc = _mm256_fmadd_ps(_mm256_set1_ps(H[t * N + s]), xs[s], acc);
      if (f) acc = _mm256_fmadd_ps(_mm256_set1_ps(P[t]), fs, acc);
      store8(out + t * L + l, acc);
    }
  }
  for (; l < L; ++l) {
    for (int t = 0; t < M; ++t) {
      float acc = H[t * N] * static_cast<float>(x[l]);
      for (int s = 1; s < N; ++s) acc = std::fma(H[t * N + s], static_cast<float>(x[s * L + l]), acc);
      if (f) acc = std::fma(P[t], static_cast<float>(f[l]), acc);
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

/// One item's backward: dx_s = sum_t H[t, s] g_t, dH[t, s] = <g_t, x_s>, and where f is given df = sum_t P[t] g_t,
/// dP[t] = <g_t, f>, in one pass over g, x and f.
template <int M, int N, typename X, typename F, typename G>
ZOO_AVX2_FMA void mix_item_backward(const float* H, const float* P, const X* x, const F* f, const G* g, X* dx, F* df,
                                    float* dH, float* dP, int64_t L) {
  __m256 acc[M * N], accP[M];
  for (int i = 0; i < M * N; ++i) acc[i] = _mm256_setzero_ps();
  for (int t = 0; t < M; ++t) accP[t] = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) {
    __m256 gs[M], xs[N];
    for (int t = 0; t < M; ++t) gs[t] = load8(g + t * L + l);
    for (int s = 0; s < N; ++s) xs[s] = load8(x + s * L + l);
    for (int s = 0; s < N; ++s) {
      __m256 d = _mm256_mul_ps(_mm256_set1_ps(H[s]), gs[0]);
      for (int t = 1; t < M; ++t) d = _mm256_fmadd_ps(_mm256_set1_ps(H[t * N + s]), gs[t], d);
      store8(dx + s * L + l, d);
    }
    for (int t = 0; t < M; ++t)
      for (int s = 0; s < N; ++s) acc[t * N + s] = _mm256_fmadd_ps(gs[t], xs[s], acc[t * N + s]);
    if (f) {
      const __m256 fs = load8(f + l);
      __m256 d = _mm256_mul_ps(_mm256_set1_ps(P[0]), gs[0]);
      for (int t = 1; t < M; ++t) d = _mm256_fmadd_ps(_mm256_set1_ps(P[t]), gs[t], d);
      store8(df + l, d);
      for (int t = 0; t < M; ++t) accP[t] = _mm256_fmadd_ps(gs[t], fs, accP[t]);
    }
  }
  float sums[M * N], sumsP[M];
  for (int i = 0; i < M * N; ++i) sums[i] = lane_sum(acc[i]);
  for (int t = 0; t < M; ++t) sumsP[t] = lane_sum(accP[t]);
  for (; l < L; ++l) {
    float gs[M], xs[N];
    for (int t = 0; t < M; ++t) gs[t] = static_cast<float>(g[t * L + l]);
    for (int s = 0; s < N; ++s) xs[s] = static_cast<float>(x[s * L + l]);
    for (int s = 0; s < N; ++s) {
      float d = H[s] * gs[0];
      for (int t = 1; t < M; ++t) d = std::fma(H[t * N + s], gs[t], d);
      dx[s * L + l] = static_cast<X>(d);
    }
    for (int t = 0; t < M; ++t)
      for (int s = 0; s < N; ++s) sums[t * N + s] = std::fma(gs[t], xs[s], sums[t * N + s]);
    if (f) {
      const auto fl = static_cast<float>(f[l]);
      float d = P[0] * gs[0];
      for (int t = 1; t < M; ++t) d = std::fma(P[t], gs[t], d);
      df[l] = static_cast<F>(d);
      for (int t = 0; t < M; ++t) sumsP[t] = std::fma(gs[t], fl, sumsP[t]);
    }
  }
  for (int i = 0; i < M * N; ++i) dH[i] = sums[i];
  if (f)
    for (int t = 0; t < M; ++t) dP[t] = sumsP[t];
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

/// Calls f with std::integral_constant<int, N> for m = N output streams, or <int, 1> for one (H [B, 1, N]).
template <int N, typename F>
void with_outputs(int64_t m, F&& f) {
  if (m == 1) return f(std::integral_constant<int, 1>());
  f(std::integral_constant<int, N>());
}

/// Calls f with a null pointer of the C++ type of t (float or c10::BFloat16), to pick a kernel's template.
template <typename F>
void with_type(torch::ScalarType t, F&& f) {
  if (t == torch::kBFloat16) return f(static_cast<c10::BFloat16*>(nullptr));
  f(static_cast<float*>(nullptr));
}

/// Items per task: about kGrain multiply-adds each.
int64_t items_per_task(int64_t m, int64_t n, int64_t L) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, m * (n + 1) * L));
}

/// What every call of the kernels reads: H [B, M, N] and P [B, M] in float32 (P null without f), x and f (null
/// where undefined) in their own C++ types X and F, and the sizes.
template <typename X_, typename F_>
struct Operands {
  using X = X_;
  using F = F_;
  const float *H, *P;
  const X* x;
  const F* f;
  int64_t B, n, m, L;
};

/// Calls fn(Operands<X, F>, S*, std::integral_constant<int, N>, std::integral_constant<int, M>) with the operands of
/// h [B, M, N], x [B, N, L] (contiguous), p [B, M] and f [B, L] (or undefined), a null pointer of the C++ type `s`
/// (the output's or its gradient's), and the stream counts N = n and M = m (N or 1) as constants.
template <typename Fn>
void with_kernel(const Tensor& h, const Tensor& x, const Tensor& p, const Tensor& f, torch::ScalarType s, Fn&& fn) {
  const int64_t n = x.size(1), m = h.size(1);
  const auto hf = h.to(torch::kFloat32).contiguous();
  const auto pf = p.defined() ? p.to(torch::kFloat32).contiguous() : Tensor();
  with_type(x.scalar_type(), [&](auto* xt) {
    using X = std::remove_pointer_t<decltype(xt)>;
    with_type(s, [&](auto* st) {
      with_type(f.defined() ? f.scalar_type() : torch::kFloat32, [&](auto* ft) {
        using F = std::remove_pointer_t<decltype(ft)>;
        const Operands<X, F> o{hf.data_ptr<float>(),
                               p.defined() ? pf.data_ptr<float>() : nullptr,
                               x.data_ptr<X>(),
                               f.defined() ? f.data_ptr<F>() : nullptr,
                               x.size(0),
                               n,
                               m,
                               x.size(2)};
        with_streams(n, [&](auto inputs) {
          constexpr int N = decltype(inputs)::value;
          with_outputs<N>(m, [&](auto outputs) { fn(o, st, inputs, outputs); });
        });
      });
    });
  });
}
#endif

/// One item's values in the plain order [C, S] from a channels-last map's [S, C] (to_plain), or back (the other way).
template <typename T>
void item_to_plain(const T* item, T* plain, int64_t channels, int64_t L) {
  detail::transpose(item, plain, L / channels, channels);
}
template <typename T>
void plain_to_item(const T* plain, T* item, int64_t channels, int64_t L) {
  detail::transpose(plain, item, channels, L / channels);
}

/// out [B, M, L] (float32 or bfloat16) = H x (+ P f): x [B, N, L] float32 or bfloat16 contiguous, h [B, M, N],
/// p [B, M] and f [B, L] (contiguous, float32 or bfloat16) or undefined. f_channels > 0: each item of f is a
/// channels-last map of that many channels ([S, C] in memory); out_channels > 0 (M = 1): out's items are written so.
void mix_forward(const Tensor& h, const Tensor& x, const Tensor& p, const Tensor& f, Tensor& out,
                 int64_t f_channels = 0, int64_t out_channels = 0) {
#ifdef ZOO_X86_KERNELS
  with_kernel(h, x, p, f, out.scalar_type(), [&](const auto& o, auto* yt, auto in, auto mo) {
    using X = typename std::decay_t<decltype(o)>::X;
    using F = typename std::decay_t<decltype(o)>::F;
    using Y = std::remove_pointer_t<decltype(yt)>;
    constexpr int N = decltype(in)::value, M = decltype(mo)::value;
    const int64_t m = o.m, n = o.n, L = o.L;
    Y* yp = out.data_ptr<Y>();
    at::parallel_for(0, o.B, items_per_task(m, n, L), [&](int64_t b0, int64_t b1) {
      std::vector<F> f_plain(static_cast<size_t>(f_channels > 0 ? L : 0));
      std::vector<Y> y_plain(static_cast<size_t>(out_channels > 0 ? L : 0));
      for (int64_t b = b0; b < b1; ++b) {
        const F* fb = o.f ? o.f + b * L : nullptr;
        if (f_channels > 0) {
          item_to_plain(fb, f_plain.data(), f_channels, L);
          fb = f_plain.data();
        }
        Y* yb = out_channels > 0 ? y_plain.data() : yp + b * m * L;
        mix_item<M, N, X, F, Y>(o.H + b * m * n, o.P ? o.P + b * m : nullptr, o.x + b * n * L, fb, yb, L);
        if (out_channels > 0) plain_to_item(y_plain.data(), yp + b * L, out_channels, L);
      }
    });
  });
#endif
}

/// The gradients of mix_forward's output for g [B, M, L]: dx like x, dh [B, M, N] float32, and where f is given
/// df like f and dp [B, M] float32. f_channels > 0: f's and df's items are channels-last maps of that many channels;
/// g_channels > 0 (M = 1): g's are.
void mix_backward(const Tensor& h, const Tensor& x, const Tensor& p, const Tensor& f, const Tensor& g, Tensor& dx,
                  Tensor& dh, Tensor& df, Tensor& dp, int64_t f_channels = 0, int64_t g_channels = 0) {
#ifdef ZOO_X86_KERNELS
  with_kernel(h, x, p, f, g.scalar_type(), [&](const auto& o, auto* gt, auto in, auto mo) {
    using X = typename std::decay_t<decltype(o)>::X;
    using F = typename std::decay_t<decltype(o)>::F;
    using G = std::remove_pointer_t<decltype(gt)>;
    constexpr int N = decltype(in)::value, M = decltype(mo)::value;
    const int64_t m = o.m, n = o.n, L = o.L;
    const G* gp = g.data_ptr<G>();
    X* dxp = dx.data_ptr<X>();
    F* dfp = f.defined() ? df.data_ptr<F>() : nullptr;
    float* dhp = dh.data_ptr<float>();
    float* dpp = f.defined() ? dp.data_ptr<float>() : nullptr;
    at::parallel_for(0, o.B, items_per_task(m, n, L), [&](int64_t b0, int64_t b1) {
      const auto f_size = static_cast<size_t>(f_channels > 0 ? L : 0);
      std::vector<F> f_plain(f_size), df_plain(f_size);
      std::vector<G> g_plain(static_cast<size_t>(g_channels > 0 ? L : 0));
      for (int64_t b = b0; b < b1; ++b) {
        const F* fb = o.f ? o.f + b * L : nullptr;
        F* dfb = dfp ? dfp + b * L : nullptr;
        if (f_channels > 0) {
          item_to_plain(fb, f_plain.data(), f_channels, L);
          fb = f_plain.data();
          dfb = df_plain.data();
        }
        const G* gb = gp + b * m * L;
        if (g_channels > 0) {
          item_to_plain(gb, g_plain.data(), g_channels, L);
          gb = g_plain.data();
        }
        mix_item_backward<M, N, X, F, G>(o.H + b * m * n, o.P ? o.P + b * m : nullptr, o.x + b * n * L, fb, gb,
                                         dxp + b * n * L, dfb, dhp + b * m * n, dpp ? dpp + b * m : nullptr, L);
        if (f_channels > 0) plain_to_item(df_plain.data(), dfp + b * L, f_channels, L);
      }
    });
  });
#endif
}

struct MixFunction : public torch::autograd::Function<MixFunction> {
  /// map empty: out [B, M, L]; map {C, H, W} (M = 1, L = C H W): out [B, C, H, W] in channels-last memory.
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& h, const Tensor& x,
                        std::vector<int64_t> map) {
    const auto options = x.options().dtype(product_type(h, x));
    const int64_t channels = map.empty() ? 0 : map[0];
    auto out = map.empty() ? torch::empty({x.size(0), h.size(1), x.size(2)}, options)
                           : torch::empty({x.size(0), map[0], map[1], map[2]},
                                          options.memory_format(torch::MemoryFormat::ChannelsLast));
    mix_forward(h, x, Tensor(), Tensor(), out, 0, channels);
    ctx->save_for_backward({h, x});
    ctx->saved_data["channels"] = channels;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &x = saved[1];
    if (torch::GradMode::is_enabled())  // create_graph: gradients that are differentiable again
      return gradients_through(
          ctx, {h, x}, [&] { return reference(h, x).view(grads[0].sizes()); }, grads[0], 3);
    auto g = grads[0];
    if (!kernel_type(g.scalar_type())) g = g.to(torch::kFloat32);
    // A channels-last gradient of a map is read item by item through transposes; any other, in the plain order.
    const int64_t channels = channels_last_only(g) ? g.size(1) : 0;
    if (channels == 0) g = g.contiguous();
    auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    auto dh = torch::empty(h.sizes(), h.options().dtype(torch::kFloat32));
    Tensor df, dp;
    mix_backward(h, x, Tensor(), Tensor(), g, dx, dh, df, dp, 0, channels);
    return {dh.to(h.scalar_type()), dx, Tensor()};
  }
};

struct MixAddFunction : public torch::autograd::Function<MixAddFunction> {
  /// f [B, L], or a channels-last map [B, C, H, W] of L values an item (channels_last_only, ops/channels_last.h: read
  /// and written item by item through transposes).
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& h, const Tensor& x, const Tensor& p,
                        const Tensor& f, torch::ScalarType type) {
    auto out = torch::empty(x.sizes(), x.options().dtype(type));
    mix_forward(h, x, p, f, out, channels_last_only(f) ? f.size(1) : 0);
    ctx->save_for_backward({h, x, p, f});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &x = saved[1], &p = saved[2], &f = saved[3];
    if (torch::GradMode::is_enabled())
      return gradients_through(
          ctx, {h, x, p, f}, [&] { return reference_add(h, x, p, f.flatten(1)); }, grads[0], 5);
    auto g = grads[0].contiguous();
    if (!kernel_type(g.scalar_type())) g = g.to(torch::kFloat32);
    auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    auto df = torch::empty_like(f);  // in f's layout
    auto dh = torch::empty(h.sizes(), h.options().dtype(torch::kFloat32));
    auto dp = torch::empty(p.sizes(), p.options().dtype(torch::kFloat32));
    mix_backward(h, x, p, f, g, dx, dh, df, dp, channels_last_only(f) ? f.size(1) : 0);
    return {dh.to(h.scalar_type()), dx, dp.to(p.scalar_type()), df, Tensor()};
  }
};

/// Whether read_streams's and repeat_streams's kernels take x.
bool streams_kernel_applies(const Tensor& x) {
  return cpu_has_avx2_fma() && !torch::jit::tracer::isTracing() && x.device().is_cpu() && x.is_contiguous() &&
         kernel_type(x.scalar_type()) && x.numel() > 0;
}

#ifdef ZOO_X86_KERNELS
/// dx = (da + db) + m[r] over each row r of `count` elements, in float32, rounded once to X.
template <typename X>
ZOO_AVX2_FMA void add_reads(const X* da, const X* db, const float* m, X* dx, int64_t count, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const __m256 mv = _mm256_set1_ps(m[r]);
    const X *a = da + r * count, *b = db + r * count;
    X* out = dx + r * count;
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) store8(out + i, _mm256_add_ps(_mm256_add_ps(load8(a + i), load8(b + i)), mv));
    for (; i < count; ++i) out[i] = static_cast<X>((static_cast<float>(a[i]) + static_cast<float>(b[i])) + m[r]);
  }
}

/// dx[b] = sum over s of g[b, s] (n streams of L elements each), in float32 in stream order, rounded once to X.
template <typename X>
ZOO_AVX2_FMA void sum_streams(const X* g, X* dx, int64_t n, int64_t L, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const X* gb = g + b * n * L;
    X* out = dx + b * L;
    int64_t l = 0;
    for (; l + 8 <= L; l += 8) {
      __m256 acc = load8(gb + l);
      for (int64_t s = 1; s < n; ++s) acc = _mm256_add_ps(acc, load8(gb + s * L + l));
      store8(out + l, acc);
    }
    for (; l < L; ++l) {
      float acc = static_cast<float>(gb[l]);
      for (int64_t s = 1; s < n; ++s) acc += static_cast<float>(gb[s * L + l]);
      out[l] = static_cast<X>(acc);
    }
  }
}
#endif

struct ReadStreamsFunction : public torch::autograd::Function<ReadStreamsFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x) {
    ctx->saved_data["sizes"] = x.sizes().vec();
    ctx->saved_data["type"] = static_cast<int64_t>(x.scalar_type());
    return {float32_mean(x, 3), x.view_as(x), x.view_as(x)};  // no gradient is recorded inside a forward
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto type = static_cast<torch::ScalarType>(ctx->saved_data["type"].toInt());
    const int64_t rows = sizes[0] * sizes[1] * sizes[2];
    int64_t count = 1;
    for (size_t d = 3; d < sizes.size(); ++d) count *= sizes[d];
    const auto options = torch::TensorOptions().dtype(type);
    // The means' gradient as float32_mean's backward computes it: g / count, per row.
    auto m = grads[0].defined() ? grads[0].to(torch::kFloat32) / static_cast<double>(count)
                                : torch::zeros({sizes[0], sizes[1], sizes[2]});
    if (torch::GradMode::is_enabled()) {  // create_graph: differentiable operations, the plain path's
      std::vector<int64_t> shape{sizes[0], sizes[1], sizes[2]};
      shape.resize(sizes.size(), 1);
      auto dx = m.to(type).view(shape).expand(sizes);
      for (const size_t i : {size_t{1}, size_t{2}})
        if (grads[i].defined()) dx = grads[i] + dx;
      return {dx};
    }
    auto read = [&](size_t i) {
      return grads[i].defined() ? grads[i].to(type).contiguous() : torch::zeros(sizes, options);
    };
    const auto da = read(1), db = read(2);
    m = m.contiguous();
    auto dx = torch::empty(sizes, options);
#ifdef ZOO_X86_KERNELS
    with_type(type, [&](auto* tag) {
      using X = std::remove_pointer_t<decltype(tag)>;
      const X *a = da.data_ptr<X>(), *b = db.data_ptr<X>();
      const float* mp = m.data_ptr<float>();
      X* out = dx.data_ptr<X>();
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / count),
                       [&](int64_t r0, int64_t r1) { add_reads<X>(a, b, mp, out, count, r0, r1); });
    });
#endif
    return {dx};
  }
};

struct RepeatStreamsFunction : public torch::autograd::Function<RepeatStreamsFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, int64_t n) {
    ctx->saved_data["n"] = n;
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.insert(sizes.begin() + 1, n);
    return x.unsqueeze(1).expand(sizes).contiguous();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const int64_t n = ctx->saved_data["n"].toInt();
    const auto& g = grads[0];
    if (torch::GradMode::is_enabled() || !streams_kernel_applies(g))  // create_graph, or a gradient in another form
      return {g.sum(1), Tensor()};
    auto sizes = g.sizes().vec();
    sizes.erase(sizes.begin() + 1);
    auto dx = torch::empty(sizes, g.options());
    const int64_t items = sizes[0], L = g.numel() / (items * n);
#ifdef ZOO_X86_KERNELS
    with_type(g.scalar_type(), [&](auto* tag) {
      using X = std::remove_pointer_t<decltype(tag)>;
      const X* gp = g.data_ptr<X>();
      X* out = dx.data_ptr<X>();
      at::parallel_for(0, items, std::max<int64_t>(1, kGrain / (n * L)),
                       [&](int64_t b0, int64_t b1) { sum_streams<X>(gp, out, n, L, b0, b1); });
    });
#endif
    return {dx, Tensor()};
  }
};

}  // namespace

Tensor mix_streams(const Tensor& h, const Tensor& x, bool fast) {
  return kernel_applies(h, x, fast) ? MixFunction::apply(h, x, std::vector<int64_t>()) : torch::matmul(h, x);
}

Tensor mix_streams_map(const Tensor& h, const Tensor& x, bool fast) {
  TORCH_CHECK(x.dim() >= 3 && h.dim() == 2 && h.size(0) == x.size(0) && h.size(1) == x.size(1),
              "mix_streams_map expects h [B, n] and streams x [B, n, C, ...], got ", h.sizes(), " and ", x.sizes());
  auto shape = x.sizes().vec();
  shape.erase(shape.begin() + 1);
  const auto flat = x.flatten(2);
  const auto weights = h.unsqueeze(1);
  const auto low = cpu_autocast_type();
  if (kernel_applies(weights, flat, fast) && low == torch::kBFloat16 && amx_channels_last(shape))
    return MixFunction::apply(weights, flat, std::vector<int64_t>{shape[1], shape[2], shape[3]});
  shape.front() = -1;  // not x.size(0): a LibTorch trace keeps the batch size free
  return mix_streams(weights, flat, fast).view(shape);
}

Tensor mix_streams_add(const Tensor& h, const Tensor& x, const Tensor& p, const Tensor& f, bool fast) {
  TORCH_CHECK(
      h.dim() == 3 && x.dim() == 3 && h.size(0) == x.size(0) && h.size(1) == x.size(1) && h.size(2) == x.size(1),
      "mix_streams_add expects h [B, n, n] and x [B, n, L], got ", h.sizes(), " and ", x.sizes());
  TORCH_CHECK(p.dim() == 2 && p.size(0) == x.size(0) && p.size(1) == x.size(1) && f.dim() >= 2 &&
                  f.size(0) == x.size(0) && f.numel() == x.size(0) * x.size(2),
              "mix_streams_add expects p [B, n] and f [B, L] (or [B, ...] of L values an item) for x ", x.sizes(),
              ", got ", p.sizes(), " and ", f.sizes());
  // The plain path's type: the product's (autocast's under CPU autocast) promoted with p f's.
  const auto type = torch::promote_types(product_type(h, x), torch::promote_types(p.scalar_type(), f.scalar_type()));
  if (kernel_applies(h, x, fast) && kernel_type(type) && kernel_type(p.scalar_type()) && kernel_type(f.scalar_type()) &&
      p.device().is_cpu() && f.device().is_cpu()) {
    if (channels_last_only(f)) return MixAddFunction::apply(h, x, p, f, type);
    return MixAddFunction::apply(h, x, p, f.reshape({f.size(0), -1}).contiguous(), type);
  }
  return mix_streams(h, x, fast) + p.unsqueeze(2) * f.flatten(1).unsqueeze(1);
}

StreamReads read_streams(const Tensor& x) {
  TORCH_CHECK(x.dim() >= 4, "read_streams expects streams [B, n, C, ...] with an axis after C, got ", x.sizes());
  if (!streams_kernel_applies(x)) return {float32_mean(x, 3), x, x};
  auto out = ReadStreamsFunction::apply(x);
  return {out[0], out[1], out[2]};
}

Tensor repeat_streams(const Tensor& x, int64_t n) {
  TORCH_CHECK(n >= 1, "repeat_streams: streams must be >= 1, got ", n);
  TORCH_CHECK(x.dim() >= 1, "repeat_streams expects [B, ...], got a scalar");
  if (!streams_kernel_applies(x)) {
    std::vector<int64_t> repeats(static_cast<size_t>(x.dim() + 1), 1);
    repeats[1] = n;
    return x.unsqueeze(1).repeat(repeats);
  }
  return RepeatStreamsFunction::apply(x, n);
}

}  // namespace zoo::ops
