#include "models/ode.h"
#include "ops/conv3x3.h"

#include "models/registry.h"

#include <fmt/format.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace zoo::models {

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

// GroupNorm groups for C channels: the largest divisor of C that is at most min(32, C / 8), so each group holds
// >= 8 channels. (torchdiffeq's min(32, C) at C = 32 is one channel per group: every channel is normalised to
// mean 0 over space, and a global average pool after it sees almost nothing of the input.)
int64_t norm_groups(int64_t c) {
  int64_t g = std::max<int64_t>(1, std::min<int64_t>(32, c / 8));
  while (c % g != 0) --g;
  return g;
}

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
// and MLPField's own solver (its forward and hand-written adjoint) both step with these. rk4 is the 3/8 rule
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

MLPFieldImpl::MLPFieldImpl(MLPFieldOptions options_) : options(options_) { reset(); }

void MLPFieldImpl::reset() {
  TORCH_CHECK(options.dim() > 0 && options.hidden() > 0, "MLPField dim and hidden must be positive, got ",
              options.dim(), " and ", options.hidden());
  net = register_module("net",
                        torch::nn::Sequential(torch::nn::Linear(options.dim(), options.hidden()), torch::nn::Tanh(),
                                              torch::nn::Linear(options.hidden(), options.dim())));
}

Tensor MLPFieldImpl::forward(double /*t*/, const Tensor& y) {
  TORCH_CHECK(y.dim() >= 1 && y.size(-1) == options.dim(), "MLPField expects y [..., ", options.dim(), "], got ",
              y.sizes());
  return net->forward(y);
}

ODESolution MLPFieldImpl::solve(const Tensor& y0, double t0, double t1, const ODESolverOptions& solver) {
  check_solver(solver);
  TORCH_CHECK(y0.dim() >= 1 && y0.size(-1) == options.dim(), "MLPField expects y0 [..., ", options.dim(), "], got ",
              y0.sizes());
  if (solver.method() == "dopri5" || torch::jit::tracer::isTracing())
    return odeint([this](double t, const Tensor& y) { return forward(t, y); }, y0, t0, t1, solver);
  if (t0 == t1) return ODESolution{y0, 0, 0, 0};
  const auto& first = *net->ptr<torch::nn::LinearImpl>(0);
  const auto& last = *net->ptr<torch::nn::LinearImpl>(2);
  const auto y = y0.reshape({-1, options.dim()});
  const bool grad = torch::GradMode::is_enabled() &&
                    (y0.requires_grad() || first.weight.requires_grad() || first.bias.requires_grad() ||
                     last.weight.requires_grad() || last.bias.requires_grad());
  ODESolution s;
  s.y = grad ? MLPFieldSolve::apply(y, first.weight, first.bias, last.weight, last.bias, t0, t1, solver.steps(),
                                    solver.method())
             : mlp_field_steps(y, first.weight, first.bias, last.weight, last.bias, t0, t1, solver.steps(),
                               tableau(solver.method()), nullptr, nullptr);
  s.y = s.y.reshape(y0.sizes());
  s.accepted = solver.steps();
  s.nfe = solver.steps() * tableau(solver.method()).stages;
  return s;
}

void MLPFieldImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::MLPField(dim=" << options.dim() << ", hidden=" << options.hidden() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

ConvODEFuncImpl::ConvODEFuncImpl(ConvODEFuncOptions options_) : options(options_) { reset(); }

void ConvODEFuncImpl::reset() {
  namespace nn = torch::nn;
  const int64_t c = options.channels();
  TORCH_CHECK(c > 0, "ConvODEFunc channels must be positive, got ", c);
  const int64_t groups = norm_groups(c), extra = options.time() ? 1 : 0;
  norm1 = register_module("norm1", nn::GroupNorm(groups, c));
  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(c + extra, c, 3).padding(1)));
  norm2 = register_module("norm2", nn::GroupNorm(groups, c));
  conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(c + extra, c, 3).padding(1)));
  norm3 = register_module("norm3", nn::GroupNorm(groups, c));
}

Tensor ConvODEFuncImpl::forward(double t, const Tensor& y) {
  TORCH_CHECK(y.dim() == 4 && y.size(1) == options.channels(), "ConvODEFunc expects [N, ", options.channels(),
              ", H, W], got ", y.sizes());
  // conv3x3 adds the time channel (torchdiffeq's ConcatConv2d) and runs small maps without oneDNN.
  auto h = ops::conv3x3(torch::relu(norm1(y)), conv1->weight, conv1->bias, t);
  h = ops::conv3x3(torch::relu(norm2(h)), conv2->weight, conv2->bias, t);
  return norm3(h);
}

void ConvODEFuncImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ConvODEFunc(channels=" << options.channels() << ", time=" << std::boolalpha << options.time() << ")";
}

EulerResNetImpl::EulerResNetImpl(EulerResNetOptions options_) : options(options_) { reset(); }

void EulerResNetImpl::reset() {
  TORCH_CHECK(options.steps() >= 1, "EulerResNet steps must be >= 1, got ", options.steps());
  TORCH_CHECK(options.step_size() > 0, "EulerResNet step_size must be positive, got ", options.step_size());
  const auto f = ConvODEFuncOptions(options.channels()).time(options.time());
  if (options.tied()) {
    func = register_module("func", ConvODEFunc(f));
  } else {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < options.steps(); ++i) blocks->push_back(ConvODEFunc(f));
  }
}

Tensor EulerResNetImpl::forward(const Tensor& x) {
  const double h = options.step_size();
  Tensor y = x;
  for (int64_t l = 0; l < options.steps(); ++l) {
    const double t = static_cast<double>(l) * h;
    auto& F = options.tied() ? *func : *blocks->ptr<ConvODEFuncImpl>(static_cast<size_t>(l));
    // h == 1 is exactly the residual block y + F(y).
    y = h == 1.0 ? y + F.forward(t, y) : y + h * F.forward(t, y);
  }
  return y;
}

void EulerResNetImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::EulerResNet(channels=" << options.channels() << ", steps=" << options.steps()
         << ", step_size=" << options.step_size() << ", tied=" << std::boolalpha << options.tied()
         << ", time=" << options.time() << ")";
}

ODEBlockImpl::ODEBlockImpl(ODEBlockOptions options_) : options(std::move(options_)) { reset(); }

void ODEBlockImpl::reset() {
  check_solver(options.solver());
  TORCH_CHECK(options.t1() != 0, "ODEBlock t1 must be non-zero");
  odefunc = register_module("odefunc", ConvODEFunc(ConvODEFuncOptions(options.channels()).time(options.time())));
}

Tensor ODEBlockImpl::forward(const Tensor& x) {
  last_ = odeint([this](double t, const Tensor& y) { return odefunc->forward(t, y); }, x, 0.0, options.t1(),
                 options.solver());
  return last_.y;
}

void ODEBlockImpl::set_solver(const ODESolverOptions& solver) {
  check_solver(solver);
  options.solver(solver);
}

void ODEBlockImpl::pretty_print(std::ostream& stream) const {
  const auto& s = options.solver();
  stream << "zoo::ODEBlock(channels=" << options.channels() << ", method=" << s.method();
  if (s.method() == "dopri5")
    stream << ", rtol=" << s.rtol() << ", atol=" << s.atol();
  else
    stream << ", steps=" << s.steps();
  stream << ", t1=" << options.t1() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

ODEResNetImpl::ODEResNetImpl(ODEResNetOptions options_) : options(std::move(options_)) { reset(); }

namespace {

const Schema<ODEResNetOptions>& ode_resnet_schema() {
  static const auto schema = [] {
    using O = ODEResNetOptions;
    Schema<O> s;
    s.add("in_channels", ZOO_FIELD(O, in_channels), "channels of the input images").at_least(1);
    s.add("num_classes", ZOO_FIELD(O, num_classes), "number of classes (logits)").at_least(1);
    s.add("channels", ZOO_FIELD(O, channels), "C: width of the stem, the ODE block and the head").at_least(1);
    s.add("block", ZOO_FIELD(O, block), "ode: one ODE block (tied F); resnet: solver.steps untied Euler steps")
        .one_of({"ode", "resnet"}, "block");
    s.nest("solver", ZOO_FIELD(O, solver), ode_solver_schema());
    s.add("step_size", ZOO_FIELD(O, step_size), "block resnet: h of x + h F(t, x)").above(0);
    s.add("time", ZOO_FIELD(O, time), "F reads t as an extra input channel");
    // The flat keys of zoo 0.1 (and a shorter spelling on the command line: --set method=dopri5).
    for (const char* key : {"method", "steps", "rtol", "atol", "max_steps"}) s.alias(key, std::string("solver.") + key);
    return s;
  }();
  return schema;
}

}  // namespace

void ODEResNetImpl::reset() {
  namespace nn = torch::nn;
  check_options(ode_resnet_schema(), options, "ode-resnet");
  const int64_t c = options.channels();
  const int64_t groups = norm_groups(c);
  downsampling = register_module(
      "downsampling",
      nn::Sequential(nn::Conv2d(nn::Conv2dOptions(options.in_channels(), c, 3)), nn::GroupNorm(groups, c), nn::ReLU(),
                     nn::Conv2d(nn::Conv2dOptions(c, c, 4).stride(2).padding(1)), nn::GroupNorm(groups, c), nn::ReLU(),
                     nn::Conv2d(nn::Conv2dOptions(c, c, 4).stride(2).padding(1))));
  if (options.block() == "ode") {
    ode = register_module("feature", ODEBlock(ODEBlockOptions(c).time(options.time()).solver(options.solver())));
  } else {
    resnet = register_module(
        "feature",
        EulerResNet(
            EulerResNetOptions(c).steps(options.solver().steps()).step_size(options.step_size()).time(options.time())));
  }
  head = register_module("head", nn::Sequential(nn::GroupNorm(groups, c), nn::ReLU(), nn::AdaptiveAvgPool2d(3),
                                                nn::Flatten(), nn::Linear(9 * c, options.num_classes())));
}

Tensor ODEResNetImpl::forward(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels() && x.size(2) >= 8 && x.size(3) >= 8,
              "ode-resnet expects [N, ", options.in_channels(), ", H >= 8, W >= 8], got ", x.sizes());
  auto h = downsampling->forward(x);
  h = ode ? ode->forward(h) : resnet->forward(h);
  return head->forward(h);
}

void ODEResNetImpl::set_solver(const ODESolverOptions& solver) {
  TORCH_CHECK(ode, "an ode-resnet with block 'resnet' has no solver to change: its steps are its layers");
  ode->set_solver(solver);
  options.solver(solver);
}

int64_t ODEResNetImpl::last_nfe() const { return ode ? ode->last_solution().nfe : options.solver().steps(); }

void ODEResNetImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ODEResNet(channels=" << options.channels() << ", block=" << options.block();
  const auto& solver = options.solver();
  if (options.block() == "resnet")
    stream << ", steps=" << solver.steps() << ", step_size=" << options.step_size();
  else if (solver.method() == "dopri5")
    stream << ", method=dopri5, rtol=" << solver.rtol() << ", atol=" << solver.atol();
  else
    stream << ", method=" << solver.method() << ", steps=" << solver.steps();
  stream << ", time=" << std::boolalpha << options.time() << ", num_classes=" << options.num_classes() << ")";
}

ZOO_REGISTER_MODEL(ode_resnet) {
  return ModelSpec<ODEResNet, ODEResNetOptions>(
             "ode-resnet", "conv stem + Neural-ODE block (euler/midpoint/rk4/dopri5) or untied Euler-step ResNet")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 3}, {"optimizer", "adam"}, {"lr", 2e-3}, {"schedule", "cosine"}, {"batch_size", 64}})
      .options(ode_resnet_schema());
}

}  // namespace zoo::models
