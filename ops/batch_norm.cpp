#include "ops/batch_norm.h"

#include "ops/norm_planes.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cmath>
#include <vector>

namespace zoo::ops {

namespace {

using torch::Tensor;
namespace F = torch::nn::functional;

/// LibTorch's own: the functional form the nn modules call (it refuses one value per channel in training).
Tensor functional_batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                             const Tensor& running_var, bool training, double momentum, double eps) {
  return F::detail::batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps);
}

using planes::absent_or_float_vector;
using planes::channels_last_rows;
using planes::grain;  // a channel per task (an item per task channels-last)
using planes::layout_of;

#ifdef ZOO_X86_KERNELS
using namespace planes;

/// y, and each channel's mean, 1 / sqrt(var + eps) and var (biased) of x [N, C, S...] (contiguous, of type T).
template <typename T>
void forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                    Tensor& invstd, std::vector<double>& variance) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), M = N * S;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const float* w = data_or_null(weight);
  const float* b = data_or_null(bias);
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  at::parallel_for(0, C, grain(M), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0, squares = 0;
      for (int64_t n = 0; n < N; ++n) sum += plane_sum(xp + (n * C + c) * S, S);
      const double mu = sum / static_cast<double>(M);
      for (int64_t n = 0; n < N; ++n)
        squares += plane_squared_deviations(xp + (n * C + c) * S, S, static_cast<float>(mu));
      const double var = squares / static_cast<double>(M), inv = 1.0 / std::sqrt(var + eps);
      const double scale = (w ? w[c] : 1.0) * inv, shift = (b ? b[c] : 0.0) - mu * scale;
      for (int64_t n = 0; n < N; ++n)
        plane_affine(xp + (n * C + c) * S, yp + (n * C + c) * S, S, static_cast<float>(scale),
                     static_cast<float>(shift));
      mp[c] = static_cast<float>(mu);
      ip[c] = static_cast<float>(inv);
      variance[static_cast<size_t>(c)] = var;
    }
  });
}

/// What a backward kernel reads and writes: x and dy (go) of type T, dx (null where not wanted), dw and db (null where
/// not wanted), the weight (null: none), the forward's mean and invstd; N items, C channels, S positions, M = N S.
template <typename T>
struct BackwardOperands {
  BackwardOperands(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& invstd, const Tensor& go,
                   Tensor& dx, Tensor& dw, Tensor& db)
      : N(x.size(0)),
        C(x.size(1)),
        S(x.numel() / (N * C)),
        M(N * S),
        x(x.data_ptr<T>()),
        dy(go.data_ptr<T>()),
        dx(dx.defined() ? dx.data_ptr<T>() : nullptr),
        dw(dw.defined() ? dw.data_ptr<float>() : nullptr),
        db(db.defined() ? db.data_ptr<float>() : nullptr),
        w(data_or_null(weight)),
        mean(mean.data_ptr<float>()),
        invstd(invstd.data_ptr<float>()) {}
  int64_t N, C, S, M;
  const T *x, *dy;
  T* dx;
  float *dw, *db;
  const float *w, *mean, *invstd;

  /// Channel c's dweight and dbias from its sums, and the terms of dx = dy a + x b + e:
  ///   dx = (dy - mean(dy) - (x - mean) k) a with k = invstd^2 mean(dy (x - mean)), a = invstd weight.
  void channel_terms(int64_t c, double sum_dy, double sum_dy_xmu, float& a, float& b, float& e) const {
    const double inv = invstd[c];
    if (dw) dw[c] = static_cast<float>(sum_dy_xmu * inv);
    if (db) db[c] = static_cast<float>(sum_dy);
    const double ac = inv * (w ? w[c] : 1.0), k = inv * inv * sum_dy_xmu / static_cast<double>(M);
    a = static_cast<float>(ac);
    b = static_cast<float>(-k * ac);
    e = static_cast<float>((mean[c] * k - sum_dy / static_cast<double>(M)) * ac);
  }
};

/// dx (if defined), dw and db (if defined) from dy and the forward's x, mean and invstd.
template <typename T>
void backward_kernel(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& invstd, const Tensor& go,
                     Tensor& dx, Tensor& dw, Tensor& db) {
  const BackwardOperands<T> o(x, weight, mean, invstd, go, dx, dw, db);
  const int64_t N = o.N, C = o.C, S = o.S;
  at::parallel_for(0, C, grain(o.M), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum_dy = 0, sum_dy_xmu = 0;
      for (int64_t n = 0; n < N; ++n)
        plane_gradient_sums(o.dy + (n * C + c) * S, o.x + (n * C + c) * S, S, o.mean[c], sum_dy, sum_dy_xmu);
      float a = 0, b = 0, e = 0;
      o.channel_terms(c, sum_dy, sum_dy_xmu, a, b, e);
      if (!o.dx) continue;
      for (int64_t n = 0; n < N; ++n)
        plane_input_gradient(o.dy + (n * C + c) * S, o.x + (n * C + c) * S, o.dx + (n * C + c) * S, S, a, b, e);
    }
  });
}

/// forward_kernel for a channels-last x [N, S..., C] (channels_last_rows): each item's per-channel sums over its S
/// positions in float32 (one item per task), added over the items in item order in double (the same bits at any
/// thread count); y in x's layout.
template <typename T>
void forward_kernel_channels_last(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                                  Tensor& mean, Tensor& invstd, std::vector<double>& variance) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), M = N * S;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const float *w = data_or_null(weight), *b = data_or_null(bias);
  float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  std::vector<float> partial(static_cast<size_t>(N * C)), scale(static_cast<size_t>(C)), shift(scale);
  // Each item's sums (centre null) or squared deviations from mp, then their total per channel in item order.
  const auto channel_totals = [&](const float* centre, std::vector<double>& totals) {
    at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) rows_sums(xp + n * S * C, S, C, centre, partial.data() + n * C);
    });
    for (int64_t c = 0; c < C; ++c) {
      double total = 0;
      for (int64_t n = 0; n < N; ++n) total += partial[static_cast<size_t>(n * C + c)];
      totals[static_cast<size_t>(c)] = total;
    }
  };
  std::vector<double> sums(static_cast<size_t>(C));
  channel_totals(nullptr, sums);
  for (int64_t c = 0; c < C; ++c) mp[c] = static_cast<float>(sums[static_cast<size_t>(c)] / static_cast<double>(M));
  channel_totals(mp, sums);
  for (int64_t c = 0; c < C; ++c) {
    const double var = sums[static_cast<size_t>(c)] / static_cast<double>(M), inv = 1.0 / std::sqrt(var + eps);
    const double k = (w ? w[c] : 1.0) * inv;
    scale[static_cast<size_t>(c)] = static_cast<float>(k);
    shift[static_cast<size_t>(c)] = static_cast<float>((b ? b[c] : 0.0) - static_cast<double>(mp[c]) * k);
    ip[c] = static_cast<float>(inv);
    variance[static_cast<size_t>(c)] = var;
  }
  at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) rows_affine(xp + n * S * C, yp + n * S * C, S, C, scale.data(), shift.data());
  });
}

/// backward_kernel for a channels-last x, dy and dx: each item's sums per channel, added in item order.
template <typename T>
void backward_kernel_channels_last(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& invstd,
                                   const Tensor& go, Tensor& dx, Tensor& dw, Tensor& db) {
  const BackwardOperands<T> o(x, weight, mean, invstd, go, dx, dw, db);
  const int64_t N = o.N, C = o.C, S = o.S;
  std::vector<float> g_partial(static_cast<size_t>(N * C)), d_partial(g_partial);
  at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      rows_gradient_sums(o.dy + n * S * C, o.x + n * S * C, S, C, o.mean, g_partial.data() + n * C,
                         d_partial.data() + n * C);
  });
  std::vector<float> a(static_cast<size_t>(C)), b(a), e(a);
  for (int64_t c = 0; c < C; ++c) {
    double sum_dy = 0, sum_dy_xmu = 0;
    for (int64_t n = 0; n < N; ++n) {
      sum_dy += g_partial[static_cast<size_t>(n * C + c)];
      sum_dy_xmu += d_partial[static_cast<size_t>(n * C + c)];
    }
    const auto i = static_cast<size_t>(c);
    o.channel_terms(c, sum_dy, sum_dy_xmu, a[i], b[i], e[i]);
  }
  if (!o.dx) return;
  at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      rows_input_gradient(o.dy + n * S * C, o.x + n * S * C, o.dx + n * S * C, S, C, a.data(), b.data(), e.data());
  });
}

struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
  // weight, bias, running_mean, running_var: empty (numel 0) when absent.
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps) {
    const int64_t C = x.size(1), M = x.numel() / C;
    auto y = torch::empty_like(x);
    const auto statistics = x.options().dtype(torch::kFloat32);
    auto mean = torch::empty({C}, statistics), invstd = torch::empty({C}, statistics);
    std::vector<double> variance(static_cast<size_t>(C));
    const bool last = channels_last_rows(x);
    if (x.scalar_type() == torch::kBFloat16)
      (last ? forward_kernel_channels_last<c10::BFloat16> : forward_kernel<c10::BFloat16>)(x, weight, bias, eps, y,
                                                                                           mean, invstd, variance);
    else
      (last ? forward_kernel_channels_last<float> : forward_kernel<float>)(x, weight, bias, eps, y, mean, invstd,
                                                                           variance);
    const float* mp = mean.data_ptr<float>();
    // The running statistics, as LibTorch moves them: the unbiased variance.
    const double unbiased = static_cast<double>(M) / static_cast<double>(M - 1);
    if (running_mean.numel() > 0) {
      float* r = running_mean.data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) r[c] = static_cast<float>(momentum * mp[c] + (1 - momentum) * r[c]);
    }
    if (running_var.numel() > 0) {
      float* r = running_var.data_ptr<float>();
      for (int64_t c = 0; c < C; ++c)
        r[c] = static_cast<float>(momentum * variance[static_cast<size_t>(c)] * unbiased + (1 - momentum) * r[c]);
    }
    ctx->save_for_backward({x, weight, bias, mean, invstd});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    if (torch::GradMode::is_enabled()) {  // under create_graph: through torch::batch_norm's autograd
      const auto optional = [](const Tensor& t) { return t.numel() > 0 ? t : Tensor(); };
      return gradients_through(
          ctx, {saved[0], saved[1], saved[2]},
          [&] {
            return torch::batch_norm(saved[0], optional(saved[1]), optional(saved[2]), {}, {}, /*training=*/true, 0.0,
                                     ctx->saved_data["eps"].toDouble(), /*cudnn_enabled=*/false);
          },
          grads[0], 7);
    }
    const auto &x = saved[0], &weight = saved[1], &mean = saved[3], &invstd = saved[4];
    const auto go = grads[0].to(x.scalar_type()).contiguous(layout_of(x));
    auto g = empty_gradients(ctx, x, weight, saved[2]);  // dx in x's layout
    const bool last = channels_last_rows(x);
    if (x.scalar_type() == torch::kBFloat16)
      (last ? backward_kernel_channels_last<c10::BFloat16>
            : backward_kernel<c10::BFloat16>)(x, weight, mean, invstd, go, g.dx, g.dweight, g.dbias);
    else
      (last ? backward_kernel_channels_last<float> : backward_kernel<float>)(x, weight, mean, invstd, go, g.dx,
                                                                             g.dweight, g.dbias);
    return {g.dx, g.dweight, g.dbias, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};
#endif  // ZOO_X86_KERNELS

}  // namespace

bool batch_norm_fast(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                     const Tensor& running_var, bool training) {
  if (!training || !cpu_has_avx2_fma() || torch::jit::tracer::isTracing()) return false;
  const auto type = x.scalar_type();
  if (!x.device().is_cpu() || (type != torch::kFloat32 && type != torch::kBFloat16) || x.dim() < 2 ||
      !(x.is_contiguous() || channels_last_rows(x)))
    return false;
  const int64_t c = x.size(1);
  if (x.numel() == 0 || x.numel() / c < 2) return false;  // LibTorch's own error for one value per channel
  return absent_or_float_vector(weight, c) && absent_or_float_vector(bias, c) &&
         absent_or_float_vector(running_mean, c) && absent_or_float_vector(running_var, c);
}

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps, bool fast) {
  if (!fast || !batch_norm_fast(x, weight, bias, running_mean, running_var, training))
    return functional_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps);
#ifdef ZOO_X86_KERNELS
  const auto none = torch::empty({0}, x.options());
  const auto or_none = [&](const Tensor& t) { return t.defined() ? t : none; };
  // The running statistics are buffers: updated in place, outside autograd.
  torch::Tensor rm = running_mean.defined() ? running_mean.detach() : none,
                rv = running_var.defined() ? running_var.detach() : none;
  return BatchNormFunction::apply(x, or_none(weight), or_none(bias), rm, rv, momentum, eps);
#else
  return functional_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps);
#endif
}

}  // namespace zoo::ops
