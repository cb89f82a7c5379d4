// conv_transpose: a transposed convolution whose kernel equals its stride as one matrix product per item, against
// LibTorch's transposed convolutions in float64, and which implementation runs.
#include "ops/conv_transpose.h"
#include "helpers.h"
#include "models/conv_transpose.h"
#include "ops/autocast.h"

#include <catch2/catch.hpp>

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

// Named, not anonymous: the test sources are compiled together in unity builds, where other files' helpers share
// these names.
namespace conv_transpose_test {

using torch::Tensor;

/// LibTorch's transposed convolution of x's number of spatial axes, kernel = stride (the weight's sizes).
Tensor library(const Tensor& x, const Tensor& w, const Tensor& b) {
  const auto k = w.sizes().slice(2);
  if (x.dim() == 3) return torch::conv_transpose1d(x, w, b, k);
  if (x.dim() == 4) return torch::conv_transpose2d(x, w, b, k);
  return torch::conv_transpose3d(x, w, b, k);
}

bool ran_product(const Tensor& y) {
  return y.grad_fn() && y.grad_fn()->name().find("ConvTransposeFunction") != std::string::npos;
}

/// A case: x [n, c, spatial...], the kernel (= stride), o outputs, with or without a bias.
struct Case {
  std::vector<int64_t> x, kernel;
  int64_t o;
  bool bias;
};

std::string describe(const Case& c) {
  return fmt::format("x [{}], kernel = stride [{}], {} outputs{}", fmt::join(c.x, ", "), fmt::join(c.kernel, ", "), c.o,
                     c.bias ? "" : ", no bias");
}

/// x, weight, bias (undefined without one) of a case, float32, requiring gradients.
std::vector<Tensor> operands(const Case& c) {
  std::vector<int64_t> w{c.x[1], c.o};
  w.insert(w.end(), c.kernel.begin(), c.kernel.end());
  return {torch::randn(c.x, torch::requires_grad()), torch::randn(w, torch::requires_grad()),
          c.bias ? torch::randn({c.o}, torch::requires_grad()) : Tensor()};
}

/// The gradients of y with respect to `operands` (x, the weight and the bias where there is one) and of e, their
/// reference, with respect to `references`, for the same output gradient go.
std::pair<std::vector<Tensor>, std::vector<Tensor>> gradients(const Tensor& y, const std::vector<Tensor>& operands,
                                                              const Tensor& e, const std::vector<Tensor>& references,
                                                              const Tensor& go) {
  std::vector<Tensor> wrt, wrt_e;
  for (size_t i = 0; i < operands.size(); ++i)
    if (operands[i].defined()) wrt.push_back(operands[i]), wrt_e.push_back(references[i]);
  return {torch::autograd::grad({y}, wrt, {go}), torch::autograd::grad({e}, wrt_e, {go.to(e.scalar_type())})};
}

Tensor wide(const Tensor& t) { return t.defined() ? t.detach().to(torch::kFloat64).requires_grad_(true) : t; }

// U-Net's 2x2 and 2x2x2 (the two-row interleave), other kernels on some axes (the general one), 1-D, items of one
// pixel, channels of one.
const std::vector<Case> kCases{{{2, 6, 5, 7}, {2, 2}, 4, true},
                               {{3, 4, 3, 4, 5}, {2, 2, 2}, 3, true},
                               {{1, 5, 6}, {3}, 2, false},
                               {{2, 3, 4, 3}, {3, 1}, 5, true},
                               {{2, 2, 2, 3, 2}, {1, 2, 3}, 2, false},
                               {{4, 1, 1, 1}, {2, 2}, 1, true},
                               {{1, 8, 2, 2, 2}, {2, 2, 2}, 16, true},
                               {{2, 3, 9}, {2}, 6, true}};

}  // namespace conv_transpose_test

using namespace conv_transpose_test;  // NOLINT(google-build-using-namespace): this file's own helpers

TEST_CASE("conv_transpose: a kernel equal to its stride, output and all three gradients equal float64's, 1-D to 3-D",
          "[kernels][conv_transpose]") {
  torch::manual_seed(0);
  for (const auto& c : kCases) {
    INFO(describe(c));
    const auto ops = operands(c);
    const auto &x = ops[0], &w = ops[1], &b = ops[2];
    const auto y = zoo::ops::conv_transpose(x, w, b, w.sizes().slice(2));
    CHECK(ran_product(y));
    const auto x64 = wide(x), w64 = wide(w), b64 = wide(b);
    const auto e = library(x64, w64, b64);
    REQUIRE(y.sizes() == e.sizes());
    CHECK(y.scalar_type() == torch::kFloat32);
    CHECK(y.is_contiguous());
    // Sums of C float32 products (the output, x's gradient) and of N D H W (the weight's): as close to float64 as
    // float32 sums are.
    CHECK(zoo::test::max_rel(y, e) < 1e-5);
    const auto go = torch::randn(e.sizes());
    const auto [g, ge] = gradients(y, {x, w, b}, e, {x64, w64, b64}, go);
    for (size_t i = 0; i < g.size(); ++i) {
      INFO("gradient " << i);
      CHECK(g[i].scalar_type() == torch::kFloat32);
      CHECK(zoo::test::max_rel(g[i], ge[i]) < 1e-5);
    }
    // float64 operands: the same product in float64.
    const auto y64 = zoo::ops::conv_transpose(x64, w64, b64, w.sizes().slice(2));
    CHECK(ran_product(y64));
    CHECK(zoo::test::max_rel(y64, e) < 1e-12);
  }
}

TEST_CASE(
    "conv_transpose: non-contiguous x, the gradient of x or the weight alone, no items, the same bits at 1 and 2 "
    "threads",
    "[kernels][conv_transpose]") {
  torch::manual_seed(1);
  const auto w = torch::randn({6, 4, 2, 2}), b = torch::randn({4});
  // A channels-last x and a slice.
  const auto x = torch::randn({3, 6, 10, 12}).contiguous(torch::MemoryFormat::ChannelsLast);
  const auto slice = torch::randn({3, 6, 10, 24}).slice(3, 0, 24, 2);
  for (const auto& in : {x, slice}) {
    const auto y = zoo::ops::conv_transpose(in, w, b, 2);
    CHECK(zoo::test::max_rel(y, library(in.to(torch::kFloat64), w.to(torch::kFloat64), b.to(torch::kFloat64))) < 1e-5);
  }
  // Only the weight wants a gradient; then only x.
  const auto xr = x.detach().requires_grad_(true), wr = w.clone().requires_grad_(true);
  const auto gw = torch::autograd::grad({zoo::ops::conv_transpose(x, wr, b, 2).sum()}, {wr})[0];
  const auto gx = torch::autograd::grad({zoo::ops::conv_transpose(xr, w, b, 2).sum()}, {xr})[0];
  const auto ew = torch::autograd::grad({library(x, wr, b).sum()}, {wr})[0];
  const auto ex = torch::autograd::grad({library(xr, w, b).sum()}, {xr})[0];
  CHECK(zoo::test::max_rel(gw, ew) < 1e-5);
  CHECK(zoo::test::max_rel(gx, ex) < 1e-5);
  // No items: an empty output and empty or zero gradients, as LibTorch's.
  const auto none = torch::randn({0, 6, 10, 12}, torch::requires_grad()), wn = w.clone().requires_grad_(true);
  const auto yn = zoo::ops::conv_transpose(none, wn, b, 2);
  CHECK(yn.sizes() == torch::IntArrayRef{0, 4, 20, 24});
  const auto gn = torch::autograd::grad({yn.sum()}, {none, wn});
  CHECK(gn[0].sizes() == none.sizes());
  CHECK(torch::equal(gn[1], torch::zeros_like(w)));
  // The interleaving is split over (item, channel) pairs and the products are LibTorch's: the same bits at any
  // thread count.
  const auto threads = at::get_num_threads();
  auto run = [&](int n) {
    at::set_num_threads(n);
    const auto xg = x.detach().requires_grad_(true), wg = w.clone().requires_grad_(true);
    const auto bg = b.clone().requires_grad_(true);
    const auto y = zoo::ops::conv_transpose(xg, wg, bg, 2);
    auto g = torch::autograd::grad({y}, {xg, wg, bg}, {torch::ones_like(y)});
    g.push_back(y);
    return g;
  };
  const auto one = run(1), two = run(2);
  at::set_num_threads(threads);
  for (size_t i = 0; i < one.size(); ++i) CHECK(torch::equal(one[i], two[i]));
}

TEST_CASE("conv_transpose: second derivatives through its backward", "[kernels][conv_transpose]") {
  torch::manual_seed(2);
  const auto x = torch::randn({2, 3, 4, 5}, torch::requires_grad());
  const auto w = torch::randn({3, 2, 2, 2}, torch::requires_grad()), b = torch::randn({2}, torch::requires_grad());
  // A gradient penalty: d/dw of |dL/dx|^2, with L = sum(tanh(y)).
  auto penalty = [&](bool ours) {
    const auto y = ours ? zoo::ops::conv_transpose(x, w, b, 2) : library(x, w, b);
    CHECK(ran_product(y) == ours);
    const auto gx = torch::autograd::grad({torch::tanh(y).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto expected = penalty(false), got = penalty(true);
  CHECK(zoo::test::max_abs(expected) > 0.1);
  CHECK(zoo::test::max_rel(got, expected) < 1e-5);
}

TEST_CASE("conv_transpose: under bf16-mixed, autocast's bfloat16 convolution as one product",
          "[kernels][conv_transpose][precision]") {
  torch::manual_seed(3);
  for (const auto& c : kCases) {
    INFO(describe(c));
    const auto ops = operands(c);
    const auto &x = ops[0], &w = ops[1], &b = ops[2];
    Tensor y;
    {
      zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
      y = zoo::ops::conv_transpose(x, w, b, w.sizes().slice(2));
    }
    CHECK(ran_product(y));
    CHECK(y.scalar_type() == torch::kBFloat16);  // autocast's type for a convolution
    // The exact convolution of the bfloat16-rounded operands (what autocast computes with), bias included.
    const auto x64 = zoo::test::bfloat16_in_float64(x).requires_grad_(true);
    const auto w64 = zoo::test::bfloat16_in_float64(w).requires_grad_(true);
    const auto b64 = c.bias ? zoo::test::bfloat16_in_float64(b).requires_grad_(true) : Tensor();
    const auto e = library(x64, w64, b64);
    CHECK(zoo::test::within_rounding(y, e, std::ldexp(1.0, -8)));  // float32 sums rounded once
    // The gradients reach the float32 x, weight and bias in float32: x's and the weight's as float32 sums of the
    // bfloat16 gradient's products rounded once to bfloat16, the bias's kept in float32.
    const auto go = torch::randn(e.sizes()).to(torch::kBFloat16);
    const auto [g, ge] = gradients(y, {x, w, b}, e, {x64, w64, b64}, go);
    for (size_t i = 0; i < g.size(); ++i) {
      INFO("gradient " << i);
      CHECK(g[i].scalar_type() == torch::kFloat32);
      CHECK(zoo::test::within_rounding(g[i], ge[i], i < 2 ? std::ldexp(1.0, -8) : 0.0));
    }
  }
  // A bfloat16 x is taken as it is; a float64 one is not autocast's to cast, and LibTorch's rule decides.
  zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
  const auto w = torch::randn({4, 3, 2, 2});
  CHECK(ran_product(
      zoo::ops::conv_transpose(torch::randn({1, 4, 3, 3}).to(torch::kBFloat16), w.requires_grad_(true), {}, 2)));
  CHECK_FALSE(zoo::ops::conv_transpose_by_product(torch::randn({1, 4, 3, 3}, zoo::test::kF64), w, {}, 2, 0, 0, 1, 1));
}

TEST_CASE("conv_transpose: which implementation runs", "[kernels][conv_transpose]") {
  const auto x = torch::randn({1, 4, 3, 3}), w = torch::randn({4, 2, 2, 2}), b = torch::randn({2});
  auto ours = [&](const Tensor& xs, const Tensor& ws, const Tensor& bs, torch::IntArrayRef stride,
                  torch::IntArrayRef padding = 0, torch::IntArrayRef output_padding = 0, int64_t groups = 1,
                  torch::IntArrayRef dilation = 1) {
    return zoo::ops::conv_transpose_by_product(xs, ws, bs, stride, padding, output_padding, groups, dilation);
  };
  CHECK(ours(x, w, b, 2));
  CHECK(ours(x, w, {}, {2, 2}));
  CHECK(ours(x, torch::randn({4, 2, 3, 1}), b, {3, 1}));
  CHECK_FALSE(ours(x, w, b, 1));                                    // overlapping taps
  CHECK_FALSE(ours(x, torch::randn({4, 2, 4, 4}), b, 2));           // a 4x4 kernel of stride 2 (the VAE's decoder)
  CHECK_FALSE(ours(x, w, b, 2, 1));                                 // padding
  CHECK_FALSE(ours(x, w, b, 2, 0, 1));                              // output padding
  CHECK_FALSE(ours(x, torch::randn({4, 1, 2, 2}), b, 2, 0, 0, 2));  // groups
  CHECK_FALSE(ours(x, w, b, 2, 0, 0, 1, 2));                        // dilation
  CHECK_FALSE(ours(x, w.to(torch::kFloat64), b, 2));                // mixed types: LibTorch's error
  CHECK_FALSE(ours(x.to(torch::kHalf), w.to(torch::kHalf), b.to(torch::kHalf), 2));
  CHECK_FALSE(ours(torch::randn({1, 4, 3, 3, 3, 3}), torch::randn({4, 2, 2, 2, 2, 2}), b, 2));  // no 4-D
  // Mixed types reach LibTorch, whose message names them.
  CHECK_THROWS(zoo::ops::conv_transpose(x, w.to(torch::kFloat64), b, 2));
}

TEST_CASE("conv_transpose: a trace records LibTorch's transposed convolution", "[kernels][conv_transpose]") {
  const auto w = torch::randn({4, 2, 2, 2}), b = torch::randn({2});
  auto traced = torch::jit::tracer::trace(
      {torch::randn({1, 4, 3, 3})},
      [&](torch::jit::Stack in) -> torch::jit::Stack { return {zoo::ops::conv_transpose(in[0].toTensor(), w, b, 2)}; },
      [](const torch::autograd::Variable&) { return std::string(); }, false);
  const auto graph = traced.first->graph->toString();
  CHECK(graph.find("aten::_convolution") != std::string::npos);
  CHECK(graph.find("ConvTransposeFunction") == std::string::npos);
}

TEST_CASE("conv_transpose: models::ConvTranspose2d/3d are torch::nn's with the product where it applies",
          "[kernels][conv_transpose]") {
  torch::manual_seed(4);
  namespace nn = torch::nn;
  zoo::models::ConvTranspose2d up2(nn::ConvTranspose2dOptions(6, 3, 2).stride(2));
  zoo::models::ConvTranspose3d up3(nn::ConvTranspose3dOptions(4, 2, 2).stride(2));
  // The same parameters under the same names, and the same printout, as torch.nn's.
  CHECK(zoo::test::parameter_names(*up2) == std::vector<std::string>{"weight", "bias"});
  std::ostringstream printed;
  printed << *up3;
  CHECK(printed.str() == "torch::nn::ConvTranspose3d(4, 2, kernel_size=[2, 2, 2], stride=[2, 2, 2])");
  const auto x2 = torch::randn({2, 6, 5, 4}), x3 = torch::randn({2, 4, 3, 2, 3});
  const auto y2 = up2->forward(x2), y3 = up3->forward(x3);
  CHECK(ran_product(y2));
  CHECK(ran_product(y3));
  CHECK(zoo::test::max_rel(y2, library(x2.to(torch::kFloat64), up2->weight.to(torch::kFloat64),
                                       up2->bias.to(torch::kFloat64))) < 1e-5);
  CHECK(zoo::test::max_rel(y3, library(x3.to(torch::kFloat64), up3->weight.to(torch::kFloat64),
                                       up3->bias.to(torch::kFloat64))) < 1e-5);
  // An output size (odd sizes after a pooling) and options the product does not take run torch::nn's forward.
  nn::ConvTranspose2d theirs(nn::ConvTranspose2dOptions(6, 3, 2).stride(2));
  theirs->weight.data().copy_(up2->weight.data());
  theirs->bias.data().copy_(up2->bias.data());
  const std::vector<int64_t> size{11, 9};
  CHECK(torch::equal(up2->forward(x2, size), theirs->forward(x2, size)));
  for (auto options : {nn::ConvTranspose2dOptions(6, 3, 2).stride(2).padding(1),
                       nn::ConvTranspose2dOptions(6, 3, 3).stride(2), nn::ConvTranspose2dOptions(6, 3, 2)}) {
    zoo::models::ConvTranspose2d a(options);
    nn::ConvTranspose2d b(options);
    b->weight.data().copy_(a->weight.data());
    b->bias.data().copy_(a->bias.data());
    CHECK(torch::equal(a->forward(x2), b->forward(x2)));
  }
}
