// mhc_mixing: mHC's mixing logits in one autograd node against the same composition in tensor operations, in
// float64: outputs, the gradients of the features and of all ten parameters, second derivatives and the fallbacks.
#include "ops/mhc_mixing.h"
#include "helpers.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <catch2/catch.hpp>

#include <limits>
#include <random>
#include <string>

using zoo::ops::MHCMixingParameters;

namespace {

bool ran_fused(const torch::Tensor& t) {
  return t.grad_fn() && t.grad_fn()->name().find("MixingFunction") != std::string::npos;
}

/// Random parameters (non-zero, unlike the initialisation) for K features, n streams and m residual logits.
MHCMixingParameters random_parameters(int64_t K, int64_t n, int64_t m, torch::Dtype type) {
  const auto o = torch::TensorOptions().dtype(type).requires_grad(true);
  return {torch::randn({K}, o) * 0.3,
          torch::randn({K, n}, o),
          torch::randn({K, n}, o),
          torch::randn({K, m}, o),
          torch::randn({n}, o),
          torch::randn({n}, o),
          torch::randn({m}, o),
          torch::full({}, 0.7, o),
          torch::full({}, -0.4, o),
          torch::full({}, 1.3, o),
          1e-6};
}

std::vector<torch::Tensor> leaves(const torch::Tensor& v, const MHCMixingParameters& p) {
  return {v,        p.norm_gain, p.phi_pre,   p.phi_post,   p.phi_res,  p.b_pre,
          p.b_post, p.b_res,     p.alpha_pre, p.alpha_post, p.alpha_res};
}

}  // namespace

TEST_CASE("mhc_mixing: outputs and all eleven gradients equal the tensor operations' in float64", "[kernels][mhc]") {
  torch::manual_seed(51);
  // {B, K, n, m}: the mHC ResNet's blocks (64 images, 4 streams of 32 channels, 16 Sinkhorn logits), mhc-lite's
  // 3! = 6 permutation weights, one of everything, then random shapes.
  std::vector<std::array<int64_t, 4>> shapes{{64, 128, 4, 16}, {5, 12, 3, 6}, {1, 1, 1, 1}, {7, 40, 2, 4}};
  std::mt19937 random(52);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  for (int i = 0; i < 6; ++i) shapes.push_back({pick(1, 30), pick(1, 70), pick(1, 5), pick(1, 25)});
  for (const auto& [B, K, n, m] : shapes) {
    // Which outputs the loss reads: all three, or only the residual logits (the others' gradients undefined).
    for (const bool all_outputs : {true, false}) {
      INFO("B " << B << ", K " << K << ", n " << n << ", m " << m << ", all outputs " << all_outputs);
      auto p = random_parameters(K, n, m, torch::kFloat64);
      const auto v = torch::randn({B, K}, torch::dtype(torch::kFloat64).requires_grad(true));
      const auto fused = zoo::ops::mhc_mixing(v, p), plain = zoo::ops::mhc_mixing_reference(v, p);
      REQUIRE(ran_fused(fused[0]));
      REQUIRE_FALSE(ran_fused(plain[0]));
      for (size_t i = 0; i < 3; ++i) {
        REQUIRE(fused[i].sizes() == plain[i].sizes());
        CHECK(zoo::test::max_abs(fused[i] - plain[i]) < 1e-12);
      }
      auto loss = [&](const std::array<torch::Tensor, 3>& o) {
        const auto weights = torch::linspace(-1, 1, o[2].numel(), torch::kFloat64).reshape(o[2].sizes());
        auto l = (o[2] * weights).sum() + o[2].pow(2).sum();
        if (all_outputs) l = l + (o[0] * 3).sum() + o[1].pow(2).sum();
        return l;
      };
      const auto gf = torch::autograd::grad({loss(fused)}, leaves(v, p), {}, false, false, /*allow_unused=*/true);
      auto gp = torch::autograd::grad({loss(plain)}, leaves(v, p), {}, false, false, /*allow_unused=*/true);
      for (size_t i = 0; i < gf.size(); ++i) {
        INFO("gradient " << i);
        if (!gp[i].defined()) gp[i] = torch::zeros_like(leaves(v, p)[i]);  // an output the loss does not read
        REQUIRE(gf[i].sizes() == gp[i].sizes());
        CHECK(zoo::test::max_abs(gf[i] - gp[i]) < 1e-10 * std::max(1.0, zoo::test::max_abs(gp[i])));
      }
      if (!all_outputs) CHECK(zoo::test::max_abs(gf[5]) == 0);  // b_pre: pre was not read
    }
  }
}

TEST_CASE("mhc_mixing: float32 close to the tensor operations, second derivatives, and the fallbacks",
          "[kernels][mhc]") {
  torch::manual_seed(53);
  {
    auto p = random_parameters(128, 4, 16, torch::kFloat32);
    const auto v = torch::randn({64, 128}, torch::requires_grad());
    const auto fused = zoo::ops::mhc_mixing(v, p), plain = zoo::ops::mhc_mixing_reference(v, p);
    REQUIRE(ran_fused(fused[2]));
    for (size_t i = 0; i < 3; ++i) CHECK(zoo::test::max_rel(fused[i], plain[i]) < 1e-5);
    const auto gf = torch::autograd::grad({fused[0].sum() + fused[1].sum() + fused[2].pow(2).sum()}, leaves(v, p));
    const auto gp = torch::autograd::grad({plain[0].sum() + plain[1].sum() + plain[2].pow(2).sum()}, leaves(v, p));
    for (size_t i = 0; i < gf.size(); ++i) CHECK(zoo::test::max_rel(gf[i], gp[i]) < 1e-4);
  }
  {  // second derivatives (a gradient penalty on the features) through the tensor operations
    auto p = random_parameters(24, 3, 9, torch::kFloat64);
    const auto v = torch::randn({6, 24}, torch::dtype(torch::kFloat64).requires_grad(true));
    auto penalty = [&](bool fused) {
      const auto o = fused ? zoo::ops::mhc_mixing(v, p) : zoo::ops::mhc_mixing_reference(v, p);
      const auto gv = torch::autograd::grad({o[0].sum() + o[1].pow(2).sum() + o[2].pow(2).sum()}, {v}, {}, true,
                                            /*create_graph=*/true)[0];
      return torch::autograd::grad({gv.pow(2).sum()}, {p.phi_res, p.norm_gain, p.alpha_pre});
    };
    const auto got = penalty(true), expected = penalty(false);
    for (size_t i = 0; i < got.size(); ++i) CHECK(zoo::test::max_abs(got[i] - expected[i]) < 1e-9);
  }
  // What the node does not take runs the tensor operations: a strided input, bfloat16, a trace.
  auto p = random_parameters(16, 2, 4, torch::kFloat32);
  const auto v = torch::randn({3, 16});
  CHECK(ran_fused(zoo::ops::mhc_mixing(v, p)[0]));
  CHECK_FALSE(ran_fused(zoo::ops::mhc_mixing(torch::randn({16, 3}).t(), p)[0]));
  CHECK_FALSE(ran_fused(zoo::ops::mhc_mixing(v.to(torch::kBFloat16), p)[0]));
  CHECK_FALSE(ran_fused(zoo::ops::mhc_mixing(v, p, /*fused=*/false)[0]));
  const auto q = random_parameters(16, 2, 4, torch::kFloat32);
  MHCMixingParameters constants = q;  // a trace keeps parameters that need no gradient as constants
  for (auto* t :
       {&constants.norm_gain, &constants.phi_pre, &constants.phi_post, &constants.phi_res, &constants.b_pre,
        &constants.b_post, &constants.b_res, &constants.alpha_pre, &constants.alpha_post, &constants.alpha_res})
    *t = t->detach();
  auto traced = torch::jit::tracer::trace(
      {v},
      [&](torch::jit::Stack in) -> torch::jit::Stack {
        const auto o = zoo::ops::mhc_mixing(in[0].toTensor(), constants);
        return {o[0], o[1], o[2]};
      },
      [](const torch::autograd::Variable&) { return std::string(); }, false);
  const auto graph = traced.first->graph->toString();
  CHECK(graph.find("aten::sigmoid") != std::string::npos);
  CHECK(graph.find("MixingFunction") == std::string::npos);
}

TEST_CASE("mhc_mixing: the backward flushes denormals to zero and leaves the thread's mode as it was",
          "[kernels][mhc]") {
#ifndef ZOO_X86_KERNELS
  WARN("not an x86-64 build: FlushDenormals is a no-op here, not tested");
  return;
#else
  torch::manual_seed(54);
  // phi ~ 1e-30 and output gradients ~ 1e-10: the features' gradient, dla phi^T, lies near 1e-41, below float32's
  // normal range (2^-126 ~ 1.2e-38), while the weights' gradient, x~^T dla, stays normal.
  auto p = random_parameters(16, 2, 4, torch::kFloat32);
  p.phi_pre = (torch::randn({16, 2}) * 1e-30).requires_grad_();
  p.phi_post = (torch::randn({16, 2}) * 1e-30).requires_grad_();
  p.phi_res = (torch::randn({16, 4}) * 1e-30).requires_grad_();
  const auto v = torch::randn({8, 16}, torch::requires_grad());
  auto gradients = [&](bool fused) {
    const auto o = fused ? zoo::ops::mhc_mixing(v, p) : zoo::ops::mhc_mixing_reference(v, p);
    return torch::autograd::grad({(o[0].sum() + o[1].sum() + o[2].sum()) * 1e-10}, {v, p.phi_pre, p.phi_res});
  };
  const auto fused = gradients(true), plain = gradients(false);
  const float smallest_normal = std::numeric_limits<float>::min();
  const auto plain_dv = plain[0].abs();
  REQUIRE(plain_dv.max().item<float>() > 0);  // the tensor operations keep the denormals
  CHECK(plain_dv.max().item<float>() < smallest_normal);
  CHECK(torch::equal(fused[0], torch::zeros_like(fused[0])));  // flushed
  for (size_t i = 1; i < fused.size(); ++i) {
    CHECK(fused[i].abs().max().item<float>() > smallest_normal);
    CHECK(zoo::test::max_rel(fused[i], plain[i]) < 1e-4);
  }
  // The mode is this thread's again: a product below the normal range is a denormal, not zero.
  volatile float tiny = 1e-20F;
  const float product = tiny * tiny;
  CHECK(product > 0);
  CHECK(product < smallest_normal);
#endif
}
