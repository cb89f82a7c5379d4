// ops::mix_streams: the mixing kernel against torch::matmul in float64 (values, both gradients), for every stream
// count 1-8 and tail length, float32 and bfloat16 streams, under autocast (result type and precision), the same
// bits at 1 and 2 threads, second derivatives, and the cases that fall back to torch::matmul.
#include "ops/stream_mix.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

using zoo::ops::mix_streams;
using zoo::test::max_rel;

namespace {

struct Mixed {
  torch::Tensor out, dh, dx;
};

/// out = mix_streams(h, x) (or torch::matmul with `fast` false) and the gradients of sum(out * go).
Mixed run(const torch::Tensor& h0, const torch::Tensor& x0, const torch::Tensor& go, bool fast) {
  auto h = h0.detach().clone().requires_grad_(), x = x0.detach().clone().requires_grad_();
  auto out = mix_streams(h, x, fast);
  (out.to(torch::kFloat64) * go).sum().backward();
  return {out.detach(), h.grad(), x.grad()};
}

}  // namespace

TEST_CASE("mix_streams: torch::matmul's values and gradients, float32, every stream count and tail", "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: mix_streams is torch::matmul here");
    return;
  }
  torch::manual_seed(0);
  for (int64_t n = 1; n <= 8; ++n) {
    for (int64_t L : {1, 7, 8, 9, 23, 200}) {
      const auto h = torch::rand({5, n, n}), x = torch::randn({5, n, L}),
                 go = torch::randn({5, n, L}).to(torch::kDouble);
      const auto ours = run(h, x, go, true), theirs = run(h, x, go, false);
      const auto truth = run(h.to(torch::kDouble), x.to(torch::kDouble), go, false);
      INFO(n << " streams, L = " << L);
      CHECK(ours.out.scalar_type() == torch::kFloat32);
      CHECK(ours.dh.scalar_type() == torch::kFloat32);
      CHECK(ours.dx.scalar_type() == torch::kFloat32);
      for (auto [a, b, t] : {std::tuple{ours.out, theirs.out, truth.out}, std::tuple{ours.dh, theirs.dh, truth.dh},
                             std::tuple{ours.dx, theirs.dx, truth.dx}}) {
        INFO("error " << max_rel(a, t) << ", LibTorch's " << max_rel(b, t));
        CHECK(max_rel(a, t) <= 3 * max_rel(b, t) + 1e-6);
        CHECK(max_rel(a, t) < 1e-5);
      }
    }
  }
}

TEST_CASE("mix_streams: bfloat16 streams and autocast give torch::matmul's types, closer to exact", "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: mix_streams is torch::matmul here");
    return;
  }
  torch::manual_seed(1);
  // A gradient that bfloat16 holds exactly (a bfloat16 output's gradient arrives in bfloat16).
  const auto h = torch::rand({16, 4, 4}), go = torch::randn({16, 4, 99}).to(torch::kBFloat16).to(torch::kDouble);
  const auto x16 = torch::randn({16, 4, 99}).to(torch::kBFloat16);
  // The exact mixing of the bfloat16 streams (the operands autocast would hand matmul, but H unrounded).
  const auto truth = run(h.to(torch::kDouble), x16.to(torch::kDouble), go, false);
  SECTION("under autocast: bfloat16 out, as matmul; float32 H and bfloat16 x") {
    Mixed ours, theirs;
    {
      zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
      ours = run(h, x16, go, true);
      theirs = run(h, x16, go, false);
    }
    CHECK(ours.out.scalar_type() == theirs.out.scalar_type());
    CHECK(ours.out.scalar_type() == torch::kBFloat16);
    CHECK(ours.dh.scalar_type() == torch::kFloat32);
    CHECK(ours.dx.scalar_type() == torch::kBFloat16);
    // LibTorch rounds H to bfloat16 first: the kernel, which does not, is at least as close.
    CHECK(max_rel(ours.out, truth.out) <= max_rel(theirs.out, truth.out) + 1e-6);
    CHECK(max_rel(ours.out, truth.out) < 8e-3);  // one bfloat16 rounding of the result
    CHECK(max_rel(ours.dh, truth.dh) < 1e-5);
    CHECK(max_rel(ours.dx, truth.dx) < 8e-3);
    // float32 streams under autocast: bfloat16 out too.
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    CHECK(mix_streams(h, x16.to(torch::kFloat32)).scalar_type() == torch::kBFloat16);
  }
  SECTION("without autocast: bfloat16 H and x give bfloat16, float32 H and bfloat16 x float32") {
    const auto hb = h.to(torch::kBFloat16);
    CHECK(mix_streams(hb, x16).scalar_type() == torch::matmul(hb, x16).scalar_type());
    const auto ours = run(hb, x16, go, true);
    CHECK(ours.dh.scalar_type() == torch::kBFloat16);
    CHECK(max_rel(ours.out, torch::matmul(hb.to(torch::kDouble), x16.to(torch::kDouble))) < 8e-3);
  }
}

TEST_CASE("mix_streams: the same bits at 1 and 2 threads, second derivatives, and the fallbacks", "[kernels][mhc]") {
  torch::manual_seed(2);
  const auto h = torch::rand({64, 4, 4}), x = torch::randn({64, 4, 2000}), go = torch::randn({64, 4, 2000});
  auto at = [&](int threads) {
    torch::set_num_threads(threads);
    return run(h, x, go.to(torch::kDouble), true);
  };
  const auto one = at(1), two = at(2);
  torch::set_num_threads(1);
  CHECK(torch::equal(one.out, two.out));
  CHECK(torch::equal(one.dh, two.dh));
  CHECK(torch::equal(one.dx, two.dx));

  // Under create_graph the gradients are differentiable again: d/dh of <dL/dx, v> equals matmul's.
  auto second = [&](bool fast) {
    auto hh = h.slice(0, 0, 3).clone().to(torch::kDouble).requires_grad_();
    auto xx = x.slice(0, 0, 3).slice(2, 0, 40).clone().to(torch::kDouble).requires_grad_();
    auto out = mix_streams(hh.to(torch::kFloat32), xx.to(torch::kFloat32), fast);
    auto gx = torch::autograd::grad({(out * out).sum()}, {xx}, {}, true, true)[0];
    return torch::autograd::grad({gx.sum()}, {hh})[0];
  };
  CHECK(max_rel(second(true), second(false)) < 1e-5);

  // Fallbacks to torch::matmul: broadcast H, more than 8 streams, non-contiguous or double x, no AVX2, a trace.
  CHECK(mix_streams(h[0], x).sizes() == torch::matmul(h[0], x).sizes());
  const auto h9 = torch::rand({2, 9, 9}), x9 = torch::randn({2, 9, 5});
  CHECK(torch::allclose(mix_streams(h9, x9), torch::matmul(h9, x9)));
  const auto xt = torch::randn({2, 5, 3}).transpose(1, 2), h3 = torch::rand({2, 3, 3});
  CHECK(torch::equal(mix_streams(h3, xt), torch::matmul(h3, xt)));
  const auto hd = h.to(torch::kDouble), xd = x.to(torch::kDouble);
  CHECK(torch::equal(mix_streams(hd, xd), torch::matmul(hd, xd)));
  {
    zoo::ops::ScalarOnly scalar;
    CHECK(torch::equal(mix_streams(h, x), torch::matmul(h, x)));
  }
  auto traced = torch::jit::tracer::trace(
      {h, x},
      [](const torch::jit::Stack& in) -> torch::jit::Stack {
        return {mix_streams(in[0].toTensor(), in[1].toTensor())};
      },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::matmul") != std::string::npos);
}
