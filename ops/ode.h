// Ordinary differential equation solvers: dy/dt = f(t, y) from y(t0) = y0 to t1.
//
// Fixed-step explicit Runge-Kutta methods as Butcher tableaus (euler, midpoint, rk4 as the 3/8 rule, torchdiffeq's
// rk4_alt_step_func) and adaptive Dormand-Prince 5(4) with torchdiffeq's step-size control (Dormand & Prince 1980;
// Hairer, Norsett & Wanner, Solving ODEs I, II.4). Each method's tableau is written once and used by every path.
//
// mlp_field_solve is the fast path for the field f(y) = W2 tanh(W1 y + b1) + b2 of torchdiffeq's ode_demo with a
// fixed-step method: one autograd node whose forward runs without a tape and keeps each stage's input u and
// activation a = tanh(W1 u + b1), and whose backward is the discrete adjoint of the Runge-Kutta steps written out
// (stage by stage in reverse: g_u = W1^T ((1 - a^2) * (W2^T g_k)); g_k of the earlier stages += h a_ij g_u), the
// weight gradients four products over all stages at once (dW2 = sum_e g_k,e^T a_e, ...): 3 operations per
// evaluation instead of about 9 autograd nodes. mlp_field_solve_reference is odeint over the same field in tensor
// operations, recorded by autograd: what the fast path is tested against.
#pragma once

#include "core/schema.h"

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace zoo::ops {

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

/// y(t1) of dy/dt = W2 tanh(W1 y + b1) + b2 from y(t0) = y0 [N, dim] with `steps` steps of a fixed-step method
/// (euler, midpoint, rk4). w1 [hidden, dim], b1 [hidden], w2 [dim, hidden], b2 [dim]. Differentiable once (no
/// double backward) in every input.
ODESolution mlp_field_solve(const torch::Tensor& y0, const torch::Tensor& w1, const torch::Tensor& b1,
                            const torch::Tensor& w2, const torch::Tensor& b2, double t0, double t1, int64_t steps,
                            const std::string& method);

ODESolution mlp_field_solve_reference(const torch::Tensor& y0, const torch::Tensor& w1, const torch::Tensor& b1,
                                      const torch::Tensor& w2, const torch::Tensor& b2, double t0, double t1,
                                      int64_t steps, const std::string& method);

}  // namespace zoo::ops
