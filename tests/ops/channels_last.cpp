// ops::to_channels_last against LibTorch's copy, x.contiguous(torch::MemoryFormat::ChannelsLast): the same values
// and layout, edges of every width (channels and positions not multiples of 8), the gradient contiguous with the same
// values, and the inputs that go to LibTorch's copy.
#include "ops/channels_last.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

bool ran_own(const torch::Tensor& t) {
  return t.grad_fn() && t.grad_fn()->name().find("ToChannelsLastFunction") != std::string::npos;
}

}  // namespace

TEST_CASE("to_channels_last: LibTorch's channels-last copy, and the gradient back contiguous", "[kernels]") {
  torch::manual_seed(0);
  const auto cl = torch::MemoryFormat::ChannelsLast;
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {64, 32, 26, 26}, {3, 5, 7, 9}, {2, 8, 2, 4}, {1, 17, 3, 1}, {2, 9, 8, 8}, {0, 8, 4, 4}}) {
    INFO(c10::str(c10::IntArrayRef(shape)));
    const auto x = torch::randn(shape).to(torch::kBFloat16).requires_grad_();
    const auto y = zoo::ops::to_channels_last(x);
    CHECK(ran_own(y));
    CHECK(y.is_contiguous(cl));
    CHECK(y.sizes() == x.sizes());
    CHECK(torch::equal(y, x.detach().contiguous(cl)));
    // A channels-last gradient (what a channels-last network hands back) and a contiguous one.
    const auto g = torch::randn(shape).to(torch::kBFloat16);
    for (const auto& gradient : {g.contiguous(cl), g}) {
      const auto gx = torch::autograd::grad({y}, {x}, {gradient}, /*retain_graph=*/true)[0];
      CHECK(gx.is_contiguous());
      CHECK(torch::equal(gx, g));
    }
  }
  // Taken as it is: already channels-last. LibTorch's copy: float32, a strided input, a trace.
  const auto x = torch::randn({2, 16, 5, 5}).to(torch::kBFloat16);
  const auto already = x.contiguous(cl);
  CHECK(zoo::ops::to_channels_last(already).data_ptr() == already.data_ptr());
  // One channel: contiguous() keeps strides LibTorch reads as contiguous; these are read as channels-last, in
  // bfloat16 (zoo's transposes) and in float32 (a copy).
  for (const auto type : {torch::kBFloat16, torch::kFloat32}) {
    const auto one = torch::randn({3, 1, 1, 20}).to(type);
    REQUIRE(one.suggest_memory_format() == torch::MemoryFormat::Contiguous);
    const auto y = zoo::ops::to_channels_last(one);
    CHECK(y.suggest_memory_format() == cl);
    CHECK(torch::equal(y, one));
  }
  const auto f = torch::randn({2, 16, 5, 5}, torch::requires_grad());
  const auto yf = zoo::ops::to_channels_last(f);
  CHECK_FALSE(ran_own(yf));
  CHECK(yf.is_contiguous(cl));
  CHECK(torch::equal(yf, f.detach().contiguous(cl)));
  const auto strided = x.transpose(2, 3).requires_grad_();
  CHECK_FALSE(ran_own(zoo::ops::to_channels_last(strided)));
  CHECK(torch::equal(zoo::ops::to_channels_last(strided), strided.detach().contiguous(cl)));
  auto traced = torch::jit::tracer::trace(
      {x},
      [](const torch::jit::Stack& in) -> torch::jit::Stack { return {zoo::ops::to_channels_last(in[0].toTensor())}; },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::contiguous") != std::string::npos);
  // create_graph: the gradient is LibTorch's contiguous copy of the incoming one, differentiable again.
  const auto xg = x.clone().requires_grad_();
  const auto gg = torch::randn({2, 16, 5, 5}).to(torch::kBFloat16).contiguous(cl).requires_grad_();
  const auto first = torch::autograd::grad({zoo::ops::to_channels_last(xg)}, {xg}, {gg}, true, true)[0];
  CHECK(torch::equal(first, gg.detach()));
  const auto second = torch::autograd::grad({first.to(torch::kFloat32).sum()}, {gg})[0];
  CHECK(torch::equal(second, torch::ones_like(second)));
  CHECK_THROWS_WITH(zoo::ops::to_channels_last(torch::randn({2, 3, 4})), Catch::Contains("[N, C, H, W]"));
}
