// The ODE solvers: orders, adaptive steps, gradients through the steps, and mlp_field_solve's hand-written
// adjoint against autograd through odeint.
#include "ops/ode.h"
#include "helpers.h"

#include <catch2/catch.hpp>

#include <cmath>

using namespace zoo;
using ops::ODESolverOptions;
using torch::Tensor;
using zoo::test::kF64;

namespace {

// Least-squares slope of log(error) against log(h).
double loglog_slope(const std::vector<double>& h, const std::vector<double>& err) {
  double mx = 0, my = 0;
  for (size_t i = 0; i < h.size(); ++i) mx += std::log(h[i]) / h.size(), my += std::log(err[i]) / h.size();
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < h.size(); ++i) {
    sxy += (std::log(h[i]) - mx) * (std::log(err[i]) - my);
    sxx += (std::log(h[i]) - mx) * (std::log(h[i]) - mx);
  }
  return sxy / sxx;
}

// dy/dt = y, y(0) = 1: y(1) = e.   2-D rotation dy/dt = [[0, -1], [1, 0]] y, y(0) = (1, 0): y(1) = (cos 1, sin 1).
ops::VectorField growth() {
  return [](double, const Tensor& y) { return y; };
}

ops::VectorField rotation() {
  return [](double, const Tensor& y) { return torch::stack({-y[1], y[0]}); };
}

double growth_error(const Tensor& y) { return std::abs(y.item<double>() - std::exp(1.0)); }

double rotation_error(const Tensor& y) {
  return (y - torch::tensor({std::cos(1.0), std::sin(1.0)}, kF64)).norm().item<double>();
}

}  // namespace

TEST_CASE("Fixed-step solvers converge at their order on dy/dt = y and on a rotation", "[ode]") {
  for (const auto& [method, order, stages] :
       std::vector<std::tuple<std::string, double, int64_t>>{{"euler", 1, 1}, {"midpoint", 2, 2}, {"rk4", 4, 4}}) {
    std::vector<double> h, e_growth, e_rotation;
    for (int64_t steps : {8, 16, 32, 64}) {
      const auto o = ODESolverOptions().method(method).steps(steps);
      auto g = ops::odeint(growth(), torch::ones({}, kF64), 0, 1, o);
      auto r = ops::odeint(rotation(), torch::tensor({1.0, 0.0}, kF64), 0, 1, o);
      CHECK(g.nfe == stages * steps);
      h.push_back(1.0 / static_cast<double>(steps));
      e_growth.push_back(growth_error(g.y));
      e_rotation.push_back(rotation_error(r.y));
    }
    const double s_growth = loglog_slope(h, e_growth), s_rotation = loglog_slope(h, e_rotation);
    INFO(method << ": slopes " << s_growth << " (growth), " << s_rotation << " (rotation), order " << order);
    CHECK(std::abs(s_growth - order) < 0.3);
    CHECK(std::abs(s_rotation - order) < 0.3);
  }
}

TEST_CASE("dopri5 meets its tolerance with fewer evaluations than rk4 needs for the same error", "[ode]") {
  for (const auto& [field, y0, error] :
       std::vector<std::tuple<ops::VectorField, Tensor, std::function<double(const Tensor&)>>>{
           {growth(), torch::ones({}, kF64), growth_error},
           {rotation(), torch::tensor({1.0, 0.0}, kF64), rotation_error}}) {
    const auto d = ops::odeint(field, y0, 0, 1, ODESolverOptions().method("dopri5").rtol(1e-8).atol(1e-8));
    const double e_dopri = error(d.y);
    CHECK(e_dopri < 1e-7);
    CHECK(d.accepted >= 2);
    int64_t rk4_steps = 1;
    while (error(ops::odeint(field, y0, 0, 1, ODESolverOptions().method("rk4").steps(rk4_steps)).y) > e_dopri)
      ++rk4_steps;
    INFO("dopri5 error " << e_dopri << " with " << d.nfe << " evaluations; rk4 needs " << rk4_steps << " steps");
    CHECK(d.nfe < 4 * rk4_steps);
  }
  // Looser tolerance: fewer evaluations, larger (but bounded) error.
  const auto loose =
      ops::odeint(growth(), torch::ones({}, kF64), 0, 1, ODESolverOptions().method("dopri5").rtol(1e-3).atol(1e-3));
  const auto tight =
      ops::odeint(growth(), torch::ones({}, kF64), 0, 1, ODESolverOptions().method("dopri5").rtol(1e-8).atol(1e-8));
  CHECK(loose.nfe < tight.nfe);
  CHECK(growth_error(loose.y) < 1e-2);
  // Backwards in time: y(0) from y(1) = e.
  const auto back = ops::odeint(growth(), torch::full({}, std::exp(1.0), kF64), 1, 0,
                                ODESolverOptions().method("dopri5").rtol(1e-8).atol(1e-8));
  CHECK(back.y.item<double>() == Approx(1.0).epsilon(1e-6));
  CHECK_THROWS_WITH(ops::odeint(growth(), torch::ones({}, kF64), 0, 1,
                                ODESolverOptions().method("dopri5").rtol(1e-12).atol(1e-12).max_steps(3)),
                    Catch::Contains("max_steps"));
  CHECK_THROWS_WITH(
      ops::odeint(growth(), torch::ones({}), 0, 1, ODESolverOptions().method("rk5")),
      Catch::Contains("ODE solver method 'rk5' is unknown; valid ODE solvers: euler, midpoint, rk4, dopri5"));
  CHECK_THROWS_WITH(ops::odeint(growth(), torch::ones({}), 0, 1, ODESolverOptions().steps(0)),
                    Catch::Contains("steps must be >= 1"));
}

TEST_CASE("Gradients flow through the solver steps: d y(1) / d a = e^a for dy/dt = a y", "[ode]") {
  for (const std::string method : {"rk4", "dopri5"}) {
    auto a = torch::full({}, 0.7, kF64.requires_grad(true));
    auto solution = ops::odeint([&](double, const Tensor& y) { return a * y; }, torch::ones({}, kF64), 0, 1,
                                ODESolverOptions().method(method).steps(20).rtol(1e-9).atol(1e-9));
    solution.y.backward();
    INFO(method);
    CHECK(a.grad().item<double>() == Approx(std::exp(0.7)).epsilon(1e-6));
  }
}

TEST_CASE("mlp_field_solve: the hand-written adjoint equals autograd through odeint, for every fixed-step solver",
          "[ops][ode]") {
  struct Case {
    std::string method;
    int64_t steps;
    double t0, t1;
  };
  for (const Case& c : {Case{"euler", 7, 0.0, 1.0}, Case{"midpoint", 5, 0.0, 0.8}, Case{"rk4", 6, 0.0, 1.0},
                        Case{"rk4", 3, 1.0, -0.5}}) {
    INFO(c.method << " steps " << c.steps << " from " << c.t0 << " to " << c.t1);
    torch::manual_seed(3);
    const std::vector<Tensor> inputs{torch::randn({5, 3}, kF64), torch::randn({8, 3}, kF64), torch::randn({8}, kF64),
                                     torch::randn({3, 8}, kF64), torch::randn({3}, kF64)};
    const auto weight = torch::randn({5, 3}, kF64);
    std::vector<Tensor> f, r;
    for (const auto& t : inputs) {
      f.push_back(t.clone().requires_grad_(true));
      r.push_back(t.clone().requires_grad_(true));
    }
    const auto fast = ops::mlp_field_solve(f[0], f[1], f[2], f[3], f[4], c.t0, c.t1, c.steps, c.method);
    const auto plain = ops::mlp_field_solve_reference(r[0], r[1], r[2], r[3], r[4], c.t0, c.t1, c.steps, c.method);
    CHECK(fast.nfe == plain.nfe);
    CHECK(fast.accepted == c.steps);
    CHECK(torch::allclose(fast.y, plain.y, 1e-12, 1e-12));
    (fast.y * weight).sum().backward();
    (plain.y * weight).sum().backward();
    for (size_t i = 0; i < f.size(); ++i) {
      INFO("input " << i << " (y0, w1, b1, w2, b2)");
      REQUIRE(f[i].grad().defined());
      CHECK(test::max_abs(r[i].grad()) > 1e-3);  // a real gradient, not zeros on both sides
      CHECK(torch::allclose(f[i].grad(), r[i].grad(), 1e-10, 1e-12));
    }
  }
  SECTION("without gradients the same values; shapes and methods that do not fit are named") {
    torch::NoGradGuard no_grad;
    const auto y0 = torch::randn({4, 2}, kF64), w1 = torch::randn({6, 2}, kF64), b1 = torch::randn({6}, kF64);
    const auto w2 = torch::randn({2, 6}, kF64), b2 = torch::randn({2}, kF64);
    const auto fast = ops::mlp_field_solve(y0, w1, b1, w2, b2, 0, 1, 4, "midpoint").y;
    CHECK_FALSE(fast.requires_grad());
    CHECK(
        torch::allclose(fast, ops::mlp_field_solve_reference(y0, w1, b1, w2, b2, 0, 1, 4, "midpoint").y, 1e-12, 1e-12));
    CHECK(torch::equal(ops::mlp_field_solve(y0, w1, b1, w2, b2, 0.5, 0.5, 4, "rk4").y, y0));
    CHECK_THROWS_WITH(ops::mlp_field_solve(y0, w1, b1, w2, b2, 0, 1, 4, "dopri5"),
                      Catch::Contains("use odeint for dopri5"));
    CHECK_THROWS_WITH(ops::mlp_field_solve(y0, w1, b1, w2, b2, 0, 1, 0, "rk4"), Catch::Contains("steps must be >= 1"));
    CHECK_THROWS_WITH(ops::mlp_field_solve(y0, w2, b1, w2, b2, 0, 1, 4, "rk4"),
                      Catch::Contains("expects y0 [N, dim], w1 [hidden, dim]"));
  }
}

TEST_CASE("dopri5 against SciPy's solve_ivp RK45, an independent Dormand-Prince, on problems with known solutions",
          "[ode][python]") {
  if (zoo::test::run_command(std::string(zoo::test::kPython) + " -c 'import scipy.integrate'").code != 0) {
    WARN("skipped: /usr/bin/python3 cannot import scipy (apt-get install python3-scipy)");
    return;
  }
  const auto r = zoo::test::run_command(std::string(zoo::test::kPython) + " " + ZOO_SOURCE_DIR +
                                        "/tests/python/scipy_ode.py 1e-4 1e-7");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto scipy = nlohmann::json::parse(r.out);
  struct Problem {
    ops::VectorField f;
    std::vector<double> y0;
    double t0, t1;
    std::function<std::vector<double>(double)> exact;
  };
  const double pi = std::acos(-1.0);
  const std::map<std::string, Problem> problems{
      {"decay",
       {[](double, const Tensor& y) { return -0.5 * y; },
        {1, 2},
        0,
        3,
        [](double t) {
          return std::vector<double>{std::exp(-0.5 * t), 2 * std::exp(-0.5 * t)};
        }}},
      {"rotation",
       {[](double, const Tensor& y) {
          return torch::stack({y[1], -y[0]});
        },
        {1, 0},
        0,
        2 * pi,
        [](double t) {
          return std::vector<double>{std::cos(t), -std::sin(t)};
        }}},
      {"logistic",
       {[](double, const Tensor& y) { return y * (1 - y); },
        {0.1},
        0,
        5,
        [](double t) { return std::vector<double>{1 / (1 + 9 * std::exp(-t))}; }}},
      {"time-dependent",
       {[](double t, const Tensor& y) { return std::cos(t) * y; },
        {1},
        0,
        4,
        [](double t) { return std::vector<double>{std::exp(std::sin(t))}; }}},
  };
  for (const auto& [name, p] : problems) {
    for (const double tol : {1e-4, 1e-7}) {
      const auto key = tol == 1e-4 ? "0.0001" : "1e-07";
      const auto& ref = scipy.at(name).at(key);
      const auto zoo_solution = ops::odeint(p.f, torch::tensor(p.y0, kF64), p.t0, p.t1,
                                            ODESolverOptions().method("dopri5").rtol(tol).atol(tol).max_steps(10000));
      const auto exact = p.exact(p.t1);
      double zoo_error = 0, scipy_error = 0, scale = 0;
      for (size_t i = 0; i < exact.size(); ++i) {
        zoo_error = std::max(zoo_error, std::abs(zoo_solution.y[static_cast<int64_t>(i)].item<double>() - exact[i]));
        scipy_error = std::max(scipy_error, std::abs(ref["y"][i].get<double>() - exact[i]));
        scale = std::max(scale, tol * (1 + std::abs(exact[i])));
      }
      const auto scipy_steps = ref["steps"].get<int64_t>();
      INFO(name << " tol " << tol << ": zoo error " << zoo_error << " in " << zoo_solution.accepted << " steps ("
                << zoo_solution.nfe << " evaluations), SciPy error " << scipy_error << " in " << scipy_steps
                << " steps (" << ref["nfev"].get<int64_t>() << ")");
      // The global error of a method whose local error per step is held to the tolerance: within a few
      // tolerances, as SciPy's own (which this checks too, so that the bound is not zoo's alone).
      CHECK(zoo_error < 10 * scale);
      CHECK(scipy_error < 10 * scale);
      // The same method with a similar step control takes a similar number of steps.
      CHECK(zoo_solution.accepted <= 2 * scipy_steps + 1);
      CHECK(scipy_steps <= 2 * zoo_solution.accepted + 1);
    }
  }
}
