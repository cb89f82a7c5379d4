// Hyper-connections: permutation mixing (mHC-lite), the MHC wrapper and the mhc-resnet model.
#include "models/mhc.h"
#include "helpers.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "training/trainer.h"

#include <catch2/catch.hpp>

using namespace zoo;
using torch::Tensor;

namespace {

using test::column_error;
using test::max_abs;
using test::row_error;

// Random mixing parameters, far from the initialisation: static logits scale * N(0, 1), the rest moved by it.
void perturb(models::MHCImpl& m, double scale) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters(/*recurse=*/false)) {
    if (p.key().rfind("alpha", 0) == 0) continue;
    if (p.key().rfind("b_", 0) == 0)
      p.value().copy_(scale * torch::randn_like(p.value()));
    else
      p.value().add_(scale * torch::randn_like(p.value()));
  }
}

models::MHC identity_branch_mhc(const std::string& variant, int64_t n = 4, int64_t c = 6) {
  return models::MHC(models::MHCOptions(c).streams(n).variant(variant),
                     torch::nn::Functional([](const Tensor& x) { return torch::tanh(x); }));
}

}  // namespace

TEST_CASE("Permutation matrices: n! of them, identity first, each a permutation", "[mhc]") {
  const auto p = models::permutation_matrices(4);
  CHECK(p.sizes() == torch::IntArrayRef({24, 4, 4}));
  CHECK(torch::equal(p[0], torch::eye(4)));
  CHECK(max_abs(p.sum(-1) - 1) == 0);
  CHECK(max_abs(p.sum(-2) - 1) == 0);
  CHECK(std::get<0>(torch::unique_dim(p.flatten(1), 0)).size(0) == 24);
  CHECK(models::permutation_matrices(3)[1].equal(torch::tensor({{1., 0., 0.}, {0., 0., 1.}, {0., 1., 0.}})));
}

TEST_CASE("MHC mixing: mhc and mhc-lite are doubly stochastic, hc is not", "[mhc]") {
  torch::manual_seed(1);
  const auto x = torch::randn({16, 4, 6, 5, 5});
  for (const std::string variant : {"mhc", "mhc-lite", "hc"}) {
    auto m = identity_branch_mhc(variant);
    // At initialisation H_res is the identity up to the exp(-8) of the off-identity logits: 1.0e-3 for mhc
    // (3 e^-8 per row), 6.0e-3 for mhc-lite (23 permutations at e^-8, 6 of them through each entry), 0 for hc.
    auto h0 = m->mixing(x);
    INFO(variant);
    CHECK(max_abs(h0.res - torch::eye(4)) < (variant == "mhc" ? 1.1e-3 : variant == "mhc-lite" ? 6.5e-3 : 1e-7));
    CHECK(h0.pre.sizes() == torch::IntArrayRef({16, 4}));
    perturb(*m, 1.0);
    auto h = m->mixing(x);
    if (variant == "hc") {
      CHECK(row_error(h.res) > 0.1);
      continue;
    }
    CHECK(h.res.min().item<double>() >= 0);
    CHECK(row_error(h.res) < 1e-6);
    CHECK(column_error(h.res) < (variant == "mhc" ? 1e-3 : 1e-6));
    CHECK(h.pre.min().item<double>() > 0);
    CHECK(h.post.max().item<double>() < 2);
    CHECK(max_abs(h.res - torch::eye(4)) > 0.1);  // really mixing now
  }
}

TEST_CASE("MHC under bf16-mixed autocast computes its mixing matrices in float32", "[mhc][precision]") {
  torch::manual_seed(3);
  const auto x = torch::randn({8, 4, 6, 5, 5}).to(torch::kBFloat16);
  for (const std::string variant : {"mhc", "mhc-lite", "hc"}) {
    INFO(variant);
    auto m = identity_branch_mhc(variant);
    perturb(*m, 1.0);
    {
      torch::NoGradGuard no_grad;  // the input-dependent part at full weight, so that its precision shows
      for (auto& p : m->named_parameters(/*recurse=*/false))
        if (p.key().rfind("alpha", 0) == 0) p.value().fill_(1.0);
    }
    const auto expected = m->mixing(x.to(torch::kFloat32));  // float32 throughout, autocast off
    models::MixingMatrices got;
    {
      ops::AutocastScope autocast(c10::kCPU, torch::kBFloat16, true);
      got = m->mixing(x);
    }
    for (const auto& [name, a, b] :
         {std::tuple{"pre", got.pre, expected.pre}, std::tuple{"post", got.post, expected.post},
          std::tuple{"res", got.res, expected.res}}) {
      INFO(name);
      CHECK(a.scalar_type() == torch::kFloat32);
      // With autocast's bfloat16 products these were 7e-3 to 4e-2 off (8 bits of mantissa in the features and phi).
      CHECK(max_abs(a - b) < 1e-5);
    }
  }
}

TEST_CASE("MHC at initialisation is a plain residual connection around the branch", "[mhc]") {
  torch::manual_seed(2);
  const auto x = torch::randn({8, 4, 6, 3, 3});
  for (const std::string variant : {"mhc", "mhc-lite"}) {
    auto m = models::MHC(models::MHCOptions(6).variant(variant),
                         torch::nn::Functional([](const Tensor& t) { return torch::zeros_like(t); }));
    INFO(variant);
    const double tolerance = variant == "mhc" ? 3e-3 : 1.5e-2;   // twice the distance of H_res from I
    CHECK(max_abs(m->forward(x) - x) < tolerance * max_abs(x));  // F = 0: the streams pass unchanged
    // With a real branch: stream t = x_t + H_post[t] F(sum_s H_pre[s] x_s), H_pre/H_post as initialised.
    auto f = identity_branch_mhc(variant);
    const auto pre = torch::sigmoid(torch::tensor({1.0f, -1.0f, -1.0f, -1.0f}));
    const auto mixed = (x * pre.view({1, 4, 1, 1, 1})).sum(1);
    const auto expected = x + 2 * pre.view({1, 4, 1, 1, 1}) * torch::tanh(mixed).unsqueeze(1);
    CHECK(max_abs(f->forward(x) - expected) < tolerance * max_abs(x));
  }
  // combine() is exactly H_res x + H_post^T F(H_pre x) for given matrices.
  auto m = identity_branch_mhc("mhc");
  models::MixingMatrices given{torch::rand({8, 4}), torch::rand({8, 4}), torch::rand({8, 4, 4})};
  auto expected = torch::zeros_like(x);
  const auto branch = torch::tanh((x * given.pre.view({8, 4, 1, 1, 1})).sum(1));
  for (int64_t t = 0; t < 4; ++t) {
    auto stream = given.post.select(1, t).view({8, 1, 1, 1}) * branch;
    for (int64_t s = 0; s < 4; ++s)
      stream = stream + given.res.select(1, t).select(1, s).view({8, 1, 1, 1}) * x.select(1, s);
    expected.select(1, t).copy_(stream);
  }
  CHECK(max_abs(m->combine(x, given) - expected) < 1e-5);
}

TEST_CASE("MHC's forward is combine(x, mixing(x)) to the bit in float32, gradients too (ops::read_streams)", "[mhc]") {
  torch::manual_seed(7);
  for (const std::string variant : {"mhc", "mhc-lite", "hc"}) {
    INFO(variant);
    auto m = identity_branch_mhc(variant);
    perturb(*m, 0.5);
    const auto x0 = torch::randn({8, 4, 6, 3, 5}), go = torch::randn({8, 4, 6, 3, 5});
    auto run = [&](bool forward) {
      m->zero_grad();
      auto x = x0.clone().requires_grad_();
      const auto y = forward ? m->forward(x) : m->combine(x, m->mixing(x));
      (y * go).sum().backward();
      std::vector<Tensor> out{y.detach(), x.grad()};
      for (const auto& p : m->parameters()) out.push_back(p.grad().clone());
      return out;
    };
    const auto ours = run(true), plain = run(false);
    REQUIRE(ours.size() == plain.size());
    for (size_t i = 0; i < ours.size(); ++i) CHECK(torch::equal(ours[i], plain[i]));
  }
}

TEST_CASE("MHC: gradients reach every mixing parameter, clone is deep, bad options are refused", "[mhc]") {
  torch::manual_seed(3);
  for (const std::string variant : {"mhc", "mhc-lite", "hc"}) {
    models::MHC m(models::MHCOptions(6).variant(variant), torch::nn::Linear(6, 6));
    perturb(*m, 0.5);
    m->forward(torch::randn({5, 4, 6})).pow(2).sum().backward();
    for (const auto& p : m->named_parameters()) {
      INFO(variant << " " << p.key());
      REQUIRE(p.value().grad().defined());
      CHECK(max_abs(p.value().grad()) > 0);
    }
  }
  models::MHC original(models::MHCOptions(6).variant("mhc-lite"), torch::nn::Linear(6, 6));
  auto copy = std::dynamic_pointer_cast<models::MHCImpl>(original->clone());
  REQUIRE(copy);
  CHECK(copy->named_parameters().size() == original->named_parameters().size());
  CHECK(copy->named_buffers().contains("permutations"));
  {
    torch::NoGradGuard no_grad;
    copy->named_parameters()["branch.weight"].fill_(0);
    copy->named_parameters()["b_res"].fill_(0);
  }
  CHECK(max_abs(original->named_parameters()["branch.weight"]) > 0);
  CHECK(original->named_parameters()["b_res"][1].item<float>() == -8);

  CHECK_THROWS_WITH(identity_branch_mhc("mhc-lite", 7), Catch::Contains("streams must be <= 6"));
  CHECK_THROWS_WITH(identity_branch_mhc("mhx"), Catch::Contains("mhc, mhc-lite or hc"));
  CHECK_THROWS_WITH(identity_branch_mhc("mhc")->forward(torch::randn({2, 3, 6})), Catch::Contains("streams=4"));
  auto shape_changer = models::MHC(models::MHCOptions(6), torch::nn::Linear(6, 3));
  CHECK_THROWS_WITH(shape_changer->forward(torch::randn({2, 4, 6})), Catch::Contains("keep its input's shape"));
}

TEST_CASE("mhc-resnet: every variant runs, names map to Python, and it learns", "[mhc][learning]") {
  torch::manual_seed(4);
  for (const std::string variant : {"mhc", "mhc-lite", "hc", "residual"}) {
    auto [net, options] = models::build_model("mhc-resnet", {{"variant", variant}, {"channels", 8}, {"blocks", 2}});
    CHECK(net.forward(torch::rand({2, 1, 28, 28})).sizes() == torch::IntArrayRef({2, 10}));
    const auto names = net.ptr()->named_parameters();
    CHECK(names.contains(variant == "residual" ? "blocks.1.conv2.weight" : "blocks.1.branch.conv2.weight"));
    CHECK(names.contains("blocks.0.b_res") == (variant != "residual"));
  }
  CHECK_THROWS_WITH(
      models::build_model("mhc-resnet", {{"variant", "lite"}}),
      Catch::Contains(
          "option 'variant' of model 'mhc-resnet': 'lite' is unknown; valid variants: mhc, mhc-lite, hc, residual"));
  REQUIRE(test::have_fashion_mnist());
  auto [net, options] = models::build_model("mhc-resnet");
  datasets::DataConfig data;
  data.limit = 2000;
  training::Trainer trainer(net, std::make_shared<training::ClassificationObjective>(), datasets::load_splits(data),
                            training::TrainOptions().epochs(2).lr(2e-3).threads(2).progress(false));
  const double accuracy = trainer.fit()["test"]["accuracy"].get<double>();
  INFO("mhc-resnet, two epochs on 2000 images: " << accuracy);
  CHECK(accuracy > 0.6);  // chance 0.1 (measured 0.75)
}
