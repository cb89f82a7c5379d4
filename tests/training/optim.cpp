// Optimizers and learning-rate schedules.
#include "training/optim.h"

#include <catch2/catch.hpp>

using namespace zoo;

namespace {

/// The parameter after one step of `name` from p = 1 with gradient 0.5 (lr 0.1, momentum 0.9, weight decay 0.2).
double one_step(const std::string& name, double weight_decay = 0.2) {
  auto p = torch::ones({1}, torch::kFloat64).requires_grad_(true);
  auto optimizer = training::make_optimizer(name, {p}, 0.1, 0.9, weight_decay);
  p.mutable_grad() = torch::full({1}, 0.5, torch::kFloat64);
  optimizer->step();
  return p.item<double>();
}

}  // namespace

TEST_CASE("Optimizers by name: one step of each by hand, the learning rate set on every group, errors", "[trainer]") {
  CHECK(training::optimizer_names() == std::vector<std::string>{"sgd", "adam", "adamw"});
  // SGD with coupled weight decay: g = 0.5 + 0.2 * 1; the first step has no momentum history yet.
  CHECK(one_step("sgd") == Approx(1 - 0.1 * 0.7).epsilon(1e-12));
  // Adam's first step is lr * g / (|g| + eps) with g = 0.7 (coupled decay); AdamW decays the weight apart:
  // p (1 - lr wd) - lr * 0.5 / (0.5 + eps).
  CHECK(one_step("adam") == Approx(1 - 0.1).epsilon(1e-6));
  CHECK(one_step("adamw") == Approx(1 * (1 - 0.1 * 0.2) - 0.1).epsilon(1e-6));
  CHECK(one_step("adam", 0) == Approx(one_step("adamw", 0)).epsilon(1e-12));

  auto a = torch::ones({1}, torch::kFloat64).requires_grad_(true), b = torch::ones({2}).requires_grad_(true);
  auto sgd = training::make_optimizer("sgd", {a, b}, 0.1, 0, 0);
  sgd->add_param_group(torch::optim::OptimizerParamGroup({torch::ones({3}).requires_grad_(true)},
                                                         std::make_unique<torch::optim::SGDOptions>(0.5)));
  training::set_learning_rate(*sgd, 0.025);
  for (const auto& group : sgd->param_groups()) CHECK(group.options().get_lr() == 0.025);

  CHECK_THROWS_WITH(training::make_optimizer("adagrad", {a}, 0.1, 0, 0),
                    Catch::Contains("unknown optimizer 'adagrad'") && Catch::Contains("sgd, adam, adamw"));
  CHECK_THROWS_WITH(training::make_optimizer("sgd", {a}, 0, 0, 0), Catch::StartsWith("learning rate must be > 0"));
  training::Schedule unknown;
  unknown.name = "linear";
  CHECK_THROWS_WITH(unknown.at(0, 0), Catch::Contains("unknown schedule 'linear'"));
}

TEST_CASE("Schedules: constant, step, cosine and warm-up values", "[trainer]") {
  training::Schedule s;
  s.lr = 0.1;
  CHECK(s.at(123, 4) == Approx(0.1));
  s.name = "step";
  s.step_size = 2;
  s.gamma = 0.5;
  CHECK(s.at(0, 0) == Approx(0.1));
  CHECK(s.at(0, 1) == Approx(0.1));
  CHECK(s.at(0, 2) == Approx(0.05));
  CHECK(s.at(0, 5) == Approx(0.025));
  s.name = "cosine";
  s.total_steps = 100;
  CHECK(s.at(0, 0) == Approx(0.1));
  CHECK(s.at(50, 0) == Approx(0.05));
  CHECK(s.at(100, 0) == Approx(0.0).margin(1e-12));
  s.name = "constant";
  s.warmup = 4;
  CHECK(s.at(0, 0) == Approx(0.025));
  CHECK(s.at(3, 0) == Approx(0.1));
  CHECK(s.at(4, 0) == Approx(0.1));
}
