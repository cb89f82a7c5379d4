#include "ops/sinkhorn.h"
#include "ops/autocast.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace zoo::ops {

namespace {

using torch::Tensor;

// Logits whose spread (largest minus smallest) is at most this run in linear space. Sinkhorn's log-scalings never
// spread more than the logits do (each stays within the range R of the logits), so every entry of exp(L) stays
// above exp(-2R) / n: 1e-56 for R = 64 and n = 4, far from double's underflow (1e-308).
constexpr double kLinearSpread = 64;

// One n x n matrix through `iterations` rounds of log-space Sinkhorn-Knopp, in double. Each half-step is
// L -= logsumexp over columns (even k) or rows (odd k); `states` (if given) receives exp(L) after each half-step.
// L holds exp(L) on return.
void sinkhorn_log(std::vector<double>& L, int64_t n, int64_t iterations, std::vector<double>* states) {
  for (int64_t k = 0; k < 2 * iterations; ++k) {
    const bool rows = k % 2 == 1;
    for (int64_t a = 0; a < n; ++a) {
      // Entry b of line a: row a, column b (rows) or row b, column a (columns).
      auto at = [&](int64_t b) -> double& { return rows ? L[a * n + b] : L[b * n + a]; };
      double m = -INFINITY;
      for (int64_t b = 0; b < n; ++b) m = std::max(m, at(b));
      if (!std::isfinite(m)) continue;  // a line of -inf (all zeros after exp) is left as it is
      double s = 0;
      for (int64_t b = 0; b < n; ++b) s += std::exp(at(b) - m);
      const double lse = m + std::log(s);
      for (int64_t b = 0; b < n; ++b) at(b) -= lse;
    }
    if (states)
      for (const double l : L) states->push_back(std::exp(l));
  }
  for (double& l : L) l = std::exp(l);
}

// The same iterations on P = exp(L - max L), each half-step dividing every line by its sum: exp(L - lse(L)) =
// exp(L) / sum(exp(L)), so without a logarithm or an exponential per step. `states` (if given) receives P after
// each half-step. Only for finite logits spread by at most kLinearSpread (see above); `P` holds the result.
void sinkhorn_linear(std::vector<double>& P, int64_t n, int64_t iterations, std::vector<double>* states) {
  const double top = *std::max_element(P.begin(), P.end());
  for (double& p : P) p = std::exp(p - top);
  for (int64_t k = 0; k < 2 * iterations; ++k) {
    const int64_t line_step = k % 2 == 1 ? n : 1, entry_step = k % 2 == 1 ? 1 : n;  // rows or columns
    for (int64_t a = 0; a < n; ++a) {
      double* line = P.data() + a * line_step;
      double s = 0;
      for (int64_t b = 0; b < n; ++b) s += line[b * entry_step];
      const double inverse = 1 / s;
      for (int64_t b = 0; b < n; ++b) line[b * entry_step] *= inverse;
    }
    if (states) states->insert(states->end(), P.begin(), P.end());
  }
}

// exp(L) after the iterations, into L (given the logits), in linear space where the logits allow it.
// `linear` false: log space for every matrix.
void sinkhorn_matrix(std::vector<double>& L, int64_t n, int64_t iterations, std::vector<double>* states, bool linear) {
  const auto [low, high] = std::minmax_element(L.begin(), L.end());
  if (linear && std::isfinite(*low) && std::isfinite(*high) && *high - *low <= kLinearSpread)
    sinkhorn_linear(L, n, iterations, states);
  else
    sinkhorn_log(L, n, iterations, states);
}

template <typename scalar_t>
void sinkhorn_forward_kernel(const scalar_t* in, scalar_t* out, int64_t matrices, int64_t n, int64_t iterations,
                             bool linear) {
  at::parallel_for(0, matrices, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> L(static_cast<size_t>(n * n));
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* src = in + m * n * n;
      std::copy(src, src + n * n, L.begin());
      sinkhorn_matrix(L, n, iterations, nullptr, linear);
      for (int64_t i = 0; i < n * n; ++i) out[m * n * n + i] = static_cast<scalar_t>(L[i]);
    }
  });
}

// Backward by recomputation: the half-steps L' = L - lse(L) along a line have the Jacobian-vector product
// g_in = g - softmax(L) * sum(g) = g - exp(L') * sum(g), applied from the last half-step to the first (the states
// hold exp(L') of each half-step).
template <typename scalar_t>
void sinkhorn_backward_kernel(const scalar_t* in, const scalar_t* grad_out, scalar_t* grad_in, int64_t matrices,
                              int64_t n, int64_t iterations, bool linear) {
  at::parallel_for(0, matrices, 16, [&](int64_t begin, int64_t end) {
    const auto nn = static_cast<size_t>(n * n);
    std::vector<double> L(nn), states, g(nn);
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* src = in + m * n * n;
      std::copy(src, src + n * n, L.begin());
      states.clear();
      sinkhorn_matrix(L, n, iterations, &states, linear);
      for (size_t i = 0; i < nn; ++i) g[i] = static_cast<double>(grad_out[m * n * n + static_cast<int64_t>(i)]) * L[i];
      for (int64_t k = 2 * iterations - 1; k >= 0; --k) {
        const double* state = states.data() + static_cast<size_t>(k) * nn;
        const bool rows = k % 2 == 1;
        for (int64_t a = 0; a < n; ++a) {
          auto idx = [&](int64_t b) { return static_cast<size_t>(rows ? a * n + b : b * n + a); };
          double s = 0;
          for (int64_t b = 0; b < n; ++b) s += g[idx(b)];
          for (int64_t b = 0; b < n; ++b) g[idx(b)] -= state[idx(b)] * s;
        }
      }
      for (size_t i = 0; i < nn; ++i) grad_in[m * n * n + static_cast<int64_t>(i)] = static_cast<scalar_t>(g[i]);
    }
  });
}

struct SinkhornFunction : public torch::autograd::Function<SinkhornFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& logits, int64_t iterations) {
    const auto in = logits.contiguous();
    ctx->save_for_backward({in});
    ctx->saved_data["iterations"] = iterations;
    // The backward recomputes the iterations the way the forward ran them.
    const bool linear = !SinkhornLogSpaceOnly::on();
    ctx->saved_data["linear"] = linear;
    auto out = torch::empty_like(in);
    const int64_t n = in.size(-1), matrices = in.numel() / (n * n);
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "sinkhorn_knopp", [&] {
      sinkhorn_forward_kernel<scalar_t>(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), matrices, n, iterations,
                                        linear);
    });
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto in = ctx->get_saved_variables()[0];
    const int64_t iterations = ctx->saved_data["iterations"].toInt();
    const bool linear = ctx->saved_data["linear"].toBool();
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const auto grad_out = grads[0].contiguous();
    auto grad_in = torch::empty_like(in);
    const int64_t n = in.size(-1), matrices = in.numel() / (n * n);
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "sinkhorn_knopp_backward", [&] {
      sinkhorn_backward_kernel<scalar_t>(in.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                         grad_in.data_ptr<scalar_t>(), matrices, n, iterations, linear);
    });
    return {grad_in, Tensor()};
  }
};

}  // namespace

bool& SinkhornLogSpaceOnly::on() {
  thread_local bool on = false;
  return on;
}

Tensor sinkhorn_knopp(const Tensor& logits_in, int64_t iterations, bool fused) {
  TORCH_CHECK(logits_in.dim() >= 2 && logits_in.size(-1) == logits_in.size(-2),
              "sinkhorn_knopp expects [..., n, n], got ", logits_in.sizes());
  // In float32 under mixed precision: alternating log-space normalisations drift in bfloat16 (rows and columns
  // then sum to 1 only within ~1e-2).
  Float32Region fp32;
  const auto logits = float32(logits_in);
  TORCH_CHECK(iterations >= 0, "sinkhorn_knopp iterations must be >= 0, got ", iterations);
  // A trace cannot look into the fused kernel (it writes through data pointers): trace the plain loop instead.
  if (fused && !torch::jit::tracer::isTracing() && logits.device().is_cpu() &&
      (logits.scalar_type() == torch::kFloat || logits.scalar_type() == torch::kDouble))
    return SinkhornFunction::apply(logits, iterations);
  Tensor L = logits;
  for (int64_t i = 0; i < iterations; ++i) {
    L = L - L.logsumexp(-2, /*keepdim=*/true);
    L = L - L.logsumexp(-1, /*keepdim=*/true);
  }
  return L.exp();
}

}  // namespace zoo::ops
