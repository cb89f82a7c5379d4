// ops::relu against torch::relu itself: values and gradients bit for bit on random and special patterns (both
// zeros, infinities, NaNs, subnormals), every tail length, 1 and 2 threads, dense layouts other than the contiguous
// one (channels-last, transposed: the output in the input's strides); the fallbacks; and the CPU autocast rule
// that routes torch::relu of a bfloat16 tensor to the kernel under bf16-mixed.
#include "ops/relu.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

namespace ops = zoo::ops;

namespace {

torch::Tensor from_bits(const std::vector<uint16_t>& patterns) {
  auto t = torch::empty({static_cast<int64_t>(patterns.size())}, torch::kBFloat16);
  std::memcpy(t.data_ptr(), patterns.data(), patterns.size() * sizeof(uint16_t));
  return t;
}

std::vector<uint16_t> bits_of(const torch::Tensor& t) {
  const auto c = t.contiguous();
  std::vector<uint16_t> out(static_cast<size_t>(c.numel()));
  std::memcpy(out.data(), c.data_ptr(), out.size() * sizeof(uint16_t));
  return out;
}

bool is_nan(uint16_t u) { return (u & 0x7FFF) > 0x7F80; }

/// The same patterns, except that where both are NaN any NaN pattern will do (LibTorch's vectorized and scalar
/// paths return different NaNs).
void check_same_bits(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  INFO(what);
  const auto x = bits_of(a), y = bits_of(b);
  REQUIRE(x.size() == y.size());
  int64_t different = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] != y[i] && !(is_nan(x[i]) && is_nan(y[i]))) {
      if (different++ < 5) UNSCOPED_INFO("element " << i << ": 0x" << std::hex << x[i] << " against 0x" << y[i]);
    }
  CHECK(different == 0);
}

/// ops::relu and torch::relu on x, forward and backward with the gradient g.
void check_against_libtorch(const torch::Tensor& x, const std::string& what) {
  REQUIRE(ops::detail::relu_kernel_applies(x));
  auto a = x.clone().requires_grad_(true), b = x.clone().requires_grad_(true);
  const auto ya = ops::relu(a), yb = torch::relu(b);
  check_same_bits(ya, yb, what + ": values");
  const auto g = torch::empty_like(x).copy_(torch::randn(x.sizes()));  // in x's strides: the kernel's backward
  ya.backward(g);
  yb.backward(g);
  check_same_bits(a.grad(), b.grad(), what + ": gradients");
}

/// Every interesting pattern: both zeros, the smallest and largest subnormals and normals of both signs, infinities,
/// quiet and signalling NaNs of both signs with payloads.
std::vector<uint16_t> special_patterns() {
  return {0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x807F, 0x0080, 0x8080, 0x3F80, 0xBF80, 0x7F7F,
          0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7FC1, 0xFFC1, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF};
}

}  // namespace

TEST_CASE("ops::relu: torch::relu's values and gradients for bfloat16, special patterns and every tail",
          "[kernels][relu]") {
  if (!ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2: ops::relu is torch::relu here");
    return;
  }
  torch::manual_seed(0);
  const auto special = special_patterns();
  check_against_libtorch(from_bits(special), "special patterns");
  // Each special pattern at every position of a vector of 16 and of the tail after it.
  for (size_t s = 0; s < special.size(); ++s)
    for (int64_t at = 0; at < 37; at += 3) {
      auto x = torch::randn({37}).to(torch::kBFloat16);
      std::memcpy(static_cast<uint16_t*>(x.data_ptr()) + at, &special[s], sizeof(uint16_t));
      check_against_libtorch(x, "pattern " + std::to_string(s) + " at " + std::to_string(at));
    }
  for (int64_t n = 1; n <= 70; ++n)
    check_against_libtorch(torch::randn({n}).to(torch::kBFloat16), "length " + std::to_string(n));
  check_against_libtorch(torch::randn({64, 32, 28, 28}).to(torch::kBFloat16), "the cnn's first map");
  // Every one of the 65,536 patterns.
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  check_against_libtorch(from_bits(all), "every pattern");
}

TEST_CASE("ops::relu: the same bits at 1 and 2 threads on a tensor split between them", "[kernels][relu]") {
  if (!ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(1);
  const auto x = torch::randn({3 * ops::kGrain + 5}).to(torch::kBFloat16);
  const auto g = torch::randn(x.sizes()).to(torch::kBFloat16);
  std::vector<std::vector<uint16_t>> values, gradients;
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    auto a = x.clone().requires_grad_(true);
    const auto y = ops::relu(a);
    y.backward(g);
    values.push_back(bits_of(y));
    gradients.push_back(bits_of(a.grad()));
  }
  torch::set_num_threads(1);
  CHECK(values[0] == values[1]);
  CHECK(gradients[0] == gradients[1]);
  check_same_bits(from_bits(values[0]), torch::relu(x), "against torch::relu");
}

TEST_CASE("ops::relu: channels-last and transposed inputs keep their strides, as torch::relu's", "[kernels][relu]") {
  if (!ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(3);
  const auto base = torch::randn({4, 24, 3, 5}).to(torch::kBFloat16);
  const std::vector<std::pair<std::string, torch::Tensor>> layouts{
      {"channels-last", base.contiguous(torch::MemoryFormat::ChannelsLast)},
      {"NLC-strided 1-D map", base.flatten(2).transpose(1, 2).contiguous().transpose(1, 2)},
      {"transposed matrix", base.flatten(1).t()},
      {"channels-last 3-D",
       torch::randn({2, 20, 3, 4, 5}).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast3d)}};
  for (const auto& [name, x] : layouts) {
    INFO(name);
    REQUIRE_FALSE(x.is_contiguous());
    check_against_libtorch(x, name);
    const auto y = ops::relu(x);
    CHECK(y.strides() == x.strides());
    CHECK(y.strides() == torch::relu(x).strides());
    // A gradient in other strides than the output's (contiguous): LibTorch's backward, the same values.
    auto a = x.clone().requires_grad_(true), b = x.clone().requires_grad_(true);
    const auto g = torch::randn(x.sizes()).to(torch::kBFloat16);
    REQUIRE(g.strides() != x.strides());
    ops::relu(a).backward(g);
    torch::relu(b).backward(g);
    check_same_bits(a.grad(), b.grad(), name + ": a contiguous gradient");
  }
}

TEST_CASE("ops::relu: other inputs, other gradients and second derivatives go to LibTorch", "[kernels][relu]") {
  torch::manual_seed(2);
  const auto x = torch::randn({4, 6});
  CHECK_FALSE(ops::detail::relu_kernel_applies(x));            // float32
  const auto gaps = x.to(torch::kBFloat16).slice(1, 0, 6, 2);  // every other column: not dense
  CHECK_FALSE(ops::detail::relu_kernel_applies(gaps));
  CHECK(torch::equal(ops::relu(x), torch::relu(x)));
  CHECK(torch::equal(ops::relu(gaps), torch::relu(gaps)));
  if (!ops::cpu_has_avx2_fma()) return;
  // An expanded gradient (what a mean's backward hands on): LibTorch's threshold_backward.
  auto a = x.to(torch::kBFloat16).requires_grad_(true);
  ops::relu(a).mean().backward();
  auto b = x.to(torch::kBFloat16).requires_grad_(true);
  torch::relu(b).mean().backward();
  CHECK(torch::equal(a.grad(), b.grad()));
  // create_graph: the gradient is differentiable again; relu's second derivative is zero, the gradient's own
  // gradient with respect to the incoming gradient is the mask.
  auto c = x.to(torch::kBFloat16).requires_grad_(true);
  auto g = torch::ones({4, 6}, torch::kBFloat16).requires_grad_(true);
  const auto first = torch::autograd::grad({ops::relu(c)}, {c}, {g}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  CHECK(torch::equal(first, (x > 0).to(torch::kBFloat16)));
  const auto second = torch::autograd::grad({first.sum()}, {g})[0];
  CHECK(torch::equal(second, (x > 0).to(torch::kBFloat16)));
  // A trace records aten::relu (TorchScript and Python load it).
  const auto input = x.to(torch::kBFloat16);
  auto traced = torch::jit::tracer::trace(
      {input}, [](const torch::jit::Stack& in) -> torch::jit::Stack { return {ops::relu(in[0].toTensor())}; },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::relu") != std::string::npos);
}

TEST_CASE("ops::relu: under CPU autocast torch::relu of a bfloat16 tensor runs the kernel, float32 stays float32",
          "[kernels][relu][precision]") {
  if (!ops::cpu_has_avx2_fma()) return;
  // The kernel returns a NaN's own pattern; LibTorch's vectorized relu (32 elements and more here) returns a NaN
  // of its own (0xFFFF), never 0xFFC1: the pattern shows which ran.
  std::vector<uint16_t> patterns(64, 0x3F80);  // 1.0
  patterns[0] = 0xFFC1;
  patterns[1] = 0xBF80;  // -1.0
  patterns[2] = 0x8000;  // -0.0
  const auto x = from_bits(patterns);
  CHECK(bits_of(torch::relu(x))[0] != 0xFFC1);  // outside autocast: LibTorch's
  ops::AutocastScope scope(c10::kCPU, torch::kBFloat16);
  const auto y = bits_of(torch::relu(x));
  CHECK(y[0] == 0xFFC1);
  CHECK(y[1] == 0x0000);
  CHECK(y[2] == 0x8000);
  CHECK(y[3] == 0x3F80);
  const auto f = torch::relu(torch::tensor({-1.0f, 2.0f}));
  CHECK(f.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(f, torch::tensor({0.0f, 2.0f})));
  // nn::ReLU, as the models use it, takes the same path, with gradients.
  auto a = torch::randn({64, 8, 5, 5}).to(torch::kBFloat16).requires_grad_(true);
  torch::nn::ReLU module;
  const auto out = module(a);
  const auto g = torch::randn(out.sizes()).to(torch::kBFloat16);
  out.backward(g);
  auto b = a.detach().clone().requires_grad_(true);
  const ops::Float32Region libtorch;  // autocast off: LibTorch's relu
  const auto reference = torch::relu(b);
  reference.backward(g);
  CHECK(torch::equal(out, reference));
  CHECK(torch::equal(a.grad(), b.grad()));
}
