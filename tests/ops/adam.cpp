// ops::adam_update: one pass of Adam's / AdamW's update against LibTorch's torch::optim::Adam and AdamW, bit for bit
// (parameters and both moments, every tail length, weight decay of both kinds, amsgrad, many steps, 1 and 2
// threads), and the tensors it refuses.
#include "ops/adam.h"
#include "ops/simd.h"
#include "training/optim.h"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>
#include <vector>

using zoo::ops::AdamScalars;

namespace {

/// LibTorch's state of p in `optimizer`.
template <typename State>
State& state_of(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  auto* state = zoo::training::optimizer_state(optimizer, p);
  REQUIRE(state != nullptr);
  return static_cast<State&>(*state);
}

struct Case {
  bool decoupled;
  double weight_decay;
  bool amsgrad;
};

/// `steps` steps of LibTorch's optimizer and of adam_update from the same parameters and gradients; every tensor
/// equal bit for bit after each.
template <typename Optimizer, typename Options, typename State>
void check_against_libtorch(const Case& c, const std::vector<int64_t>& sizes, int steps) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> theirs, ours, m, v, vmax;
  for (auto n : sizes) {
    auto p = torch::randn({n});
    theirs.push_back(p.clone().requires_grad_(true));
    ours.push_back(p.clone());
    m.push_back(torch::zeros({n}));
    v.push_back(torch::zeros({n}));
    vmax.push_back(c.amsgrad ? torch::zeros({n}) : torch::Tensor());
  }
  const double lr = 2e-3;
  Optimizer optimizer(theirs, Options(lr).weight_decay(c.weight_decay).amsgrad(c.amsgrad));
  for (int t = 1; t <= steps; ++t) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      // Gradients over many magnitudes, some exactly zero, so every rounding is exercised.
      auto g = torch::randn({sizes[i]}) * torch::pow(10.0, torch::randint(-6, 3, {sizes[i]}));
      g.masked_fill_(torch::rand({sizes[i]}) < 0.05, 0);
      theirs[i].mutable_grad() = g;
    }
    optimizer.step();
    const auto s = AdamScalars::make(lr, 0.9, 0.999, 1e-8, c.weight_decay, c.decoupled, c.amsgrad, t);
    for (size_t i = 0; i < sizes.size(); ++i) {
      REQUIRE(zoo::ops::adam_update_fits(ours[i], theirs[i].grad(), m[i], v[i], vmax[i], s));
      zoo::ops::adam_update(ours[i], theirs[i].grad(), m[i], v[i], vmax[i], s);
      const auto& state = state_of<State>(optimizer, theirs[i]);
      INFO("step " << t << ", " << sizes[i] << " elements");
      REQUIRE(torch::equal(theirs[i].detach(), ours[i]));
      REQUIRE(torch::equal(state.exp_avg(), m[i]));
      REQUIRE(torch::equal(state.exp_avg_sq(), v[i]));
      if (c.amsgrad) REQUIRE(torch::equal(state.max_exp_avg_sq(), vmax[i]));
    }
  }
}

std::vector<int64_t> tail_sizes() {
  std::vector<int64_t> sizes;
  for (int64_t n = 1; n <= 41; ++n) sizes.push_back(n);
  for (int64_t n : {63, 64, 65, 1000, 65536 + 9, 200003}) sizes.push_back(n);  // the last ones span threads' chunks
  return sizes;
}

}  // namespace

TEST_CASE("adam_update: LibTorch's Adam and AdamW to the bit, with weight decay, amsgrad and every tail length",
          "[kernels][optim]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: adam_update does not run here (the optimizers take LibTorch's step)");
    return;
  }
  const auto sizes = tail_sizes();
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    SECTION("Adam, " + std::to_string(threads) + " threads") {
      using namespace torch::optim;
      check_against_libtorch<Adam, AdamOptions, AdamParamState>({false, 0, false}, sizes, 12);
      check_against_libtorch<Adam, AdamOptions, AdamParamState>({false, 0.01, false}, sizes, 6);
      check_against_libtorch<Adam, AdamOptions, AdamParamState>({false, 0.01, true}, sizes, 6);
    }
    SECTION("AdamW, " + std::to_string(threads) + " threads") {
      using namespace torch::optim;
      check_against_libtorch<AdamW, AdamWOptions, AdamWParamState>({true, 0.05, false}, sizes, 12);
      check_against_libtorch<AdamW, AdamWOptions, AdamWParamState>({true, 0, true}, sizes, 6);
    }
  }
  torch::set_num_threads(1);
}

TEST_CASE("adam_update: the scalars as LibTorch converts them, and what it refuses", "[kernels][optim]") {
  const auto s = AdamScalars::make(0.1, 0.9, 0.999, 1e-8, 0.2, true, false, 2);
  CHECK(s.decay_scale == static_cast<float>(1 - 0.1 * 0.2));
  CHECK(!s.has_l2);
  CHECK(s.sqrt_bias2 == static_cast<float>(std::sqrt(1 - 0.999 * 0.999)));
  CHECK(s.neg_step == static_cast<float>(-0.1 / (1 - 0.9 * 0.9)));
  const auto coupled = AdamScalars::make(0.1, 0.9, 0.999, 1e-8, 0.2, false, false, 1);
  CHECK(coupled.decay_scale == 1.0f);
  CHECK(coupled.has_l2);
  CHECK(coupled.l2 == 0.2f);

  const auto p = torch::zeros({16}), g = torch::ones({16});
  auto m = torch::zeros({16}), v = torch::zeros({16});
  if (!zoo::ops::cpu_has_avx2_fma()) {
    CHECK(!zoo::ops::adam_update_fits(p, g, m, v, {}, s));
    return;
  }
  CHECK(zoo::ops::adam_update_fits(p, g, m, v, {}, s));
  CHECK(!zoo::ops::adam_update_fits(p.to(torch::kFloat64), g.to(torch::kFloat64), m, v, {}, s));
  CHECK(!zoo::ops::adam_update_fits(p, g.to(torch::kBFloat16), m, v, {}, s));
  CHECK(!zoo::ops::adam_update_fits(torch::zeros({4, 4}).t(), g.view({4, 4}), m, v, {}, s));  // not contiguous
  CHECK(!zoo::ops::adam_update_fits(p, torch::ones({15}), m, v, {}, s));
  CHECK(!zoo::ops::adam_update_fits(p, g.to_sparse(), m, v, {}, s));
  auto amsgrad = s;
  amsgrad.amsgrad = true;
  CHECK(!zoo::ops::adam_update_fits(p, g, m, v, {}, amsgrad));  // no running maximum given
  CHECK(zoo::ops::adam_update_fits(p, g, m, v, torch::zeros({16}), amsgrad));
  {
    zoo::ops::ScalarOnly scalar;  // as on a CPU without AVX2
    CHECK(!zoo::ops::adam_update_fits(p, g, m, v, {}, s));
  }
  // ATen's kernels without AVX2 round a + alpha * b twice: the one pass would not match them.
  const char* before = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string previous = before ? before : "";
  setenv("ATEN_CPU_CAPABILITY", "default", 1);
  CHECK(!zoo::ops::adam_update_fits(p, g, m, v, {}, s));
  setenv("ATEN_CPU_CAPABILITY", "avx2", 1);
  CHECK(zoo::ops::adam_update_fits(p, g, m, v, {}, s));
  if (before) {
    setenv("ATEN_CPU_CAPABILITY", previous.c_str(), 1);
  } else {
    unsetenv("ATEN_CPU_CAPABILITY");
  }
  auto wrong = p.to(torch::kFloat64);
  CHECK_THROWS_WITH(zoo::ops::adam_update(wrong, g, m, v, wrong, s), Catch::Contains("contiguous float32 CPU tensors"));
}
