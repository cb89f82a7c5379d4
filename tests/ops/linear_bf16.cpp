// linear_bf16: zoo's few-row linear layer on AVX512-BF16 against float64's product of the same bfloat16 values, and
// ops::linear, which sends autocast's few-row linear layers to it and everything else to LibTorch.
#include "ops/linear_bf16.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <catch2/catch.hpp>

#include <random>
#include <string>

using zoo::ops::detail::linear_bf16;
using zoo::test::within_rounding;

namespace {

bool ran_linear_kernel(const torch::Tensor& y) {
  return y.grad_fn() && y.grad_fn()->name().find("LinearBf16Function") != std::string::npos;
}

// x [T, K] bfloat16, weight [N, K] and bias [N] float32, all three needing gradients.
struct Operands {
  torch::Tensor x, w, b;
};
Operands operands(int64_t T, int64_t K, int64_t N) {
  return {torch::randn({T, K}).to(torch::kBFloat16).requires_grad_(), torch::randn({N, K}, torch::requires_grad()),
          torch::randn({N}, torch::requires_grad())};
}

}  // namespace

TEST_CASE("linear_bf16: output and all three gradients equal float64's product of the same bfloat16 values",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: zoo's bfloat16 linear layer is not tested here");
    return;
  }
  torch::manual_seed(21);
  // {T, K, N}: the MoE's experts (fc1 [64, 3136] and fc2 [10, 64]) at their usual rows, one of everything, and
  // tails of every block: rows past the 6-row blocks and odd (pairs of rows), columns past 32, 48 and 64, outputs
  // past the 4- and 8-output blocks and odd (pairs of outputs).
  std::vector<std::array<int64_t, 3>> shapes{{16, 3136, 64}, {29, 3136, 64}, {8, 64, 10}, {1, 1, 1},
                                             {64, 200, 33},  {5, 37, 7},     {2, 31, 2},  {7, 65, 9},
                                             {13, 48, 17},   {12, 96, 8},    {3, 129, 1}, {1, 300, 5}};
  std::mt19937 random(22);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  for (int i = 0; i < 20; ++i) shapes.push_back({pick(1, 70), pick(1, 200), pick(1, 40)});
  for (const auto& [T, K, N] : shapes) {
    INFO("x [" << T << ", " << K << "], weight [" << N << ", " << K << "]");
    const auto [x, w, b] = operands(T, K, N);
    const auto y = linear_bf16(x, w, b);
    REQUIRE(y.scalar_type() == torch::kBFloat16);
    REQUIRE(y.sizes() == torch::IntArrayRef({T, N}));
    const auto go = torch::randn({T, N}).to(torch::kBFloat16);
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    CHECK(g[0].scalar_type() == torch::kBFloat16);
    CHECK(g[1].scalar_type() == torch::kFloat32);
    CHECK(g[2].scalar_type() == torch::kFloat32);
    // The exact values: the operands as the kernel sees them (the weight rounded to bfloat16), in float64.
    const auto xd = x.detach().to(torch::kFloat64).requires_grad_();
    const auto wd = w.detach().to(torch::kBFloat16).to(torch::kFloat64).requires_grad_();
    const auto bd = b.detach().to(torch::kFloat64).requires_grad_();
    const auto r = torch::addmm(bd, xd, wd.t());
    const auto gr = torch::autograd::grad({r}, {xd, wd, bd}, {go.to(torch::kFloat64)});
    CHECK(within_rounding(y, r, 1.0 / 256));  // one rounding to bfloat16
    CHECK(within_rounding(g[0], gr[0], 1.0 / 256));
    CHECK(within_rounding(g[1], gr[1], 0.0));  // float32, not rounded
    CHECK(within_rounding(g[2], gr[2], 0.0));
    if (T * N >= 16) {  // rounding happened: a float32 result would not show it
      CHECK((y.to(torch::kFloat64) - r).abs().max().item<double>() > 0);
      CHECK((g[0].to(torch::kFloat64) - gr[0]).abs().max().item<double>() > 0);
    }
  }
}

TEST_CASE("linear_bf16: the same bits at 1 and 2 threads, a float32 input's gradient in float32, no bias",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  torch::manual_seed(23);
  const auto x = torch::randn({19, 3136}, torch::requires_grad());  // float32: rounded to bfloat16 inside
  const auto w = torch::randn({64, 3136}, torch::requires_grad());
  const auto b = torch::randn({64}, torch::requires_grad());
  const auto go = torch::randn({19, 64}).to(torch::kBFloat16);
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    const auto y = linear_bf16(x, w, b);
    auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    at::set_num_threads(before);
    g.insert(g.begin(), y);
    return g;
  };
  const auto one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) CHECK(torch::equal(one[i], two[i]));
  CHECK(one[1].scalar_type() == torch::kFloat32);  // x's gradient back in x's type

  const auto y = linear_bf16(x, w, {});  // no bias
  const auto exact =
      x.detach().to(torch::kBFloat16).to(torch::kFloat64).mm(w.detach().to(torch::kBFloat16).to(torch::kFloat64).t());
  CHECK(within_rounding(y, exact, 1.0 / 256));
  const auto gw = torch::autograd::grad({y}, {w}, {go})[0];
  CHECK(torch::equal(gw, one[2]));  // the weight's gradient does not depend on the bias
}

TEST_CASE("linear_bf16: second derivatives through its backward, and the operands it refuses", "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  torch::manual_seed(24);
  const auto x = torch::randn({6, 40}).to(torch::kBFloat16).requires_grad_();
  const auto w = torch::randn({9, 40}, torch::requires_grad());
  const auto b = torch::randn({9}, torch::requires_grad());
  auto penalty = [&](bool zoo_kernel) {
    const auto out = zoo_kernel ? linear_bf16(x, w, b)
                                : torch::nn::functional::linear(x, w.to(torch::kBFloat16), b.to(torch::kBFloat16));
    const auto gx = torch::autograd::grad({torch::tanh(out).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.to(torch::kFloat32).pow(2).sum()}, {w})[0].to(torch::kFloat32);
  };
  const auto expected = penalty(false), got = penalty(true);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK((got - expected).abs().max().item<double>() < 0.05 * expected.abs().max().item<double>());

  CHECK_THROWS_WITH(linear_bf16(x, torch::randn({9, 41}), {}), Catch::Contains("weight [out, in]"));
  CHECK_THROWS_WITH(linear_bf16(x, w, torch::randn({8})), Catch::Contains("bias [out]"));
  CHECK_THROWS_WITH(linear_bf16(x, w.to(torch::kFloat64), {}), Catch::Contains("float32 weight"));
}

TEST_CASE("ops::linear: autocast's few-row linear layers run zoo's kernel, everything else LibTorch's linear",
          "[kernels][precision]") {
  torch::manual_seed(25);
  const auto x = torch::randn({16, 300});
  const auto w = torch::randn({20, 300}, torch::requires_grad());
  const auto b = torch::randn({20}, torch::requires_grad());
  // Outside autocast: LibTorch's linear, to the bit.
  CHECK(torch::equal(zoo::ops::linear(x, w, b), torch::nn::functional::linear(x, w, b)));
  CHECK(torch::equal(zoo::ops::linear(x, w), torch::nn::functional::linear(x, w)));
  CHECK_FALSE(zoo::ops::detail::linear_bf16_applies(x, w, b));
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's linear layers run LibTorch's rule here");
    return;
  }
  zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
  const auto y = zoo::ops::linear(x, w, b);
  CHECK(ran_linear_kernel(y));
  CHECK(y.scalar_type() == torch::kBFloat16);
  const auto r = [](const torch::Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kFloat64); };
  CHECK(within_rounding(y, torch::addmm(b.detach().to(torch::kFloat64), r(x), r(w).t()), 1.0 / 256));
  const auto many = torch::randn({zoo::ops::kLinearBf16MaxRows, 300});
  CHECK(ran_linear_kernel(zoo::ops::linear(many, w, b)));

  // What it does not take runs autocast's own rule (LibTorch's linear in bfloat16), to the bit.
  auto autocast_rule = [&](const torch::Tensor& xx, const torch::Tensor& ww, const torch::Tensor& bb) {
    return torch::nn::functional::linear(xx, ww, bb);
  };
  const auto rows = torch::randn({zoo::ops::kLinearBf16MaxRows + 1, 300});
  const auto w16 = w.detach().to(torch::kBFloat16);
  const auto x3 = torch::randn({2, 8, 300});
  for (const auto& [xx, ww, label] : std::vector<std::tuple<torch::Tensor, torch::Tensor, std::string>>{
           {rows, w, "more rows than the kernel takes"},
           {x, w16, "a bfloat16 weight"},
           {x3, w, "a 3-D input"},
           {x.to(torch::kFloat64), w.to(torch::kFloat64), "float64"}}) {
    INFO(label);
    const auto bb = ww.scalar_type() == torch::kFloat64 ? b.detach().to(torch::kFloat64) : b;
    const auto got = zoo::ops::linear(xx, ww, bb);
    CHECK_FALSE(ran_linear_kernel(got));
    CHECK(torch::equal(got, autocast_rule(xx, ww, bb)));
  }
  {
    zoo::ops::detail::WithoutBf16Kernel without;  // a CPU without AVX512-BF16
    CHECK_FALSE(ran_linear_kernel(zoo::ops::linear(x, w, b)));
    CHECK(zoo::ops::linear(x, w, b).scalar_type() == torch::kBFloat16);
  }
  {
    zoo::ops::Float32Region float32;  // autocast off: float32 as it is
    const auto got = zoo::ops::linear(x, w, b);
    CHECK(got.scalar_type() == torch::kFloat32);
    CHECK(torch::equal(got, torch::nn::functional::linear(x, w, b)));
  }
}

TEST_CASE("ops::linear: a trace records LibTorch's product, which TorchScript and Python load",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  torch::manual_seed(26);
  const auto w = torch::randn({5, 12}), b = torch::randn({5});
  zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
  auto traced = torch::jit::tracer::trace(
      {torch::randn({3, 12})},
      [&](torch::jit::Stack in) -> torch::jit::Stack { return {zoo::ops::linear(in[0].toTensor(), w, b)}; },
      [](const torch::autograd::Variable&) { return std::string(); }, false);
  const auto graph = traced.first->graph->toString();
  CHECK(graph.find("aten::addmm") != std::string::npos);  // LibTorch's C++ linear of 2-D operands
  CHECK(graph.find("LinearBf16") == std::string::npos);
}
