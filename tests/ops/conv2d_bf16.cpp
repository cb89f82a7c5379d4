// conv2d_bf16: zoo's direct bfloat16 convolution (AVX512-BF16) against float64's convolution of the same bfloat16
// values, for every geometry it takes, and autocast's rule that sends 1-D convolutions to it.
#include "ops/conv2d_bf16.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <deque>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>

using zoo::ops::detail::conv2d_bf16;
using zoo::test::within_rounding;

namespace {

struct Case {
  int64_t n, c, h, w, o, lead, kh, kw, sh, sw, ph, pw;
};

std::string describe(const Case& s) {
  std::ostringstream out;
  out << "x [" << s.n << ", " << s.c << ", " << s.h << ", " << s.w << "], " << s.o << " outputs, lead " << s.lead
      << ", kernel " << s.kh << "x" << s.kw << ", stride " << s.sh << "x" << s.sw << ", padding " << s.ph << "x"
      << s.pw;
  return out.str();
}

// The names of the autograd nodes behind t.
std::set<std::string> graph_nodes(const torch::Tensor& t) {
  std::set<std::string> names;
  std::deque<std::shared_ptr<torch::autograd::Node>> todo{t.grad_fn()};
  while (!todo.empty()) {
    auto node = todo.front();
    todo.pop_front();
    if (!node || !names.insert(node->name()).second) continue;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function);
  }
  return names;
}

bool ran_zoo_kernel(const torch::Tensor& t) {
  for (const auto& name : graph_nodes(t))
    if (name.find("Conv2dBf16Function") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("conv2d_bf16: outputs and all three gradients equal float64's convolution of the same bfloat16 values",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: zoo's bfloat16 convolution is not tested here");
    return;
  }
  torch::manual_seed(7);
  // Hand-picked: the ODE-ResNet's stem (4x4, stride 2) and field (3x3 with its time channel), a first layer of one
  // channel, the 1-D ConvNet's layers as single rows (long rows: 12-pixel blocks), 16- and 32-channel panels with
  // partial last ones, odd widths, strides up to the kernel's size.
  std::vector<Case> cases{{4, 32, 26, 26, 32, 0, 4, 4, 2, 2, 1, 1},
                          {4, 32, 13, 13, 32, 0, 4, 4, 2, 2, 1, 1},
                          {3, 1, 28, 28, 32, 0, 3, 3, 1, 1, 0, 0},
                          {8, 32, 6, 6, 32, 1, 3, 3, 1, 1, 1, 1},
                          {4, 16, 1, 256, 32, 0, 1, 3, 1, 2, 0, 1},
                          {2, 1, 1, 37, 16, 0, 1, 3, 1, 1, 0, 1},
                          {2, 5, 7, 9, 12, 1, 3, 3, 1, 1, 1, 1},
                          {2, 3, 9, 8, 19, 0, 5, 5, 3, 3, 2, 2},
                          {2, 7, 6, 5, 40, 2, 2, 2, 2, 2, 0, 0},
                          {1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0},
                          {2, 6, 8, 8, 8, 0, 7, 7, 1, 1, 3, 3},
                          {1, 3, 5, 5, 4, 0, 4, 4, 4, 4, 0, 0},
                          // stride-2 input gradients whose column phases end in blocks of 7 (4 + 3) and 5 pixels
                          {2, 16, 1, 38, 16, 0, 1, 3, 1, 2, 0, 1},
                          {1, 32, 3, 22, 24, 0, 3, 3, 2, 2, 1, 1}};
  // And random geometries: 1-5 taps per axis, any stride up to the kernel, any padding below it.
  std::mt19937 random(11);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  for (int i = 0; i < 30; ++i) {
    const int64_t kh = pick(1, 5), kw = pick(1, 5), ph = pick(0, kh - 1), pw = pick(0, kw - 1);
    cases.push_back({pick(1, 3), pick(1, 9), std::max<int64_t>(1, kh - 2 * ph) + pick(0, 8),
                     std::max<int64_t>(1, kw - 2 * pw) + pick(0, 16), pick(1, 40), pick(0, 1), kh, kw, pick(1, kh),
                     pick(1, kw), ph, pw});
  }
  for (const auto& s : cases) {
    INFO(describe(s));
    const auto x = torch::randn({s.n, s.c, s.h, s.w}).to(torch::kBFloat16).requires_grad_();
    const auto w = torch::randn({s.o, s.c + s.lead, s.kh, s.kw}, torch::requires_grad());
    const auto b = torch::randn({s.o}, torch::requires_grad());
    const double t = 0.375;  // exact in bfloat16
    const auto y = conv2d_bf16(x, w, b, {s.sh, s.sw}, {s.ph, s.pw}, t);
    REQUIRE(y.scalar_type() == torch::kBFloat16);
    const auto go = torch::randn(y.sizes()).to(torch::kBFloat16);
    const auto g = torch::autograd::grad({y}, {x, w, b}, {go});
    CHECK(g[0].scalar_type() == torch::kBFloat16);
    CHECK(g[1].scalar_type() == torch::kFloat32);
    CHECK(g[2].scalar_type() == torch::kFloat32);
    // The exact values: the operands as the kernel sees them (the weight rounded to bfloat16), in float64.
    const auto xd = x.detach().to(torch::kFloat64).requires_grad_();
    const auto wd = w.detach().to(torch::kBFloat16).to(torch::kFloat64).requires_grad_();
    const auto bd = b.detach().to(torch::kFloat64).requires_grad_();
    auto in = xd;
    if (s.lead > 0) in = torch::cat({torch::full({s.n, s.lead, s.h, s.w}, t, xd.options()), xd}, 1);
    const auto r = torch::conv2d(in, wd, bd, {s.sh, s.sw}, {s.ph, s.pw});
    REQUIRE(y.sizes() == r.sizes());
    const auto gr = torch::autograd::grad({r}, {xd, wd, bd}, {go.to(torch::kFloat64)});
    CHECK(within_rounding(y, r, 1.0 / 256));
    CHECK(within_rounding(g[0], gr[0], 1.0 / 256));
    CHECK(within_rounding(g[1], gr[1], 0.0));
    CHECK(within_rounding(g[2], gr[2], 0.0));
    // Rounding happened (the test would not see a kernel that computed in float32 and returned float32 values).
    CHECK((y.to(torch::kFloat64) - r).abs().max().item<double>() > 0);
  }
}

TEST_CASE("conv2d_bf16: the same bits at 1 and 2 threads, and a float32 input's gradient in float32",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  torch::manual_seed(8);
  const auto x = torch::randn({6, 20, 13, 11}, torch::requires_grad());  // float32: rounded to bfloat16 inside
  const auto w = torch::randn({24, 20, 4, 4}, torch::requires_grad());
  const auto b = torch::randn({24}, torch::requires_grad());
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    const auto y = conv2d_bf16(x, w, b, {2, 2}, {1, 1});
    auto g = torch::autograd::grad({y}, {x, w, b}, {torch::ones_like(y)});
    at::set_num_threads(before);
    g.insert(g.begin(), y);
    return g;
  };
  const auto one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) CHECK(torch::equal(one[i], two[i]));
  CHECK(one[1].scalar_type() == torch::kFloat32);  // x's gradient back in x's type
}

TEST_CASE("conv2d_bf16: second derivatives through its backward, and the geometries it refuses",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) return;
  torch::manual_seed(9);
  const auto x = torch::randn({2, 3, 7, 7}).to(torch::kBFloat16).requires_grad_();
  const auto w = torch::randn({4, 3, 4, 4}).to(torch::kBFloat16).requires_grad_();
  auto penalty = [&](bool zoo_kernel) {
    const auto out = zoo_kernel ? conv2d_bf16(x, w, {}, {2, 2}, {1, 1}) : torch::conv2d(x, w, {}, 2, 1);
    const auto gx = torch::autograd::grad({torch::tanh(out).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.to(torch::kFloat32).pow(2).sum()}, {w})[0].to(torch::kFloat32);
  };
  const auto expected = penalty(false), got = penalty(true);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK((got - expected).abs().max().item<double>() < 0.05 * expected.abs().max().item<double>());

  using zoo::ops::detail::conv2d_bf16_geometry;
  const auto x4 = torch::zeros({1, 3, 8, 8}), w3 = torch::zeros({4, 3, 3, 3});
  CHECK(conv2d_bf16_geometry(x4, w3, {1, 1}, {1, 1}));
  CHECK(conv2d_bf16_geometry(x4, w3, {3, 3}, {2, 2}));
  CHECK_FALSE(conv2d_bf16_geometry(x4, w3, {4, 1}, {1, 1}));                          // a stride past the kernel
  CHECK_FALSE(conv2d_bf16_geometry(x4, w3, {1, 1}, {3, 1}));                          // padding as large as the kernel
  CHECK_FALSE(conv2d_bf16_geometry(x4, torch::zeros({4, 3, 8, 8}), {1, 1}, {0, 0}));  // 8 taps
  CHECK_FALSE(conv2d_bf16_geometry(x4, torch::zeros({4, 2, 3, 3}), {1, 1}, {1, 1}));  // fewer weight channels
  CHECK_FALSE(conv2d_bf16_geometry(torch::zeros({1, 3, 2, 2}), w3, {1, 1}, {0, 0}));  // smaller than the kernel
  CHECK_THROWS_WITH(conv2d_bf16(x, w, {}, {5, 1}, {1, 1}), Catch::Contains("strides up to the kernel"));
}

TEST_CASE("cpu_has_amx_bf16: what /proc/cpuinfo says, off without AVX512-BF16, overridden per thread",
          "[kernels][precision]") {
  using zoo::ops::detail::cpu_has_amx_bf16;
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      flags = " " + line.substr(line.find(':') + 1) + " ";
      break;
    }
  const bool listed = flags.find(" amx_bf16 ") != std::string::npos && flags.find(" amx_tile ") != std::string::npos;
  if (std::getenv("ZOO_CPU_AMX") == nullptr && !flags.empty()) {
    // Linux lists the AMX flags where it also grants the tile state, which the check asks for.
    CHECK(cpu_has_amx_bf16() == (listed && zoo::ops::detail::cpu_has_avx512_bf16()));
  }
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    zoo::ops::detail::AmxOverride amx(true);
    CHECK_FALSE(cpu_has_amx_bf16());
    return;
  }
  const bool before = cpu_has_amx_bf16();
  {
    zoo::ops::detail::AmxOverride amx(true);
    CHECK(cpu_has_amx_bf16());
    {
      zoo::ops::detail::AmxOverride none(false);
      CHECK_FALSE(cpu_has_amx_bf16());
    }
    CHECK(cpu_has_amx_bf16());
    bool other_thread = !before;
    std::thread([&] { other_thread = cpu_has_amx_bf16(); }).join();
    CHECK(other_thread == before);  // per thread
    zoo::ops::detail::WithoutBf16Kernel library;
    CHECK_FALSE(cpu_has_amx_bf16());
  }
  CHECK(cpu_has_amx_bf16() == before);
}

TEST_CASE("conv2d_bf16: autocast runs 1-D convolutions of up to 64 channels through it, others as before",
          "[kernels][precision]") {
  if (!zoo::ops::detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512-BF16: autocast's 1-D convolutions run LibTorch's rule here, not tested");
    return;
  }
  zoo::ops::detail::AmxOverride no_amx(false);  // AVX512-BF16 without AMX: the rule's CPUs
  torch::manual_seed(10);
  const auto x = torch::randn({4, 16, 50});
  const auto w = torch::randn({32, 16, 3}, torch::requires_grad());
  const auto b = torch::randn({32}, torch::requires_grad());
  // float64's convolution of the operands rounded to bfloat16 (the bias is added in float32).
  auto exact = [&](int64_t stride) {
    const auto r = [](const torch::Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kFloat64); };
    return torch::conv1d(r(x), r(w), b.detach().to(torch::kFloat64), stride, 1);
  };
  zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
  SECTION("as one row of a 2-D convolution, the master weight's gradient in float32") {
    const auto y = torch::conv1d(x, w, b, 2, 1);
    CHECK(ran_zoo_kernel(y));
    CHECK(y.scalar_type() == torch::kBFloat16);
    CHECK(y.sizes() == torch::IntArrayRef({4, 32, 25}));
    CHECK(within_rounding(y, exact(2), 1.0 / 256));
    y.to(torch::kFloat32).sum().backward();
    CHECK(w.grad().scalar_type() == torch::kFloat32);
    CHECK(within_rounding(b.grad(), torch::full({32}, 4.0 * 25), 0.0));  // 4 items x 25 outputs per channel
  }
  SECTION("what it does not take runs autocast's own rule: bfloat16 through LibTorch") {
    const std::vector<torch::Tensor> outputs{
        torch::conv1d(x, torch::randn({65, 16, 3}), torch::randn({65}), 1, 1),  // 65 outputs
        torch::conv1d(x, w, b, 1, 3, /*dilation=*/3),
        torch::conv1d(x, torch::randn({32, 8, 3}), b, 1, 1, 1, /*groups=*/2),
        torch::conv2d(x.unsqueeze(2), w.unsqueeze(2), b, 1, 1)};  // 2-D convolutions stay with oneDNN
    for (const auto& y : outputs) {
      CHECK(y.scalar_type() == torch::kBFloat16);
      CHECK_FALSE(ran_zoo_kernel(y));
    }
    zoo::ops::detail::WithoutBf16Kernel library;  // a CPU without AVX512-BF16
    const auto y = torch::conv1d(x, w, b, 2, 1);
    CHECK(y.scalar_type() == torch::kBFloat16);
    CHECK_FALSE(ran_zoo_kernel(y));
    const auto e = exact(2);
    CHECK((y.to(torch::kFloat64) - e).abs().max().item<double>() < 1.0 / 64 * e.abs().max().item<double>());
  }
  SECTION("on a CPU with AMX a 2-D convolution of one row in channels-last: autocast's rule's bits, NLC strides") {
    zoo::ops::detail::AmxOverride amx(true);
    // The rule's casts by hand, through LibTorch's 1-D convolution (oneDNN reorders to channels-last and back).
    auto rule = [](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias, int64_t stride,
                   int64_t padding, int64_t dilation, int64_t groups) {
      zoo::ops::Float32Region outside;
      return torch::conv1d(in.to(torch::kBFloat16), weight.to(torch::kBFloat16), bias.to(torch::kBFloat16), stride,
                           padding, dilation, groups);
    };
    struct Geometry {
      int64_t n, c, l, o, k, stride, padding, dilation, groups;
    };
    for (const auto& g : {Geometry{4, 16, 50, 32, 3, 2, 1, 1, 1}, Geometry{64, 1, 256, 16, 3, 1, 1, 1, 1},
                          Geometry{3, 16, 40, 65, 5, 1, 2, 1, 1}, Geometry{2, 16, 30, 32, 3, 1, 3, 3, 1},
                          Geometry{2, 16, 30, 32, 3, 1, 1, 1, 2}, Geometry{0, 16, 30, 32, 3, 1, 1, 1, 1}}) {
      INFO("x [" << g.n << ", " << g.c << ", " << g.l << "], " << g.o << " outputs, kernel " << g.k << ", stride "
                 << g.stride << ", padding " << g.padding << ", dilation " << g.dilation << ", groups " << g.groups);
      auto xa = torch::randn({g.n, g.c, g.l}, torch::requires_grad());
      auto wa = torch::randn({g.o, g.c / g.groups, g.k}, torch::requires_grad());
      auto ba = torch::randn({g.o}, torch::requires_grad());
      auto xb = xa.detach().clone().requires_grad_(true), wb = wa.detach().clone().requires_grad_(true),
           bb = ba.detach().clone().requires_grad_(true);
      const auto y = torch::conv1d(xa, wa, ba, g.stride, g.padding, g.dilation, g.groups);
      const auto expected = rule(xb, wb, bb, g.stride, g.padding, g.dilation, g.groups);
      CHECK_FALSE(ran_zoo_kernel(y));
      CHECK(y.scalar_type() == torch::kBFloat16);
      CHECK(y.sizes() == expected.sizes());
      CHECK(torch::equal(y, expected));
      if (g.n > 0) CHECK(y.transpose(1, 2).is_contiguous());  // [N, O, L] stored as [N, L, O]
      const auto gy = torch::randn(y.sizes());
      (y.to(torch::kFloat32) * gy).sum().backward();
      (expected.to(torch::kFloat32) * gy).sum().backward();
      CHECK(torch::equal(xa.grad(), xb.grad()));
      CHECK(torch::equal(wa.grad(), wb.grad()));
      CHECK(torch::equal(ba.grad(), bb.grad()));
    }
    // A stack, as the 1-D ConvNet's: the second convolution reads the first's output, stored as [N, L, O], and gives
    // the rule's bits and the same layout.
    const auto h = torch::relu(torch::conv1d(x, w, b, 1, 1));
    CHECK(h.transpose(1, 2).is_contiguous());
    // A view across the channel and length axes is refused with LibTorch's message, which names the fix.
    CHECK_THROWS_WITH(h.view({h.size(0), -1}), Catch::Contains("Use .reshape(...) instead"));
    CHECK(torch::equal(h.reshape({h.size(0), -1}), h.contiguous().view({h.size(0), -1})));
    const auto w2 = torch::randn({8, 32, 3});
    const auto y2 = torch::conv1d(h, w2, {}, 2, 1);
    CHECK(y2.transpose(1, 2).is_contiguous());
    zoo::ops::Float32Region outside;
    CHECK(torch::equal(y2, torch::conv1d(h, w2.to(torch::kBFloat16), {}, 2, 1)));
  }
  SECTION("a trace records LibTorch's convolution") {
    const auto wc = w.detach(), bc = b.detach();  // constants of the trace
    auto traced = torch::jit::tracer::trace(
        {x},
        [&](const torch::jit::Stack& in) -> torch::jit::Stack { return {torch::conv1d(in[0].toTensor(), wc, bc)}; },
        [](const torch::Tensor&) { return std::string(); });
    const auto graph = traced.first->graph->toString();
    INFO(graph);
    CHECK(graph.find("aten::_convolution") != std::string::npos);  // what LibTorch's own rule records too
  }
}
