#include "models/ode.h"
#include "ops/conv3x3.h"

#include "models/registry.h"

#include <algorithm>

namespace zoo::models {

namespace {

using torch::Tensor;

// GroupNorm groups for C channels: the largest divisor of C that is at most min(32, C / 8), so each group holds
// >= 8 channels. (torchdiffeq's min(32, C) at C = 32 is one channel per group: every channel is normalised to
// mean 0 over space, and a global average pool after it sees almost nothing of the input.)
int64_t norm_groups(int64_t c) {
  int64_t g = std::max<int64_t>(1, std::min<int64_t>(32, c / 8));
  while (c % g != 0) --g;
  return g;
}

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
  if (solver.method() == "dopri5")
    return odeint([this](double t, const Tensor& y) { return forward(t, y); }, y0, t0, t1, solver);
  const auto& first = *net->ptr<torch::nn::LinearImpl>(0);
  const auto& last = *net->ptr<torch::nn::LinearImpl>(2);
  auto s = ops::mlp_field_solve(y0.reshape({-1, options.dim()}), first.weight, first.bias, last.weight, last.bias, t0,
                                t1, solver.steps(), solver.method());
  s.y = s.y.reshape(y0.sizes());
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
