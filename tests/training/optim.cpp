// Optimizers and learning-rate schedules.
#include "training/optim.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

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

namespace {

/// A module's parameters after `steps` steps of `Optimizer` on the same gradients, with a second parameter group
/// (another learning rate, amsgrad) and a parameter that has no gradient; `extra` is stepped along (a parameter of
/// another type or layout makes the whole step LibTorch's).
template <typename Optimizer, typename Options>
std::vector<torch::Tensor> trained(const torch::Tensor& extra, double weight_decay, int steps) {
  torch::manual_seed(5);
  auto net = torch::nn::Sequential(torch::nn::Linear(13, 7), torch::nn::ReLU(), torch::nn::Linear(7, 3));
  auto idle = torch::zeros({5}, torch::requires_grad());
  std::vector<torch::Tensor> first = net[0]->parameters();
  first.push_back(idle);
  Optimizer optimizer(first, Options(1e-2).weight_decay(weight_decay));
  auto second = net[2]->parameters();
  if (extra.defined()) second.push_back(extra);
  optimizer.add_param_group(
      torch::optim::OptimizerParamGroup(second, std::make_unique<Options>(Options(3e-3).amsgrad(true))));
  const auto x = torch::randn({32, 13});
  for (int t = 0; t < steps; ++t) {
    optimizer.zero_grad();
    auto loss = net->forward(x).pow(2).mean();
    if (extra.defined()) loss = loss + extra.pow(2).sum();
    loss.backward();
    optimizer.step();
  }
  auto out = net->parameters();
  if (extra.defined()) out.push_back(extra.detach().clone());
  return out;
}

bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i].to(torch::kDouble), b[i].to(torch::kDouble))) return false;
  return true;
}

}  // namespace

TEST_CASE("Adam and AdamW: zoo's one-pass step gives LibTorch's parameters, state and checkpoints to the bit",
          "[trainer][optim]") {
  using namespace torch::optim;
  // Same parameters after 25 steps, on float32 parameters (the one pass on CPUs with AVX2, LibTorch's elsewhere).
  CHECK(same(trained<training::Adam, AdamOptions>({}, 0.01, 25), trained<Adam, AdamOptions>({}, 0.01, 25)));
  CHECK(same(trained<training::AdamW, AdamWOptions>({}, 0.05, 25), trained<AdamW, AdamWOptions>({}, 0.05, 25)));
  // A double or non-contiguous parameter: LibTorch's step for all, the same results.
  auto fresh_double = [] { return torch::full({3}, 0.5, torch::kDouble).requires_grad_(true); };
  auto fresh_strided = [] { return torch::full({2, 3}, 0.5).t().requires_grad_(true); };
  CHECK(same(trained<training::Adam, AdamOptions>(fresh_double(), 0, 8),
             trained<Adam, AdamOptions>(fresh_double(), 0, 8)));
  CHECK(same(trained<training::AdamW, AdamWOptions>(fresh_strided(), 0.05, 8),
             trained<AdamW, AdamWOptions>(fresh_strided(), 0.05, 8)));

  // The closure runs once, with gradients on, and its loss is returned.
  auto p = torch::ones({9}, torch::requires_grad());
  training::Adam adam({p}, AdamOptions(0.1));
  int calls = 0;
  auto loss = adam.step([&] {
    ++calls;
    CHECK(torch::GradMode::is_enabled());
    adam.zero_grad();
    auto l = (p * p).sum();
    l.backward();
    return l;
  });
  CHECK(calls == 1);
  CHECK(loss.item<float>() == 9.0f);
  CHECK(p.detach().allclose(torch::full({9}, 0.9f)));  // Adam's first step moves each weight by lr
  CHECK(p._version() > 0);                             // updated in place, as the tensor operations would

  // Checkpoints: LibTorch's format; saved by one, loaded by the other, the next steps agree.
  const auto x = torch::randn({4, 9});
  auto step = [&](torch::optim::Optimizer& o, torch::Tensor& w) {
    o.zero_grad();
    (x.matmul(w) - 1).pow(2).sum().backward();
    o.step();
  };
  auto w1 = torch::linspace(-1, 1, 9).requires_grad_(true);
  auto w2 = w1.detach().clone().requires_grad_(true);
  training::Adam ours({w1}, AdamOptions(0.05));
  Adam theirs({w2}, AdamOptions(0.05));
  for (int i = 0; i < 3; ++i) {
    step(ours, w1);
    step(theirs, w2);
  }
  std::ostringstream saved;
  torch::serialize::OutputArchive archive;
  ours.save(archive);
  archive.save_to(saved);
  Adam loaded({w2}, AdamOptions(0.05));
  torch::serialize::InputArchive input;
  std::istringstream in(saved.str());
  input.load_from(in);
  loaded.load(input);
  for (int i = 0; i < 3; ++i) {
    step(ours, w1);
    step(loaded, w2);
  }
  CHECK(torch::equal(w1, w2));
}
