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

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace zoo::models {

/// The right-hand side f(t, y) of dy/dt = f(t, y).
using VectorField = std::function<torch::Tensor(double t, const torch::Tensor& y)>;

struct ODESolverOptions {
  /// euler (order 1), midpoint (2), rk4 (4; the 3/8 rule, as torchdiffeq's rk4) or dopri5 (adaptive, 5(4)).
  TORCH_ARG(std::string, method) = "rk4";
  /// Fixed-step solvers: number of equal steps over [t0, t1].
  TORCH_ARG(int64_t, steps) = 2;
  /// dopri5: a step is accepted when RMS(err / (atol + rtol * max(|y0|, |y1|))) <= 1.
  TORCH_ARG(double, rtol) = 1e-3;
  TORCH_ARG(double, atol) = 1e-3;
  /// dopri5: the most step attempts (accepted + rejected) before giving up with an error.
  TORCH_ARG(int64_t, max_steps) = 1000;
};

struct ODESolution {
  torch::Tensor y;       ///< y(t1)
  int64_t nfe = 0;       ///< number of evaluations of f
  int64_t accepted = 0;  ///< steps taken
  int64_t rejected = 0;  ///< dopri5: steps tried and rejected
};

/// The solver names odeint accepts.
const std::vector<std::string>& ode_methods();
/// The order of a solver's global error (euler 1, midpoint 2, rk4 4, dopri5 5).
int64_t ode_order(const std::string& method);
/// The solver's settings: names, docs and checks (nested as "solver" in the ode-resnet model's options).
const Schema<ODESolverOptions>& ode_solver_schema();
/// Throws std::invalid_argument naming the problem (unknown method, steps < 1, tolerances <= 0).
void check_solver(const ODESolverOptions& options);

/// Integrates dy/dt = f(t, y) from y(t0) = y0 to t1 (t1 < t0 integrates backwards). Differentiable: autograd
/// records every accepted step (dopri5's step-size control itself is not differentiated, as in torchdiffeq).
ODESolution odeint(const VectorField& f, const torch::Tensor& y0, double t0, double t1,
                   const ODESolverOptions& options = {});

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
/// solve() integrates it with the fixed-step solvers as one autograd node: the forward runs without a tape and
/// keeps each stage's input u and activation a = tanh(W1 u + b1); the backward is the discrete adjoint of the
/// Runge-Kutta steps written out (stage by stage in reverse: g_u = W1^T ((1 - a^2) * (W2^T g_k)), g_k of the
/// earlier stages += h a_ij g_u), and the weight gradients are four products over all stages at once
/// (dW2 = sum_e g_k,e^T a_e, ...). It computes the same gradients as autograd through odeint (a test checks), with
/// 3 operations per evaluation instead of about 9 autograd nodes: many small steps are where the per-node cost
/// of the engine is most of a training step. The result is differentiable once (no double backward). dopri5,
/// and tracing for TorchScript, go through odeint with autograd.
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
