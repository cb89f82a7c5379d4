// Optimizers and learning-rate schedules.
#include "training/optim.h"

#include <catch2/catch.hpp>

#include <cmath>

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
  CHECK_THROWS_WITH(unknown.at(0),
                    Catch::Contains("unknown schedule 'linear'") && Catch::Contains("onecycle, plateau"));
}

TEST_CASE(
    "Schedules: constant, step, cosine, plateau's scale and warm-up values, and past the cycle the last rate holds",
    "[trainer][schedule]") {
  training::Schedule s;
  s.lr = 0.1;
  CHECK(s.at(123) == Approx(0.1));
  s.name = "step";  // by epoch: 3 steps per epoch, halved every 2 epochs
  s.steps_per_epoch = 3;
  s.step_size = 2;
  s.gamma = 0.5;
  CHECK(s.at(0) == Approx(0.1));
  CHECK(s.at(5) == Approx(0.1));
  CHECK(s.at(6) == Approx(0.05));
  CHECK(s.at(15) == Approx(0.025));
  s.name = "cosine";
  s.total_steps = 100;
  CHECK(s.at(0) == Approx(0.1));
  CHECK(s.at(50) == Approx(0.05));
  const double last = 0.05 * (1 + std::cos(M_PI * 99 / 100));
  CHECK(s.at(99) == Approx(last).epsilon(1e-12));
  CHECK(s.at(100) == s.at(99));  // an extended run: the last step's rate, not 0 and not back up
  CHECK(s.at(1000) == s.at(99));
  s.start = 100;  // a warm restart: a new cycle from step 100
  CHECK(s.at(100) == Approx(0.1));
  CHECK(s.at(150) == Approx(0.05));
  s.start = 0;
  s.name = "plateau";
  s.scale = 0.25;
  CHECK(s.at(7) == Approx(0.025));
  s.name = "constant";
  s.warmup = 4;
  CHECK(s.at(0) == Approx(0.025));
  CHECK(s.at(3) == Approx(0.1));
  CHECK(s.at(4) == Approx(0.1));
}

TEST_CASE("Schedules: onecycle gives torch's OneCycleLR rates", "[trainer][schedule]") {
  // torch.optim.lr_scheduler.OneCycleLR(SGD(lr=0.1), max_lr=0.1, total_steps=20, pct_start=0.3,
  // cycle_momentum=False), the rate of each of the 20 steps (PyTorch 1.13, /usr/bin/python3):
  const std::vector<double> torch_rates{0.0040000000000000036,
                                        0.013167184270002533,
                                        0.037167184270002526,
                                        0.06683281572999747,
                                        0.09083281572999748,
                                        0.1,
                                        0.09874640062350874,
                                        0.09504846320134738,
                                        0.089091617757105,
                                        0.0811745653949763,
                                        0.07169430017913009,
                                        0.06112620219362893,
                                        0.0500002,
                                        0.03887419780637107,
                                        0.028306099820869922,
                                        0.0188258346050237,
                                        0.010908782242895003,
                                        0.004951936798652629,
                                        0.0012539993764912555,
                                        4e-07};
  training::Schedule s;
  s.name = "onecycle";
  s.lr = 0.1;
  s.total_steps = 20;
  s.pct_start = 0.3;
  for (int64_t i = 0; i < 20; ++i) {
    INFO("step " << i);
    CHECK(s.at(i) == Approx(torch_rates[static_cast<size_t>(i)]).epsilon(1e-12).margin(1e-15));
  }
  CHECK(s.at(25) == s.at(19));  // past the cycle: its last, smallest rate
}
