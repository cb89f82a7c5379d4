// conv3x3: the direct 3x3 convolution of small maps (the ODE-ResNet field) against torch::conv2d.
#include "ops/conv3x3.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <catch2/catch.hpp>

using zoo::ops::conv3x3;
using zoo::ops::Conv3x3Kernel;
using zoo::test::within_rounding;

namespace {

// torch::conv2d on x with `lead` channels of `value` in front (zero in the padding), as ConcatConv2d builds it.
torch::Tensor expected_conv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, int64_t lead,
                            double value) {
  auto in = x;
  if (lead > 0) {
    auto sizes = x.sizes().vec();
    sizes[1] = lead;
    in = torch::cat({torch::full(sizes, value, x.options()), x}, 1);
  }
  return torch::conv2d(in, w, b, 1, 1);
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

bool direct_here() {
  return zoo::ops::conv3x3_direct_available(torch::zeros({1, 1, 1, 1}), torch::zeros({1, 1, 3, 3}));
}

}  // namespace

TEST_CASE("conv3x3: outputs and all three gradients equal torch::conv2d, for any channels, lead and map size",
          "[kernels][ode]") {
  if (!direct_here()) {
    WARN("this CPU has no AVX2 + FMA: conv3x3 runs torch::conv2d here, its direct kernel is not tested");
    return;
  }
  torch::manual_seed(0);
  struct Shape {
    int64_t n, c, h, w, o, lead;
  };
  // 8-channel panels (o <= 8) and 16-channel ones with a partial last panel; 4-, 2- and 1-pixel blocks (w = 1 .. 9);
  // input channels not a multiple of 4 (the weight kernel's remainder); 0, 1 and 2 lead channels.
  for (const auto& s :
       {Shape{8, 8, 6, 6, 8, 1}, Shape{3, 5, 7, 9, 12, 0}, Shape{2, 20, 5, 3, 19, 2}, Shape{1, 1, 1, 1, 1, 0},
        Shape{2, 3, 4, 5, 7, 1}, Shape{1, 16, 2, 7, 33, 1}, Shape{4, 32, 6, 6, 32, 1}}) {
    INFO("x [" << s.n << ", " << s.c << ", " << s.h << ", " << s.w << "], " << s.o << " outputs, lead " << s.lead);
    const auto x = torch::randn({s.n, s.c, s.h, s.w}, torch::requires_grad());
    const auto w = torch::randn({s.o, s.c + s.lead, 3, 3}, torch::requires_grad());
    const auto b = torch::randn({s.o}, torch::requires_grad());
    const auto go = torch::randn({s.n, s.o, s.h, s.w});
    const double t = 0.375;
    const auto y = conv3x3(x, w, b, t, Conv3x3Kernel::direct);
    const auto r = expected_conv(x, w, b, s.lead, t);
    REQUIRE(y.sizes() == r.sizes());
    CHECK(y.is_contiguous());
    const double scale = std::max(1.0, r.abs().max().item<double>());
    CHECK(max_diff(y, r) < 1e-5 * scale);
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    const auto gr = torch::autograd::grad({r}, {x, w, b}, {go});
    for (int i = 0; i < 3; ++i) {
      INFO("gradient " << i);
      CHECK(g[i].sizes() == gr[i].sizes());
      CHECK(max_diff(g[i], gr[i]) < 1e-5 * std::max(1.0, gr[i].abs().max().item<double>()));
    }
    // Without a bias, and with only the weight or only the input asking for a gradient.
    const auto y0 = conv3x3(x.detach(), w, {}, t, Conv3x3Kernel::direct);
    CHECK(max_diff(y0, expected_conv(x.detach(), w.detach(), {}, s.lead, t)) < 1e-5 * scale);
    const auto gw = torch::autograd::grad({y0}, {w}, {go})[0];
    CHECK(max_diff(gw, gr[1]) < 1e-5 * std::max(1.0, gr[1].abs().max().item<double>()));
    const auto gx = torch::autograd::grad({conv3x3(x, w.detach(), {}, t, Conv3x3Kernel::direct)}, {x}, {go})[0];
    CHECK(max_diff(gx, gr[0]) < 1e-5 * std::max(1.0, gr[0].abs().max().item<double>()));
  }
}

TEST_CASE("conv3x3: a strided input, the lead channel's value, and no gradients", "[kernels][ode]") {
  if (!direct_here()) return;
  torch::manual_seed(1);
  const auto base = torch::randn({2, 6, 5, 8});
  const auto x = base.narrow(1, 1, 4).transpose(2, 3);  // [2, 4, 8, 5], neither contiguous nor channels-last
  const auto w = torch::randn({5, 5, 3, 3});
  torch::NoGradGuard no_grad;
  for (double t : {0.0, 1.0, -2.5}) {
    const auto y = conv3x3(x, w, {}, t, Conv3x3Kernel::direct);
    CHECK(max_diff(y, expected_conv(x, w, {}, 1, t)) < 1e-5 * 20);
    CHECK_FALSE(y.requires_grad());
  }
  // The lead channel's value is seen only where the 3x3 window covers the image: its weight alone, on x = 0,
  // gives t times the sum of the weight over the taps inside (4 at a corner, 6 at an edge, 9 inside).
  auto w_lead = torch::zeros({1, 2, 3, 3});
  w_lead.select(1, 0).fill_(1.0);
  const auto y = conv3x3(torch::zeros({1, 1, 4, 4}), w_lead, {}, 2.0, Conv3x3Kernel::direct);
  CHECK(y[0][0][0][0].item<double>() == 8.0);
  CHECK(y[0][0][0][1].item<double>() == 12.0);
  CHECK(y[0][0][1][1].item<double>() == 18.0);
}

TEST_CASE("conv3x3: second derivatives flow through the direct kernel's backward", "[kernels][ode]") {
  if (!direct_here()) return;
  torch::manual_seed(2);
  const auto x = torch::randn({2, 3, 4, 4}, torch::requires_grad());
  const auto w = torch::randn({4, 4, 3, 3}, torch::requires_grad());
  // A gradient penalty: d/dw of |dL/dx|^2, with L = sum(tanh(conv)).
  auto penalty = [&](Conv3x3Kernel k) {
    const auto y = conv3x3(x, w, {}, 0.5, k);
    const auto gx = torch::autograd::grad({torch::tanh(y).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto expected = penalty(Conv3x3Kernel::reference);
  const auto got = penalty(Conv3x3Kernel::direct);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK(max_diff(got, expected) < 1e-4 * std::max(1.0, expected.abs().max().item<double>()));
}

TEST_CASE("conv3x3: the bfloat16 direct kernel equals float64's convolution of the same bfloat16 values",
          "[kernels][ode][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: conv3x3 takes bfloat16 to LibTorch here, its bfloat16 kernel is not tested");
    return;
  }
  torch::manual_seed(5);
  struct Shape {
    int64_t n, c, h, w, o, lead;
  };
  // 16- and 32-channel panels with partial last ones (o = 1, 12, 19, 40); 6-, 4-, 2- and 1-pixel blocks (w = 1 .. 9);
  // odd input channel counts (a zero channel completes the last pair), odd widths (the weight gradient's pixel pairs
  // end on a zero pixel), 0, 1 and 2 lead channels; the ODE-ResNet field's [64, 32, 6, 6] with its time channel.
  for (const auto& s : {Shape{4, 32, 6, 6, 32, 1}, Shape{3, 5, 7, 9, 12, 0}, Shape{2, 20, 5, 3, 19, 2},
                        Shape{1, 1, 1, 1, 1, 0}, Shape{2, 3, 4, 5, 40, 1}, Shape{64, 32, 6, 6, 32, 1}}) {
    INFO("x [" << s.n << ", " << s.c << ", " << s.h << ", " << s.w << "], " << s.o << " outputs, lead " << s.lead);
    const auto x = torch::randn({s.n, s.c, s.h, s.w}).to(torch::kBFloat16).requires_grad_();
    const auto w = torch::randn({s.o, s.c + s.lead, 3, 3}, torch::requires_grad());
    const auto b = torch::randn({s.o}, torch::requires_grad());
    const auto go = torch::randn({s.n, s.o, s.h, s.w}).to(torch::kBFloat16);
    const double t = 0.375;  // exact in bfloat16
    torch::Tensor y;
    {
      zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);  // a float32 weight under autocast
      y = conv3x3(x, w, b, t, Conv3x3Kernel::direct);
    }
    REQUIRE(y.scalar_type() == torch::kBFloat16);
    CHECK(y.is_contiguous());
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    CHECK(g[0].scalar_type() == torch::kBFloat16);
    CHECK(g[1].scalar_type() == torch::kFloat32);
    // The exact values: the operands as the kernel sees them (the weight rounded to bfloat16), in float64.
    const auto xd = x.detach().to(torch::kFloat64).requires_grad_();
    const auto wd = w.detach().to(torch::kBFloat16).to(torch::kFloat64).requires_grad_();
    const auto bd = b.detach().to(torch::kFloat64).requires_grad_();
    const auto r = expected_conv(xd, wd, bd, s.lead, t);
    const auto gr = torch::autograd::grad({r}, {xd, wd, bd}, {go.to(torch::kFloat64)});
    // Output and input gradient: float32 sums rounded once to bfloat16 (half a unit in the last place, 2^-8 of the
    // value, plus the float32 sum's own error). The weight gradient stays float32: products of bfloat16 are exact in
    // float32, only the sum's order rounds.
    CHECK(within_rounding(y, r, 1.0 / 256));
    CHECK(within_rounding(g[0], gr[0], 1.0 / 256));
    CHECK(within_rounding(g[1], gr[1], 0.0));
    CHECK(within_rounding(g[2], gr[2], 0.0));
    // The bias's gradient alone (summed by LibTorch, not while the weight gradient's pass reads go) and the input's
    // alone: the same values as with all three.
    torch::Tensor y_bias, y_input;
    {
      zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
      y_bias = conv3x3(x.detach(), w.detach(), b, t, Conv3x3Kernel::direct);
      y_input = conv3x3(x, w.detach(), b.detach(), t, Conv3x3Kernel::direct);
    }
    CHECK(max_diff(torch::autograd::grad({y_bias}, {b}, {go})[0], g[2]) <
          1e-5 * std::max(1.0, g[2].abs().max().item<double>()));
    CHECK(torch::equal(torch::autograd::grad({y_input}, {x}, {go})[0], g[0]));
    // Rounding happened (the test would not see a kernel that widened to float32 and returned float32 values).
    CHECK(max_diff(y.to(torch::kFloat64), r) > 0);
  }
}

TEST_CASE("conv3x3: the bfloat16 kernel's other operands: bfloat16 weights, no bias, strides, second derivatives",
          "[kernels][ode][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  zoo::ops::detail::AmxOverride no_amx(false);  // AVX512-BF16 without AMX: the bfloat16 direct kernel's CPUs
  torch::manual_seed(6);
  const auto base = torch::randn({2, 6, 5, 8}).to(torch::kBFloat16);
  const auto x = base.narrow(1, 1, 4).transpose(2, 3);             // [2, 4, 8, 5], neither contiguous nor channels-last
  const auto w = torch::randn({5, 5, 3, 3}).to(torch::kBFloat16);  // bf16 weights: no autocast needed
  const auto y = conv3x3(x, w, {}, -2.5);
  CHECK(y.scalar_type() == torch::kBFloat16);
  CHECK(zoo::ops::conv3x3_direct(x, w));
  const auto r = expected_conv(x.to(torch::kFloat64), w.to(torch::kFloat64), {}, 1, -2.5);
  CHECK(max_diff(y.to(torch::kFloat64), r) < 1.0 / 128 * r.abs().max().item<double>());
  // A float32 weight outside autocast is a mix LibTorch's convolution refuses too: not the direct kernel.
  CHECK_FALSE(zoo::ops::conv3x3_direct_available(x, w.to(torch::kFloat32)));
  // A gradient penalty through the bfloat16 kernel's backward: recomputed through torch::conv2d in bfloat16.
  const auto xg = torch::randn({2, 3, 4, 4}).to(torch::kBFloat16).requires_grad_();
  const auto wg = torch::randn({4, 4, 3, 3}).to(torch::kBFloat16).requires_grad_();
  auto penalty = [&](Conv3x3Kernel k) {
    const auto out = conv3x3(xg, wg, {}, 0.5, k);
    const auto gx = torch::autograd::grad({torch::tanh(out).sum()}, {xg}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.to(torch::kFloat32).pow(2).sum()}, {wg})[0];
  };
  const auto expected = penalty(Conv3x3Kernel::reference).to(torch::kFloat32);
  const auto got = penalty(Conv3x3Kernel::direct).to(torch::kFloat32);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK(max_diff(got, expected) < 0.05 * expected.abs().max().item<double>());
  // On a CPU with AMX bfloat16 goes to LibTorch (oneDNN's AMX kernels) too, to the bit what Conv3x3Kernel::library
  // gives; a small problem under autocast still widens for the float32 direct kernel.
  {
    zoo::ops::detail::AmxOverride amx(true);
    CHECK(zoo::ops::detail::cpu_has_amx_bf16());
    CHECK_FALSE(zoo::ops::conv3x3_direct(x, w));
    CHECK(zoo::ops::conv3x3_direct_available(x, w));  // Conv3x3Kernel::direct still runs it
    const auto y_amx = conv3x3(x, w, {}, -2.5);
    CHECK(torch::equal(y_amx, conv3x3(x, w, {}, -2.5, Conv3x3Kernel::library)));
    CHECK(max_diff(y_amx.to(torch::kFloat64), r) < 1.0 / 128 * r.abs().max().item<double>());
    const auto field = torch::randn({64, 32, 6, 6}).to(torch::kBFloat16);  // the ODE-ResNet field's maps
    const auto wf = torch::randn({32, 33, 3, 3}) * 0.1;
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK(torch::equal(conv3x3(field, wf, {}, 0.5), conv3x3(field, wf, {}, 0.5, Conv3x3Kernel::library)));
    const auto small = torch::randn({8, 8, 6, 6}).to(torch::kBFloat16);  // ode-euler-32's: widened to float32
    const bool widened = conv3x3(small, torch::randn({8, 9, 3, 3}), {}, 0.5).scalar_type() == torch::kFloat32;
    CHECK(widened == direct_here());
  }
  {
    zoo::ops::detail::AmxOverride amx(false);
    CHECK_FALSE(zoo::ops::detail::cpu_has_amx_bf16());
  }
  // Without AVX512-BF16 (WithoutBf16Kernel, and ScalarOnly, stand in for such a CPU) bfloat16 goes to LibTorch.
  {
    zoo::ops::detail::WithoutBf16Kernel library;
    CHECK_FALSE(zoo::ops::detail::cpu_has_avx512_bf16());
    zoo::ops::detail::AmxOverride amx(true);
    CHECK_FALSE(zoo::ops::detail::cpu_has_amx_bf16());  // no AMX without AVX512-BF16
    CHECK_FALSE(zoo::ops::conv3x3_direct(x, w));
    CHECK(zoo::ops::cpu_has_avx2_fma() == direct_here());  // the float32 kernels stay
    CHECK(max_diff(conv3x3(x, w, {}, -2.5).to(torch::kFloat64), r) < 1.0 / 128 * r.abs().max().item<double>());
  }
  CHECK(zoo::ops::detail::cpu_has_avx512_bf16());  // back when it ends
  zoo::ops::ScalarOnly scalar;
  CHECK_FALSE(zoo::ops::detail::cpu_has_avx512_bf16());
  CHECK_FALSE(zoo::ops::conv3x3_direct(x, w));
  CHECK(max_diff(conv3x3(x, w, {}, -2.5).to(torch::kFloat64), r) < 1.0 / 128 * r.abs().max().item<double>());
}

TEST_CASE("conv3x3: which kernel runs, and errors", "[kernels][ode]") {
  const auto x = torch::randn({8, 8, 6, 6});
  const auto w = torch::randn({8, 9, 3, 3});
  // The ODE-ResNet field of ode-euler-32 runs the direct kernel; a 64-channel map of 64 images does not.
  CHECK(zoo::ops::conv3x3_direct(x, w) == direct_here());
  CHECK_FALSE(zoo::ops::conv3x3_direct(torch::randn({64, 64, 6, 6}), torch::randn({64, 65, 3, 3})));
  CHECK_FALSE(zoo::ops::conv3x3_direct(x.to(torch::kFloat64), w.to(torch::kFloat64)));
  // Double precision goes through torch::conv2d: the concatenation exactly, the library path to rounding.
  const auto xd = x.to(torch::kFloat64), wd = w.to(torch::kFloat64);
  CHECK(max_diff(conv3x3(xd, wd, {}, 0.5, Conv3x3Kernel::reference), expected_conv(xd, wd, {}, 1, 0.5)) == 0.0);
  CHECK(max_diff(conv3x3(xd, wd, {}, 0.5), expected_conv(xd, wd, {}, 1, 0.5)) < 1e-12);
  CHECK_THROWS_WITH(conv3x3(xd, wd, {}, 0.5, Conv3x3Kernel::direct),
                    Catch::Contains("needs float32 CPU tensors") && Catch::Contains("Conv3x3Kernel::automatic"));
  CHECK_THROWS_WITH(conv3x3(x, torch::randn({8, 9, 5, 5}), {}),
                    Catch::Contains("expects a weight [O, lead + 8, 3, 3]"));
  CHECK_THROWS_WITH(conv3x3(x, torch::randn({8, 7, 3, 3}), {}), Catch::Contains("expects a weight"));
  CHECK_THROWS_WITH(conv3x3(x, w, torch::randn({7})), Catch::Contains("expects a bias [8]"));
  CHECK_THROWS_WITH(conv3x3(x.flatten(2), w, {}), Catch::Contains("expects x [N, C, H, W]"));
  // An empty batch gives an empty output.
  CHECK(conv3x3(torch::zeros({0, 8, 6, 6}), w, {}, 0.0).sizes() == torch::IntArrayRef({0, 8, 6, 6}));
}

TEST_CASE("conv3x3: the library path (x alone, plus the lead channels' share) equals the concatenation",
          "[kernels][ode]") {
  torch::manual_seed(3);
  const auto opts = torch::TensorOptions(torch::kFloat64).requires_grad(true);
  struct Shape {
    int64_t n, c, h, w, o, lead;
  };
  for (const auto& s : {Shape{4, 32, 7, 7, 32, 1}, Shape{2, 5, 1, 6, 3, 2}, Shape{3, 4, 5, 5, 6, 0}}) {
    for (double t : {0.0, 0.7}) {
      INFO("x [" << s.n << ", " << s.c << ", " << s.h << ", " << s.w << "], lead " << s.lead << ", value " << t);
      const auto x = torch::randn({s.n, s.c, s.h, s.w}, opts);
      const auto w = torch::randn({s.o, s.c + s.lead, 3, 3}, opts);
      const auto b = torch::randn({s.o}, opts);
      const auto go = torch::randn({s.n, s.o, s.h, s.w}, torch::kFloat64);
      const auto y = conv3x3(x, w, b, t, Conv3x3Kernel::library);
      const auto r = expected_conv(x, w, b, s.lead, t);
      REQUIRE(y.sizes() == r.sizes());
      CHECK(max_diff(y, r) < 1e-12 * r.abs().max().item<double>());
      const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
      const auto gr = torch::autograd::grad({r}, {x, w, b}, {go});
      for (int i = 0; i < 3; ++i) {
        INFO("gradient " << i);
        CHECK(max_diff(g[i], gr[i]) < 1e-12 * std::max(1.0, gr[i].abs().max().item<double>()));
      }
    }
  }
  // The lead channels' weights get their gradient also at value 0 (zero, as the concatenation's: Adam still steps
  // them by their moments), and second derivatives flow: a gradient penalty as above.
  const auto x = torch::randn({2, 3, 4, 4}, opts);
  const auto w = torch::randn({4, 4, 3, 3}, opts);
  const auto g0 = torch::autograd::grad({conv3x3(x, w, {}, 0.0, Conv3x3Kernel::library).sum()}, {w})[0];
  REQUIRE(g0.defined());
  CHECK(g0.select(1, 0).abs().max().item<double>() == 0.0);
  auto penalty = [&](Conv3x3Kernel k) {
    const auto y = conv3x3(x, w, {}, 0.5, k);
    const auto gx = torch::autograd::grad({torch::tanh(y).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto expected = penalty(Conv3x3Kernel::reference);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK(max_diff(penalty(Conv3x3Kernel::library), expected) < 1e-12 * expected.abs().max().item<double>());
  // A trace records the concatenation (torchdiffeq's ConcatConv2d) and one convolution, as exports always had it.
  const auto big = torch::randn({64, 32, 7, 7});
  const auto wide = torch::randn({32, 33, 3, 3});
  REQUIRE_FALSE(zoo::ops::conv3x3_direct(big, wide));
  auto traced = torch::jit::tracer::trace(
      {big},
      [&](const torch::jit::Stack& in) -> torch::jit::Stack { return {conv3x3(in[0].toTensor(), wide, {}, 0.5)}; },
      [](const torch::Tensor&) { return std::string(); });
  const auto graph = traced.first->graph->toString();
  CHECK(graph.find("aten::cat") != std::string::npos);
  CHECK(graph.find("aten::ones_like") == std::string::npos);
}

TEST_CASE("conv3x3: under bfloat16 autocast the library path gives a bfloat16 output close to float32's",
          "[kernels][ode][autocast]") {
  torch::manual_seed(4);
  const auto x = torch::randn({8, 32, 7, 7}, torch::requires_grad());
  const auto w = (torch::randn({32, 33, 3, 3}) * 0.05).requires_grad_();
  const auto b = torch::randn({32}, torch::requires_grad());
  const auto r = expected_conv(x, w, b, 1, 0.25);
  torch::Tensor y;
  {
    zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
    y = conv3x3(x, w, b, 0.25, Conv3x3Kernel::library);
  }
  CHECK(y.scalar_type() == torch::kBFloat16);
  // bfloat16 keeps 8 bits of mantissa: each product and the sum of 297 of them to about 1% of the output's scale.
  CHECK(max_diff(y.to(torch::kFloat32), r) < 0.02 * r.abs().max().item<double>());
  const auto g = torch::autograd::grad({y.to(torch::kFloat32).sum()}, {w})[0];
  const auto gr = torch::autograd::grad({r.sum()}, {w})[0];
  CHECK(g.scalar_type() == torch::kFloat32);
  CHECK(max_diff(g, gr) < 0.02 * gr.abs().max().item<double>());
}
