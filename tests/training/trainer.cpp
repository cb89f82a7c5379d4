// The shared trainer: learning, the learning rate it sets, extension hooks, divergence, and the extension
// story (a module defined here registers itself and trains through the same trainer).
#include "training/trainer.h"
#include "datasets/registry.h"
#include "models/mlp.h"
#include "models/registry.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

using namespace zoo;
using zoo::test::TempDir;

namespace {

/// Linearly separable synthetic 10-class data: class c has mean pattern c.
datasets::Splits synthetic_splits(int64_t n_train = 512, int64_t n_test = 256) {
  torch::manual_seed(123);
  auto centers = torch::randn({10, 1, 28, 28});
  auto make = [&](int64_t n) {
    auto y = torch::randint(0, 10, {n}, torch::kInt64);
    auto x = centers.index_select(0, y) + 0.5 * torch::randn({n, 1, 28, 28});
    return std::make_shared<datasets::TensorDataset>(x, y, "synthetic");
  };
  return {make(n_train), make(n_test)};
}

training::TrainOptions quiet() { return training::TrainOptions().progress(false).threads(1); }

}  // namespace

TEST_CASE("Trainer: loss falls and accuracy rises on Fashion-MNIST (learning test)", "[trainer][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  torch::manual_seed(0);
  datasets::DataConfig data;
  data.limit = 2000;
  training::Trainer trainer(torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(),
                            datasets::load_splits(data), quiet().epochs(3).batch_size(64).threads(0));
  const double before = trainer.evaluate()["accuracy"].get<double>();
  std::vector<double> losses;
  trainer.add_epoch_hook([&](const nlohmann::json& r) { losses.push_back(r["train"]["loss"].get<double>()); });
  auto last = trainer.fit();
  REQUIRE(losses.size() == 3);
  CHECK(losses[2] < 0.7 * losses[0]);
  CHECK(before < 0.25);
  CHECK(last["test"]["accuracy"].get<double>() > 0.70);
  CHECK(trainer.state().epoch == 3);
  CHECK(trainer.state().step == 3 * 29);  // 1800 (200 held out for validation) / 64 = 28.1 -> 29 steps per epoch
}

TEST_CASE(
    "Trainer: --accumulate N of batch B takes the steps of batch N*B, hooks run once per optimizer step, a "
    "stop in the middle of an epoch resumes exactly",
    "[trainer][accumulate]") {
  // 600 items: steps of 128 items, the last of 88 (micro-batches 32, 32, 24 with accumulate 4 of 32).
  auto splits = synthetic_splits(600, 64);
  auto train = [&](int64_t batch, int64_t accumulate, int64_t* hook_calls = nullptr) {
    torch::manual_seed(9);
    models::MLP mlp;
    training::Trainer t(torch::nn::AnyModule(mlp), std::make_shared<training::ClassificationObjective>(), splits,
                        quiet().epochs(2).batch_size(batch).accumulate(accumulate).optimizer("sgd").lr(0.05));
    if (hook_calls) t.add_gradient_hook([hook_calls](torch::nn::Module&) { ++*hook_calls; });
    auto record = t.fit();
    return std::make_tuple(mlp, record, t.state().step);
  };
  int64_t calls = 0;
  auto [big, big_record, big_steps] = train(128, 1);
  auto [acc, acc_record, acc_steps] = train(32, 4, &calls);
  auto [small, small_record, small_steps] = train(32, 1);
  CHECK(acc_steps == 2 * 5);
  CHECK(big_steps == acc_steps);
  CHECK(calls == acc_steps);  // after_backward (and the data-parallel all-reduce with it): once per step
  double diff = 0, diff_small = 0;
  for (size_t i = 0; i < big->parameters().size(); ++i) {
    diff = std::max(diff, (big->parameters()[i] - acc->parameters()[i]).abs().max().item<double>());
    diff_small = std::max(diff_small, (small->parameters()[i] - acc->parameters()[i]).abs().max().item<double>());
  }
  CHECK(diff < 1e-6);
  CHECK(diff_small > 1e-3);  // batches of 32 stepping on their own are another trajectory
  CHECK(acc_record["train"]["loss"].get<double>() == Approx(big_record["train"]["loss"].get<double>()).epsilon(1e-6));

  // Stopped after 3 of the first epoch's 5 steps, resumed from the checkpoint: the same weights bit for bit.
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run("mlp", 700, quiet().epochs(1).batch_size(32).accumulate(3));
  const auto whole = training::Run::create(config, tmp.str("whole"))->fit();
  {
    auto run = training::Run::create(config, tmp.str("split"));
    int steps = 0;
    run->trainer().add_step_hook([&](torch::nn::Module&) {
      if (++steps == 3) training::request_stop(0);
    });
    CHECK_THROWS_AS(run->fit(), training::Interrupted);
    training::clear_stop_request();
    CHECK(training::read_json_file(tmp.str("split/state.json"))["epoch_step"] == 3);
  }
  const auto resumed = training::Run::resume(tmp.str("split"))->fit();
  const auto a = training::read_tensors(tmp.str("whole/model.pt")),
             b = training::read_tensors(tmp.str("split/model.pt"));
  for (const auto& [name, value] : a) CHECK(torch::equal(value, b.at(name)));
  CHECK(resumed["train"]["loss"].get<double>() == Approx(whole["train"]["loss"].get<double>()).epsilon(1e-12));
}

TEST_CASE("Trainer: the learning rate the optimizer sees follows the schedule", "[trainer]") {
  auto splits = synthetic_splits(256, 64);
  training::Trainer trainer(
      torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(), splits,
      quiet().epochs(3).batch_size(64).optimizer("sgd").lr(0.1).schedule("step").step_size(1).gamma(0.5));
  std::vector<double> lrs;
  trainer.add_gradient_hook(
      [&](torch::nn::Module&) { lrs.push_back(trainer.optimizer().param_groups()[0].options().get_lr()); });
  trainer.fit();
  REQUIRE(lrs.size() == 12);
  CHECK(lrs[0] == Approx(0.1));
  CHECK(lrs[4] == Approx(0.05));
  CHECK(lrs[11] == Approx(0.025));
}

TEST_CASE("Trainer: extra loss terms are added and logged", "[trainer]") {
  auto splits = synthetic_splits();
  auto weight_norm_after = [&](double lambda) {
    torch::manual_seed(1);
    models::MLP mlp(models::MLPOptions().hidden({32}));
    training::Trainer trainer(torch::nn::AnyModule(mlp), std::make_shared<training::ClassificationObjective>(), splits,
                              quiet().epochs(2).optimizer("sgd").lr(0.05).momentum(0.0));
    trainer.add_loss_term("l2", [lambda](torch::nn::Module& m) {
      auto sum = torch::zeros({});
      for (const auto& p : m.named_parameters())
        if (p.key().find("weight") != std::string::npos) sum = sum + p.value().pow(2).sum();
      return 0.5 * lambda * sum;
    });
    auto record = trainer.fit();
    CHECK(record["train"].contains("l2"));
    if (lambda > 0) CHECK(record["train"]["l2"].get<double>() > 0);
    double norm = 0;
    for (const auto& p : mlp->parameters()) norm += p.pow(2).sum().item<double>();
    return norm;
  };
  CHECK(weight_norm_after(1.0) < 0.8 * weight_norm_after(0.0));
}

TEST_CASE("Trainer: gradient hooks run between backward and the optimizer step", "[trainer]") {
  auto splits = synthetic_splits(128, 32);
  models::MLP mlp(models::MLPOptions().hidden({16}));
  std::vector<torch::Tensor> before;
  for (const auto& p : mlp->parameters()) before.push_back(p.detach().clone());
  training::Trainer trainer(torch::nn::AnyModule(mlp), std::make_shared<training::ClassificationObjective>(), splits,
                            quiet().epochs(1).optimizer("sgd").momentum(0.0));
  int calls = 0;
  trainer.add_gradient_hook([&](torch::nn::Module& m) {
    ++calls;
    for (auto& p : m.parameters()) {
      REQUIRE(p.grad().defined());  // backward has run
      p.grad().zero_();             // ... and the step sees what the hook leaves
    }
  });
  trainer.fit();
  CHECK(calls == 2);
  auto after = mlp->parameters();
  for (size_t i = 0; i < before.size(); ++i) CHECK(torch::equal(before[i], after[i]));
}

namespace {
/// A linear classifier with two more parameters: `extra`, added to the logits while `use_extra` holds, and `unused`,
/// never read.
struct SometimesImpl : torch::nn::Module {
  SometimesImpl() {
    fc = register_module("fc", torch::nn::Linear(784, 10));
    extra = register_parameter("extra", torch::full({10}, 2.0));
    unused = register_parameter("unused", torch::full({3}, 4.0));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto logits = fc(x.flatten(1));
    return use_extra ? logits + extra : logits;
  }
  torch::nn::Linear fc{nullptr};
  torch::Tensor extra, unused;
  bool use_extra = true;
};
TORCH_MODULE(Sometimes);
}  // namespace

TEST_CASE("Trainer: a parameter without a gradient in a step is stepped as after zero_grad()", "[trainer]") {
  // The trainer releases the gradients between steps (backward then hands each parameter a new one); a parameter
  // that had a gradient and gets none in a step must still see a zero gradient, as LibTorch's zero_grad() leaves it
  // (here SGD's weight decay then shrinks it), and one that never had a gradient keeps none.
  auto splits = synthetic_splits(128, 32);
  Sometimes model;
  training::Trainer trainer(torch::nn::AnyModule(model), std::make_shared<training::ClassificationObjective>(), splits,
                            quiet().epochs(1).batch_size(64).optimizer("sgd").lr(0.1).momentum(0.0).weight_decay(0.5));
  std::vector<torch::Tensor> extra_grads;
  torch::Tensor extra_before_second;
  trainer.add_gradient_hook([&](torch::nn::Module&) {
    extra_grads.push_back(model->extra.grad().defined() ? model->extra.grad().clone() : torch::Tensor());
    CHECK(!model->unused.grad().defined());
    if (!model->use_extra) extra_before_second = model->extra.detach().clone();
    model->use_extra = false;  // from the second step on
  });
  trainer.fit();
  REQUIRE(extra_grads.size() == 2);
  REQUIRE(extra_grads[0].defined());
  CHECK(extra_grads[0].abs().sum().item<double>() > 0);  // the first step's logits used it
  REQUIRE(extra_grads[1].defined());
  CHECK(torch::equal(extra_grads[1], torch::zeros({10})));
  // SGD's step with a zero gradient: d = 0 + wd p, p - lr d.
  const auto expected = extra_before_second - 0.1 * (0.5 * extra_before_second);
  CHECK(torch::equal(model->extra.detach(), expected));
  CHECK(!torch::equal(expected, extra_before_second));
  CHECK(torch::equal(model->unused.detach(), torch::full({3}, 4.0)));
}

TEST_CASE("Trainer: a NaN loss stops training with a clear error and keeps the last checkpoint", "[trainer][errors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run("mlp", 300, quiet().epochs(3));
  auto run = training::Run::create(config, tmp.str("run"));
  int64_t steps = 0;
  run->trainer().add_loss_term("poison", [&](torch::nn::Module&) {
    return torch::tensor(++steps > 7 ? std::nan("") : 0.0);  // epoch 2 (5 steps per epoch)
  });
  std::string message;
  try {
    run->fit();
  } catch (const training::DivergedError& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(message.find("loss became nan at epoch 2") != std::string::npos);
  CHECK(message.find("(epoch 1) is intact") != std::string::npos);
  CHECK(message.find("train.lr") != std::string::npos);  // a library error names the setting; the CLI says --lr
  auto state = training::read_json_file(tmp.str("run/state.json"));
  CHECK(state["epoch"] == 1);
  auto reopened = training::Run::open(tmp.str("run"));
  CHECK(reopened->evaluate()["accuracy"].get<double>() > 0.2);
}

TEST_CASE("Trainer: bad hyperparameters are errors that name the setting and the choices", "[trainer][errors]") {
  auto splits = synthetic_splits(64, 16);
  auto error = [&](training::TrainOptions o) {
    try {
      training::Trainer t(torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(),
                          splits, o);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error(quiet().optimizer("lbfgs")).find("valid optimizers: sgd, adam, adamw") != std::string::npos);
  CHECK(error(quiet().schedule("linear")).find("valid schedules: constant, step, cosine") != std::string::npos);
  CHECK(error(quiet().lr(-1)).find("lr must be a number > 0, got -1") != std::string::npos);
  CHECK(error(quiet().epochs(0)).find("epochs must be >= 1, got 0") != std::string::npos);
  CHECK(error(quiet().device("tpu")).find("valid devices: cpu, cuda") != std::string::npos);
  if (!torch::cuda::is_available())
    CHECK(error(quiet().device("cuda")).find("CUDA is not available") != std::string::npos);
  CHECK_THROWS_WITH(training::train_options_from_json({{"epochz", 1}}),
                    Catch::Contains("unknown training option 'epochz'"));
}

// ---- extension: a module defined right here, registered in a few lines, trained by the same trainer.
namespace {
struct SoftmaxRegressionOptions {
  TORCH_ARG(int64_t, num_classes) = 10;
};
class SoftmaxRegressionImpl : public torch::nn::Cloneable<SoftmaxRegressionImpl> {
 public:
  explicit SoftmaxRegressionImpl(SoftmaxRegressionOptions o = {}) : options(o) { reset(); }
  void reset() override { linear = register_module("linear", torch::nn::Linear(784, options.num_classes())); }
  torch::Tensor forward(const torch::Tensor& x) { return linear(x.flatten(1)); }
  SoftmaxRegressionOptions options;
  torch::nn::Linear linear{nullptr};
};
TORCH_MODULE(SoftmaxRegression);

ZOO_REGISTER_MODEL(test_softmax_regression) {
  return models::ModelSpec<SoftmaxRegression, SoftmaxRegressionOptions>("test-softmax", "softmax regression (a test)")
      .task("classify")
      .ZOO_OPTION(SoftmaxRegressionOptions, num_classes);
}
}  // namespace

TEST_CASE("Extension: a module defined in the test registers, trains and evaluates through the trainer",
          "[registry][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  CHECK(models::ModelRegistry::instance().contains("test-softmax"));
  TempDir tmp;
  auto config = zoo::test::small_run("test-softmax", 1000, quiet().epochs(2).lr(0.01));
  auto run = training::Run::create(config, tmp.str("run"));
  run->fit();
  auto reopened = training::Run::open(tmp.str("run"));
  const double accuracy = reopened->evaluate()["accuracy"].get<double>();
  CHECK(accuracy > 0.6);
  CHECK(accuracy == Approx(run->trainer().state().final["test"]["accuracy"].get<double>()));
}
