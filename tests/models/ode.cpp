// ResNet as Euler steps, MLPField, ODEBlock and the ode-resnet model.
#include "models/ode.h"
#include "helpers.h"
#include "models/registry.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <cmath>

using namespace zoo;
using models::ODESolverOptions;
using torch::Tensor;
using zoo::test::kF64;

TEST_CASE("MLPField: the hand-written adjoint of the fixed-step solvers equals autograd through odeint", "[ode]") {
  torch::manual_seed(0);
  models::MLPField field(models::MLPFieldOptions(3, 8));
  field->to(torch::kFloat64);
  REQUIRE(field->named_parameters().contains("net.0.weight"));
  REQUIRE(field->named_parameters().contains("net.2.bias"));
  const auto params = field->parameters();
  auto gradients = [&](bool fused, const Tensor& y0, const Tensor& weight, const ODESolverOptions& solver, double t0,
                       double t1) {
    for (auto& p : params) p.mutable_grad() = Tensor();
    auto y = y0.detach().clone().requires_grad_(y0.requires_grad());
    auto solution =
        fused ? field->solve(y, t0, t1, solver)
              : models::odeint([&](double t, const Tensor& u) { return field->forward(t, u); }, y, t0, t1, solver);
    (solution.y * weight).sum().backward();
    std::vector<Tensor> out{solution.y.detach()};
    out.push_back(y.requires_grad() ? y.grad() : Tensor());
    for (auto& p : params) out.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
    return std::make_pair(out, solution);
  };
  struct Case {
    std::string method;
    int64_t steps;
    double t0, t1;
    std::vector<int64_t> shape;
  };
  for (const Case& c : {Case{"euler", 7, 0.0, 1.0, {5, 3}}, Case{"midpoint", 5, 0.0, 0.8, {5, 3}},
                        Case{"rk4", 6, 0.0, 1.0, {2, 4, 3}}, Case{"rk4", 3, 1.0, -0.5, {3}}}) {
    INFO(c.method << " steps " << c.steps << " from " << c.t0 << " to " << c.t1);
    const auto y0 = torch::randn(c.shape, kF64).requires_grad_(true);
    const auto weight = torch::randn(c.shape, kF64);
    const auto solver = ODESolverOptions().method(c.method).steps(c.steps);
    const auto [fused, s1] = gradients(true, y0, weight, solver, c.t0, c.t1);
    const auto [reference, s2] = gradients(false, y0, weight, solver, c.t0, c.t1);
    CHECK(s1.nfe == s2.nfe);
    CHECK(s1.accepted == c.steps);
    CHECK(fused[0].sizes() == y0.sizes());
    for (size_t i = 0; i < fused.size(); ++i) {
      INFO("output " << i << " (y, dy0, dW1, db1, dW2, db2)");
      REQUIRE(fused[i].defined());
      CHECK(fused[i].abs().max().item<double>() > 1e-3);  // a real gradient, not zeros on both sides
      CHECK(torch::allclose(fused[i], reference[i], 1e-10, 1e-12));
    }
  }
  SECTION("only the weights, or only y0, need a gradient") {
    const auto weight = torch::randn({4, 3}, kF64);
    const auto solver = ODESolverOptions().steps(4);
    const auto [fused, s1] = gradients(true, torch::randn({4, 3}, kF64), weight, solver, 0, 1);
    CHECK_FALSE(fused[1].defined());
    for (auto& p : params) p.requires_grad_(false);
    auto y0 = torch::randn({4, 3}, kF64).requires_grad_(true);
    const auto [only_y0, s2] = gradients(true, y0, weight, solver, 0, 1);
    const auto [reference, s3] = gradients(false, y0, weight, solver, 0, 1);
    for (auto& p : params) p.requires_grad_(true);
    CHECK(torch::allclose(only_y0[1], reference[1], 1e-10, 1e-12));
    CHECK_FALSE(only_y0[2].defined());
  }
  SECTION("without gradients, dopri5, and errors") {
    const auto y0 = torch::randn({6, 3}, kF64);
    torch::NoGradGuard no_grad;
    for (const std::string method : {"euler", "midpoint", "rk4"}) {
      const auto solver = ODESolverOptions().method(method).steps(5);
      const auto y = field->solve(y0, 0, 1, solver).y;
      CHECK_FALSE(y.requires_grad());
      CHECK(torch::allclose(y, models::odeint(field, y0, 0, 1, solver).y, 1e-12, 1e-12));
    }
    const auto adaptive = ODESolverOptions().method("dopri5").rtol(1e-6).atol(1e-6);
    const auto s = field->solve(y0, 0, 1, adaptive);
    CHECK(s.nfe > 6);
    CHECK(torch::allclose(s.y, models::odeint(field, y0, 0, 1, adaptive).y));
    CHECK(torch::equal(field->solve(y0, 0.5, 0.5).y, y0));
    CHECK_THROWS_WITH(field->solve(torch::randn({6, 4}, kF64), 0, 1), Catch::Contains("expects y0 [..., 3]"));
    CHECK_THROWS_WITH(field->solve(y0, 0, 1, ODESolverOptions().steps(0)), Catch::Contains("steps must be >= 1"));
  }
}

TEST_CASE("Euler ResNet: h = 1 with one step is the residual block, tied Euler equals the ODE block", "[ode]") {
  torch::manual_seed(0);
  const auto x = torch::randn({2, 8, 6, 6});
  models::EulerResNet one(models::EulerResNetOptions(8).steps(1));
  const auto& F = one->blocks->ptr<models::ConvODEFuncImpl>(0);
  CHECK(torch::equal(one->forward(x), x + F->forward(0.0, x)));

  models::EulerResNet untied(models::EulerResNetOptions(8).steps(4));
  models::EulerResNet tied(models::EulerResNetOptions(8).steps(4).tied(true).step_size(0.25).time(true));
  CHECK(models::count_parameters(*untied) == 4 * models::count_parameters(*F));
  CHECK(untied->named_parameters().contains("blocks.3.conv2.weight"));
  CHECK(models::count_parameters(*tied) ==
        models::count_parameters(*models::ConvODEFunc(models::ConvODEFuncOptions(8).time(true))));

  // Tied Euler with h = 1/4 is the ODE block solved by 4 Euler steps over [0, 1].
  models::ODEBlock block(models::ODEBlockOptions(8).solver(ODESolverOptions().method("euler").steps(4)));
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : tied->func->named_parameters()) block->odefunc->named_parameters()[p.key()].copy_(p.value());
  }
  CHECK(torch::allclose(block->forward(x), tied->forward(x), 1e-5, 1e-6));
  CHECK(block->last_solution().nfe == 4);
  block->set_solver(ODESolverOptions().method("rk4").steps(3));
  block->forward(x);
  CHECK(block->last_solution().nfe == 12);
}

TEST_CASE("ode-resnet: shapes, names, solver changes at inference, errors", "[ode]") {
  torch::manual_seed(0);
  models::ODEResNet net;
  const auto x = torch::rand({3, 1, 28, 28});
  CHECK(net->forward(x).sizes() == torch::IntArrayRef({3, 10}));
  CHECK(net->last_nfe() == 8);  // rk4, 2 steps
  const auto names = net->named_parameters();
  CHECK(names.contains("downsampling.0.weight"));
  CHECK(names.contains("feature.odefunc.conv1.weight"));
  CHECK(names["feature.odefunc.conv1.weight"].size(1) == 33);  // t is one more input channel
  CHECK(names.contains("head.4.weight"));
  net->eval();
  // Same weights, other solvers: accurate ones agree, a single Euler step does not.
  net->set_solver(ODESolverOptions().method("rk4").steps(16));
  const auto reference = net->forward(x);
  net->set_solver(ODESolverOptions().method("dopri5").rtol(1e-6).atol(1e-6));
  const auto adaptive = net->forward(x);
  CHECK(net->last_nfe() > 8);
  const double scale = reference.abs().max().item<double>();
  INFO("logit scale " << scale << ", dopri5 - rk4x16 " << (adaptive - reference).abs().max().item<double>());
  CHECK((adaptive - reference).abs().max().item<double>() < 1e-3 * scale);
  net->set_solver(ODESolverOptions().method("euler").steps(1));
  const double euler = (net->forward(x) - reference).abs().max().item<double>();
  INFO("euler x1 - rk4x16 " << euler);
  CHECK(euler > 1e-2 * scale);

  models::ODEResNet resnet(models::ODEResNetOptions().block("resnet").solver(ODESolverOptions().steps(3)));
  CHECK(resnet->named_parameters().contains("feature.blocks.2.conv1.weight"));
  CHECK_THROWS_WITH(resnet->set_solver(ODESolverOptions()), Catch::Contains("no solver to change"));
  CHECK_THROWS_WITH(models::build_model("ode-resnet", {{"method", "rk5"}}),
                    Catch::Contains("option 'solver.method' of model 'ode-resnet': 'rk5' is unknown"));
  CHECK_THROWS_WITH(models::build_model("ode-resnet", {{"solver", {{"steps", 0}}}}),
                    Catch::Contains("option 'solver.steps' of model 'ode-resnet': must be >= 1, got 0"));
  CHECK_THROWS_WITH(models::build_model("ode-resnet", {{"channels", 0}}),
                    Catch::Contains("channels' of model 'ode-resnet': must be >= 1"));
  CHECK_THROWS_WITH(models::ODEResNet(models::ODEResNetOptions().channels(0)),
                    Catch::Contains("ode-resnet: channels must be >= 1"));
  CHECK(models::ODEResNet(models::ODEResNetOptions().channels(12))->forward(x).size(1) == 10);
  CHECK_THROWS_WITH(net->forward(torch::rand({1, 1, 4, 4})), Catch::Contains("H >= 8"));
}

TEST_CASE("ode-resnet learns Fashion-MNIST, eval --set changes the solver without retraining (CLI)",
          "[ode][learning][cli]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  const auto run = dir.str("ode");
  auto train = test::run_zoo("train ode-resnet --limit 2000 --epochs 2 --threads 2 --no-progress --out " + run);
  INFO(train.err);
  REQUIRE(train.code == 0);
  auto eval = [&](const std::string& set) {
    auto r = test::run_zoo("eval " + run + " --json --threads 2 " + set);
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(test::last_line(r.out))["accuracy"].get<double>();
  };
  const double rk4 = eval("");
  INFO("accuracy after two epochs on 2000 images: " << rk4);
  CHECK(rk4 > 0.6);  // chance 0.1 (measured 0.72)
  const double dopri5 = eval("--set method=dopri5");
  const double euler8 = eval("--set solver.method=euler --set steps=8");  // dotted and flat spellings mix
  INFO("dopri5 " << dopri5 << ", euler x8 " << euler8);
  CHECK(std::abs(dopri5 - rk4) < 0.03);
  CHECK(std::abs(euler8 - rk4) < 0.03);
  auto wrong = test::run_zoo("eval " + run + " --set channels=64");
  CHECK(wrong.code != 0);
  CHECK_THAT(wrong.err, Catch::Contains("does not match the model"));
  auto stuck =
      test::run_zoo("eval " + run + " --set method=dopri5 --set rtol=1e-12 --set atol=1e-12 --set max_steps=3");
  CHECK(stuck.code == 1);
  CHECK_THAT(stuck.err, Catch::Contains("needed more than max_steps = 3") && Catch::Contains("raise max_steps"));
  CHECK(test::count_lines(stuck.err) == 1);
  auto bad = test::run_zoo("eval " + run + " --set method=rk5");
  CHECK(bad.code != 0);
  CHECK_THAT(bad.err,
             Catch::Contains("option 'solver.method' of model 'ode-resnet': 'rk5' is unknown; valid ODE solvers"));
}
