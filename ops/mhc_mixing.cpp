#include "ops/mhc_mixing.h"

#include "ops/simd.h"
#include "ops/twice.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <array>
#include <cmath>
#include <vector>

namespace zoo::ops {

namespace {

using torch::Tensor;

/// The operands in the autograd function's order: v, g, phi x3, b x3, alpha x3.
std::vector<Tensor> operands(const Tensor& v, const MHCMixingParameters& p) {
  return {v,        p.norm_gain, p.phi_pre,   p.phi_post,   p.phi_res,  p.b_pre,
          p.b_post, p.b_res,     p.alpha_pre, p.alpha_post, p.alpha_res};
}

MHCMixingParameters from_operands(const std::vector<Tensor>& t, double eps) {
  return {t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], eps};
}

/// Widths of the three products (pre, post, res), their columns side by side in one [B, 2n + m] matrix.
struct Widths {
  int64_t n, m;
  int64_t total() const { return 2 * n + m; }
  int64_t group(int64_t column) const { return column < n ? 0 : column < 2 * n ? 1 : 2; }
};

struct MixingFunction : public torch::autograd::Function<MixingFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& v, const Tensor& g,
                                                const Tensor& phi_pre, const Tensor& phi_post, const Tensor& phi_res,
                                                const Tensor& b_pre, const Tensor& b_post, const Tensor& b_res,
                                                const Tensor& alpha_pre, const Tensor& alpha_post,
                                                const Tensor& alpha_res, double eps) {
    const int64_t B = v.size(0), K = v.size(1);
    const Widths w{phi_pre.size(1), phi_res.size(1)};
    const auto phi = torch::cat({phi_pre, phi_post, phi_res}, 1);  // [K, 2n + m]
    auto r = torch::empty({B}, v.options()), xv = torch::empty({B, K}, v.options());
    auto pre = torch::empty({B, w.n}, v.options()), post = torch::empty({B, w.n}, v.options()),
         res = torch::empty({B, w.m}, v.options());
    Tensor z;
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mhc_mixing", [&] {
      const scalar_t *vp = v.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
      scalar_t *rp = r.data_ptr<scalar_t>(), *xp = xv.data_ptr<scalar_t>();
      for (int64_t row = 0; row < B; ++row) {  // x~ = v / rms(v) (1 + g)
        const scalar_t* vr = vp + row * K;
        scalar_t squares = 0;
        for (int64_t k = 0; k < K; ++k) squares += vr[k] * vr[k];
        const scalar_t inv = scalar_t(1) / std::sqrt(squares / static_cast<scalar_t>(K) + static_cast<scalar_t>(eps));
        rp[row] = inv;
        for (int64_t k = 0; k < K; ++k) xp[row * K + k] = vr[k] * inv * (1 + gp[k]);
      }
      z = xv.mm(phi);  // the three products, x~ phi
      const scalar_t* b[3] = {b_pre.data_ptr<scalar_t>(), b_post.data_ptr<scalar_t>(), b_res.data_ptr<scalar_t>()};
      const scalar_t alpha[3] = {alpha_pre.item<scalar_t>(), alpha_post.item<scalar_t>(), alpha_res.item<scalar_t>()};
      scalar_t* out[3] = {pre.data_ptr<scalar_t>(), post.data_ptr<scalar_t>(), res.data_ptr<scalar_t>()};
      const int64_t first[3] = {0, w.n, 2 * w.n}, widths[3] = {w.n, w.n, w.m};
      const scalar_t* zp = z.data_ptr<scalar_t>();
      for (int64_t row = 0; row < B; ++row)
        for (int which = 0; which < 3; ++which)
          for (int64_t j = 0; j < widths[which]; ++j) {
            const scalar_t logit = b[which][j] + alpha[which] * zp[row * w.total() + first[which] + j];
            out[which][row * widths[which] + j] =
                which == 2 ? logit : (which == 1 ? scalar_t(2) : scalar_t(1)) / (1 + std::exp(-logit));
          }
    });
    ctx->save_for_backward({v, g, phi_pre, phi_post, phi_res, b_pre, b_post, b_res, alpha_pre, alpha_post, alpha_res, r,
                            z, pre, post, phi, xv});
    ctx->saved_data["eps"] = eps;
    return {pre, post, res};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<Tensor> inputs(saved.begin(), saved.begin() + 11);
    const double eps = ctx->saved_data["eps"].toDouble();
    const auto &v = saved[0], &g = saved[1], &r = saved[11], &z = saved[12], &pre = saved[13], &post = saved[14],
               &phi = saved[15], &xv = saved[16];
    const int64_t B = v.size(0), K = v.size(1);
    const Widths w{saved[2].size(1), saved[4].size(1)};
    const int64_t widths[3] = {w.n, w.n, w.m};
    if (torch::GradMode::is_enabled()) {  // under create_graph: through the tensor operations
      const auto reference = [&] {
        const auto o = mhc_mixing_reference(inputs[0], from_operands(inputs, eps));
        return torch::cat({o[0], o[1], o[2]}, 1);
      };
      std::vector<Tensor> go;
      for (int i = 0; i < 3; ++i)
        go.push_back(grads[static_cast<size_t>(i)].defined() ? grads[static_cast<size_t>(i)]
                                                             : torch::zeros({B, widths[i]}, v.options()));
      return gradients_through(ctx, inputs, reference, torch::cat(go, 1), 12);
    }
    // Denormals read and written as zero: in some steps most products of dla (tiny logit gradients) and phi fall below
    // float32's normal range (in one of the mHC ResNet's, 123 k of dla phi^T's 197 k), and x86 takes a microcode
    // assist for each (ops/simd.h): 1.05 ms of its step went to that product, 0.08 ms with them flushed.
    const FlushDenormals flush;
    // dl: the gradient of each logit (sigmoid's and 2 sigmoid's derivatives from the outputs), [B, 2n + m]; dla: the
    // same times its alpha, the gradient of x~ phi.
    auto dl = torch::empty({B, w.total()}, v.options()), dla = torch::empty_like(dl);
    auto dv = torch::empty_like(v), dg = torch::zeros_like(g);
    std::array<Tensor, 3> db, dalpha;
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mhc_mixing_backward", [&] {
      const scalar_t alpha[3] = {saved[8].item<scalar_t>(), saved[9].item<scalar_t>(), saved[10].item<scalar_t>()};
      std::array<Tensor, 3> contiguous;  // kept alive while go[] points into them
      const scalar_t* go[3];
      for (size_t i = 0; i < 3; ++i) {
        if (grads[i].defined()) contiguous[i] = grads[i].to(v.scalar_type()).contiguous();
        go[i] = grads[i].defined() ? contiguous[i].data_ptr<scalar_t>() : nullptr;
      }
      const scalar_t *pp = pre.data_ptr<scalar_t>(), *qp = post.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
      scalar_t *dlp = dl.data_ptr<scalar_t>(), *dlap = dla.data_ptr<scalar_t>();
      std::vector<scalar_t> bias_sums(static_cast<size_t>(w.total()), 0), alpha_sums(3, 0);
      for (int64_t row = 0; row < B; ++row)
        for (int64_t c = 0; c < w.total(); ++c) {
          const int which = static_cast<int>(w.group(c));
          const int64_t j = c - (which == 0 ? 0 : which == 1 ? w.n : 2 * w.n), at = row * widths[which] + j;
          scalar_t d = 0;
          if (go[which]) {
            if (which == 0)
              d = go[0][at] * pp[at] * (1 - pp[at]);
            else if (which == 1)
              d = go[1][at] * qp[at] * (1 - qp[at] / 2);
            else
              d = go[2][at];
          }
          dlp[row * w.total() + c] = d;
          dlap[row * w.total() + c] = d * alpha[which];
          bias_sums[static_cast<size_t>(c)] += d;
          alpha_sums[static_cast<size_t>(which)] += d * zp[row * w.total() + c];
        }
      for (int which = 0, c = 0; which < 3; c += static_cast<int>(widths[which]), ++which) {
        db[static_cast<size_t>(which)] =
            torch::from_blob(&bias_sums[static_cast<size_t>(c)], {widths[which]}, v.options()).clone();
        dalpha[static_cast<size_t>(which)] = torch::full({}, alpha_sums[static_cast<size_t>(which)], v.options());
      }
      // dx~ = dla phi^T; x~ = u (1 + g), u = v r: dg = sum_rows dx~ u, dv = r dx~ (1 + g) - v r^3 mean(dx~ (1 + g) v).
      const auto dx = dla.mm(phi.t());
      const scalar_t *dxp = dx.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>(),
                     *rp = r.data_ptr<scalar_t>();
      scalar_t *dvp = dv.data_ptr<scalar_t>(), *dgp = dg.data_ptr<scalar_t>();
      for (int64_t row = 0; row < B; ++row) {
        const scalar_t *vr = vp + row * K, *dxr = dxp + row * K, inv = rp[row];
        scalar_t dot = 0;
        for (int64_t k = 0; k < K; ++k) {
          dgp[k] += dxr[k] * vr[k] * inv;
          dot += dxr[k] * (1 + gp[k]) * vr[k];
        }
        const scalar_t c = inv * inv * inv * dot / static_cast<scalar_t>(K);
        for (int64_t k = 0; k < K; ++k) dvp[row * K + k] = inv * dxr[k] * (1 + gp[k]) - vr[k] * c;
      }
    });
    const auto dphi = xv.t().mm(dla);  // [K, 2n + m]
    torch::autograd::variable_list out(12);
    out[0] = dv;
    out[1] = dg;
    for (int which = 0, c = 0; which < 3; c += static_cast<int>(widths[which]), ++which) {
      out[static_cast<size_t>(2 + which)] = dphi.narrow(1, c, widths[which]).contiguous();
      out[static_cast<size_t>(5 + which)] = db[static_cast<size_t>(which)];
      out[static_cast<size_t>(8 + which)] = dalpha[static_cast<size_t>(which)];
    }
    return out;
  }
};

bool fused_takes(const Tensor& v, const MHCMixingParameters& p) {
  if (torch::jit::tracer::isTracing() || !v.defined() || v.dim() != 2 || !v.device().is_cpu()) return false;
  const auto type = v.scalar_type();
  if (type != torch::kFloat32 && type != torch::kFloat64) return false;
  const int64_t K = v.size(1);
  for (const auto& t : operands(v, p))
    if (!t.defined() || !t.device().is_cpu() || t.scalar_type() != type || !t.is_contiguous()) return false;
  const int64_t n = p.phi_pre.dim() == 2 ? p.phi_pre.size(1) : -1;
  return p.norm_gain.dim() == 1 && p.norm_gain.size(0) == K && p.phi_pre.dim() == 2 && p.phi_pre.size(0) == K &&
         p.phi_post.dim() == 2 && p.phi_post.size(0) == K && p.phi_post.size(1) == n && p.phi_res.dim() == 2 &&
         p.phi_res.size(0) == K && p.b_pre.numel() == n && p.b_post.numel() == n &&
         p.b_res.numel() == p.phi_res.size(1) && p.alpha_pre.numel() == 1 && p.alpha_post.numel() == 1 &&
         p.alpha_res.numel() == 1 && v.size(0) >= 1 && K >= 1;
}

}  // namespace

std::array<Tensor, 3> mhc_mixing_reference(const Tensor& v, const MHCMixingParameters& p) {
  const auto xv = v * torch::rsqrt(v.pow(2).mean(-1, /*keepdim=*/true) + p.eps) * (1 + p.norm_gain);
  return {torch::sigmoid(p.b_pre + p.alpha_pre * torch::matmul(xv, p.phi_pre)),
          2 * torch::sigmoid(p.b_post + p.alpha_post * torch::matmul(xv, p.phi_post)),
          p.b_res.reshape({1, -1}) + p.alpha_res * torch::matmul(xv, p.phi_res)};
}

std::array<Tensor, 3> mhc_mixing(const Tensor& v, const MHCMixingParameters& p, bool fused) {
  if (!fused || !fused_takes(v, p)) return mhc_mixing_reference(v, p);
  const auto o = MixingFunction::apply(v, p.norm_gain, p.phi_pre, p.phi_post, p.phi_res, p.b_pre.reshape({-1}),
                                       p.b_post.reshape({-1}), p.b_res.reshape({-1}), p.alpha_pre, p.alpha_post,
                                       p.alpha_res, p.eps);
  return {o[0], o[1], o[2]};
}

}  // namespace zoo::ops
