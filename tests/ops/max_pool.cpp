// max_pool2x2: the loop against torch::max_pool2d itself (values, which element gets the gradient, NaN, odd sizes,
// every dtype), second derivatives, and the cases that fall back to it.
#include "ops/max_pool.h"
#include "helpers.h"
#include "models/cnn.h"
#include "ops/autocast.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

#include <limits>
#include <optional>

using zoo::ops::max_pool2x2;
using zoo::ops::max_pool2x2x2;

namespace {

/// The loop and torch::max_pool2d (or max_pool3d) on the same input and output gradient: outputs and input
/// gradients equal.
void check_same(const torch::Tensor& input, const std::string& what, bool volume = false) {
  INFO(what << " " << input.sizes() << " " << input.scalar_type());
  auto a = input.clone().requires_grad_(true), b = input.clone().requires_grad_(true);
  const auto pool = volume ? max_pool2x2x2 : max_pool2x2;
  const auto ya = pool(a, true), yb = pool(b, /*fast=*/false);
  REQUIRE(ya.sizes() == yb.sizes());
  CHECK(torch::equal(ya.isnan(), yb.isnan()));
  CHECK(torch::equal(ya.nan_to_num(0), yb.nan_to_num(0)));
  const auto g = torch::randn(ya.sizes()).to(input.scalar_type());
  ya.backward(g);
  yb.backward(g);
  CHECK(torch::equal(a.grad(), b.grad()));
}

}  // namespace

TEST_CASE("max_pool2x2: the same outputs and gradients as torch::max_pool2d, ties, NaN and odd sizes included",
          "[kernels]") {
  torch::manual_seed(0);
  for (const bool scalar : {false, true})
    for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
      // The AVX2 kernel (8 windows at a time; a row's last Wo % 8 again as its last 8; rows of fewer than 8 windows
      // spilling into later rows or masked) and the plain loop.
      std::optional<zoo::ops::ScalarOnly> plain;
      if (scalar) plain.emplace();
      INFO((scalar ? "plain loop" : "the CPU's kernel"));
      check_same(torch::randn({3, 5, 8, 10}).to(type), "random");
      check_same(torch::randn({2, 3, 6, 40}).to(type), "rows of two blocks of 8 windows and 4 more");
      check_same(torch::randn({2, 3, 28, 28}).to(type), "the cnn's first map");
      check_same(torch::randn({2, 3, 7, 9}).to(type), "odd sizes: the last row and column left out");
      check_same(torch::randn({4, 6, 6}).to(type), "no batch axis");
      // Every row width up to 2 blocks, even and odd, over 1 to 7 rows: where a narrow row spills into later rows
      // and where it must not (the slice's last rows, odd widths, a left-out last row).
      for (int64_t h = 2; h <= 7; ++h)
        for (int64_t w = 2; w <= 34; ++w) check_same(torch::randn({2, 3, h, w}).to(type), "every width");
      // After a ReLU most windows tie at 0: the first of them gets the gradient, as in LibTorch.
      check_same(torch::relu(torch::randn({2, 4, 6, 6}) - 1).to(type), "ties at 0");
      check_same(torch::randint(0, 3, {2, 4, 6, 6}).to(type), "ties everywhere");
      auto special = torch::randn({1, 2, 4, 4}).to(type);
      special[0][0][0][1] = std::numeric_limits<double>::quiet_NaN();
      special[0][0][1][0] = std::numeric_limits<double>::quiet_NaN();  // a later NaN takes over
      special[0][1][2][2] = std::numeric_limits<double>::quiet_NaN();  // the first element a NaN
      special[0][1][0].fill_(-std::numeric_limits<double>::infinity());
      special[0][1][1].fill_(-std::numeric_limits<double>::infinity());  // a window of -inf only
      check_same(special, "NaN and -inf");
      auto wide = torch::randn({1, 2, 4, 32}).to(type);  // the same inside a block of 8 windows
      wide[0][0][0][3] = std::numeric_limits<double>::quiet_NaN();
      wide[0][0][1][2] = std::numeric_limits<double>::quiet_NaN();
      wide[0][1][2][20] = std::numeric_limits<double>::quiet_NaN();
      wide[0][1][0].fill_(-std::numeric_limits<double>::infinity());
      wide[0][1][1].fill_(-std::numeric_limits<double>::infinity());
      check_same(wide, "NaN and -inf in a block");
    }
  // The gradient lands on exactly one element per window.
  auto x = torch::randn({2, 3, 6, 6}).requires_grad_(true);
  max_pool2x2(x).sum().backward();
  CHECK(x.grad().sum().item<double>() == 2 * 3 * 3 * 3);
  CHECK(x.grad().ne(0).sum().item<int64_t>() == 2 * 3 * 3 * 3);
}

TEST_CASE("max_pool2x2: second derivatives, and where torch::max_pool2d runs instead", "[kernels]") {
  torch::manual_seed(1);
  // create_graph: the gradient is differentiable again (through torch::max_pool2d's autograd).
  auto x = torch::randn({2, 3, 6, 6}, torch::kFloat64).requires_grad_(true);
  auto y = torch::randn({2, 3, 6, 6}, torch::kFloat64).requires_grad_(true);
  auto second = [](const torch::Tensor& t, bool fast) {
    const auto out = max_pool2x2(t * t, fast).pow(3).sum();
    const auto g = torch::autograd::grad({out}, {t}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    return torch::autograd::grad({g.pow(2).sum()}, {t})[0];
  };
  const auto ours = second(x, true), theirs = second(y.detach().copy_(x.detach()).requires_grad_(true), false);
  CHECK(torch::allclose(ours, theirs, 1e-6, 1e-9));
  CHECK(ours.abs().max().item<double>() > 0.1);
  // Not contiguous or traced: torch::max_pool2d (the same result).
  const auto wide = torch::randn({2, 3, 8, 8});
  CHECK(torch::equal(max_pool2x2(wide.transpose(2, 3)), torch::max_pool2d(wide.transpose(2, 3), 2)));
  // A map smaller than the window: LibTorch's own error.
  CHECK_THROWS_WITH(max_pool2x2(torch::randn({1, 1, 1, 5})), Catch::Contains("Output size is too small"));
  // The stems' module: no parameters, traced as aten::max_pool2d.
  zoo::models::MaxPool2x2 pool;
  CHECK(pool->parameters().empty());
  auto traced = torch::jit::tracer::trace(
      {wide}, [&](const torch::jit::Stack& in) -> torch::jit::Stack { return {pool->forward(in[0].toTensor())}; },
      [](const torch::Tensor&) { return std::string(); });
  const auto graph = traced.first->graph->toString();
  CHECK(graph.find("aten::max_pool2d") != std::string::npos);
}

TEST_CASE("max_pool2x2x2: the same outputs and gradients as torch::max_pool3d, ties, NaN and odd sizes included",
          "[kernels]") {
  torch::manual_seed(2);
  for (const bool scalar : {false, true})
    for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
      std::optional<zoo::ops::ScalarOnly> plain;
      if (scalar) plain.emplace();
      INFO((scalar ? "plain loop" : "the CPU's kernel"));
      check_same(torch::randn({2, 3, 4, 6, 10}).to(type), "random", true);
      check_same(torch::randn({1, 2, 2, 4, 40}).to(type), "rows of two blocks of 8 windows and 4 more", true);
      check_same(torch::randn({2, 2, 8, 8, 8}).to(type), "the 3-D U-Net's maps, smaller", true);
      check_same(torch::randn({1, 2, 5, 7, 9}).to(type), "odd sizes: the last slice, row and column left out", true);
      check_same(torch::randn({3, 4, 4, 6}).to(type), "no batch axis", true);
      for (int64_t d = 2; d <= 3; ++d)
        for (int64_t h = 2; h <= 5; ++h)
          for (int64_t w = 2; w <= 18; ++w) check_same(torch::randn({2, 2, d, h, w}).to(type), "every width", true);
      check_same(torch::relu(torch::randn({2, 3, 4, 4, 6}) - 1).to(type), "ties at 0", true);
      check_same(torch::randint(0, 3, {2, 3, 4, 4, 6}).to(type), "ties everywhere", true);
      auto special = torch::randn({1, 2, 2, 2, 20}).to(type);
      special[0][0][1][0][3] = std::numeric_limits<double>::quiet_NaN();  // a NaN in the second slice
      special[0][0][0][1][2] = std::numeric_limits<double>::quiet_NaN();  // and one before it in the same window
      special[0][1][0][0][0] = std::numeric_limits<double>::quiet_NaN();  // the first element a NaN
      special[0][1].narrow(2, 8, 4).fill_(-std::numeric_limits<double>::infinity());  // windows of -inf only
      check_same(special, "NaN and -inf", true);
      // The maximum in each of the eight positions of a window gets the gradient.
      auto where = torch::zeros({1, 1, 2, 2, 16}).to(type);
      for (int64_t e = 0; e < 8; ++e) where[0][0][e / 4][(e / 2) % 2][2 * e + e % 2] = 1;
      check_same(where, "each position", true);
    }
  // The gradient lands on exactly one element per window; under create_graph it is differentiable again.
  auto x = torch::randn({2, 3, 4, 6, 6}, torch::kFloat64).requires_grad_(true);
  max_pool2x2x2(x).sum().backward();
  CHECK(x.grad().sum().item<double>() == 2 * 3 * 2 * 3 * 3);
  CHECK(x.grad().ne(0).sum().item<int64_t>() == 2 * 3 * 2 * 3 * 3);
  auto second = [](const torch::Tensor& t, bool fast) {
    const auto out = max_pool2x2x2(t * t, fast).pow(3).sum();
    const auto g = torch::autograd::grad({out}, {t}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    return torch::autograd::grad({g.pow(2).sum()}, {t})[0];
  };
  auto y = x.detach().clone().requires_grad_(true), z = x.detach().clone().requires_grad_(true);
  CHECK(torch::allclose(second(y, true), second(z, false), 1e-6, 1e-9));
  // Not contiguous: torch::max_pool3d (the same result); a bfloat16 input gives bfloat16 under autocast too.
  const auto v = torch::randn({2, 3, 4, 4, 6});
  CHECK(torch::equal(max_pool2x2x2(v.transpose(3, 4)), torch::max_pool3d(v.transpose(3, 4), 2)));
  CHECK_THROWS_WITH(max_pool2x2x2(torch::randn({1, 1, 1, 4, 4})), Catch::Contains("Output size is too small"));
  {
    zoo::ops::AutocastScope scope(torch::kCPU, torch::kBFloat16);
    const auto low = v.to(torch::kBFloat16);
    const auto pooled = max_pool2x2x2(low);
    CHECK(pooled.scalar_type() == torch::kBFloat16);
    CHECK(torch::equal(pooled.to(torch::kFloat32), torch::max_pool3d(low.to(torch::kFloat32), 2)));
  }
}

TEST_CASE("max_pool_with_switches and max_unpool: LibTorch's indices and unpooling, odd sizes, ties and bfloat16",
          "[kernels]") {
  torch::manual_seed(5);
  // Even and odd sizes, a plane narrower than 8 windows (the loops' spill and masked tails), ties (small integers).
  const std::vector<std::vector<int64_t>> shapes{{2, 3, 8, 10},    {1, 2, 7, 5},    {3, 1, 4, 34},
                                                 {2, 3, 6, 8, 10}, {1, 2, 5, 7, 9}, {2, 2, 4, 4, 4}};
  for (const bool vector : {true, false})
    for (const auto& shape : shapes)
      for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16})
        for (const bool ties : {false, true}) {
          std::optional<zoo::ops::ScalarOnly> plain;  // the loops without AVX2 too
          if (!vector) plain.emplace();
          const int64_t axes = static_cast<int64_t>(shape.size()) - 2;
          const auto base = ties ? torch::randint(0, 3, shape).to(torch::kFloat32) : torch::randn(shape);
          const auto x = base.to(type).requires_grad_(true);
          INFO(x.sizes() << " " << x.scalar_type() << (ties ? " with ties" : "") << (vector ? "" : ", scalar loops"));
          const auto [y, where] = zoo::ops::max_pool_with_switches(x, axes);
          REQUIRE(where.scalar_type() == torch::kUInt8);  // zoo's switches
          CHECK_FALSE(where.requires_grad());
          const auto size = x.sizes().slice(2);
          // LibTorch's pooling in float32 (it has no 3-D bfloat16 kernel): the same maxima, the same indices.
          const auto xf = x.detach().to(torch::kFloat32).requires_grad_(true);
          const auto [ye, indices] =
              axes == 2 ? torch::max_pool2d_with_indices(xf, 2, 2) : torch::max_pool3d_with_indices(xf, 2, 2);
          CHECK(torch::equal(y.to(torch::kFloat32), ye));
          CHECK(torch::equal(zoo::ops::switch_indices(where, size), indices));
          // Unpooling a new tensor of y's shape (the decoder's) to the pooled input's size: LibTorch's values, in y's
          // type, and the same gradient.
          const auto h = torch::randn(y.sizes()).to(type).requires_grad_(true);
          const auto u = zoo::ops::max_unpool(h, where, size);
          CHECK(u.scalar_type() == type);
          const auto hf = h.detach().to(torch::kFloat32).requires_grad_(true);
          const auto ue = axes == 2 ? torch::max_unpool2d(hf, indices, size)
                                    : torch::max_unpool3d(hf, indices, size, {2, 2, 2}, {0, 0, 0});
          REQUIRE(u.sizes() == ue.sizes());
          CHECK(torch::equal(u.to(torch::kFloat32), ue));
          const auto g = torch::randn(ue.sizes()).to(type);
          const auto gh = torch::autograd::grad({u}, {h}, {g})[0];
          const auto ge = torch::autograd::grad({ue}, {hf}, {g.to(torch::kFloat32)})[0];
          CHECK(torch::equal(gh.to(torch::kFloat32), ge));
          // The pooling's own gradient: LibTorch's.
          const auto gx = torch::autograd::grad({y}, {x}, {torch::ones_like(y)})[0];
          const auto gxe = torch::autograd::grad({ye}, {xf}, {torch::ones_like(ye)})[0];
          CHECK(torch::equal(gx.to(torch::kFloat32), gxe));
        }
}

TEST_CASE("max_unpool: second derivatives, LibTorch's indices where the loop does not run, and bad switches",
          "[kernels]") {
  torch::manual_seed(6);
  const auto x = torch::randn({2, 3, 6, 8});
  const auto [y, where] = zoo::ops::max_pool_with_switches(x, 2);
  // d/dh of |d sum(tanh(unpool(h)))/dh|^2 through the unpooling's backward (a gather), against LibTorch's.
  const auto indices = zoo::ops::switch_indices(where, {6, 8});
  auto penalty = [&](bool ours) {
    const auto h = y.detach().clone().requires_grad_(true);
    const auto u = ours ? zoo::ops::max_unpool(h, where, {6, 8}) : torch::max_unpool2d(h, indices, {6, 8});
    const auto gh = torch::autograd::grad({torch::tanh(u).sum()}, {h}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gh.pow(2).sum()}, {h})[0];
  };
  const auto expected = penalty(false);
  CHECK(zoo::test::max_abs(expected) > 0.1);
  CHECK(zoo::test::max_abs(penalty(true) - expected) < 1e-6);
  // fast = false, a non-contiguous input or a trace: LibTorch's pooling and int64 indices, which max_unpool takes.
  const auto [ys, idx] = zoo::ops::max_pool_with_switches(x, 2, /*fast=*/false);
  CHECK(idx.scalar_type() == torch::kInt64);
  CHECK(torch::equal(idx, indices));
  CHECK(torch::equal(zoo::ops::max_unpool(ys, idx, {6, 8}), zoo::ops::max_unpool(y, where, {6, 8})));
  const auto [yt, it] = zoo::ops::max_pool_with_switches(x.transpose(2, 3), 2);
  CHECK(it.scalar_type() == torch::kInt64);
  // 3-D bfloat16 through LibTorch: pooled and unpooled in float32, as LibTorch 1.13 has no such kernels.
  const auto v = torch::randn({1, 2, 4, 4, 4}).to(torch::kBFloat16);
  const auto [yv, iv] = zoo::ops::max_pool_with_switches(v, 3, false);
  CHECK(yv.scalar_type() == torch::kFloat32);
  CHECK(zoo::ops::max_unpool(yv.to(torch::kBFloat16), iv, {4, 4, 4}).scalar_type() == torch::kFloat32);
  // Switches that do not belong to the maps, or a size the maps do not pool from: one clear error each.
  CHECK_THAT(zoo::test::error_of([&] {
               zoo::ops::max_unpool(y, where.narrow(3, 0, 2), {6, 8});
             }),
             Catch::Contains("switches"));
  CHECK_THAT(zoo::test::error_of([&] {
               zoo::ops::max_unpool(y, where, {10, 8});
             }),
             Catch::Contains("do not pool from"));
}
