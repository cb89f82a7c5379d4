#include "ops/ode.h"
#include "ops/autocast.h"

#include <fmt/format.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace zoo::ops {

namespace {

using torch::Tensor;

// Dormand-Prince 5(4) tableau (Dormand & Prince 1980; the coefficients of torchdiffeq's dopri5.py).
constexpr double kC[] = {0.0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1.0, 1.0};
constexpr double kA[6][6] = {
    {1.0 / 5, 0, 0, 0, 0, 0},
    {3.0 / 40, 9.0 / 40, 0, 0, 0, 0},
    {44.0 / 45, -56.0 / 15, 32.0 / 9, 0, 0, 0},
    {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729, 0, 0},
    {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656, 0},
    {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84},
};
// 5th-order solution weights are the last row of kA (FSAL: k7 = f(t + h, y1)); the error estimate is 5th minus
// Shampine's 4th-order weights, as in torchdiffeq.
constexpr double kE[] = {35.0 / 384 - 1951.0 / 21600,
                         0,
                         500.0 / 1113 - 22642.0 / 50085,
                         125.0 / 192 - 451.0 / 720,
                         -2187.0 / 6784 + 12231.0 / 42400,
                         11.0 / 84 - 649.0 / 6300,
                         -1.0 / 60};

double rms(const Tensor& t) { return t.to(torch::kFloat64).pow(2).mean().sqrt().item<double>(); }

// h_next = h * min(ifactor, max(safety / ratio^(1/order), dfactor)), never shrinking after an accepted step
// (torchdiffeq misc._optimal_step_size with safety 0.9, ifactor 10, dfactor 0.2).
double next_step(double h, double ratio, int64_t order) {
  constexpr double safety = 0.9, ifactor = 10.0;
  if (ratio == 0) return h * ifactor;
  if (!std::isfinite(ratio)) return h * 0.2;
  const double dfactor = ratio < 1 ? 1.0 : 0.2;
  return h * std::min(ifactor, std::max(safety / std::pow(ratio, 1.0 / static_cast<double>(order)), dfactor));
}

// Hairer, Norsett & Wanner, Solving ODEs I, II.4 (torchdiffeq misc._select_initial_step), with order 4 for dopri5.
double initial_step(const VectorField& f, double t0, const Tensor& y0, const Tensor& f0, double direction,
                    const ODESolverOptions& o, int64_t& nfe) {
  torch::NoGradGuard no_grad;
  const auto scale = o.atol() + y0.abs() * o.rtol();
  const double d0 = rms(y0 / scale), d1 = rms(f0 / scale);
  const double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
  const auto f1 = f(t0 + direction * h0, y0 + direction * h0 * f0);
  ++nfe;
  const double d2 = rms((f1 - f0) / scale) / h0;
  const double h1 =
      (d1 <= 1e-15 && d2 <= 1e-15) ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / std::max(d1, d2), 1.0 / 5.0);
  return std::min(100 * h0, h1);
}

ODESolution dopri5(const VectorField& f, const Tensor& y0, double t0, double t1, const ODESolverOptions& o) {
  ODESolution s;
  const double direction = t1 > t0 ? 1.0 : -1.0;
  Tensor y = y0, k1 = f(t0, y0);
  s.nfe = 1;
  double h = initial_step(f, t0, y0, k1.detach(), direction, o, s.nfe);
  double t = t0;
  while (direction * (t1 - t) > 0) {
    if (s.accepted + s.rejected >= o.max_steps()) {
      throw std::runtime_error(
          fmt::format("dopri5 needed more than max_steps = {} steps to reach t = {:g} (at t = "
                      "{:g}); loosen rtol/atol or raise max_steps",
                      o.max_steps(), t1, t));
    }
    const double remaining = std::abs(t1 - t);
    const bool last = h >= remaining * (1 - 1e-12);
    const double step = direction * (last ? remaining : h);
    Tensor k[7];
    k[0] = k1;
    // Stage inputs y + step * sum_j a_ij k_j as chains of fused y + alpha * k (torch::add with alpha): one
    // operation (and one autograd node) per term instead of a product and a sum.
    for (int i = 1; i < 6; ++i) {
      Tensor yi = y;
      for (int j = 0; j < i; ++j)
        if (kA[i - 1][j] != 0) yi = torch::add(yi, k[j], step * kA[i - 1][j]);
      k[i] = f(t + kC[i] * step, yi);
    }
    Tensor y1 = y;
    for (int j = 0; j < 6; ++j)
      if (kA[5][j] != 0) y1 = torch::add(y1, k[j], step * kA[5][j]);
    k[6] = f(t + step, y1);
    s.nfe += 6;
    double ratio = 0;
    {
      torch::NoGradGuard no_grad;
      Tensor err = k[0] * (step * kE[0]);
      for (int j = 2; j < 7; ++j) err.add_(k[j], step * kE[j]);
      const auto tolerance = o.atol() + o.rtol() * torch::max(y.detach().abs(), y1.detach().abs());
      ratio = rms(err / tolerance);
    }
    if (std::isfinite(ratio) && ratio <= 1) {
      t = last ? t1 : t + step;
      y = y1;
      k1 = k[6];
      ++s.accepted;
    } else {
      ++s.rejected;
    }
    h = next_step(std::abs(step), ratio, 5);
  }
  s.y = y;
  return s;
}

// The fixed-step solvers as Butcher tableaus: stage i evaluates k_i = f(y + h sum_{j<i} a_ij k_j), and the step
// is y + h sum_i b_i k_i; stage i is evaluated at t + c_i h with c_i = sum_j a_ij. fixed_step (any vector field)
// and mlp_field_solve (its forward and hand-written adjoint) both step with these. rk4 is the 3/8 rule
// (torchdiffeq's rk4_alt_step_func).
struct Tableau {
  int stages;
  double a[4][4];
  double b[4];
};

const Tableau& tableau(const std::string& method) {
  static const Tableau euler{1, {{0}}, {1}};
  static const Tableau midpoint{2, {{0}, {0.5}}, {0, 1}};
  static const Tableau rk4{4, {{0}, {1.0 / 3}, {-1.0 / 3, 1}, {1, -1, 1}}, {1.0 / 8, 3.0 / 8, 3.0 / 8, 1.0 / 8}};
  if (method == "euler") return euler;
  if (method == "midpoint") return midpoint;
  return rk4;
}

ODESolution fixed_step(const VectorField& f, const Tensor& y0, double t0, double t1, const ODESolverOptions& o) {
  const Tableau& tab = tableau(o.method());
  ODESolution s;
  const double h = (t1 - t0) / static_cast<double>(o.steps());
  Tensor y = y0, k[4];
  for (int64_t i = 0; i < o.steps(); ++i) {
    const double t = t0 + static_cast<double>(i) * h;
    // y + alpha * k as one fused torch::add each: many small steps are where each operation's fixed cost counts.
    for (int stage = 0; stage < tab.stages; ++stage) {
      Tensor u = y;
      double c = 0;
      for (int j = 0; j < stage; ++j) {
        if (tab.a[stage][j] == 0) continue;
        u = torch::add(u, k[j], h * tab.a[stage][j]);
        c += tab.a[stage][j];
      }
      k[stage] = f(t + c * h, u);
    }
    Tensor next = y;
    for (int j = 0; j < tab.stages; ++j)
      if (tab.b[j] != 0) next = torch::add(next, k[j], h * tab.b[j]);
    y = next;
    s.nfe += tab.stages;
  }
  s.accepted = o.steps();
  s.y = y;
  return s;
}

}  // namespace

const std::vector<std::string>& ode_methods() {
  static const std::vector<std::string> methods{"euler", "midpoint", "rk4", "dopri5"};
  return methods;
}

int64_t ode_order(const std::string& method) {
  if (method == "euler") return 1;
  if (method == "midpoint") return 2;
  if (method == "rk4") return 4;
  if (method == "dopri5") return 5;
  throw std::invalid_argument("unknown ODE solver '" + method + "'; choose euler, midpoint, rk4 or dopri5");
}

const Schema<ODESolverOptions>& ode_solver_schema() {
  static const auto schema = [] {
    using O = ODESolverOptions;
    Schema<O> s("ODE solver option");
    s.add("method", ZOO_FIELD(O, method), "euler, midpoint, rk4 (fixed steps) or dopri5 (adaptive)")
        .one_of(ode_methods(), "ODE solver");
    s.add("steps", ZOO_FIELD(O, steps), "fixed-step solvers: equal steps over [t0, t1]").at_least(1);
    s.add("rtol", ZOO_FIELD(O, rtol), "dopri5: relative tolerance").above(0);
    s.add("atol", ZOO_FIELD(O, atol), "dopri5: absolute tolerance").above(0);
    s.add("max_steps", ZOO_FIELD(O, max_steps), "dopri5: step attempts before giving up").at_least(1);
    return s;
  }();
  return schema;
}

void check_solver(const ODESolverOptions& o) {
  try {
    ode_solver_schema().validate(o);
  } catch (const SettingError& e) {
    throw std::invalid_argument(std::string("ODE solver ") + e.what());
  }
}

ODESolution odeint(const VectorField& f, const Tensor& y0, double t0, double t1, const ODESolverOptions& options) {
  check_solver(options);
  if (t0 == t1) return ODESolution{y0, 0, 0, 0};
  return options.method() == "dopri5" ? dopri5(f, y0, t0, t1, options) : fixed_step(f, y0, t0, t1, options);
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

// out = y + h sum_{j < n} c_j k_j, written into out (a copy of y when every c_j is 0).
void combine(Tensor& out, const Tensor& y, const Tensor* k, const double* c, int n, double h) {
  bool started = false;
  for (int j = 0; j < n; ++j) {
    if (c[j] == 0) continue;
    if (started) {
      out.add_(k[j], h * c[j]);
    } else {
      torch::add_out(out, y, k[j], h * c[j]);
      started = true;
    }
  }
  if (!started) out.copy_(y);
}

// The forward of MLPFieldImpl::solve on y0 [N, dim]. Given the buffers (both or neither), stage e's input goes
// to inputs[e] and its activation tanh(W1 u + b1) to activations[e] (e = step * stages + stage) for the backward.
Tensor mlp_field_steps(const Tensor& y0, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                       double t0, double t1, int64_t steps, const Tableau& tab, Tensor* inputs, Tensor* activations) {
  const double h = (t1 - t0) / static_cast<double>(steps);
  const bool save = inputs != nullptr;
  const auto w1t = w1.t(), w2t = w2.t();
  Tensor y = y0, k[4], hidden, stage;
  for (int64_t n = 0; n < steps; ++n) {
    for (int i = 0; i < tab.stages; ++i) {
      const int64_t e = n * tab.stages + i;
      Tensor u;
      if (i == 0 && !save) {
        u = y;
      } else {
        if (!save && !stage.defined()) stage = torch::empty_like(y);  // one buffer for every stage input
        u = save ? (*inputs)[e] : stage;
        combine(u, y, k, tab.a[i], i, h);
      }
      Tensor a = save ? (*activations)[e] : hidden;
      if (!a.defined()) a = hidden = torch::empty({y.size(0), w1.size(0)}, y.options());
      torch::addmm_out(a, b1, u, w1t).tanh_();
      k[i] = torch::addmm(b2, a, w2t);
    }
    Tensor next = torch::empty_like(y);
    combine(next, y, k, tab.b, tab.stages, h);
    y = next;
  }
  return y;
}

struct MLPFieldSolve : public torch::autograd::Function<MLPFieldSolve> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& y0, const Tensor& w1, const Tensor& b1,
                        const Tensor& w2, const Tensor& b2, double t0, double t1, int64_t steps,
                        const std::string& method) {
    const auto& tab = tableau(method);
    const int64_t evaluations = steps * tab.stages;
    auto inputs = torch::empty({evaluations, y0.size(0), y0.size(1)}, y0.options());
    auto activations = torch::empty({evaluations, y0.size(0), w1.size(0)}, y0.options());
    auto y = mlp_field_steps(y0, w1, b1, w2, b2, t0, t1, steps, tab, &inputs, &activations);
    ctx->save_for_backward({w1, w2, inputs, activations});
    ctx->saved_data["h"] = (t1 - t0) / static_cast<double>(steps);
    ctx->saved_data["steps"] = steps;
    ctx->saved_data["method"] = method;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &w1 = saved[0], &w2 = saved[1], &inputs = saved[2], &activations = saved[3];
    const double h = ctx->saved_data["h"].toDouble();
    const int64_t steps = ctx->saved_data["steps"].toInt();
    const auto& tab = tableau(ctx->saved_data["method"].toStringRef());
    // gk[e]: the gradient reaching stage e's output k; gz[e]: the one reaching W1 u + b1.
    auto gk = torch::empty_like(inputs), gz = torch::empty_like(activations);
    auto gy = grads[0].clone(torch::MemoryFormat::Contiguous);
    const bool need_y0 = ctx->needs_input_grad(0);
    for (int64_t n = steps - 1; n >= 0; --n) {
      const int64_t base = n * tab.stages;
      for (int i = 0; i < tab.stages; ++i) {
        auto g = gk[base + i];
        tab.b[i] == 0 ? g.zero_() : g.copy_(gy).mul_(h * tab.b[i]);
      }
      for (int i = tab.stages - 1; i >= 0; --i) {
        const int64_t e = base + i;
        auto gz_e = gz[e];
        torch::tanh_backward_out(gz_e, torch::mm(gk[e], w2), activations[e]);
        if (n == 0 && i == 0 && !need_y0) break;
        const auto gu = torch::mm(gz_e, w1);
        gy.add_(gu);
        for (int j = 0; j < i; ++j)
          if (tab.a[i][j] != 0) gk[base + j].add_(gu, h * tab.a[i][j]);
      }
    }
    const int64_t rows = inputs.size(0) * inputs.size(1);
    const auto gk2 = gk.view({rows, gk.size(2)}), gz2 = gz.view({rows, gz.size(2)});
    torch::autograd::variable_list out(9);
    if (need_y0) out[0] = gy;
    if (ctx->needs_input_grad(1)) out[1] = torch::mm(gz2.t(), inputs.view({rows, inputs.size(2)}));
    if (ctx->needs_input_grad(2)) out[2] = gz2.sum(0);
    if (ctx->needs_input_grad(3)) out[3] = torch::mm(gk2.t(), activations.view({rows, activations.size(2)}));
    if (ctx->needs_input_grad(4)) out[4] = gk2.sum(0);
    return out;
  }
};

}  // namespace

ODESolution mlp_field_solve(const Tensor& y0_in, const Tensor& w1_in, const Tensor& b1_in, const Tensor& w2_in,
                            const Tensor& b2_in, double t0, double t1, int64_t steps, const std::string& method) {
  // In float32 under mixed precision: a small field integrated over many stages, and kernels that write float32.
  Float32Region fp32;
  const auto y0 = float32(y0_in), w1 = float32(w1_in), b1 = float32(b1_in), w2 = float32(w2_in), b2 = float32(b2_in);
  check_solver(ODESolverOptions().method(method).steps(steps));
  TORCH_CHECK(method != "dopri5", "mlp_field_solve runs the fixed-step solvers; use odeint for dopri5");
  TORCH_CHECK(y0.dim() == 2 && w1.dim() == 2 && w1.size(1) == y0.size(1) && b1.sizes() == w1.sizes().slice(0, 1) &&
                  w2.dim() == 2 && w2.size(0) == y0.size(1) && w2.size(1) == w1.size(0) &&
                  b2.sizes() == w2.sizes().slice(0, 1),
              "mlp_field_solve: expects y0 [N, dim], w1 [hidden, dim], b1 [hidden], w2 [dim, hidden], b2 [dim]; got ",
              y0.sizes(), ", ", w1.sizes(), ", ", b1.sizes(), ", ", w2.sizes(), ", ", b2.sizes());
  if (t0 == t1) return ODESolution{y0, 0, 0, 0};
  if (torch::jit::tracer::isTracing()) return mlp_field_solve_reference(y0, w1, b1, w2, b2, t0, t1, steps, method);
  const bool grad = torch::GradMode::is_enabled() && (y0.requires_grad() || w1.requires_grad() || b1.requires_grad() ||
                                                      w2.requires_grad() || b2.requires_grad());
  ODESolution s;
  s.y = grad ? MLPFieldSolve::apply(y0, w1, b1, w2, b2, t0, t1, steps, method)
             : mlp_field_steps(y0, w1, b1, w2, b2, t0, t1, steps, tableau(method), nullptr, nullptr);
  s.accepted = steps;
  s.nfe = steps * tableau(method).stages;
  return s;
}

ODESolution mlp_field_solve_reference(const Tensor& y0, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                      const Tensor& b2, double t0, double t1, int64_t steps,
                                      const std::string& method) {
  namespace F = torch::nn::functional;
  const auto field = [&](double /*t*/, const Tensor& y) {
    return F::linear(torch::tanh(F::linear(y, w1, b1)), w2, b2);
  };
  return odeint(field, y0, t0, t1, ODESolverOptions().method(method).steps(steps));
}

}  // namespace zoo::ops
