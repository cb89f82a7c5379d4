// ResNets as Euler steps of an ODE, and Neural ODEs.
//
// A residual block x_{l+1} = x_l + F(x_l) is one explicit Euler step of dy/dt = F(y, t) with step h = 1. With a
// step size h and L steps over [0, T = L h]:
//     x_{l+1} = x_l + h * F(x_l, t_l),   t_l = l h
// untied (one F per step: the classic ResNet) or tied (one F for every step: an ODE solved by L Euler steps).
// A Neural ODE (Chen et al., NeurIPS 2018, arXiv 1806.07366) takes the limit: y(1) = ODESolve(F, y(0), 0, 1),
// here with fixed-step euler / midpoint / rk4 or adaptive dopri5 (step control as in rtqichen/torchdiffeq),
// backpropagating through the solver's steps. The solver can change at inference without retraining.
#pragma once

#include "core/schema.h"
#include "ops/ode.h"

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace zoo::models {

using ops::check_solver;
using ops::ode_methods;
using ops::ode_order;
using ops::ode_solver_schema;
using ops::odeint;
using ops::ODESolution;
using ops::ODESolverOptions;
using ops::VectorField;

// ---------------------------------------------------------------------------------------------------------------

struct MLPFieldOptions {
  MLPFieldOptions(int64_t dim, int64_t hidden = 50) : dim_(dim), hidden_(hidden) {}
  /// Size of the state y.
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, hidden);
};

/// The vector field of torchdiffeq's examples/ode_demo.py (an autonomous field: t is not an input)
///   f(y) = W2 tanh(W1 y + b1) + b2
/// as net = Sequential(Linear(dim, hidden), Tanh, Linear(hidden, dim)), so the weights are net.0.weight,
/// net.0.bias, net.2.weight, net.2.bias, the names of the Python ODEFunc.
///
/// solve() with a fixed-step solver runs ops::mlp_field_solve (ops/ode.h): one autograd node with the discrete
/// adjoint of the Runge-Kutta steps written out, the same gradients as autograd through odeint (tests/ops/ode.cpp)
/// with 3 operations per evaluation instead of about 9 autograd nodes. It is differentiable once (no double
/// backward). dopri5, and tracing for TorchScript, go through odeint with autograd.
class MLPFieldImpl : public torch::nn::Cloneable<MLPFieldImpl> {
 public:
  explicit MLPFieldImpl(MLPFieldOptions options);
  void reset() override;
  /// y: [..., dim] -> f(y) of the same shape (t is ignored). Usable as a VectorField for odeint.
  torch::Tensor forward(double t, const torch::Tensor& y);
  /// y(t1) from y(t0) = y0 ([..., dim]); the fixed-step solvers as described above, dopri5 through odeint.
  ODESolution solve(const torch::Tensor& y0, double t0, double t1, const ODESolverOptions& solver = {});
  void pretty_print(std::ostream& stream) const override;

  MLPFieldOptions options;
  torch::nn::Sequential net{nullptr};
};
TORCH_MODULE(MLPField);

// ---------------------------------------------------------------------------------------------------------------

struct ConvODEFuncOptions {
  /* implicit */ ConvODEFuncOptions(int64_t channels = 64) : channels_(channels) {}
  TORCH_ARG(int64_t, channels);
  /// Concatenate t as an extra input channel of both convolutions (torchdiffeq's ConcatConv2d).
  TORCH_ARG(bool, time) = true;
};

/// F(t, y) of torchdiffeq's odenet_mnist example:
///   norm1 -> ReLU -> conv1 -> norm2 -> ReLU -> conv2 -> norm3
/// with GroupNorm(G, C), G the largest divisor of C up to min(32, C / 8) (>= 8 channels a group), and 3x3 convolutions
/// (padding 1) that see t as one more channel when `time`.
class ConvODEFuncImpl : public torch::nn::Cloneable<ConvODEFuncImpl> {
 public:
  explicit ConvODEFuncImpl(ConvODEFuncOptions options = {});
  void reset() override;
  /// y: [N, C, H, W] -> dy/dt of the same shape.
  torch::Tensor forward(double t, const torch::Tensor& y);
  void pretty_print(std::ostream& stream) const override;

  ConvODEFuncOptions options;
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
};
TORCH_MODULE(ConvODEFunc);

struct EulerResNetOptions {
  /* implicit */ EulerResNetOptions(int64_t channels = 64) : channels_(channels) {}
  TORCH_ARG(int64_t, channels);
  /// Number of Euler steps = residual blocks.
  TORCH_ARG(int64_t, steps) = 6;
  /// h: 1 is the plain ResNet x + F(x); 1/steps integrates over [0, 1].
  TORCH_ARG(double, step_size) = 1.0;
  /// One F for every step (an ODE) instead of one F per step (a ResNet).
  TORCH_ARG(bool, tied) = false;
  /// F sees t_l = l h as an input channel.
  TORCH_ARG(bool, time) = false;
};

/// x_{l+1} = x_l + h F_l(x_l, t_l) for l = 0 .. steps-1. Untied: blocks.0 .. blocks.{steps-1}; tied: func.
class EulerResNetImpl : public torch::nn::Cloneable<EulerResNetImpl> {
 public:
  explicit EulerResNetImpl(EulerResNetOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  EulerResNetOptions options;
  torch::nn::ModuleList blocks{nullptr};  ///< untied
  ConvODEFunc func{nullptr};              ///< tied
};
TORCH_MODULE(EulerResNet);

struct ODEBlockOptions {
  /* implicit */ ODEBlockOptions(int64_t channels = 64) : channels_(channels) {}
  TORCH_ARG(int64_t, channels);
  TORCH_ARG(bool, time) = true;
  /// Solver settings: not parameters, so they may change after training (see set_solver).
  TORCH_ARG(ODESolverOptions, solver) = {};
  /// Integration interval [0, t1].
  TORCH_ARG(double, t1) = 1.0;
};

/// y(t1) = ODESolve(odefunc, y(0) = x, 0, t1), counting function evaluations.
class ODEBlockImpl : public torch::nn::Cloneable<ODEBlockImpl> {
 public:
  explicit ODEBlockImpl(ODEBlockOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  /// Changes the solver (method, steps, tolerances) without touching the weights.
  void set_solver(const ODESolverOptions& solver);
  /// Statistics of the last forward call.
  const ODESolution& last_solution() const { return last_; }

  ODEBlockOptions options;
  ConvODEFunc odefunc{nullptr};

 private:
  ODESolution last_;
};
TORCH_MODULE(ODEBlock);

// ---------------------------------------------------------------------------------------------------------------

struct ODEResNetOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(int64_t, channels) = 32;
  /// "ode": one ODEBlock (tied F, any solver); "resnet": solver.steps untied Euler steps of size `step_size`.
  TORCH_ARG(std::string, block) = "ode";
  /// The ODE block's solver (block "resnet" reads only its steps: the number of layers).
  TORCH_ARG(ODESolverOptions, solver) = {};
  /// Block "resnet": h of x_{k+1} = x_k + h F_k(t_k, x_k).
  TORCH_ARG(double, step_size) = 1.0;
  /// F reads t as an extra input channel.
  TORCH_ARG(bool, time) = true;
};

/// The odenet_mnist classifier of torchdiffeq at a CPU-friendly width:
///   downsampling: Conv(in, C, 3) -> GN -> ReLU -> Conv(C, C, 4, s2, p1) -> GN -> ReLU -> Conv(C, C, 4, s2, p1)
///   feature:      ODEBlock (block = "ode") or EulerResNet (block = "resnet")
///   head:         GN -> ReLU -> average pool to 3x3 -> Flatten -> Linear(9 C, num_classes)
/// torchdiffeq pools to 1x1 at C = 64; at C = 32 that learns much slower (2 epochs on 2000 images: 0.52 test
/// accuracy against 0.72 with the 3x3 pool), so the head keeps a coarse layout.
class ODEResNetImpl : public torch::nn::Cloneable<ODEResNetImpl> {
 public:
  explicit ODEResNetImpl(ODEResNetOptions options = {});
  void reset() override;
  /// x: [N, in_channels, H, W] with H, W >= 8; returns logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  /// Changes the ODE solver of an "ode" model (error for "resnet", whose steps are its layers).
  void set_solver(const ODESolverOptions& solver);
  /// Function evaluations of the last forward call (the number of blocks for "resnet").
  int64_t last_nfe() const;

  ODEResNetOptions options;
  torch::nn::Sequential downsampling{nullptr};
  ODEBlock ode{nullptr};        ///< registered as "feature" when block = "ode"
  EulerResNet resnet{nullptr};  ///< registered as "feature" when block = "resnet"
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(ODEResNet);

}  // namespace zoo::models
