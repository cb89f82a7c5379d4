// conv_weight_gradient: a bfloat16 2-D or 3-D convolution's weight gradient by zoo's dot products
// (conv_bf16_weight_gradient) and on AMX tiles, against float64's gradient of the same bfloat16 values; autocast's
// conv2d rule, which runs the dot products for narrow layers on small maps (without AMX) and the tiles (with AMX), and
// its conv3d rule, which runs them for strided convolutions on CPUs with AMX, LibTorch's convolution (oneDNN)
// everywhere else.
#include "ops/conv_weight_gradient.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <catch2/catch.hpp>

#include <array>
#include <functional>
#include <random>
#include <string>

using zoo::test::within_rounding;

namespace {

bool ran_rule(const torch::Tensor& y) {
  return y.grad_fn() && y.grad_fn()->name().find("ConvOwnWeightGradientFunction") != std::string::npos;
}

/// A convolution of x, w and b (undefined: none) with the geometry under test, run through the dispatcher.
using Conv = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;

/// The rule against autocast's own (as on a CPU without AVX512-BF16), with and without a bias, for a bfloat16 and a
/// float32 input x_sizes and weight w_sizes: the output and the input gradient the same bits (oneDNN's both ways),
/// the weight gradient in float32 within `rounding` of float64's on the same bfloat16 values (oneDNN's within one
/// bfloat16 rounding), the bias gradient summed in float32 and not rounded to bfloat16.
void check_against_autocast(const std::vector<int64_t>& x_sizes, const std::vector<int64_t>& w_sizes, const Conv& conv,
                            double rounding) {
  const auto f64 = [](const torch::Tensor& t) { return zoo::test::bfloat16_in_float64(t); };
  for (const bool with_bias : {false, true}) {
    for (const bool float32_input : {false, true}) {
      INFO("bias " << with_bias << ", float32 input " << float32_input);
      auto x = torch::randn(x_sizes);
      if (!float32_input) x = x.to(torch::kBFloat16);
      x.requires_grad_();
      const auto w = (torch::randn(w_sizes) * 0.1).requires_grad_();
      const auto b = with_bias ? torch::randn({w_sizes[0]}, torch::requires_grad()) : torch::Tensor();
      torch::Tensor go;
      auto run = [&](bool rule) {
        torch::Tensor y;
        {
          zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
          c10::optional<zoo::ops::detail::WithoutBf16Kernel> libtorch;
          if (!rule) libtorch.emplace();  // on a CPU without AVX512-BF16: autocast's rule
          y = conv(x, w, b);
        }
        CHECK(ran_rule(y) == rule);
        if (!go.defined()) go = torch::randn(y.sizes()).to(torch::kBFloat16);
        auto inputs = with_bias ? std::vector<torch::Tensor>{x, w, b} : std::vector<torch::Tensor>{x, w};
        auto g = torch::autograd::grad({y}, inputs, {go});
        g.insert(g.begin(), y);
        return g;
      };
      const auto got = run(true), expected = run(false);
      CHECK(got[0].scalar_type() == torch::kBFloat16);
      CHECK(torch::equal(got[0], expected[0]));  // oneDNN's forward
      CHECK(got[1].scalar_type() == x.scalar_type());
      CHECK(torch::equal(got[1], expected[1]));  // oneDNN's input gradient
      CHECK(got[2].scalar_type() == torch::kFloat32);
      const auto w64 = f64(w).requires_grad_();
      const auto exact = torch::autograd::grad({conv(f64(x), w64, {})}, {w64}, {f64(go)})[0];
      CHECK(within_rounding(got[2], exact, rounding));
      CHECK(within_rounding(expected[2], exact, 1.0 / 256));  // oneDNN's rounds once
      if (with_bias) {
        CHECK(got[3].scalar_type() == torch::kFloat32);
        std::vector<int64_t> axes{0};
        for (int64_t a = 2; a < go.dim(); ++a) axes.push_back(a);
        // Summed in float32 (thousands of values per channel, each below 5 in magnitude), not rounded to bfloat16.
        CHECK((got[3] - f64(go).sum(axes)).abs().max().item<double>() < 1e-3);
        CHECK_FALSE(torch::equal(got[3], got[3].to(torch::kBFloat16).to(torch::kFloat32)));
      }
    }
  }
}

/// Second derivatives (a gradient penalty) go through autocast's rule's autograd: within 2% of autocast's own.
void check_second_derivatives(const torch::Tensor& xs, const torch::Tensor& ws, const Conv& conv) {
  auto penalty = [&](bool rule) {
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    c10::optional<zoo::ops::detail::WithoutBf16Kernel> libtorch;
    if (!rule) libtorch.emplace();
    const auto y = conv(xs, ws, {});
    CHECK(ran_rule(y) == rule);
    const auto gx = torch::autograd::grad({torch::tanh(y.to(torch::kFloat32)).sum()}, {xs}, {}, true, true)[0];
    return torch::autograd::grad({gx.to(torch::kFloat32).pow(2).sum()}, {ws})[0];
  };
  const auto expected = penalty(false), got = penalty(true);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK((got - expected).abs().max().item<double>() < 0.02 * expected.abs().max().item<double>());
}

/// A trace under bf16-mixed records LibTorch's convolution (`op`), which TorchScript and Python load, not the rule.
void check_trace(const torch::Tensor& x, const torch::Tensor& w, const Conv& conv, const std::string& op) {
  zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
  auto traced = torch::jit::tracer::trace(
      {x, w}, [&](torch::jit::Stack in) -> torch::jit::Stack { return {conv(in[0].toTensor(), in[1].toTensor(), {})}; },
      [](const torch::autograd::Variable&) { return std::string(); }, false);
  const auto graph = traced.first->graph->toString();
  CHECK((graph.find(op) != std::string::npos || graph.find("aten::_convolution") != std::string::npos));
  CHECK(graph.find("OwnWeightGradient") == std::string::npos);
}

/// A 3-D convolution's geometry: batch, input and output channels, input sizes, kernel, stride and padding per axis.
struct Conv3dCase {
  int64_t n, c, o, d, h, w;
  std::array<int64_t, 3> k, s, p;
};

/// `given` and 10 random geometries (up to `channels` input channels, 1-40 outputs, 1-4 taps, any stride up to the
/// kernel and padding below it, rows up to 40 voxels longer than the kernel needs).
std::vector<Conv3dCase> with_random_cases(std::vector<Conv3dCase> given, unsigned seed, int64_t channels) {
  std::mt19937 random(seed);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  for (int i = 0; i < 10; ++i) {
    Conv3dCase c{pick(1, 3), pick(1, channels), pick(1, 40), 0, 0, 0, {}, {}, {}};
    for (size_t a = 0; a < 3; ++a) {
      c.k[a] = pick(1, 4);
      c.s[a] = pick(1, c.k[a]);
      c.p[a] = pick(0, c.k[a] - 1);
    }
    c.d = std::max<int64_t>(1, c.k[0] - 2 * c.p[0]) + pick(0, 6);
    c.h = std::max<int64_t>(1, c.k[1] - 2 * c.p[1]) + pick(0, 6);
    c.w = std::max<int64_t>(1, c.k[2] - 2 * c.p[2]) + pick(0, 40);
    given.push_back(c);
  }
  return given;
}

std::string describe(const Conv3dCase& c) {
  return fmt::format("x [{}, {}, {}, {}, {}], {} outputs, kernel {}, stride {}, padding {}", c.n, c.c, c.d, c.h, c.w,
                     c.o, fmt::join(c.k, "x"), fmt::join(c.s, "x"), fmt::join(c.p, "x"));
}

/// Random bfloat16 x and dy of the case's sizes.
std::pair<torch::Tensor, torch::Tensor> operands(const Conv3dCase& c) {
  std::vector<int64_t> out{c.n, c.o};
  const std::array<int64_t, 3> in{c.d, c.h, c.w};
  for (size_t a = 0; a < 3; ++a) out.push_back((in[a] + 2 * c.p[a] - c.k[a]) / c.s[a] + 1);
  return {torch::randn({c.n, c.c, c.d, c.h, c.w}).to(torch::kBFloat16), torch::randn(out).to(torch::kBFloat16)};
}

/// float64's weight gradient of the same values.
torch::Tensor exact_weight_gradient(const Conv3dCase& c, const torch::Tensor& x, const torch::Tensor& gy) {
  return std::get<1>(at::convolution_backward(
      gy.to(torch::kFloat64), x.to(torch::kFloat64), torch::zeros({c.o, c.c, c.k[0], c.k[1], c.k[2]}, torch::kFloat64),
      c10::nullopt, c.s, c.p, {1, 1, 1}, false, {0, 0, 0}, 1, {false, true, false}));
}

}  // namespace

TEST_CASE("conv_bf16_weight_gradient in 2-D: float64's weight gradient of the same bfloat16 values, summed in float32",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: zoo's 2-D bfloat16 weight gradient is not tested here");
    return;
  }
  torch::manual_seed(31);
  // {N, C, O, H, W, K, stride, padding}: the mHC ResNet's blocks and stem, the cnn's second layer, a 5x5 kernel, no
  // padding, strides 2 and 3, a 1x1 kernel, non-square maps, odd channel and batch counts, then random ones.
  std::vector<std::array<int64_t, 8>> shapes{{64, 32, 32, 7, 7, 3, 1, 1},   {16, 32, 32, 14, 14, 3, 1, 1},
                                             {16, 32, 64, 14, 14, 3, 1, 1}, {16, 32, 64, 7, 7, 5, 1, 2},
                                             {3, 5, 7, 6, 6, 3, 1, 0},      {5, 3, 9, 9, 4, 3, 2, 1},
                                             {4, 6, 20, 11, 13, 3, 3, 1},   {2, 8, 12, 5, 5, 1, 1, 0},
                                             {1, 1, 1, 3, 3, 3, 1, 1},      {7, 6, 5, 8, 11, 5, 2, 1}};
  std::mt19937 random(32);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  for (int i = 0; i < 12; ++i) {
    const int64_t k = pick(1, 7);
    shapes.push_back({pick(1, 20), pick(1, 40), pick(1, 40), pick(k, 12), pick(k, 12), k, pick(1, k), pick(0, k - 1)});
  }
  for (const auto& [N, C, O, H, W, K, S, P] : shapes) {
    INFO("x [" << N << ", " << C << ", " << H << ", " << W << "], weight [" << O << ", " << C << ", " << K << ", " << K
               << "], stride " << S << ", padding " << P);
    const auto x = torch::randn({N, C, H, W}).to(torch::kBFloat16);
    const int64_t HO = (H + 2 * P - K) / S + 1, WO = (W + 2 * P - K) / S + 1;
    const auto gy = torch::randn({N, O, HO, WO}).to(torch::kBFloat16);
    const auto got = zoo::ops::detail::conv_bf16_weight_gradient(x, gy, {K, K}, {S, S}, {P, P});
    REQUIRE(got.scalar_type() == torch::kFloat32);
    REQUIRE(got.sizes() == torch::IntArrayRef({O, C, K, K}));
    CHECK(got.is_contiguous());
    const auto exact = std::get<1>(at::convolution_backward(
        gy.to(torch::kFloat64), x.to(torch::kFloat64), torch::zeros({O, C, K, K}, torch::kFloat64), c10::nullopt,
        {S, S}, {P, P}, {1, 1}, false, {0, 0}, 1, {false, true, false}));
    CHECK(within_rounding(got, exact, 0.0));  // the products exact, summed in float32
    // A 2-D convolution is the 3-D one of depth 1, to the bit.
    CHECK(torch::equal(got, zoo::ops::detail::conv_bf16_weight_gradient(x.unsqueeze(2), gy.unsqueeze(2), {1, K, K},
                                                                        {1, S, S}, {0, P, P})
                                .squeeze(2)));
  }
  CHECK_THROWS_WITH(zoo::ops::detail::conv_bf16_weight_gradient(torch::randn({2, 3, 5, 5}).to(torch::kBFloat16),
                                                                torch::randn({2, 4, 5, 5}).to(torch::kBFloat16),
                                                                {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                    Catch::Contains("a kernel size, stride and padding per spatial axis"));
}

TEST_CASE("conv2d_weight_gradient_tiles: AMX tiles give float64's weight gradient, rounded once",
          "[kernels][precision]") {
  if (!zoo::ops::detail::amx_tiles_present()) {
    WARN("this CPU has no AMX: conv2d_weight_gradient_tiles is not tested here");
    return;
  }
  torch::manual_seed(35);
  // {N, C, O, H, W, KH, KW, ph, pw}: the mHC ResNet's blocks and its stem's second layer, blocks of 16 and 32
  // channels (48: one of each), 1-7 taps, no padding, non-square maps and kernels, one item.
  const std::vector<std::array<int64_t, 9>> shapes{{64, 32, 32, 7, 7, 3, 3, 1, 1}, {64, 32, 32, 14, 14, 3, 3, 1, 1},
                                                   {5, 48, 16, 6, 9, 5, 3, 2, 1},  {3, 16, 48, 5, 5, 3, 3, 0, 0},
                                                   {1, 16, 16, 4, 11, 1, 7, 0, 3}, {7, 64, 32, 3, 3, 3, 3, 1, 1}};
  for (const auto& [N, C, O, H, W, KH, KW, ph, pw] : shapes) {
    for (const bool channels_last : {true, false}) {
      INFO("x [" << N << ", " << C << ", " << H << ", " << W << "], weight [" << O << ", " << C << ", " << KH << ", "
                 << KW << "], padding " << ph << ", " << pw << (channels_last ? ", channels-last" : ", contiguous"));
      const auto layout = channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
      const auto x = torch::randn({N, C, H, W}).to(torch::kBFloat16).contiguous(layout);
      const int64_t HO = H + 2 * ph - KH + 1, WO = W + 2 * pw - KW + 1;
      const auto gy = torch::randn({N, O, HO, WO}).to(torch::kBFloat16).contiguous(layout);
      const auto got = zoo::ops::detail::conv2d_weight_gradient_tiles(x, gy, KH, KW, {ph, pw});
      REQUIRE(got.scalar_type() == torch::kFloat32);
      REQUIRE(got.sizes() == torch::IntArrayRef({O, C, KH, KW}));
      const auto exact = std::get<1>(at::convolution_backward(
          gy.to(torch::kFloat64), x.to(torch::kFloat64), torch::zeros({O, C, KH, KW}, torch::kFloat64), c10::nullopt,
          {1, 1}, {ph, pw}, {1, 1}, false, {0, 0}, 1, {false, true, false}));
      CHECK(within_rounding(got, exact, 1.0 / 256));                           // one rounding to bfloat16
      CHECK(torch::equal(got, got.to(torch::kBFloat16).to(torch::kFloat32)));  // and it is bfloat16's
    }
  }
  // The same bits at 1 and 2 threads (a task per tap and channel block, its sum in a fixed order).
  const auto x = torch::randn({16, 32, 7, 7}).to(torch::kBFloat16),
             gy = torch::randn({16, 32, 7, 7}).to(torch::kBFloat16);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const auto one = zoo::ops::detail::conv2d_weight_gradient_tiles(x, gy, 3, 3, {1, 1});
  torch::set_num_threads(2);
  const auto two = zoo::ops::detail::conv2d_weight_gradient_tiles(x, gy, 3, 3, {1, 1});
  torch::set_num_threads(threads);
  CHECK(torch::equal(one, two));
  CHECK_THROWS_WITH(zoo::ops::detail::conv2d_weight_gradient_tiles(x.narrow(1, 0, 12), gy, 3, 3, {1, 1}),
                    Catch::Contains("multiples of 16"));
  CHECK_THROWS_WITH(zoo::ops::detail::conv2d_weight_gradient_tiles(x, gy, 3, 3, {0, 0}),
                    Catch::Contains("is not the 3 x 3 convolution's output"));
}

TEST_CASE("Autocast's conv2d rule on CPUs with AMX: small maps' weight gradients on tiles", "[kernels][precision]") {
  using zoo::ops::detail::conv2d_weight_tiles_applies;
  const auto w = torch::randn({32, 32, 3, 3}, torch::requires_grad());
  const auto x = torch::randn({64, 32, 7, 7});
  auto applies = [&](const torch::Tensor& xx, const torch::Tensor& ww, std::vector<int64_t> stride = {1, 1},
                     std::vector<int64_t> padding = {1, 1}, std::vector<int64_t> dilation = {1, 1},
                     int64_t groups = 1) {
    return conv2d_weight_tiles_applies(xx, ww, c10::nullopt, stride, padding, dilation, groups);
  };
  CHECK_FALSE(applies(x, w));  // no autocast
  if (!zoo::ops::detail::amx_tiles_present()) {
    WARN("this CPU has no AMX: autocast's 2-D convolutions keep oneDNN's weight gradient here");
    zoo::ops::detail::AmxOverride amx(true);  // routed as on a CPU with AMX, the tiles are still never used
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK_FALSE(applies(x, w));
    return;
  }
  zoo::ops::detail::AmxOverride amx(true);  // routed as on a CPU with AMX (this one has it) under ZOO_CPU_AMX=0 too
  {
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK(applies(x, w));
    CHECK(applies(x.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast), w));
    CHECK(applies(torch::randn({2, 16, 10, 10}), torch::randn({48, 16, 5, 5}, torch::requires_grad()), {1, 1}, {2, 2}));
    CHECK(applies(torch::randn({64, 32, 4, 4}), w));
    CHECK(applies(torch::randn({16, 64, 8, 8}), torch::randn({64, 64, 3, 3}, torch::requires_grad())));
    CHECK_FALSE(applies(torch::randn({64, 32, 14, 14}), w));  // 196 pixels: oneDNN's is as fast
    // Wider layers (the ResNets', the U-Net's bottom): faster alone, no faster in those models' steps.
    CHECK_FALSE(applies(torch::randn({4, 256, 8, 8}), torch::randn({512, 256, 3, 3}, torch::requires_grad())));
    CHECK_FALSE(applies(torch::randn({64, 24, 7, 7}), torch::randn({32, 24, 3, 3}, torch::requires_grad())));
    CHECK_FALSE(applies(x, torch::randn({40, 32, 3, 3}, torch::requires_grad())));  // 40 output channels
    CHECK_FALSE(applies(x, w.detach()));                                            // inference
    CHECK_FALSE(applies(x, w, {2, 2}));                                             // strided
    CHECK_FALSE(applies(x, w, {1, 1}, {1, 1}, {2, 2}));                             // dilated
    CHECK_FALSE(applies(x.to(torch::kFloat64), w.to(torch::kFloat64)));
    {
      zoo::ops::detail::AmxOverride no_amx(false);
      CHECK_FALSE(applies(x, w));
    }
    {
      torch::NoGradGuard inference;
      CHECK_FALSE(applies(x, w));
    }
  }
  torch::manual_seed(36);
  const Conv conv = [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    return torch::conv2d(x, w, b, 1, 1);
  };
  // The mHC ResNet's blocks, and 5x5 kernels over 48 channels (a block of 32 and one of 16) on 8x8 maps.
  check_against_autocast({64, 32, 7, 7}, {32, 32, 3, 3}, conv, 1.0 / 256);
  check_against_autocast(
      {8, 48, 8, 8}, {16, 48, 5, 5},
      [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
        return torch::conv2d(x, w, b, 1, 2);
      },
      1.0 / 256);
  check_second_derivatives(torch::randn({16, 32, 6, 6}).to(torch::kBFloat16).requires_grad_(),
                           (torch::randn({32, 32, 3, 3}) * 0.1).requires_grad_(), conv);
  check_trace(x, w, conv, "aten::conv2d");
}

TEST_CASE(
    "Autocast's conv2d rule: the mHC blocks' convolutions give autocast's output and input gradient to the "
    "bit and its weight gradient to one rounding",
    "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's 2-D convolutions run LibTorch's rule here");
    return;
  }
  zoo::ops::detail::AmxOverride no_amx(false);  // AVX512-BF16 without AMX: the rule's CPUs
  torch::manual_seed(33);
  check_against_autocast(
      {64, 32, 7, 7}, {32, 32, 3, 3},
      [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
        return torch::conv2d(x, w, b, 1, 1);
      },
      1.0 / 256);  // zoo's float32 sums against oneDNN's, rounded to bfloat16 once
}

TEST_CASE("Autocast's conv2d rule: where it applies, second derivatives, and a trace", "[kernels][precision]") {
  using zoo::ops::detail::conv_weight_gradient_applies;
  const auto w = torch::randn({32, 32, 3, 3}, torch::requires_grad());
  const auto x = torch::randn({64, 32, 7, 7});
  auto applies = [&](const torch::Tensor& xx, const torch::Tensor& ww, std::vector<int64_t> stride = {1, 1},
                     std::vector<int64_t> padding = {1, 1}, std::vector<int64_t> dilation = {1, 1},
                     int64_t groups = 1) {
    return conv_weight_gradient_applies(xx, ww, c10::nullopt, stride, padding, dilation, groups);
  };
  CHECK_FALSE(applies(x, w));  // no autocast
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's 2-D convolutions run LibTorch's rule here");
    return;
  }
  zoo::ops::detail::AmxOverride no_amx(false);  // AVX512-BF16 without AMX: the rule's CPUs
  {
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK(applies(x, w));
    CHECK(applies(x.to(torch::kBFloat16), w));
    CHECK(applies(torch::randn({64, 32, 14, 14}), w));                                        // 196 pixels
    CHECK(applies(torch::randn({64, 32, 4, 4}), w));                                          // 16 pixels
    CHECK(applies(x, torch::randn({32, 32, 1, 1}, torch::requires_grad()), {1, 1}, {0, 0}));  // 1x1
    CHECK(applies(torch::randn({16, 64, 28, 28}), torch::randn({64, 64, 3, 3}, torch::requires_grad()), {2, 2}));
    CHECK(applies(torch::randn({16, 8, 7, 7}), torch::randn({16, 8, 7, 7}, torch::requires_grad()), {1, 1}, {3, 3}));
    CHECK_FALSE(applies(x, w.detach()));                      // inference
    CHECK_FALSE(applies(torch::randn({64, 32, 28, 28}), w));  // 784 pixels
    CHECK_FALSE(applies(torch::randn({8, 32, 7, 7}), w));     // batch 8
    CHECK_FALSE(applies(torch::randn({64, 128, 7, 7}), torch::randn({32, 128, 3, 3}, torch::requires_grad())));
    CHECK_FALSE(applies(x, torch::randn({128, 32, 3, 3}, torch::requires_grad())));  // 128 outputs
    CHECK_FALSE(applies(x, w, {4, 4}));                                              // stride > kernel
    CHECK_FALSE(applies(x, w, {1, 1}, {1, 1}, {2, 2}));                              // dilated
    CHECK_FALSE(applies(x, torch::randn({32, 16, 3, 3}, torch::requires_grad()), {1, 1}, {1, 1}, {1, 1}, 2));
    CHECK_FALSE(applies(x, torch::randn({32, 32, 9, 9}, torch::requires_grad()), {1, 1}, {4, 4}));  // 9 taps
    CHECK_FALSE(applies(x.to(torch::kFloat64), w.to(torch::kFloat64)));
    {
      torch::NoGradGuard inference;
      CHECK_FALSE(applies(x, w));
    }
    {
      zoo::ops::Float32Region float32;
      CHECK_FALSE(applies(x, w));
    }
    {
      zoo::ops::detail::AmxOverride amx(true);  // oneDNN's AMX weight gradient is faster there, zoo's tiles more so
      CHECK_FALSE(applies(x, w));
      CHECK(ran_rule(torch::conv2d(x, w, {}, 1, 1)) == zoo::ops::detail::amx_tiles_present());
    }
  }

  torch::manual_seed(34);
  const Conv conv = [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    return torch::conv2d(x, w, b, 1, 1);
  };
  check_second_derivatives(torch::randn({16, 32, 6, 6}).to(torch::kBFloat16).requires_grad_(),
                           (torch::randn({32, 32, 3, 3}) * 0.1).requires_grad_(), conv);
  check_trace(x, w, conv, "aten::conv2d");
}

TEST_CASE("conv_bf16_weight_gradient: float64's weight gradient of the same bfloat16 values, summed in float32",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: zoo's 3-D bfloat16 weight gradient is not tested here");
    return;
  }
  // The conv3d model's second layer on fewer volumes, conv4d's second (frames of 8^3), the 3-D U-Net's 2x2x2
  // downsampling, two panels of output channels with a partial one (40), rows longer than 32 columns (the
  // element-wise layout path), odd sizes and per-axis geometries, a 1x1x1 kernel and a 5-tap one.
  const auto cases = with_random_cases({{4, 8, 16, 16, 16, 16, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {12, 8, 16, 8, 8, 8, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {2, 16, 32, 12, 12, 12, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}},
                                        {3, 5, 40, 7, 9, 11, {3, 3, 3}, {1, 2, 3}, {1, 0, 2}},
                                        {2, 3, 7, 4, 5, 37, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {2, 4, 5, 3, 3, 3, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}},
                                        {1, 2, 3, 6, 7, 8, {5, 4, 5}, {1, 2, 5}, {2, 3, 0}}},
                                       35, 9);
  for (const auto& c : cases) {
    INFO(describe(c));
    const auto [x, gy] = operands(c);
    const auto got = zoo::ops::detail::conv_bf16_weight_gradient(x, gy, c.k, c.s, c.p);
    REQUIRE(got.scalar_type() == torch::kFloat32);
    REQUIRE(got.sizes() == torch::IntArrayRef({c.o, c.c, c.k[0], c.k[1], c.k[2]}));
    const auto exact = exact_weight_gradient(c, x, gy);
    CHECK(within_rounding(got, exact, 0.0));  // the products exact, summed in float32
  }
  // Not rounded to bfloat16 (a kernel that did would fail above only by chance on small sums).
  const auto x = torch::randn({4, 8, 8, 8, 8}).to(torch::kBFloat16),
             gy = torch::randn({4, 16, 4, 4, 4}).to(torch::kBFloat16);
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    auto g = zoo::ops::detail::conv_bf16_weight_gradient(x, gy, {3, 3, 3}, {2, 2, 2}, {1, 1, 1});
    at::set_num_threads(before);
    return g;
  };
  const auto one = run(1);
  CHECK_FALSE(torch::equal(one, one.to(torch::kBFloat16).to(torch::kFloat32)));
  CHECK(torch::equal(one, run(2)));  // the same bits at any thread count
  CHECK(torch::equal(zoo::ops::detail::conv_bf16_weight_gradient(x.narrow(0, 0, 0), gy.narrow(0, 0, 0), {3, 3, 3},
                                                                 {2, 2, 2}, {1, 1, 1}),
                     torch::zeros({16, 8, 3, 3, 3})));  // an empty batch
  CHECK_THROWS_WITH(
      zoo::ops::detail::conv_bf16_weight_gradient(torch::randn({4, 8, 8, 8, 8}), gy, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
      Catch::Contains("bfloat16 x [N, C, H, W] or [N, C, D, H, W]"));
  CHECK_THROWS_WITH(zoo::ops::detail::conv_bf16_weight_gradient(x, gy, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                    Catch::Contains("dy of the convolution's output size"));
  CHECK_THROWS_WITH(zoo::ops::detail::conv_bf16_weight_gradient(x, gy, {3, 3, 8}, {2, 2, 2}, {1, 1, 1}),
                    Catch::Contains("1-7 taps per axis"));
}

TEST_CASE(
    "conv3d_weight_bias_gradient_tiles: float64's weight and bias gradients of the same bfloat16 values, summed in "
    "float32",
    "[kernels][precision]") {
  if (!zoo::ops::detail::amx_tiles_present()) {
    WARN("this CPU has no AMX: conv3d_weight_gradient_tiles is not tested here");
    return;
  }
  // The conv3d model's layers on fewer volumes (its first, one channel to 8, unstrided), conv4d's first and second
  // (frames of 8^3), the 3-D U-Net's 2x2x2 downsampling; phases of 3 and 5 channels (rows across tile blocks), 48 and
  // 7 outputs (a block of 32 and one of 16; padding), rows of more than 64 values and strides of 3 (grid rows element
  // by element), per-axis geometries, stride 1, a 1x1x1 kernel and 7 taps.
  const auto cases = with_random_cases({{4, 8, 16, 16, 16, 16, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {3, 16, 32, 8, 8, 8, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {3, 1, 8, 16, 16, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}},
                                        {7, 1, 8, 8, 8, 8, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}},
                                        {12, 8, 16, 8, 8, 8, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {2, 16, 32, 12, 12, 12, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}},
                                        {3, 5, 48, 7, 9, 11, {3, 3, 3}, {1, 2, 3}, {1, 0, 2}},
                                        {2, 3, 7, 4, 5, 70, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {2, 4, 16, 3, 3, 3, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}},
                                        {1, 2, 16, 9, 7, 8, {7, 4, 5}, {3, 2, 5}, {2, 3, 0}},
                                        {5, 8, 16, 5, 6, 7, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
                                        {2, 3, 20, 6, 6, 6, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},
                                       37, 20);
  for (const auto& c : cases) {
    INFO(describe(c));
    const auto [x, gy] = operands(c);
    const auto [got, bias] = zoo::ops::detail::conv3d_weight_bias_gradient_tiles(x, gy, c.k, c.s, c.p);
    REQUIRE(got.scalar_type() == torch::kFloat32);
    REQUIRE(got.sizes() == torch::IntArrayRef({c.o, c.c, c.k[0], c.k[1], c.k[2]}));
    const auto exact = exact_weight_gradient(c, x, gy);
    CHECK(within_rounding(got, exact, 0.0));  // the products exact, summed in float32
    REQUIRE(bias.scalar_type() == torch::kFloat32);
    CHECK(within_rounding(bias, gy.to(torch::kFloat64).sum({0, 2, 3, 4}), 0.0));
  }
  // Not rounded to bfloat16, the same bits at 1 and 2 threads (a task per offset and block, its sum in a fixed order;
  // the bias item by item), a channels-last x read as its values, an empty batch, and the errors.
  const auto x = torch::randn({40, 8, 8, 8, 8}).to(torch::kBFloat16),
             gy = torch::randn({40, 16, 4, 4, 4}).to(torch::kBFloat16);
  auto run = [&](int threads, const torch::Tensor& xx) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    auto w = zoo::ops::detail::conv3d_weight_bias_gradient_tiles(xx, gy, {3, 3, 3}, {2, 2, 2}, {1, 1, 1});
    at::set_num_threads(before);
    return w;
  };
  const auto one = run(1, x), two = run(2, x);
  CHECK_FALSE(torch::equal(one.first, one.first.to(torch::kBFloat16).to(torch::kFloat32)));
  CHECK(torch::equal(one.first, two.first));
  CHECK(torch::equal(one.second, two.second));
  CHECK(torch::equal(one.first, run(1, x.contiguous(torch::MemoryFormat::ChannelsLast3d)).first));
  CHECK(
      torch::equal(zoo::ops::detail::conv3d_weight_gradient_tiles(x, gy, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}), one.first));
  CHECK(torch::equal(zoo::ops::detail::conv3d_weight_gradient_tiles(x.narrow(0, 0, 0), gy.narrow(0, 0, 0), {3, 3, 3},
                                                                    {2, 2, 2}, {1, 1, 1}),
                     torch::zeros({16, 8, 3, 3, 3})));
  CHECK_THROWS_WITH(
      zoo::ops::detail::conv3d_weight_gradient_tiles(x.to(torch::kFloat32), gy, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
      Catch::Contains("bfloat16 x [N, C, H, W] or [N, C, D, H, W]"));
  CHECK_THROWS_WITH(zoo::ops::detail::conv3d_weight_gradient_tiles(x, gy, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                    Catch::Contains("dy of the convolution's output size"));
}

TEST_CASE(
    "Autocast's conv3d rule: strided 3-D convolutions on CPUs with AMX give autocast's output and input gradient to "
    "the bit and zoo's weight gradient",
    "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's 3-D convolutions run LibTorch's rule here");
    return;
  }
  zoo::ops::detail::AmxOverride amx(true);  // the rule's CPUs
  torch::manual_seed(36);
  check_against_autocast(
      {6, 8, 8, 8, 8}, {16, 8, 3, 3, 3},
      [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
        return torch::conv3d(x, w, b, 2, 1);
      },
      0.0);  // float32 sums, not rounded
}

TEST_CASE("Autocast's conv3d rule: where it applies, second derivatives, and a trace", "[kernels][precision]") {
  using zoo::ops::detail::conv3d_weight_gradient_applies;
  const auto w = torch::randn({16, 8, 3, 3, 3}, torch::requires_grad());
  const auto x = torch::randn({4, 8, 8, 8, 8});
  auto applies = [&](const torch::Tensor& xx, const torch::Tensor& ww, std::vector<int64_t> stride = {2, 2, 2},
                     std::vector<int64_t> padding = {1, 1, 1}, std::vector<int64_t> dilation = {1, 1, 1},
                     int64_t groups = 1) {
    return conv3d_weight_gradient_applies(xx, ww, c10::nullopt, stride, padding, dilation, groups);
  };
  CHECK_FALSE(applies(x, w));  // no autocast
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's 3-D convolutions run LibTorch's rule here");
    return;
  }
  zoo::ops::detail::AmxOverride amx(true);
  {
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK(applies(x, w));
    CHECK(applies(x.to(torch::kBFloat16), w, {2}, {1}));  // one value for every axis
    CHECK(applies(torch::randn({2, 16, 12, 12, 12}), torch::randn({32, 16, 2, 2, 2}, torch::requires_grad()), {2, 2, 2},
                  {0, 0, 0}));                                    // the U-Net's
    CHECK_FALSE(applies(x, w, {1, 1, 1}));                        // oneDNN's AMX wins
    CHECK_FALSE(applies(x, w, {2, 2, 1}));                        // one axis unstrided
    CHECK_FALSE(applies(x, w.detach()));                          // no weight gradient
    CHECK_FALSE(applies(x, w, {2, 2, 2}, {1, 1, 1}, {2, 2, 2}));  // dilated
    CHECK_FALSE(applies(x, torch::randn({16, 4, 3, 3, 3}, torch::requires_grad()), {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, 2));
    CHECK_FALSE(applies(torch::randn({4, 1, 8, 8, 8}), torch::randn({16, 1, 3, 3, 3}, torch::requires_grad())));
    CHECK_FALSE(applies(x, torch::randn({16, 8, 8, 8, 8}, torch::requires_grad()), {2, 2, 2}, {1, 1, 1}));  // 8 taps
    CHECK_FALSE(applies(x.to(torch::kFloat64), w.to(torch::kFloat64)));
    {
      torch::NoGradGuard inference;
      CHECK_FALSE(applies(x, w));
    }
    {
      zoo::ops::Float32Region float32;
      CHECK_FALSE(applies(x, w));
    }
    {
      zoo::ops::detail::AmxOverride no_amx(false);  // AVX512-BF16 without AMX: oneDNN's weight gradient
      CHECK_FALSE(applies(x, w));
      CHECK_FALSE(ran_rule(torch::conv3d(x, w, {}, 2, 1)));
    }
  }
  // Which weight gradient the rule runs: AMX tiles where the CPU has them, for overlapping taps and outputs in
  // multiples of 16; the dot products elsewhere.
  using zoo::ops::detail::conv3d_weight_tiles_fit;
  const bool tiles = zoo::ops::detail::amx_tiles_present();
  CHECK(conv3d_weight_tiles_fit(w, {2, 2, 2}) == tiles);
  CHECK(conv3d_weight_tiles_fit(w, {2}) == tiles);
  CHECK(conv3d_weight_tiles_fit(torch::randn({32, 16, 3, 3, 2}), {2, 3, 2}) == tiles);  // overlaps on one axis
  CHECK_FALSE(conv3d_weight_tiles_fit(torch::randn({32, 16, 2, 2, 2}), {2, 2, 2}));     // the U-Net's 2x2x2
  CHECK_FALSE(conv3d_weight_tiles_fit(torch::randn({24, 8, 3, 3, 3}), {2, 2, 2}));      // 24 outputs
  // Both give autocast's output and input gradient to the bit and the weight gradient in float32 sums.
  check_against_autocast(
      {3, 16, 8, 8, 8}, {32, 16, 2, 2, 2},
      [](const torch::Tensor& xx, const torch::Tensor& ww, const torch::Tensor& b) {
        return torch::conv3d(xx, ww, b, 2, std::vector<int64_t>{0, 0, 0});
      },
      0.0);
  check_against_autocast(
      {3, 8, 7, 8, 9}, {24, 8, 3, 3, 3},
      [](const torch::Tensor& xx, const torch::Tensor& ww, const torch::Tensor& b) {
        return torch::conv3d(xx, ww, b, 2, 1);
      },
      0.0);

  torch::manual_seed(37);
  const Conv conv = [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    return torch::conv3d(x, w, b, 2, 1);
  };
  check_second_derivatives(torch::randn({4, 8, 8, 8, 8}).to(torch::kBFloat16).requires_grad_(),
                           (torch::randn({16, 8, 3, 3, 3}) * 0.1).requires_grad_(), conv);
  check_trace(x, w, conv, "aten::conv3d");
}
