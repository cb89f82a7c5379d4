// Priors as regularisers: penalties by hand, what is covered, decoupled weight decay = Gaussian penalty under
// plain SGD (step by step), proximal Laplace steps give exact zeros, and the CLI flags.
#include "training/priors.h"
#include "datasets/registry.h"
#include "models/cnn.h"
#include "models/mlp.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;

namespace {
training::PriorOptions prior(const std::string& kind, double lambda) {
  training::PriorOptions p;
  p.kind = kind;
  p.lambda = lambda;
  return p;
}
datasets::Splits small_data(int64_t limit) {
  datasets::DataConfig d;
  d.limit = limit;
  return datasets::load_splits(d);
}
}  // namespace

TEST_CASE("Priors: the penalty is -log p(w) by hand, on weights only", "[priors]") {
  models::MLP mlp(models::MLPOptions().hidden({3}).in_features(2).num_classes(2));
  torch::NoGradGuard g;
  auto& l0 = *mlp->net[0]->as<torch::nn::Linear>();
  auto& l2 = *mlp->net[2]->as<torch::nn::Linear>();
  l0.weight.copy_(torch::tensor({{1.0, -2.0}, {0.5, 0.0}, {0.0, 3.0}}));
  l2.weight.copy_(torch::tensor({{1.0, 1.0, -1.0}, {0.0, 2.0, 0.0}}));
  l0.bias.fill_(10);  // excluded: biases shift, they do not shape
  l2.bias.fill_(10);
  const double sq = (1 + 4 + 0.25 + 9) + (1 + 1 + 1 + 4), abs = (1 + 2 + 0.5 + 3) + (1 + 1 + 1 + 2);
  CHECK(training::prior_penalty(*mlp, prior("gaussian", 0.1)).item<double>() == Approx(0.05 * sq));
  CHECK(training::prior_penalty(*mlp, prior("laplace", 0.1)).item<double>() == Approx(0.1 * abs));
  auto all = prior("laplace", 0.1);
  all.include_all = true;
  CHECK(training::prior_penalty(*mlp, all).item<double>() == Approx(0.1 * (abs + 50)));
  auto layered = prior("gaussian", 0.1);
  layered.layers = {{"net.2.*", 1.0}, {"net.*", 0.0}};  // first match wins; lambda 0 excludes
  CHECK(training::prior_penalty(*mlp, layered).item<double>() == Approx(0.5 * 7));
  CHECK(training::prior_penalty(*mlp, prior("none", 0)).item<double>() == 0.0);
}

TEST_CASE("Priors: batch-norm scales and shifts are not covered by default", "[priors]") {
  models::CNN cnn;
  auto covered = training::prior_parameters(*cnn, prior("gaussian", 1.0));
  int64_t n = 0;
  for (const auto& [w, l] : covered) {
    CHECK(w.dim() >= 2);
    n += w.numel();
  }
  CHECK(n == 32 * 9 + 64 * 32 * 9 + 3136 * 128 + 128 * 10);
}

TEST_CASE("Priors: decoupled weight decay equals the Gaussian penalty step by step under plain SGD", "[priors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  auto data = small_data(640);
  auto trace = [&](bool decoupled, double lambda) {
    torch::manual_seed(3);
    models::MLP mlp(models::MLPOptions().hidden({32}));
    training::Trainer t(
        torch::nn::AnyModule(mlp), std::make_shared<training::ClassificationObjective>(), data,
        training::TrainOptions().epochs(1).batch_size(64).optimizer("sgd").momentum(0).lr(0.1).progress(false).threads(
            1));
    auto p = prior(lambda > 0 ? "gaussian" : "none", lambda);
    p.decoupled = decoupled;
    training::attach_prior(t, p);
    std::vector<torch::Tensor> steps;
    t.add_step_hook([&](torch::nn::Module& m) { steps.push_back(m.parameters()[0].detach().clone()); });
    t.fit();
    return steps;
  };
  auto penalty = trace(false, 0.05), decay = trace(true, 0.05), plain = trace(false, 0.0);
  REQUIRE(penalty.size() == 9);  // 576 training items (64 held out for validation) / 64
  for (size_t i = 0; i < penalty.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(torch::allclose(penalty[i], decay[i], 1e-5, 1e-7));
  }
  // ... and the prior really acted: weights are smaller than without it.
  CHECK(decay.back().norm().item<double>() < 0.99 * plain.back().norm().item<double>());
}

TEST_CASE("Priors: the proximal Laplace step makes exact zeros, the subgradient does not", "[priors][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  auto data = small_data(2000);
  auto zero_fraction = [&](bool proximal) {
    torch::manual_seed(1);
    models::MLP linear(models::MLPOptions().hidden({}));  // softmax regression: 784 x 10 weights
    training::Trainer t(
        torch::nn::AnyModule(linear), std::make_shared<training::ClassificationObjective>(), data,
        training::TrainOptions().epochs(3).batch_size(32).optimizer("sgd").momentum(0).lr(0.05).progress(false).threads(
            1));
    auto p = prior("laplace", 0.01);
    p.proximal = proximal;
    training::attach_prior(t, p);
    auto record = t.fit();
    CHECK(record["test"]["accuracy"].get<double>() > 0.6);
    const auto w = linear->parameters()[0];
    return w.eq(0).to(torch::kFloat64).mean().item<double>();
  };
  const double proximal = zero_fraction(true), subgradient = zero_fraction(false);
  INFO("exact zeros: proximal " << proximal << ", subgradient " << subgradient);
  CHECK(proximal > 0.3);  // measured 0.43: every pixel that is 0 in all images, and more
  CHECK(subgradient < 0.01);
}

TEST_CASE("Priors: CLI flags reach config.json, the log has the prior term, bad flags are errors", "[priors][cli]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  zoo::test::TempDir tmp;
  auto r = zoo::test::run_zoo(
      "train mlp --epochs 1 --limit 300 --prior gaussian --lambda 0.001 "
      "--prior-layer 'net.4.*=0' --prior-decoupled --no-progress --out " +
      tmp.str("run"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  auto config = training::read_json_file(tmp.str("run/config.json"));
  CHECK(config["prior"]["kind"] == "gaussian");
  CHECK(config["prior"]["lambda"] == 0.001);
  CHECK(config["prior"]["decoupled"] == true);
  CHECK(config["prior"]["layers"][0] == json({{"pattern", "net.4.*"}, {"lambda", 0.0}}));
  auto state = training::read_json_file(tmp.str("run/state.json"));
  CHECK(state["last"]["train"]["prior"].get<double>() > 0);
  auto err = [&](const std::string& args) {
    return zoo::test::run_zoo("train mlp " + args + " --out " + tmp.str("x"));
  };
  CHECK(err("--prior cauchy").code == 2);
  CHECK(err("--lambda 0.1").err.find("add --prior gaussian or laplace") != std::string::npos);
  CHECK(err("--prior laplace --lambda 0.1 --prior-decoupled").err.find("use --prior gaussian") != std::string::npos);
  CHECK(err("--prior gaussian --prior-layer net=abc").err.find("is not a number") != std::string::npos);
}

namespace {
/// L(w) = (w - 1)^2 / 2 for a single weight, whatever the batch: the lasso's minimiser is S_lambda(1) = 1 - lambda
/// (for lambda < 1), the ridge's 1 / (1 + lambda).
struct PriorQuadraticLoss : training::ClassificationObjective {
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch&, training::Terms&) override {
    return 0.5 * (model.ptr()->parameters().front() - 1).pow(2).sum();
  }
};

double prior_fixed_point(const std::string& kind, const std::string& optimizer, double momentum, double lr) {
  torch::manual_seed(0);
  torch::nn::Linear one(torch::nn::LinearOptions(1, 1).bias(false));  // a [1, 1] weight: covered by the prior
  {
    torch::NoGradGuard g;
    one->weight.fill_(2.0);
  }
  auto x = torch::zeros({8, 1});
  auto y = torch::zeros({8}, torch::kInt64);
  datasets::Splits data{std::make_shared<datasets::TensorDataset>(x.repeat({400, 1}), y.repeat({400}), "steps"),
                        std::make_shared<datasets::TensorDataset>(x, y, "eight")};
  training::Trainer t(torch::nn::AnyModule(one), std::make_shared<PriorQuadraticLoss>(), data,
                      training::TrainOptions()
                          .epochs(1)
                          .batch_size(8)  // 400 steps
                          .optimizer(optimizer)
                          .momentum(momentum)
                          .lr(lr)
                          .progress(false)
                          .threads(1));
  auto p = prior(kind, 0.5);
  p.proximal = kind == "laplace";
  p.decoupled = kind == "gaussian";
  training::attach_prior(t, p);
  t.fit();
  return one->weight.item<double>();
}
}  // namespace

TEST_CASE("Priors: the proximal and decoupled steps converge to the MAP estimate under momentum and Adam",
          "[priors][learning]") {
  // The plain check of the audit: L = (w-1)^2/2, lambda 0.5. A threshold of lr * lambda under momentum 0.9 ends at
  // 0.95 (the lasso of lambda / 10), the ridge's decay of lr * lambda at 1 / 1.05.
  const double lasso = 0.5, ridge = 1.0 / 1.5;
  for (const auto& [optimizer, momentum, lr] : std::vector<std::tuple<std::string, double, double>>{
           {"sgd", 0.0, 0.05}, {"sgd", 0.9, 0.01}, {"adam", 0.0, 0.01}, {"adamw", 0.0, 0.01}}) {
    INFO(optimizer << " momentum " << momentum << " lr " << lr);
    CHECK(prior_fixed_point("laplace", optimizer, momentum, lr) == Approx(lasso).margin(2e-3));
    CHECK(prior_fixed_point("gaussian", optimizer, momentum, lr) == Approx(ridge).margin(2e-3));
  }
}

TEST_CASE("Priors: the stationary step size is lr / (1 - momentum) for SGD, lr / (sqrt(v_hat) + eps) for Adam",
          "[priors]") {
  auto w = torch::tensor({{1.0f, -2.0f}}).requires_grad_(true);
  torch::optim::SGD sgd({w}, torch::optim::SGDOptions(0.1).momentum(0.9));
  CHECK(training::prior_step_size(sgd, w, false).allclose(torch::full({1, 2}, 1.0f)));
  torch::optim::SGD nesterov({w}, torch::optim::SGDOptions(0.1).momentum(0.5).nesterov(true));
  CHECK(training::prior_step_size(nesterov, w, false).allclose(torch::full({1, 2}, 0.2f)));
  torch::optim::Adam adam({w}, torch::optim::AdamOptions(0.1).eps(0.0));
  w.mutable_grad() = torch::tensor({{0.5f, -4.0f}});
  // Before any step: predicted from this gradient, v_hat = g^2 at step 1.
  CHECK(training::prior_step_size(adam, w, true).allclose(torch::tensor({{0.2f, 0.025f}})));
  adam.step();
  CHECK(training::prior_step_size(adam, w, false).allclose(torch::tensor({{0.2f, 0.025f}})));
  w.mutable_grad() = torch::tensor({{0.0f, 0.0f}});
  // Step 2 with a zero gradient: v = 0.999 * 0.001 * g1^2, v_hat = v / (1 - 0.999^2).
  const double shrink = std::sqrt(0.999 * 0.001 / (1 - 0.999 * 0.999));
  CHECK(training::prior_step_size(adam, w, true).allclose(torch::tensor({{0.2f, 0.025f}}) / shrink, 1e-4));
  torch::optim::LBFGS other({w});
  CHECK_THROWS_WITH(training::prior_step_size(other, w, false), Catch::Contains("put the prior in the loss"));
}
