#include "ops/group_norm.h"

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

using planes::channels_last_rows;
using planes::layout_of;

#ifdef ZOO_X86_KERNELS
using namespace planes;  // an (item, group) per task

/// dweight and dbias (where defined): each item's sums per channel, sum(dy (x - mean)) invstd and sum(dy), added over
/// the items in item order (the same bits at any thread count).
void sum_parameter_gradients(const std::vector<double>& sum_dy, const std::vector<double>& sum_dy_xhat, int64_t N,
                             int64_t C, Tensor& dw, Tensor& db) {
  float* dwp = dw.defined() ? dw.data_ptr<float>() : nullptr;
  float* dbp = db.defined() ? db.data_ptr<float>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    double g = 0, d = 0;
    for (int64_t n = 0; n < N; ++n) {
      g += sum_dy[static_cast<size_t>(n * C + c)];
      d += sum_dy_xhat[static_cast<size_t>(n * C + c)];
    }
    if (dwp) dwp[c] = static_cast<float>(d);
    if (dbp) dbp[c] = static_cast<float>(g);
  }
}

/// y, and each (item, group)'s mean and 1 / sqrt(var + eps), of x [N, C, S...] (contiguous, of type T).
template <typename T>
void group_forward(const Tensor& x, int64_t G, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                   Tensor& mean, Tensor& invstd) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), Cg = C / G, M = Cg * S;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const float* w = data_or_null(weight);
  const float* b = data_or_null(bias);
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  at::parallel_for(0, N * G, grain(M), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c0 = task % G * Cg;
      const T* xg = xp + (task / G * C + c0) * S;  // the group's Cg planes, one after the other
      // The group's planes are contiguous: its statistics in one pass each over all M elements (per plane, a 6 x 6
      // map's 36 elements left a scalar tail and a reduction of the lanes for every plane).
      const double mu = plane_sum(xg, M) / static_cast<double>(M);
      const double squares = plane_squared_deviations(xg, M, static_cast<float>(mu));
      const double inv = 1.0 / std::sqrt(squares / static_cast<double>(M) + eps);
      for (int64_t c = 0; c < Cg; ++c) {
        const double scale = (w ? w[c0 + c] : 1.0) * inv, shift = (b ? b[c0 + c] : 0.0) - mu * scale;
        plane_affine(xg + c * S, yp + (xg - xp) + c * S, S, static_cast<float>(scale), static_cast<float>(shift));
      }
      mp[task] = static_cast<float>(mu);
      ip[task] = static_cast<float>(inv);
    }
  });
}

/// dx (if defined), dw and db (if defined) from dy and the forward's x, mean and invstd.
template <typename T>
void group_backward(const Tensor& x, int64_t G, const Tensor& weight, const Tensor& mean, const Tensor& invstd,
                    const Tensor& go, Tensor& dx, Tensor& dw, Tensor& db) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), Cg = C / G, M = Cg * S;
  const T *xp = x.data_ptr<T>(), *gp = go.data_ptr<T>();
  T* dp = dx.defined() ? dx.data_ptr<T>() : nullptr;
  const float* w = data_or_null(weight);
  const float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  // Per item and channel: sum(dy) and invstd sum(dy (x - mean)), summed over items below in item order.
  std::vector<double> sum_dy(static_cast<size_t>(N * C)), sum_dy_xhat(static_cast<size_t>(N * C));
  at::parallel_for(0, N * G, grain(M), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / G, c0 = task % G * Cg, offset = (n * C + c0) * S;
      const float mu = mp[task];
      const double inv = ip[task];
      double A = 0, B = 0;
      for (int64_t c = 0; c < Cg; ++c) {
        double g = 0, d = 0;
        plane_gradient_sums(gp + offset + c * S, xp + offset + c * S, S, mu, g, d);
        const double wc = w ? w[c0 + c] : 1.0;
        A += wc * g;
        B += wc * d;
        sum_dy[static_cast<size_t>(n * C + c0 + c)] = g;
        sum_dy_xhat[static_cast<size_t>(n * C + c0 + c)] = d * inv;
      }
      if (!dp) continue;
      const double k = inv * inv * inv * B / static_cast<double>(M);
      const double e = mu * k - inv * A / static_cast<double>(M);
      for (int64_t c = 0; c < Cg; ++c) {
        const double a = inv * (w ? w[c0 + c] : 1.0);
        plane_input_gradient(gp + offset + c * S, xp + offset + c * S, dp + offset + c * S, S, static_cast<float>(a),
                             static_cast<float>(-k), static_cast<float>(e));
      }
    }
  });
  sum_parameter_gradients(sum_dy, sum_dy_xhat, N, C, dw, db);
}

/// Scratch of C floats per array, one set per task chunk.
struct ChannelRows {
  explicit ChannelRows(int64_t C) : a(6 * static_cast<size_t>(C)), C_(C) {}
  float* operator[](int i) { return a.data() + i * C_; }
  std::vector<float> a;
  int64_t C_;
};

/// One item of group_forward_channels_last: x and y [S, C], mean and invstd [G].
template <typename T>
ZOO_AVX2_FMA void forward_item(const T* xn, T* yn, int64_t S, int64_t C, int64_t G, const float* w, const float* b,
                               double eps, float* mean, float* invstd, ChannelRows& rows) {
  const int64_t Cg = C / G, M = Cg * S;
  float *sums = rows[0], *centre = rows[1], *scale = rows[2], *shift = rows[3];
  rows_sums(xn, S, C, nullptr, sums);
  for (int64_t g = 0; g < G; ++g) {
    double total = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) total += sums[c];
    mean[g] = static_cast<float>(total / static_cast<double>(M));
    std::fill(centre + g * Cg, centre + (g + 1) * Cg, mean[g]);
  }
  rows_sums(xn, S, C, centre, sums);
  for (int64_t g = 0; g < G; ++g) {
    double squares = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) squares += sums[c];
    const double inv = 1.0 / std::sqrt(squares / static_cast<double>(M) + eps);
    invstd[g] = static_cast<float>(inv);
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const double k = (w ? w[c] : 1.0) * inv;
      scale[c] = static_cast<float>(k);
      shift[c] = static_cast<float>((b ? b[c] : 0.0) - centre[c] * k);
    }
  }
  rows_affine(xn, yn, S, C, scale, shift);
}

template <typename T>
void group_forward_channels_last(const Tensor& x, int64_t G, const Tensor& weight, const Tensor& bias, double eps,
                                 Tensor& y, Tensor& mean, Tensor& invstd) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const float *w = data_or_null(weight), *b = data_or_null(bias);
  float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
    ChannelRows rows(C);
    for (int64_t n = begin; n < end; ++n)
      forward_item(xp + n * S * C, yp + n * S * C, S, C, G, w, b, eps, mp + n * G, ip + n * G, rows);
  });
}

/// One item of group_backward_channels_last: x, dy and dx (or nullptr) [S, C]; the item's per-channel sums of dy and
/// of dy (x - mean) invstd into sum_dy and sum_dy_xhat [C].
template <typename T>
ZOO_AVX2_FMA void backward_item(const T* xn, const T* gn, T* dn, int64_t S, int64_t C, int64_t G, const float* w,
                                const float* mean, const float* invstd, double* sum_dy, double* sum_dy_xhat,
                                ChannelRows& rows) {
  const int64_t Cg = C / G, M = Cg * S;
  float *g_sums = rows[0], *d_sums = rows[1], *centre = rows[2], *a = rows[3], *k = rows[4], *e = rows[5];
  for (int64_t c = 0; c < C; ++c) centre[c] = mean[c / Cg];
  rows_gradient_sums(gn, xn, S, C, centre, g_sums, d_sums);
  for (int64_t g = 0; g < G; ++g) {
    const double inv = invstd[g];
    double A = 0, B = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const double wc = w ? w[c] : 1.0;
      A += wc * g_sums[c];
      B += wc * d_sums[c];
      sum_dy[c] = g_sums[c];
      sum_dy_xhat[c] = d_sums[c] * inv;
    }
    const double kg = inv * inv * inv * B / static_cast<double>(M);
    const double eg = mean[g] * kg - inv * A / static_cast<double>(M);
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      a[c] = static_cast<float>(inv * (w ? w[c] : 1.0));
      k[c] = static_cast<float>(-kg);
      e[c] = static_cast<float>(eg);
    }
  }
  if (dn) rows_input_gradient(gn, xn, dn, S, C, a, k, e);
}

template <typename T>
void group_backward_channels_last(const Tensor& x, int64_t G, const Tensor& weight, const Tensor& mean,
                                  const Tensor& invstd, const Tensor& go, Tensor& dx, Tensor& dw, Tensor& db) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const T *xp = x.data_ptr<T>(), *gp = go.data_ptr<T>();
  T* dp = dx.defined() ? dx.data_ptr<T>() : nullptr;
  const float* w = data_or_null(weight);
  const float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  std::vector<double> sum_dy(static_cast<size_t>(N * C)), sum_dy_xhat(static_cast<size_t>(N * C));
  at::parallel_for(0, N, grain(C * S), [&](int64_t begin, int64_t end) {
    ChannelRows rows(C);
    for (int64_t n = begin; n < end; ++n)
      backward_item(xp + n * S * C, gp + n * S * C, dp ? dp + n * S * C : nullptr, S, C, G, w, mp + n * G, ip + n * G,
                    sum_dy.data() + n * C, sum_dy_xhat.data() + n * C, rows);
  });
  sum_parameter_gradients(sum_dy, sum_dy_xhat, N, C, dw, db);
}

/// y of the forward, and each (item, group)'s mean and invstd in `mean` and `invstd` (float32, [N G]).
Tensor group_output(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps, Tensor& mean,
                    Tensor& invstd) {
  auto y = torch::empty_like(x);
  const auto statistics = x.options().dtype(torch::kFloat32);
  mean = torch::empty({x.size(0) * groups}, statistics);
  invstd = torch::empty({x.size(0) * groups}, statistics);
  const bool last = channels_last_rows(x);
  if (x.scalar_type() == torch::kBFloat16)
    (last ? group_forward_channels_last<c10::BFloat16> : group_forward<c10::BFloat16>)(x, groups, weight, bias, eps, y,
                                                                                       mean, invstd);
  else
    (last ? group_forward_channels_last<float> : group_forward<float>)(x, groups, weight, bias, eps, y, mean, invstd);
  return y;
}

struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
  // weight, bias: empty (numel 0) when absent. The tensors come first: needs_input_grad counts only them.
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, int64_t groups, double eps) {
    Tensor mean, invstd;
    auto y = group_output(x, groups, weight, bias, eps, mean, invstd);
    ctx->save_for_backward({x, weight, bias, mean, invstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    if (torch::GradMode::is_enabled()) {  // under create_graph: through torch::group_norm's autograd
      const auto optional = [](const Tensor& t) { return t.numel() > 0 ? t : Tensor(); };
      auto out = gradients_through(
          ctx, {saved[0], saved[1], saved[2]},
          [&] {
            return torch::group_norm(saved[0], groups, optional(saved[1]), optional(saved[2]),
                                     ctx->saved_data["eps"].toDouble());
          },
          grads[0], 5);
      return out;
    }
    const auto &x = saved[0], &weight = saved[1], &mean = saved[3], &invstd = saved[4];
    const auto go = grads[0].to(x.scalar_type()).contiguous(layout_of(x));
    auto g = empty_gradients(ctx, x, weight, saved[2]);  // dx in x's layout
    const bool last = channels_last_rows(x);
    if (x.scalar_type() == torch::kBFloat16)
      (last ? group_backward_channels_last<c10::BFloat16>
            : group_backward<c10::BFloat16>)(x, groups, weight, mean, invstd, go, g.dx, g.dweight, g.dbias);
    else
      (last ? group_backward_channels_last<float> : group_backward<float>)(x, groups, weight, mean, invstd, go, g.dx,
                                                                           g.dweight, g.dbias);
    return {g.dx, g.dweight, g.dbias, Tensor(), Tensor()};
  }
};
#endif  // ZOO_X86_KERNELS

}  // namespace

bool group_norm_fast(const Tensor& x, int64_t num_groups, const Tensor& weight, const Tensor& bias) {
  if (!cpu_has_avx2_fma() || torch::jit::tracer::isTracing()) return false;
  const auto type = x.scalar_type();
  if (!x.device().is_cpu() || (type != torch::kFloat32 && type != torch::kBFloat16) || x.dim() < 2 ||
      !(x.is_contiguous() || channels_last_rows(x)) || x.numel() == 0)
    return false;
  const int64_t c = x.size(1);
  if (num_groups <= 0 || c % num_groups != 0) return false;  // LibTorch's own error
  return planes::absent_or_float_vector(weight, c) && planes::absent_or_float_vector(bias, c);
}

Tensor group_norm(const Tensor& x, int64_t num_groups, const Tensor& weight, const Tensor& bias, double eps,
                  bool fast) {
  if (!fast || !group_norm_fast(x, num_groups, weight, bias))
    return torch::group_norm(x, num_groups, weight, bias, eps);
#ifdef ZOO_X86_KERNELS
  const auto none = torch::empty({0}, x.options().dtype(torch::kFloat32));
  const auto& w = weight.defined() ? weight : none;
  const auto& b = bias.defined() ? bias : none;
  // Inference (one item through the ODE-euler field's 64 norms: the autograd function's own cost showed) skips it.
  if (!torch::GradMode::is_enabled() || (!x.requires_grad() && !w.requires_grad() && !b.requires_grad())) {
    Tensor mean, invstd;
    return group_output(x, num_groups, w, b, eps, mean, invstd);
  }
  return GroupNormFunction::apply(x, w, b, num_groups, eps);
#else
  return torch::group_norm(x, num_groups, weight, bias, eps);
#endif
}

}  // namespace zoo::ops
