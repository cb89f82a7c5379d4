// Mixture of Experts: gating, sparse dispatch, capacity, balancing losses, learning.
#include "models/moe.h"
#include "helpers.h"
#include "models/attention.h"
#include "models/gated_lstm.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "training/auxiliary.h"
#include "training/checkpoint.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <set>

using namespace zoo;
using torch::Tensor;

namespace {

using test::max_abs;

/// Entropy (nats) of a distribution.
double entropy(const Tensor& p) { return -(p * torch::log(p.clamp_min(1e-12))).sum().item<double>(); }

}  // namespace

TEST_CASE("MoE gating: weights sum to 1, top-k picks exactly k distinct experts", "[moe]") {
  torch::manual_seed(6);
  const auto x = torch::randn({50, 12});
  for (const std::string gate : {"softmax", "topk", "noisy-topk"}) {
    models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(12, 3).experts(6).k(2).gate(gate));
    const auto r = moe->route(x);
    INFO(gate);
    CHECK(max_abs(r.gates.sum(-1) - 1) < 1e-6);
    CHECK(r.gates.min().item<double>() >= 0);
    CHECK(max_abs(r.load.sum() - 1) < 1e-6);
    const int64_t k = gate == "softmax" ? 6 : 2;
    REQUIRE(r.experts.sizes() == torch::IntArrayRef({50, k}));
    // Distinct experts per token.
    const auto sorted = std::get<0>(r.experts.sort(1));
    CHECK((sorted.slice(1, 1) != sorted.slice(1, 0, k - 1)).all().item<bool>());
    if (gate == "topk") {
      // The chosen experts are the k largest logits, and their weights the softmax renormalised over them.
      const auto top = std::get<1>(r.logits.topk(2, -1));
      CHECK(torch::equal(top, r.experts));
      const auto renormalised = r.probs.gather(1, r.experts) / r.probs.gather(1, r.experts).sum(1, true);
      CHECK(max_abs(r.gates - renormalised) < 1e-6);
    }
  }
  CHECK_THROWS_WITH(models::MixtureOfExperts(models::MixtureOfExpertsOptions(4, 2).experts(4).k(5)),
                    Catch::Contains("k must be in [1, 4]"));
  CHECK_THROWS_WITH(models::MixtureOfExperts(models::MixtureOfExpertsOptions(4, 2).gate("top2")),
                    Catch::Contains("valid gates: softmax, topk, noisy-topk"));
}

TEST_CASE("MoE dispatch: sparse equals dense, with k = N equals the softmax gate", "[moe]") {
  torch::manual_seed(7);
  const auto x = torch::randn({40, 10});
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(10, 4).experts(5).k(2));
  const auto r = moe->route(x);
  CHECK(max_abs(moe->dispatch(x, r) - moe->dispatch(x, r, /*dense=*/true)) < 1e-5);
  // The same gradients too, for the input, the gate and every expert, with and without a capacity limit
  // (capacity 1.0 on 40 tokens x 2 choices / 5 experts = 16 slots drops some assignments).
  for (const double capacity : {0.0, 1.0}) {
    INFO("capacity_factor " << capacity);
    models::MixtureOfExperts limited(models::MixtureOfExpertsOptions(10, 4).experts(5).k(2).capacity_factor(capacity));
    auto gradients = [&](bool dense) {
      limited->zero_grad(/*set_to_none=*/true);
      const auto xg = x.clone().requires_grad_(true);
      const auto routing = limited->route(xg);
      if (capacity > 0) REQUIRE(routing.dropped > 0);
      limited->dispatch(xg, routing, dense).pow(2).sum().backward();
      std::vector<torch::Tensor> g{xg.grad()};
      for (const auto& p : limited->parameters()) g.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
      return g;
    };
    const auto sparse = gradients(false), dense = gradients(true);
    for (size_t i = 0; i < sparse.size(); ++i) {
      INFO("gradient " << i);
      CHECK(max_abs(sparse[i] - dense[i]) < 1e-5);
    }
    CHECK(max_abs(sparse[0]) > 1e-2);
  }
  // All experts selected: the sparse top-N layer computes the dense softmax mixture.
  models::MixtureOfExperts all(models::MixtureOfExpertsOptions(10, 4).experts(5).k(5));
  models::MixtureOfExperts dense(models::MixtureOfExpertsOptions(10, 4).experts(5).gate("softmax"));
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : dense->named_parameters()) p.value().copy_(all->named_parameters()[p.key()]);
  }
  const auto y_sparse = all(x), y_dense = dense(x);
  CHECK(max_abs(y_sparse - y_dense) < 1e-5);
  CHECK(max_abs(y_dense) > 1e-2);
  // By hand, for one token: sum_i softmax(x W_g)_i E_i(x).
  const auto p = torch::softmax(dense->gate(x[3]), -1);
  auto by_hand = torch::zeros({4});
  for (int64_t i = 0; i < 5; ++i) by_hand += p[i] * dense->expert(i, x[3].unsqueeze(0))[0];
  CHECK(max_abs(y_dense[3] - by_hand) < 1e-5);
  // Leading dimensions are tokens.
  CHECK(moe(torch::randn({2, 3, 10})).sizes() == torch::IntArrayRef({2, 3, 4}));
}

TEST_CASE("MoE gradients reach the gate and only the selected experts", "[moe]") {
  torch::manual_seed(8);
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(6, 3).experts(8).k(1));
  const auto x = torch::randn({3, 6});
  const auto r = moe->route(x);
  std::set<int64_t> chosen;
  for (int64_t t = 0; t < 3; ++t) chosen.insert(r.experts[t][0].item<int64_t>());
  REQUIRE(chosen.size() < 8);
  // Renormalised top-1 gives every token gate weight 1 (no gradient to the gate); k = 2 below checks the gate.
  moe(x).pow(2).sum().backward();
  for (int64_t i = 0; i < 8; ++i) {
    const auto& w = moe->experts[static_cast<size_t>(i)]->as<models::Expert>()->fc1->weight;
    INFO("expert " << i);
    if (chosen.count(i)) {
      REQUIRE(w.grad().defined());
      CHECK(max_abs(w.grad()) > 0);
    } else {
      CHECK((!w.grad().defined() || max_abs(w.grad()) == 0));
    }
  }
  // Switch-style top-1 (renormalize false): the gate weight is the full-softmax probability, so it learns.
  models::MixtureOfExperts switch_top1(
      models::MixtureOfExpertsOptions(6, 3).experts(8).k(1).renormalize(false).balance("none"));
  const auto rs = switch_top1->route(x);
  CHECK(max_abs(rs.gates - rs.probs.gather(1, rs.experts)) == 0);
  switch_top1(x).pow(2).sum().backward();
  REQUIRE(switch_top1->gate->weight.grad().defined());
  CHECK(max_abs(switch_top1->gate->weight.grad()) > 0);
  models::MixtureOfExperts two(models::MixtureOfExpertsOptions(6, 3).experts(8).k(2).balance("none"));
  two(x).pow(2).sum().backward();
  REQUIRE(two->gate->weight.grad().defined());
  CHECK(max_abs(two->gate->weight.grad()) > 0);
  // noisy-topk: the noise scale is trained too (through the smooth load of the cv loss).
  models::MixtureOfExperts noisy(
      models::MixtureOfExpertsOptions(6, 3).experts(8).k(2).gate("noisy-topk").balance("cv"));
  CHECK(max_abs(noisy->noise->weight) == 0);  // zero at start (Shazeer et al.)
  noisy->train();
  const auto y = noisy(torch::randn({64, 6}));
  (y.pow(2).mean() + noisy->auxiliary_loss()).backward();
  REQUIRE(noisy->noise->weight.grad().defined());
  CHECK(max_abs(noisy->noise->weight.grad()) > 0);
}

TEST_CASE("MoE capacity drops exactly the overflow, first choices before second choices", "[moe]") {
  // Gate logits = x W_g with x = [1, 0] for "prefers expert 0" tokens and [0, 1] for "prefers expert 1".
  auto make = [](int64_t k, double factor) {
    models::MixtureOfExperts moe(
        models::MixtureOfExpertsOptions(2, 3).experts(2).k(k).capacity_factor(factor).balance("none"));
    torch::NoGradGuard no_grad;
    moe->gate->weight.copy_(torch::tensor({{2.0f, 0.0f}, {0.0f, 2.0f}}));
    return moe;
  };
  // k = 1, 10 tokens all for expert 0, capacity ceil(1.2 * 10 / 2) = 6: tokens 0..5 kept, 6..9 dropped.
  auto one = make(1, 1.2);
  one->train();
  const auto x = torch::tensor({1.0f, 0.0f}).repeat({10, 1});
  CHECK(one->capacity(10) == 6);
  const auto y = one(x);
  const auto r = one->route(x);
  CHECK(r.dropped == 4);
  CHECK(torch::equal(r.kept.squeeze(1), torch::arange(10) < 6));
  CHECK(max_abs(y.slice(0, 6)) == 0);  // dropped tokens get nothing
  CHECK(max_abs(y.slice(0, 0, 6) - one->expert(0, x.slice(0, 0, 6))) < 1e-6);
  const auto stats = one->auxiliary_statistics();
  CHECK(stats[2].first == "dropped");
  CHECK(stats[2].second.item<double>() == Approx(0.4));
  // In evaluation the capacity is unlimited by default: nothing dropped.
  one->eval();
  CHECK(one->route(x).dropped == 0);
  // k = 2, tokens 0-1 prefer expert 0, tokens 2-3 expert 1, capacity ceil(0.5 * 4 * 2 / 2) = 2: the four first
  // choices fill both experts, every second choice is dropped.
  auto two = make(2, 0.5);
  two->train();
  const auto x2 = torch::tensor({{1.0f, 0.0f}, {1.0f, 0.0f}, {0.0f, 1.0f}, {0.0f, 1.0f}});
  const auto r2 = two->route(x2);
  CHECK(r2.dropped == 4);
  CHECK(r2.kept.select(1, 0).all().item<bool>());
  CHECK(!r2.kept.select(1, 1).any().item<bool>());
}

TEST_CASE("MoE shared expert: a dropped token keeps the shared expert's output, a kept one gets both", "[moe]") {
  // The k = 1 case above with a shared expert: tokens 6..9 are over capacity.
  models::MixtureOfExperts moe(
      models::MixtureOfExpertsOptions(2, 3).experts(2).k(1).capacity_factor(1.2).balance("none").shared_hidden(5));
  {
    torch::NoGradGuard no_grad;
    moe->gate->weight.copy_(torch::tensor({{2.0f, 0.0f}, {0.0f, 2.0f}}));
    // Every hidden unit of the shared expert active on these tokens, whatever the initialisation drew: with a
    // random fc1 all five ReLUs of the dropped rows can be off (about 1 in 32), and no gradient reaches fc2.
    moe->shared->fc1->weight.fill_(0.5);
    moe->shared->fc1->bias.fill_(0.25);
  }
  moe->train();
  torch::manual_seed(0);
  const auto x = torch::tensor({1.0f, 0.0f}).repeat({10, 1}) + 0.1 * torch::randn({10, 2});
  const auto y = moe(x);
  const auto shared = moe->shared(x);
  CHECK(max_abs(shared.slice(0, 6)) > 0);
  CHECK(max_abs(y.slice(0, 6) - shared.slice(0, 6)) == 0);  // dropped: the shared path only
  CHECK(max_abs(y.slice(0, 0, 6) - shared.slice(0, 0, 6) - moe->expert(0, x.slice(0, 0, 6))) < 1e-6);
  // Gradients reach the shared expert from the dropped rows alone.
  y.slice(0, 6).sum().backward();
  // d/dW2 of sum(W2 h + b2) over the dropped rows: every row of the gradient is the sum of their hidden units.
  const auto hidden = torch::relu(moe->shared->fc1(x.slice(0, 6))).detach().sum(0);
  CHECK(max_abs(hidden) > 0.5);
  CHECK(max_abs(moe->shared->fc2->weight.grad() - hidden.expand({3, 5})) < 1e-6);
  const auto expert_grad = moe->experts[0]->as<models::Expert>()->fc2->weight.grad();
  CHECK((!expert_grad.defined() || max_abs(expert_grad) == 0));
  // Names as a Python attribute `shared` would give them.
  CHECK(moe->named_parameters().contains("shared.fc1.weight"));
  CHECK(moe->named_parameters().contains("shared.fc2.bias"));
}

TEST_CASE("The moe classifier: with a shared expert, images dropped by capacity still get logits", "[moe]") {
  auto options = models::MoEClassifierOptions();
  options.moe().capacity_factor(0.01).shared_hidden(8);  // capacity 1 of each expert for a batch of 16
  models::MoEClassifier with_shared(options);
  options.moe().shared_hidden(0);
  models::MoEClassifier without(options);
  with_shared->train();
  without->train();
  const auto x = torch::randn({16, 1, 28, 28});
  // Each model's own routing, with the same noise draws as inside its forward (the features draw nothing).
  auto dropped_by = [&](models::MoEClassifier& m) {
    torch::manual_seed(1);
    const auto r = m->moe->route(m->features->forward(x).mean({2, 3}));
    REQUIRE(r.kept.defined());
    return r.kept.logical_not().all(1);
  };
  torch::manual_seed(1);
  const auto a = with_shared(x);
  const auto dropped = dropped_by(with_shared);
  REQUIRE(dropped.sum().item<int64_t>() >= 8);  // 16 images, 8 experts of capacity 1 at k = 2
  CHECK(a.index({dropped}).abs().sum(1).min().item<double>() > 0);
  torch::manual_seed(1);
  const auto b = without(x);
  const auto dropped_without = dropped_by(without);
  REQUIRE(dropped_without.sum().item<int64_t>() >= 8);
  CHECK(b.index({dropped_without}).abs().max().item<double>() == 0);  // the defect the shared expert removes
}

TEST_CASE("MoE balancing losses: the Switch form is alpha at balance, both forms by hand", "[moe]") {
  torch::manual_seed(9);
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(8, 2).experts(4).k(1).balance_coef(0.01));
  moe->train();
  const auto x = torch::randn({100, 8});
  moe(x);
  const auto r = moe->route(x);
  const auto f = torch::bincount(r.experts.reshape(-1), {}, 4).to(torch::kFloat) / 100;
  CHECK(moe->auxiliary_loss().item<double>() == Approx((0.01 * 4 * (f * r.probs.mean(0)).sum()).item<double>()));
  {
    torch::NoGradGuard no_grad;
    moe->gate->weight.zero_();  // uniform probabilities: P_i = 1/N, so the loss is alpha whatever f is
  }
  moe(x);
  CHECK(moe->auxiliary_loss().item<double>() == Approx(0.01));
  // cv: alpha (CV(importance)^2 + CV(load)^2) with the population variance (tensor2tensor's cv_squared).
  models::MixtureOfExperts cv(models::MixtureOfExpertsOptions(8, 2).experts(4).k(2).balance("cv").balance_coef(0.1));
  cv->train();
  cv(x);
  const auto rc = cv->route(x);
  const auto importance = torch::zeros({100, 4}).scatter(1, rc.experts, rc.gates).sum(0);
  const auto load = torch::bincount(rc.experts.reshape(-1), {}, 4).to(torch::kFloat);
  auto cv2 = [](const Tensor& v) { return (v - v.mean()).pow(2).mean() / v.mean().pow(2); };
  CHECK(cv->auxiliary_loss().item<double>() ==
        Approx((0.1 * (cv2(importance) + cv2(load))).item<double>()).epsilon(1e-4));
  // Importance is what the gate asks for, before the capacity mask (Shazeer et al.): with a capacity that drops
  // assignments the loss is still the formula of the unmasked gates.
  models::MixtureOfExperts capped(
      models::MixtureOfExpertsOptions(8, 2).experts(4).k(2).balance("cv").balance_coef(0.1).capacity_factor(0.5));
  capped->train();
  capped(x);
  const auto rcap = capped->route(x);
  REQUIRE(rcap.dropped > 0);
  const auto asked = torch::zeros({100, 4}).scatter(1, rcap.experts, rcap.gates).sum(0);
  const auto load_cap = rcap.load * static_cast<double>(rcap.experts.numel());
  CHECK(capped->auxiliary_loss().item<double>() ==
        Approx((0.1 * (cv2(asked) + cv2(load_cap))).item<double>()).epsilon(1e-4));
  // Evaluation mode carries no loss; balance none carries none at all.
  cv->eval();
  cv(x);
  CHECK(!cv->auxiliary_loss().defined());
}

TEST_CASE("MoE learning: the balancing loss spreads the tokens over the experts", "[moe][learning]") {
  // Regression on 8 clusters. The gate starts biased towards expert 0 (a constant input feature), so without a
  // balancing loss the experts that win early keep winning; with it, the load spreads out.
  auto train = [](const std::string& balance) {
    torch::manual_seed(10);
    const int64_t n = 8, d = 9;
    models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(d, 1)
                                     .experts(n)
                                     .k(1)
                                     .renormalize(false)
                                     .hidden(16)
                                     .balance(balance)
                                     .balance_coef(0.1));
    {
      torch::NoGradGuard no_grad;
      moe->gate->weight.select(1, d - 1).zero_();
      moe->gate->weight[0][d - 1] = 3.0;  // feature d-1 is always 1: a head start for expert 0
    }
    const auto centres = torch::randn({8, d - 1}) * 2;
    const auto targets = torch::randn({8});
    torch::optim::Adam optimizer(moe->parameters(), torch::optim::AdamOptions(1e-2));
    moe->train();
    for (int step = 0; step < 200; ++step) {
      const auto cluster = torch::randint(0, 8, {256}, torch::kLong);
      auto x =
          torch::cat({centres.index_select(0, cluster) + 0.1 * torch::randn({256, d - 1}), torch::ones({256, 1})}, 1);
      const auto y = targets.index_select(0, cluster);
      auto loss = (moe(x).squeeze(1) - y).pow(2).mean();
      if (auto aux = moe->auxiliary_loss(); aux.defined()) loss = loss + aux;
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
    const auto cluster = torch::arange(8).repeat(64);
    const auto x = torch::cat({centres.index_select(0, cluster), torch::ones({512, 1})}, 1);
    return entropy(moe->route(x).load);
  };
  const double without = train("none"), with = train("switch");
  INFO("load entropy without " << without << ", with switch balancing " << with << " (max " << std::log(8.0) << ")");
  CHECK(with > without + 0.3);
  CHECK(with > 0.8 * std::log(8.0));
}

TEST_CASE("MoE layer under bf16-mixed autocast: float32 input, close to float32, gradients reach the experts",
          "[moe][precision]") {
  // It once failed ("index_add_(): self (Float) and source (BFloat16) must have the same scalar type").
  torch::manual_seed(0);
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(16, 8).hidden(32).experts(4).k(2).capacity_factor(2.0));
  const auto x = torch::randn({32, 16});
  moe->eval();
  const auto reference = moe->forward(x);
  torch::Tensor mixed;
  {
    zoo::ops::AutocastScope scope(c10::DeviceType::CPU, torch::kBFloat16);
    mixed = moe->forward(x);
  }
  REQUIRE(mixed.sizes() == reference.sizes());
  CHECK((mixed.to(torch::kFloat32) - reference).abs().max().item<double>() <
        0.05 * reference.abs().max().item<double>() + 1e-3);
  moe->train();
  {
    zoo::ops::AutocastScope scope(c10::DeviceType::CPU, torch::kBFloat16);
    moe->forward(x).to(torch::kFloat32).pow(2).mean().backward();
  }
  int64_t with_gradient = 0;
  for (const auto& p : moe->parameters())
    with_gradient += p.grad().defined() && p.grad().abs().sum().item<double>() > 0;
  CHECK(with_gradient > 0);
}

TEST_CASE("An expert under bf16-mixed: zoo's few-row linear kernel, close to LibTorch's autocast, float32 gradients",
          "[moe][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: the experts run LibTorch's autocast here");
    return;
  }
  torch::manual_seed(3);
  models::Expert expert(3136, 64, 10);  // the moe classifier's experts, on 21 routed rows
  const auto x = torch::randn({21, 3136}).to(torch::kBFloat16);
  const auto go = torch::randn({21, 10}).to(torch::kBFloat16);
  auto run = [&](bool kernel) {
    std::optional<zoo::ops::detail::WithoutBf16Kernel> without;
    if (!kernel) without.emplace();
    zoo::ops::AutocastScope scope(c10::DeviceType::CPU, torch::kBFloat16);
    const auto y = expert->forward(x);
    std::vector<torch::Tensor> out{y};
    for (const auto& g : torch::autograd::grad({y}, expert->parameters(), {go})) out.push_back(g);
    return out;
  };
  const auto zoo_kernel = run(true), libtorch = run(false);
  // Both linear layers in the kernel: fc2's node, and fc1's behind the ReLU.
  int kernels = 0;
  std::vector<std::shared_ptr<torch::autograd::Node>> todo{zoo_kernel[0].grad_fn()};
  while (!todo.empty()) {
    const auto node = todo.back();
    todo.pop_back();
    if (!node) continue;
    kernels += node->name().find("LinearBf16Function") != std::string::npos;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function);
  }
  CHECK(kernels == 2);
  REQUIRE(zoo_kernel.size() == libtorch.size());
  for (size_t i = 0; i < zoo_kernel.size(); ++i) {
    INFO("output 0, then the gradients of fc1.weight, fc1.bias, fc2.weight, fc2.bias: " << i);
    CHECK(zoo_kernel[i].scalar_type() == (i == 0 ? torch::kBFloat16 : torch::kFloat32));
    const auto a = zoo_kernel[i].to(torch::kFloat64), b = libtorch[i].to(torch::kFloat64);
    // Both round the operands to bfloat16; LibTorch also rounds the hidden layer's products and the weights'
    // gradients to bfloat16 before they are widened, zoo's kernel does not.
    CHECK((a - b).abs().max().item<double>() < 0.02 * b.abs().max().item<double>());
  }
}
