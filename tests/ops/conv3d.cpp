// conv3d: the direct 3x3x3 convolution over one input channel (a volume network's first layer) against
// torch::conv3d, and which kernel runs.
#include "ops/conv3d.h"
#include "helpers.h"
#include "models/conv3d.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"

#include <catch2/catch.hpp>

#include <ATen/Parallel.h>

using zoo::ops::Conv3dKernel;

namespace {

double magnitude(const torch::Tensor& t) { return std::max(1.0, t.abs().max().item<double>()); }

bool direct3d_here() {
  return zoo::ops::conv3d_direct_available(torch::zeros({1, 1, 1, 1, 1}), torch::zeros({1, 1, 3, 3, 3}), {}, 1, 1, 1,
                                           1);
}

// torch::conv3d in float64: the reference the float32 kernels are both held to.
torch::Tensor exact3d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const auto d = [](const torch::Tensor& t) { return t.defined() ? t.detach().to(torch::kFloat64) : t; };
  return torch::conv3d(d(x), d(w), d(b), 1, 1);
}

// Per entry of the weight and bias gradients, the sum of the magnitudes of the products it adds up: float32's
// rounding error of such a sum is bounded relative to it, not to the (much smaller, cancelling) result.
std::vector<torch::Tensor> term_sums3d(const torch::Tensor& x, int64_t out, const torch::Tensor& go) {
  const auto w = torch::ones({out, 1, 3, 3, 3}, torch::dtype(torch::kFloat64).requires_grad(true));
  const auto b = torch::zeros({out}, torch::dtype(torch::kFloat64).requires_grad(true));
  const auto y = torch::conv3d(x.detach().abs().to(torch::kFloat64), w, b, 1, 1);
  return torch::autograd::grad({y}, {w, b}, {go.abs().to(torch::kFloat64)});
}

// |got - expected| <= 1e-6 * bound + 1e-6 everywhere.
bool within3d(const torch::Tensor& got, const torch::Tensor& expected, const torch::Tensor& bound) {
  return ((got.to(torch::kFloat64) - expected).abs() <= bound * 1e-6 + 1e-6).all().item<bool>();
}

}  // namespace

TEST_CASE("conv3d: the direct kernel's output and all three gradients equal torch::conv3d's, for any size",
          "[kernels][conv3d]") {
  if (!direct3d_here()) {
    WARN("this CPU has no AVX2 + FMA: conv3d runs torch::conv3d here, its direct kernel is not tested");
    return;
  }
  torch::manual_seed(0);
  struct Shape {
    int64_t n, d, h, w, o;
  };
  // Rows of whole blocks (W 8, 16), with a cut last block (W 5, 13, 1: masked loads and stores), an odd number of
  // blocks in a plane (the single-block tail of the forward), output channels not a multiple of 4 (1, 3, 7, 9),
  // one plane and many.
  for (const auto& s : {Shape{4, 16, 16, 16, 8}, Shape{3, 8, 8, 8, 8}, Shape{2, 5, 7, 13, 3}, Shape{1, 3, 1, 5, 9},
                        Shape{2, 1, 1, 1, 1}, Shape{3, 6, 5, 24, 16}, Shape{1, 4, 3, 9, 7}}) {
    INFO("x [" << s.n << ", 1, " << s.d << ", " << s.h << ", " << s.w << "], " << s.o << " outputs");
    const auto x = torch::randn({s.n, 1, s.d, s.h, s.w}, torch::requires_grad());
    const auto w = torch::randn({s.o, 1, 3, 3, 3}, torch::requires_grad());
    const auto b = torch::randn({s.o}, torch::requires_grad());
    const auto go = torch::randn({s.n, s.o, s.d, s.h, s.w});
    const auto y = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);
    const auto r = torch::conv3d(x, w, b, 1, 1);
    // The same convolution in float64, with gradients: the reference both float32 kernels are held to.
    const auto wide = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(true); };
    const auto x64 = wide(x), w64 = wide(w), b64 = wide(b);
    const auto e = torch::conv3d(x64, w64, b64, 1, 1);
    REQUIRE(y.sizes() == r.sizes());
    CHECK(y.is_contiguous());
    // As close to the float64 result as LibTorch's own float32 convolution is (both sum 27 products in float32).
    CHECK(zoo::test::max_abs(y.to(torch::kFloat64) - e.detach()) < 1e-5 * magnitude(e));
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    const auto ge = torch::autograd::grad({e}, {x64, w64, b64}, {go.to(torch::kFloat64)});
    const auto m = term_sums3d(x, s.o, go);
    for (int i = 0; i < 3; ++i) {
      INFO("gradient " << i);
      CHECK(g[i].scalar_type() == torch::kFloat32);
      CHECK(g[i].sizes() == ge[i].sizes());
      // The input gradient sums 27 x O products; the weight and bias gradients sum over every voxel.
      if (i == 0)
        CHECK(zoo::test::max_abs(g[0].to(torch::kFloat64) - ge[0]) < 1e-5 * magnitude(ge[0]));
      else
        CHECK(within3d(g[i], ge[i], m[i - 1]));
    }
    // Without a bias, and with only the weight asking for a gradient (a first layer: no input gradient).
    const auto y0 = zoo::ops::conv3d(x.detach(), w, {}, 1, 1, 1, 1, Conv3dKernel::direct);
    CHECK(zoo::test::max_abs(y0.to(torch::kFloat64) - exact3d(x, w, {})) < 1e-5 * magnitude(e));
    const auto gw = torch::autograd::grad({y0}, {w}, {go})[0];
    CHECK(within3d(gw, ge[1], m[0]));
  }
}

TEST_CASE("conv3d: a strided input, a weight that is a slice, no gradients, and the same sums on any thread count",
          "[kernels][conv3d]") {
  if (!direct3d_here()) return;
  torch::manual_seed(1);
  const auto base = torch::randn({3, 2, 9, 10, 11});
  const auto x = base.narrow(1, 1, 1).transpose(3, 4);  // [3, 1, 9, 11, 10], not contiguous
  const auto w6 = torch::randn({5, 1, 3, 3, 3, 3});
  const auto w = w6.select(2, 1);  // a Conv4d's time tap: not contiguous either
  {
    torch::NoGradGuard no_grad;
    const auto y = zoo::ops::conv3d(x, w, {}, 1, 1, 1, 1, Conv3dKernel::direct);
    CHECK_FALSE(y.requires_grad());
    CHECK(zoo::test::max_abs(y.to(torch::kFloat64) - exact3d(x, w, {})) < 1e-5 * 30);
  }
  // The weight gradient sums fixed chunks of planes in a fixed order: 1 and 2 threads give the same bits.
  const auto wg = w.detach().clone().requires_grad_(true);
  const auto go = torch::randn({3, 5, 9, 11, 10});
  const int threads = at::get_num_threads();
  std::vector<torch::Tensor> grads;
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    grads.push_back(
        torch::autograd::grad({zoo::ops::conv3d(x, wg, {}, 1, 1, 1, 1, Conv3dKernel::direct)}, {wg}, {go})[0]);
  }
  at::set_num_threads(threads);
  CHECK(torch::equal(grads[0], grads[1]));
}

TEST_CASE("conv3d: second derivatives flow through the direct kernel's backward", "[kernels][conv3d]") {
  if (!direct3d_here()) return;
  torch::manual_seed(2);
  const auto x = torch::randn({2, 1, 4, 5, 6}, torch::requires_grad());
  const auto w = torch::randn({3, 1, 3, 3, 3}, torch::requires_grad());
  // A gradient penalty: d/dw of |dL/dx|^2, with L = sum(tanh(conv)).
  auto penalty = [&](Conv3dKernel k) {
    const auto y = zoo::ops::conv3d(x, w, {}, 1, 1, 1, 1, k);
    const auto gx = torch::autograd::grad({torch::tanh(y).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto expected = penalty(Conv3dKernel::reference);
  const auto got = penalty(Conv3dKernel::direct);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK(zoo::test::max_abs(got - expected) < 1e-4 * magnitude(expected));
}

TEST_CASE("conv3d: under bfloat16 autocast the direct kernel computes in float32 and writes bfloat16",
          "[kernels][conv3d][precision]") {
  if (!direct3d_here()) return;
  torch::manual_seed(3);
  // 9 columns: every row ends in a block of one voxel (the stores and loads of a row's end).
  const auto x = torch::randn({2, 1, 6, 7, 9}, torch::requires_grad());
  const auto w = torch::randn({7, 1, 3, 3, 3}, torch::requires_grad()), b = torch::randn({7}, torch::requires_grad());
  const auto go = torch::randn({2, 7, 6, 7, 9}).to(torch::kBFloat16);
  // What autocast's cast of the float32 kernel's output gives, and the float32 kernel's gradients of the widened
  // bfloat16 gradient (widening is exact).
  const auto f32 = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);
  const auto expected = torch::autograd::grad({f32}, {x, w, b}, {go.to(torch::kFloat32)});
  torch::Tensor y;
  {
    zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
    y = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);
  }
  CHECK(y.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(y, f32.to(torch::kBFloat16)));  // rounded to nearest even in the kernel's stores
  // The kernel's own node, no cast after it.
  REQUIRE(y.grad_fn());
  CHECK(y.grad_fn()->name().find("Conv3dFunction") != std::string::npos);
  // The gradients reach the float32 input and parameters in float32, the same bits as through a cast.
  const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
  for (size_t i = 0; i < g.size(); ++i) {
    CHECK(g[i].scalar_type() == torch::kFloat32);
    CHECK(torch::equal(g[i], expected[i]));
  }
  // Second derivatives under autocast: through torch::conv3d's autograd, its output cast alike.
  auto penalty = [&](bool autocast) {
    zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16, autocast);
    const auto out = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);
    const auto gx =
        torch::autograd::grad({torch::tanh(out.to(torch::kFloat32)).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto p32 = penalty(false), p16 = penalty(true);
  CHECK(p32.abs().max().item<double>() > 0.1);
  CHECK(zoo::test::max_abs(p16 - p32) < 0.05 * magnitude(p32));  // the output rounded to bfloat16 in between
}

TEST_CASE(
    "conv3d: under bf16-mixed on a CPU with AMX the first layer's forward is autocast's bfloat16 convolution on tiles",
    "[kernels][conv3d][precision]") {
  if (!direct3d_here() || !zoo::ops::detail::amx_tiles_present()) {
    WARN("this CPU has no AMX: conv3d's tile forward is not tested here");
    return;
  }
  zoo::ops::detail::AmxOverride amx(true);  // as on such CPUs also under ZOO_CPU_AMX=0
  // Rows of 2, 4, 8 and 16 voxels (8, 4, 2 and 1 rows to a tile's 16), 1 to 16 output channels, one and three items,
  // one and several planes, with and without a bias.
  struct Case {
    int64_t n, o, d, h, w;
    bool bias;
  };
  const std::vector<Case> cases{{3, 8, 5, 16, 16, true}, {2, 8, 8, 8, 8, true},  {1, 16, 3, 8, 4, false},
                                {3, 1, 2, 8, 2, true},   {2, 7, 1, 16, 8, true}, {1, 13, 4, 2, 16, false}};
  torch::manual_seed(41);
  for (const auto& c : cases) {
    INFO("x [" << c.n << ", 1, " << c.d << ", " << c.h << ", " << c.w << "], " << c.o << " outputs");
    const auto x = torch::randn({c.n, 1, c.d, c.h, c.w}, torch::requires_grad());
    const auto w = torch::randn({c.o, 1, 3, 3, 3}, torch::requires_grad());
    const auto b = c.bias ? torch::randn({c.o}, torch::requires_grad()) : torch::Tensor();
    torch::Tensor y;
    {
      zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
      y = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);  // 13 and 16 outputs go to oneDNN otherwise
    }
    REQUIRE(y.scalar_type() == torch::kBFloat16);
    REQUIRE(y.grad_fn());
    CHECK(y.grad_fn()->name().find("Conv3dFunction") != std::string::npos);
    // x and the weight rounded to bfloat16, the products exact and summed in float32 with the bias, rounded once.
    const auto f64 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); };
    const auto exact = torch::conv3d(f64(x), f64(w), c.bias ? b.to(torch::kFloat64) : torch::Tensor(), 1, 1).detach();
    CHECK(within_rounding(y, exact, 1.0 / 256));
    // The weight and bias gradients autocast's too: of x rounded to bfloat16, the products exact, summed in float32
    // (on tiles where 32 voxels make whole rows, else the direct kernel's of float32 x); the input's the direct
    // kernel's (torch::conv_transpose3d of the widened gradient).
    const auto go = torch::randn(y.sizes()).to(torch::kBFloat16);
    const auto f32 = zoo::ops::conv3d(x, w, b, 1, 1, 1, 1, Conv3dKernel::direct);
    auto inputs = c.bias ? std::vector<torch::Tensor>{x, w, b} : std::vector<torch::Tensor>{x, w};
    const auto expected = torch::autograd::grad({f32}, inputs, {go.to(torch::kFloat32)});
    const auto got = torch::autograd::grad({y}, inputs, {go});
    CHECK(torch::equal(got[0], expected[0]));
    const bool tiles = c.w * c.h >= 32 && c.h % (32 / c.w) == 0;
    const auto x64 = f64(x).requires_grad_(), w64 = f64(w).requires_grad_();
    const auto e64 = torch::autograd::grad({torch::conv3d(x64, w64, {}, 1, 1)}, {w64}, {go.to(torch::kFloat64)})[0];
    CHECK(within_rounding(got[1], tiles ? e64 : expected[1].to(torch::kFloat64), 0.0));
    CHECK(torch::equal(got[1], expected[1]) == !tiles);
    if (c.bias) CHECK(within_rounding(got[2], go.to(torch::kFloat64).sum({0, 2, 3, 4}), 0.0));
  }
  // The same bits at 1 and 2 threads (the forward an item a task, the weight gradient's sums a slice of items a
  // task, added in order).
  const auto x = torch::randn({13, 1, 4, 8, 8}), w = torch::randn({8, 1, 3, 3, 3}, torch::requires_grad()),
             b = torch::randn({8}, torch::requires_grad());
  const auto go = torch::randn({13, 8, 4, 8, 8}).to(torch::kBFloat16);
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    torch::Tensor out;
    {
      zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
      out = zoo::ops::conv3d(x, w, b, 1, 1);
    }
    auto g = torch::autograd::grad({out}, {w, b}, {go});
    at::set_num_threads(before);
    return std::vector<torch::Tensor>{out, g[0], g[1]};
  };
  const auto one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) CHECK(torch::equal(one[i], two[i]));
}

TEST_CASE("conv3d: which kernel runs", "[kernels][conv3d]") {
  const bool here = direct3d_here();
  const auto x = torch::randn({2, 1, 6, 6, 6});
  const auto direct = [&](int64_t out, torch::Tensor input, torch::IntArrayRef stride, torch::IntArrayRef padding) {
    return zoo::ops::conv3d_direct(input, torch::randn({out, input.size(1), 3, 3, 3}), {}, stride, padding, 1, 1);
  };
  // Up to 12 output channels (the conv3d and conv4d models' 8), 17 to 24, 33 to 36: where oneDNN's blocks of 16
  // leave enough lanes idle; not 16 (the 3-D U-Net's first layer), 13 to 16, 32 or 40.
  for (int64_t o : {1, 4, 8, 12, 20, 24, 36}) CHECK(direct(o, x, 1, 1) == here);
  for (int64_t o : {13, 16, 28, 32, 40}) CHECK_FALSE(direct(o, x, 1, 1));
  CHECK(direct(8, x, {1, 1, 1}, {1, 1, 1}) == here);
  CHECK_FALSE(direct(8, x, 2, 1));                              // stride 2
  CHECK_FALSE(direct(8, x, 1, 0));                              // no padding
  CHECK_FALSE(direct(8, torch::randn({2, 2, 6, 6, 6}), 1, 1));  // two input channels
  CHECK_FALSE(direct(8, x.to(torch::kFloat64), 1, 1));          // float64 goes to torch::conv3d
  {
    zoo::ops::ScalarOnly no_avx2;  // a CPU without AVX2
    CHECK_FALSE(direct(8, x, 1, 1));
  }
  // Elsewhere torch::conv3d runs, exactly; the direct kernel, asked for where it cannot run, says why.
  const auto xd = x.to(torch::kFloat64), wd = torch::randn({8, 1, 3, 3, 3}, torch::kFloat64);
  CHECK(torch::equal(zoo::ops::conv3d(xd, wd, {}, 1, 1), torch::conv3d(xd, wd, {}, 1, 1)));
  const auto w2 = torch::randn({8, 1, 3, 3, 3});
  CHECK(torch::equal(zoo::ops::conv3d(x, w2, {}, 2, 1), torch::conv3d(x, w2, {}, 2, 1)));
  CHECK_THROWS_WITH(
      zoo::ops::conv3d(xd, wd, {}, 1, 1, 1, 1, Conv3dKernel::direct),
      Catch::Contains("direct kernel is for x [N, 1, D, H, W]") && Catch::Contains("Conv3dKernel::automatic"));
  // An empty batch gives an empty output.
  if (here)
    CHECK(zoo::ops::conv3d(torch::zeros({0, 1, 6, 6, 6}), w2, {}, 1, 1).sizes() == torch::IntArrayRef({0, 8, 6, 6, 6}));
}

TEST_CASE("conv3d: one float32 volume runs oneDNN's convolution, not LibTorch's slow native path",
          "[kernels][conv3d]") {
  torch::manual_seed(5);
  // A 16-channel layer at one volume: N C D H = 16 * 8 * 12 <= 20,480, where torch::conv3d takes slow_conv3d; a
  // stride and a dilation too.
  const auto x = torch::randn({1, 16, 8, 12, 10}, torch::requires_grad());
  const auto w = torch::randn({16, 16, 3, 3, 3}, torch::requires_grad());
  const auto b = torch::randn({16}, torch::requires_grad());
  const auto node = [](const torch::Tensor& t) { return t.grad_fn() ? t.grad_fn()->name() : std::string("none"); };
  for (const auto& [stride, dilation] : {std::pair<int64_t, int64_t>{1, 1}, {2, 1}, {1, 2}}) {
    INFO("stride " << stride << ", dilation " << dilation);
    const auto y = zoo::ops::conv3d(x, w, b, stride, dilation, dilation);
    if (!at::hasMKLDNN()) {
      WARN("LibTorch without oneDNN: conv3d of one volume stays torch::conv3d");
      return;
    }
    CHECK(node(y) == "MkldnnConvolutionBackward0");
    // Against float64's convolution: values, and all three gradients.
    const auto xd = x.detach().to(torch::kFloat64).requires_grad_(),
               wd = w.detach().to(torch::kFloat64).requires_grad_(),
               bd = b.detach().to(torch::kFloat64).requires_grad_();
    const auto r = torch::conv3d(xd, wd, bd, stride, dilation, dilation);
    REQUIRE(y.sizes() == r.sizes());
    CHECK((y.to(torch::kFloat64) - r).abs().max().item<double>() < 1e-4 * magnitude(r));
    const auto go = torch::randn(y.sizes());
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    const auto gr = torch::autograd::grad({r}, {xd, wd, bd}, {go.to(torch::kFloat64)});
    for (size_t i = 0; i < 3; ++i)
      CHECK((g[i].to(torch::kFloat64) - gr[i]).abs().max().item<double>() < 1e-4 * magnitude(gr[i]));
  }
  // Two volumes, float64, autocast and a 1x1 kernel at one thread keep torch::conv3d's own choice.
  CHECK(node(zoo::ops::conv3d(torch::cat({x, x}), w, b, 1, 1)) == "ConvolutionBackward0");
  CHECK(node(zoo::ops::conv3d(x.to(torch::kFloat64), w.to(torch::kFloat64), {}, 1, 1)) == "ConvolutionBackward0");
  {
    zoo::ops::AutocastScope autocast(c10::kCPU, torch::kBFloat16, true);
    const auto y = zoo::ops::conv3d(x, w, b, 1, 1);
    CHECK(y.scalar_type() == torch::kBFloat16);
    CHECK(node(y) == "ConvolutionBackward0");
  }
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  CHECK(node(zoo::ops::conv3d(x, torch::randn({8, 16, 1, 1, 1}, torch::requires_grad()), {}, 1, 0)) ==
        "ConvolutionBackward0");
  at::set_num_threads(threads);
}

TEST_CASE("conv3d: models::Conv3d is torch::nn::Conv3d with the direct kernel where it applies", "[kernels][conv3d]") {
  torch::manual_seed(4);
  namespace nn = torch::nn;
  zoo::models::Conv3d layer(nn::Conv3dOptions(1, 8, 3).padding(1));
  // The same parameters under the same names, and the same printout, as torch.nn.Conv3d.
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  CHECK(names == std::vector<std::string>{"weight", "bias"});
  std::ostringstream printed;
  printed << *layer;
  CHECK(printed.str() == "torch::nn::Conv3d(1, 8, kernel_size=[3, 3, 3], stride=[1, 1, 1], padding=[1, 1, 1])");
  const auto x = torch::randn({2, 1, 5, 6, 7});
  CHECK(zoo::test::max_abs(layer->forward(x).to(torch::kFloat64) - exact3d(x, layer->weight, layer->bias)) < 1e-4);
  // Options the direct kernel does not take run torch::nn::Conv3d's forward: "same" padding, reflection padding,
  // stride 2.
  for (auto options : {nn::Conv3dOptions(1, 8, 3).padding(torch::kSame),
                       nn::Conv3dOptions(1, 8, 3).padding(1).padding_mode(torch::kReflect),
                       nn::Conv3dOptions(1, 8, 3).padding(1).stride(2)}) {
    zoo::models::Conv3d ours(options);
    nn::Conv3d theirs(options);
    theirs->weight.data().copy_(ours->weight.data());
    theirs->bias.data().copy_(ours->bias.data());
    CHECK(torch::equal(ours->forward(x), theirs->forward(x)));
  }
}
