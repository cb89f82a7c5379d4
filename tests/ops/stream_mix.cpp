// ops::mix_streams: the mixing kernel against torch::matmul in float64 (values, both gradients), for every stream
// count 1-8 (into as many streams or one) and tail length, float32 and bfloat16 streams, under autocast (result type
// and precision), the same bits at 1 and 2 threads, second derivatives, and the cases that fall back to
// torch::matmul. ops::mix_streams_add (H x + p f) the same way against its plain path in float64.
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
    // n output streams (H_res x), or one (H_pre x: h [B, 1, n]).
    for (const int64_t m : {n, int64_t{1}}) {
      for (int64_t L : {1, 7, 8, 9, 23, 200}) {
        const auto h = torch::rand({5, m, n}), x = torch::randn({5, n, L}),
                   go = torch::randn({5, m, L}).to(torch::kDouble);
        const auto ours = run(h, x, go, true), theirs = run(h, x, go, false);
        const auto truth = run(h.to(torch::kDouble), x.to(torch::kDouble), go, false);
        INFO(n << " streams into " << m << ", L = " << L);
        CHECK(ours.out.sizes() == torch::IntArrayRef{5, m, L});
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

namespace {

struct MixedAdd {
  torch::Tensor out, dh, dx, dp, df;
};

/// out = mix_streams_add(h, x, p, f) (the plain path with `fast` false) and the gradients of sum(out * go).
MixedAdd run_add(const torch::Tensor& h0, const torch::Tensor& x0, const torch::Tensor& p0, const torch::Tensor& f0,
                 const torch::Tensor& go, bool fast) {
  auto h = h0.detach().clone().requires_grad_(), x = x0.detach().clone().requires_grad_(),
       p = p0.detach().clone().requires_grad_(), f = f0.detach().clone().requires_grad_();
  auto out = zoo::ops::mix_streams_add(h, x, p, f, fast);
  (out.to(torch::kFloat64) * go).sum().backward();
  return {out.detach(), h.grad(), x.grad(), p.grad(), f.grad()};
}

}  // namespace

TEST_CASE("mix_streams_add: H x + p f in one pass, its four gradients, every stream count and tail", "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: mix_streams_add is the plain path here");
    return;
  }
  torch::manual_seed(3);
  for (int64_t n = 1; n <= 8; ++n) {
    for (int64_t L : {1, 7, 8, 9, 23, 200}) {
      const auto h = torch::rand({5, n, n}), x = torch::randn({5, n, L}), p = torch::rand({5, n}),
                 f = torch::randn({5, L}), go = torch::randn({5, n, L}).to(torch::kDouble);
      const auto ours = run_add(h, x, p, f, go, true), theirs = run_add(h, x, p, f, go, false);
      const auto truth =
          run_add(h.to(torch::kDouble), x.to(torch::kDouble), p.to(torch::kDouble), f.to(torch::kDouble), go, false);
      INFO(n << " streams, L = " << L);
      CHECK(ours.out.scalar_type() == torch::kFloat32);
      for (const auto& g : {ours.dh, ours.dx, ours.dp, ours.df}) CHECK(g.scalar_type() == torch::kFloat32);
      for (auto [a, b, t] : {std::tuple{ours.out, theirs.out, truth.out}, std::tuple{ours.dh, theirs.dh, truth.dh},
                             std::tuple{ours.dx, theirs.dx, truth.dx}, std::tuple{ours.dp, theirs.dp, truth.dp},
                             std::tuple{ours.df, theirs.df, truth.df}}) {
        INFO("error " << max_rel(a, t) << ", the plain path's " << max_rel(b, t));
        CHECK(max_rel(a, t) <= 3 * max_rel(b, t) + 1e-6);
        CHECK(max_rel(a, t) < 1e-5);
      }
    }
  }
}

TEST_CASE("mix_streams_add: a bfloat16 branch output under autocast, threads, second derivatives, fallbacks",
          "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: mix_streams_add is the plain path here");
    return;
  }
  torch::manual_seed(4);
  const auto h = torch::rand({16, 4, 4}), x = torch::randn({16, 4, 99}), p = torch::rand({16, 4});
  const auto f16 = torch::randn({16, 99}).to(torch::kBFloat16);
  const auto go = torch::randn({16, 4, 99}).to(torch::kDouble);
  // mHC's case under bf16-mixed: float32 streams and mixing weights, the branch's output F in bfloat16.
  const auto truth =
      run_add(h.to(torch::kDouble), x.to(torch::kDouble), p.to(torch::kDouble), f16.to(torch::kDouble), go, false);
  MixedAdd ours, theirs;
  {
    zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
    ours = run_add(h, x, p, f16, go, true);
    theirs = run_add(h, x, p, f16, go, false);
  }
  CHECK(ours.out.scalar_type() == torch::kFloat32);
  CHECK(theirs.out.scalar_type() == torch::kFloat32);
  CHECK(ours.df.scalar_type() == torch::kBFloat16);
  CHECK(ours.dx.scalar_type() == torch::kFloat32);
  CHECK(ours.dh.scalar_type() == torch::kFloat32);
  CHECK(ours.dp.scalar_type() == torch::kFloat32);
  // The plain path rounds H_res x (autocast's bfloat16 product) and its operands; the kernel sums in float32.
  CHECK(max_rel(ours.out, truth.out) < 1e-5);
  CHECK(max_rel(theirs.out, truth.out) > 1e-3);
  CHECK(max_rel(ours.dx, truth.dx) < 1e-5);
  CHECK(max_rel(ours.dp, truth.dp) < 1e-5);
  CHECK(max_rel(ours.dh, truth.dh) < 1e-5);
  CHECK(max_rel(ours.df, truth.df) < 1e-2);  // rounded to bfloat16 once
  CHECK(max_rel(ours.df, truth.df) <= max_rel(theirs.df, truth.df) + 1e-6);

  // The same bits at 1 and 2 threads.
  const auto hb = torch::rand({64, 4, 4}), xb = torch::randn({64, 4, 2000}), pb = torch::rand({64, 4}),
             fb = torch::randn({64, 2000}), gb = torch::randn({64, 4, 2000}).to(torch::kDouble);
  torch::set_num_threads(2);
  const auto two = run_add(hb, xb, pb, fb, gb, true);
  torch::set_num_threads(1);
  const auto one = run_add(hb, xb, pb, fb, gb, true);
  for (auto [a, b] : {std::pair{one.out, two.out}, std::pair{one.dh, two.dh}, std::pair{one.dx, two.dx},
                      std::pair{one.dp, two.dp}, std::pair{one.df, two.df}})
    CHECK(torch::equal(a, b));

  // Under create_graph: d/dp of <dL/dx, 1> and d/dh of <dL/df, 1> equal the plain path's.
  auto second = [&](bool fast) {
    auto hh = h.slice(0, 0, 3).to(torch::kDouble).requires_grad_();
    auto pp = p.slice(0, 0, 3).to(torch::kDouble).requires_grad_();
    auto xx = x.slice(0, 0, 3).slice(2, 0, 40).to(torch::kDouble).requires_grad_();
    auto ff = torch::randn({3, 40}, torch::kDouble).requires_grad_();  // the same draw for both (seeded below)
    auto out = zoo::ops::mix_streams_add(hh.to(torch::kFloat32), xx.to(torch::kFloat32), pp.to(torch::kFloat32),
                                         ff.to(torch::kFloat32), fast);
    const auto g = torch::autograd::grad({(out * out).sum()}, {xx, ff}, {}, true, true);
    return std::pair{torch::autograd::grad({g[0].sum()}, {pp}, {}, true)[0],
                     torch::autograd::grad({g[1].sum()}, {hh})[0]};
  };
  torch::manual_seed(6);
  const auto fast = second(true);
  torch::manual_seed(6);
  const auto plain = second(false);
  CHECK(max_rel(fast.first, plain.first) < 1e-5);
  CHECK(max_rel(fast.second, plain.second) < 1e-5);

  // bfloat16 streams too (mHC's first block under autocast, after a bfloat16 stem): float32 out, the streams'
  // gradient in bfloat16, the sums in float32 of the bfloat16 values.
  {
    const auto x16 = x.to(torch::kBFloat16);
    const auto exact =
        run_add(h.to(torch::kDouble), x16.to(torch::kDouble), p.to(torch::kDouble), f16.to(torch::kDouble), go, false);
    MixedAdd ours16, plain16;
    {
      zoo::ops::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
      ours16 = run_add(h, x16, p, f16, go, true);
      plain16 = run_add(h, x16, p, f16, go, false);
    }
    CHECK(ours16.out.scalar_type() == torch::kFloat32);
    CHECK(plain16.out.scalar_type() == torch::kFloat32);
    CHECK(ours16.dx.scalar_type() == torch::kBFloat16);
    CHECK(ours16.df.scalar_type() == torch::kBFloat16);
    CHECK(max_rel(ours16.out, exact.out) < 1e-5);
    CHECK(max_rel(ours16.dh, exact.dh) < 1e-5);
    CHECK(max_rel(ours16.dp, exact.dp) < 1e-5);
    CHECK(max_rel(ours16.dx, exact.dx) < 1e-2);  // rounded to bfloat16 once
    CHECK(max_rel(ours16.dx, exact.dx) <= max_rel(plain16.dx, exact.dx) + 1e-6);
  }

  // The plain path: double, a strided F, no AVX2, a trace; and shapes that do not fit are named.
  const auto plain_of = [](const torch::Tensor& hh, const torch::Tensor& xx, const torch::Tensor& pp,
                           const torch::Tensor& ff) {
    return zoo::ops::mix_streams(hh, xx) + pp.unsqueeze(2) * ff.unsqueeze(1);
  };
  const auto f32 = f16.to(torch::kFloat32);
  const auto hd = h.to(torch::kDouble), xd = x.to(torch::kDouble), pd = p.to(torch::kDouble),
             fd = f16.to(torch::kDouble);
  CHECK(torch::equal(zoo::ops::mix_streams_add(hd, xd, pd, fd), plain_of(hd, xd, pd, fd)));
  const auto strided = torch::randn({99, 16}).t();
  CHECK(torch::equal(zoo::ops::mix_streams_add(h, x, p, strided), plain_of(h, x, p, strided)));
  {
    zoo::ops::ScalarOnly scalar;
    CHECK(torch::equal(zoo::ops::mix_streams_add(h, x, p, f32), plain_of(h, x, p, f32)));
  }
  auto traced = torch::jit::tracer::trace(
      {h, x, p, f32},
      [](const torch::jit::Stack& in) -> torch::jit::Stack {
        return {zoo::ops::mix_streams_add(in[0].toTensor(), in[1].toTensor(), in[2].toTensor(), in[3].toTensor())};
      },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::matmul") != std::string::npos);
  CHECK_THROWS_WITH(zoo::ops::mix_streams_add(h, x, p, torch::randn({16, 98})), Catch::Contains("f [B, L]"));
  CHECK_THROWS_WITH(zoo::ops::mix_streams_add(h.narrow(1, 0, 1), x, p, f32), Catch::Contains("h [B, n, n]"));
}
