// ops::mix_streams: the mixing kernel against torch::matmul in float64 (values, both gradients), for every stream
// count 1-8 (into as many streams or one) and tail length, float32 and bfloat16 streams, under autocast (result type
// and precision), the same bits at 1 and 2 threads, second derivatives, and the cases that fall back to
// torch::matmul. ops::mix_streams_add (H x + p f) the same way against its plain path in float64. ops::read_streams and
// ops::repeat_streams against their plain paths (LibTorch's engine adding the three gradients; repeat) and float64.
#include "ops/stream_mix.h"
#include "helpers.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

using zoo::ops::mix_streams;
using zoo::test::kF64;
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
  // A strided F is made contiguous for the kernel: the same bits as a contiguous one.
  const auto strided = torch::randn({99, 16}).t();
  CHECK(torch::equal(zoo::ops::mix_streams_add(h, x, p, strided),
                     zoo::ops::mix_streams_add(h, x, p, strided.contiguous())));
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

namespace {

using zoo::ops::read_streams;
using zoo::ops::repeat_streams;

/// The gradient of <means, r1> + <for_pre, r2> + <for_res, r3> with respect to x, read through read_streams (`fast`)
/// or as {float32_mean(x, 3), x, x} (the plain path: LibTorch's engine adds the three). An undefined r leaves its
/// read unused.
torch::Tensor reads_gradient(const torch::Tensor& x0, const torch::Tensor& r1, const torch::Tensor& r2,
                             const torch::Tensor& r3, bool fast) {
  auto x = x0.detach().clone().requires_grad_();
  const auto reads = fast ? read_streams(x) : zoo::ops::StreamReads{zoo::ops::float32_mean(x, 3), x, x};
  std::vector<torch::Tensor> terms;
  if (r1.defined()) terms.push_back((reads.means.to(torch::kFloat64) * r1).sum());
  if (r2.defined()) terms.push_back((reads.for_pre.to(torch::kFloat64) * r2).sum());
  if (r3.defined()) terms.push_back((reads.for_res.to(torch::kFloat64) * r3).sum());
  torch::stack(terms).sum().backward();
  return x.grad();
}

/// Whether the autograd node of t is one of zoo's functions named `name`.
bool made_by(const torch::Tensor& t, const std::string& name) {
  return t.grad_fn() && t.grad_fn()->name().find(name) != std::string::npos;
}

}  // namespace

TEST_CASE("mix_streams_add and mix_streams_map: channels-last maps, the same bits as the plain order",
          "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(7);
  const auto last = torch::MemoryFormat::ChannelsLast;
  // F as the branch's output map [B, C, H, W] in channels-last memory: read through transposes, its gradient written
  // in its layout. 8 and 32 channels (the transposes' whole blocks), 12 (their edges), odd maps.
  for (const auto type : {torch::kBFloat16, torch::kFloat32}) {
    for (const auto& map : std::vector<std::vector<int64_t>>{{3, 8, 5, 7}, {4, 32, 7, 7}, {2, 12, 3, 3}}) {
      const int64_t B = map[0], n = 4, L = map[1] * map[2] * map[3];
      INFO(c10::str(c10::IntArrayRef(map)) << " " << type);
      const auto h = torch::rand({B, n, n}), x = torch::randn({B, n, L}), p = torch::rand({B, n});
      const auto f = torch::randn(map).to(type), go = torch::randn({B, n, L});
      const auto step = [&](const torch::Tensor& f0) {
        auto hv = h.clone().requires_grad_(), xv = x.clone().requires_grad_(), pv = p.clone().requires_grad_();
        auto fv = f0.detach().clone(f0.suggest_memory_format()).requires_grad_();
        const auto out = zoo::ops::mix_streams_add(hv, xv, pv, fv);
        (out * go).sum().backward();
        return std::vector<torch::Tensor>{out.detach(), hv.grad(), xv.grad(), pv.grad(), fv.grad()};
      };
      const auto ours = step(f.contiguous(last)), plain = step(f);
      REQUIRE_FALSE(f.contiguous(last).is_contiguous());
      for (size_t i = 0; i < ours.size(); ++i) CHECK(torch::equal(ours[i], plain[i]));
      CHECK(ours[4].is_contiguous(last));  // dF in F's layout
      CHECK_FALSE(ours[4].is_contiguous());
    }
  }

  // H_pre x as a map: under bf16 autocast on a CPU with AMX (AmxOverride: on any CPU), maps above conv3x3's small
  // problem with C a multiple of 8 come out channels-last; the same bits as the contiguous map, and the same
  // gradients whether the map's gradient comes back channels-last or contiguous.
  const auto pre_step = [&](const torch::Tensor& h, const torch::Tensor& x, bool amx, bool autocast,
                            bool gradient_last) {
    zoo::ops::detail::AmxOverride override_amx(amx);
    auto hv = h.clone().requires_grad_(), xv = x.clone().requires_grad_();
    torch::Tensor out;
    {
      zoo::ops::AutocastScope scope(c10::kCPU, torch::kBFloat16, autocast);
      out = zoo::ops::mix_streams_map(hv, xv);
    }
    auto go = torch::randn(out.sizes(), torch::TensorOptions().dtype(out.scalar_type()));
    if (gradient_last) go = go.contiguous(last);
    out.backward(go);
    return std::vector<torch::Tensor>{out.detach(), hv.grad(), xv.grad()};
  };
  const auto h = torch::rand({64, 4}), x = torch::randn({64, 4, 32, 7, 7});
  torch::manual_seed(8);
  const auto cl = pre_step(h, x, true, true, true);
  torch::manual_seed(8);
  const auto plain = pre_step(h, x, false, true, false);
  CHECK(cl[0].scalar_type() == torch::kBFloat16);
  CHECK(cl[0].is_contiguous(last));
  CHECK_FALSE(cl[0].is_contiguous());
  CHECK(plain[0].is_contiguous());
  CHECK(cl[0].sizes() == plain[0].sizes());
  for (size_t i = 0; i < cl.size(); ++i) CHECK(torch::equal(cl[i], plain[i]));
  torch::manual_seed(8);
  const auto cl_contiguous_gradient = pre_step(h, x, true, true, false);
  for (size_t i = 1; i < cl.size(); ++i) CHECK(torch::equal(cl_contiguous_gradient[i], plain[i]));
  // Where the layout stays: without autocast, small maps (conv3x3's own kernel), 12 channels, 3-D maps, streams of
  // vectors; and the plain path is torch::matmul's.
  CHECK(pre_step(h, x, true, false, false)[0].is_contiguous());
  CHECK(pre_step(torch::rand({4, 4}), torch::randn({4, 4, 8, 6, 6}), true, true, false)[0].is_contiguous());
  CHECK(pre_step(torch::rand({64, 4}), torch::randn({64, 4, 12, 7, 7}), true, true, false)[0].is_contiguous());
  CHECK(pre_step(torch::rand({64, 4}), torch::randn({64, 4, 32, 7, 7, 2}), true, true, false)[0].is_contiguous());
  const auto vectors = pre_step(torch::rand({5, 3}), torch::randn({5, 3, 16}), true, true, false);
  CHECK(vectors[0].sizes() == torch::IntArrayRef{5, 16});
  const auto hs = torch::rand({5, 3}), xs = torch::randn({5, 3, 8, 2, 2});
  CHECK(torch::equal(zoo::ops::mix_streams_map(hs, xs, /*fast=*/false),
                     torch::matmul(hs.unsqueeze(1), xs.flatten(2)).view({5, 8, 2, 2})));
  CHECK_THROWS_WITH(zoo::ops::mix_streams_map(torch::rand({5, 2}), xs), Catch::Contains("mix_streams_map expects"));
}

TEST_CASE(
    "read_streams: the means, and one backward that adds the three gradients (float32 to the bit, bfloat16 "
    "rounded once)",
    "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: read_streams is {float32_mean(x, 3), x, x} here");
    return;
  }
  torch::manual_seed(3);
  // Planes of 9, 7 (shorter than a vector), 16 and 49 elements (the mHC ResNet's).
  for (const auto& sizes :
       std::vector<std::vector<int64_t>>{{3, 2, 5, 3, 3}, {2, 3, 4, 7}, {4, 4, 3, 16}, {64, 4, 32, 7, 7}}) {
    CAPTURE(sizes);
    const auto x = torch::randn(sizes);
    const int64_t count = x.flatten(3).size(3);
    auto reads = read_streams(x.requires_grad_());
    x.requires_grad_(false);
    CHECK(made_by(reads.for_pre, "ReadStreams"));
    CHECK(torch::equal(reads.means, zoo::ops::float32_mean(x, 3)));
    CHECK(torch::equal(reads.for_pre, x));
    CHECK(torch::equal(reads.for_res, x));
    // Gradients that float32 (and below, bfloat16) hold exactly, so what the reads receive is r itself.
    const auto r1 = torch::randn({sizes[0], sizes[1], sizes[2]}, kF64);
    const auto r2 = torch::randn(sizes, kF64), r3 = torch::randn(sizes, kF64);
    std::vector<int64_t> shape{sizes[0], sizes[1], sizes[2]};
    shape.resize(sizes.size(), 1);
    {  // float32: the engine's two additions, to the bit
      const auto r2f = r2.to(torch::kFloat32).to(kF64), r3f = r3.to(torch::kFloat32).to(kF64);
      const auto ours = reads_gradient(x, r1, r2f, r3f, true), plain = reads_gradient(x, r1, r2f, r3f, false);
      CHECK(ours.scalar_type() == torch::kFloat32);
      CHECK(torch::equal(ours, plain));
      const auto exact = r2f + r3f + (r1 / static_cast<double>(count)).view(shape);
      CHECK(max_rel(ours, exact) < 1e-6);
    }
    {  // bfloat16: the three added in float32 and rounded once, closer than two bfloat16 additions
      const auto x16 = x.to(torch::kBFloat16);
      CHECK(torch::equal(read_streams(x16).means, zoo::ops::float32_mean(x16, 3)));
      const auto r2b = r2.to(torch::kBFloat16).to(kF64), r3b = r3.to(torch::kBFloat16).to(kF64);
      const auto ours = reads_gradient(x16, r1, r2b, r3b, true), plain = reads_gradient(x16, r1, r2b, r3b, false);
      CHECK(ours.scalar_type() == torch::kBFloat16);
      const auto exact = r2b + r3b + (r1 / static_cast<double>(count)).view(shape);
      CHECK(zoo::test::within_rounding(ours, exact, std::ldexp(1.0, -8)));
      const auto error = [&](const torch::Tensor& g) { return (g.to(kF64) - exact).abs().max().item<double>(); };
      CHECK(error(ours) <= error(plain));
    }
  }
}

TEST_CASE("read_streams: reads left unused, 1 and 2 threads, second derivatives, the fallbacks", "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: read_streams is {float32_mean(x, 3), x, x} here");
    return;
  }
  torch::manual_seed(4);
  const auto x = torch::randn({64, 4, 32, 7, 7});
  const auto r1 = torch::randn({64, 4, 32}, kF64), r2 = torch::randn(x.sizes(), kF64).to(torch::kFloat32).to(kF64);
  const torch::Tensor none;
  // One read alone: its gradient, as the plain path gives it.
  CHECK(torch::equal(reads_gradient(x, r1, none, none, true), reads_gradient(x, r1, none, none, false)));
  CHECK(torch::equal(reads_gradient(x, none, none, r2, true), r2.to(torch::kFloat32)));
  CHECK(torch::equal(reads_gradient(x, none, r2, none, true), r2.to(torch::kFloat32)));

  for (const auto type : {torch::kFloat32, torch::kBFloat16}) {
    const auto xt = x.to(type);
    auto at = [&](int threads) {
      torch::set_num_threads(threads);
      return reads_gradient(xt, r1, r2, r2 * 0.5, true);
    };
    const auto one = at(1), two = at(2);
    torch::set_num_threads(1);
    CHECK(torch::equal(one, two));
  }

  // Under create_graph the gradient is differentiable again: the second derivative equals the plain path's.
  auto second = [&](bool fast) {
    auto xx = x.slice(0, 0, 3).slice(2, 0, 5).clone().requires_grad_();
    const auto reads = fast ? read_streams(xx) : zoo::ops::StreamReads{zoo::ops::float32_mean(xx, 3), xx, xx};
    const auto f = reads.means.pow(2).sum() + reads.for_pre.pow(3).sum() + (reads.for_res.pow(2) * xx).sum();
    const auto g = torch::autograd::grad({f}, {xx}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    return torch::autograd::grad({(g * g).sum()}, {xx})[0];
  };
  CHECK(max_rel(second(true), second(false)) < 1e-5);

  // The fallbacks: {float32_mean(x, 3), x, x} for float64, a strided x, no AVX2 and a trace; 3-D streams refused.
  const auto xd = x.to(torch::kFloat64).requires_grad_();
  CHECK(read_streams(xd).for_pre.is_same(xd));
  CHECK(read_streams(xd).means.scalar_type() == torch::kFloat64);
  const auto strided = x.transpose(3, 4).requires_grad_();
  CHECK(read_streams(strided).for_res.is_same(strided));
  {
    zoo::ops::ScalarOnly scalar;
    const auto xs = x.clone().requires_grad_();
    const auto reads = read_streams(xs);
    CHECK(reads.for_pre.is_same(xs));
    CHECK(torch::equal(reads.means, zoo::ops::float32_mean(x, 3)));
  }
  bool traced_plain = false;  // in a trace the reads are x itself and float32_mean's
  auto traced = torch::jit::tracer::trace(
      {x},
      [&](const torch::jit::Stack& in) -> torch::jit::Stack {
        const auto input = in[0].toTensor();
        const auto reads = read_streams(input);
        traced_plain = reads.for_pre.is_same(input) && reads.for_res.is_same(input);
        return {reads.for_pre * reads.means.sum()};
      },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced_plain);
  CHECK(traced.first->graph->toString().find("aten::mean") != std::string::npos);
  CHECK_THROWS_WITH(read_streams(torch::randn({2, 3, 4})),
                    Catch::Contains("read_streams expects streams [B, n, C, ...]"));
}

TEST_CASE("repeat_streams: n copies, whose gradients are summed once in float32 (float32 to the bit)",
          "[kernels][mhc]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: repeat_streams is LibTorch's repeat here");
    return;
  }
  torch::manual_seed(5);
  auto run_repeat = [](const torch::Tensor& x0, int64_t n, const torch::Tensor& go, bool fast) {
    auto x = x0.detach().clone().requires_grad_();
    torch::Tensor out;
    if (fast) {
      out = repeat_streams(x, n);
      CHECK(made_by(out, "RepeatStreams"));
    } else {
      std::vector<int64_t> repeats(static_cast<size_t>(x.dim() + 1), 1);
      repeats[1] = n;
      out = x.unsqueeze(1).repeat(repeats);
    }
    (out.to(kF64) * go).sum().backward();
    return std::make_pair(out.detach(), x.grad());
  };
  // Rows of 5 (shorter than a vector), 13 and 1568 elements (the mHC ResNet's 32 x 7 x 7).
  for (const auto& sizes : std::vector<std::vector<int64_t>>{{3, 5}, {2, 13}, {4, 3, 2, 2}, {64, 32, 7, 7}})
    for (const int64_t n : {1, 2, 3, 4, 5}) {
      CAPTURE(sizes, n);
      const auto x = torch::randn(sizes);
      auto out_sizes = sizes;
      out_sizes.insert(out_sizes.begin() + 1, n);
      const auto go = torch::randn(out_sizes, kF64).to(torch::kBFloat16).to(kF64);  // bfloat16 holds it exactly
      const auto ours = run_repeat(x, n, go, true), plain = run_repeat(x, n, go, false);
      CHECK(torch::equal(ours.first, plain.first));
      CHECK(torch::equal(ours.second, plain.second));
      const auto x16 = x.to(torch::kBFloat16);
      const auto ours16 = run_repeat(x16, n, go, true), plain16 = run_repeat(x16, n, go, false);
      CHECK(torch::equal(ours16.first, plain16.first));
      CHECK(ours16.second.scalar_type() == torch::kBFloat16);
      const auto exact = go.sum(1);
      CHECK(zoo::test::within_rounding(ours16.second, exact, std::ldexp(1.0, -8)));
      const auto error = [&](const torch::Tensor& g) { return (g.to(kF64) - exact).abs().max().item<double>(); };
      CHECK(error(ours16.second) <= error(plain16.second));
    }

  const auto x = torch::randn({64, 32, 7, 7}), go = torch::randn({64, 4, 32, 7, 7}, kF64);
  for (const auto type : {torch::kFloat32, torch::kBFloat16}) {
    auto at = [&](int threads) {
      torch::set_num_threads(threads);
      return run_repeat(x.to(type), 4, go, true).second;
    };
    const auto one = at(1), two = at(2);
    torch::set_num_threads(1);
    CHECK(torch::equal(one, two));
  }
  // Second derivatives (create_graph: LibTorch's sum), the fallbacks, and the count refused.
  auto second = [&](bool fast) {
    auto xx = x.slice(0, 0, 2).clone().requires_grad_();
    const auto out = fast ? repeat_streams(xx, 3) : xx.unsqueeze(1).repeat({1, 3, 1, 1, 1});
    const auto g = torch::autograd::grad({out.pow(3).sum()}, {xx}, {}, true, true)[0];
    return torch::autograd::grad({(g * g).sum()}, {xx})[0];
  };
  CHECK(max_rel(second(true), second(false)) < 1e-6);
  CHECK_FALSE(made_by(repeat_streams(x.to(torch::kFloat64).requires_grad_(), 2), "RepeatStreams"));
  {
    zoo::ops::ScalarOnly scalar;
    CHECK_FALSE(made_by(repeat_streams(x.clone().requires_grad_(), 2), "RepeatStreams"));
  }
  auto traced = torch::jit::tracer::trace(
      {x}, [](const torch::jit::Stack& in) -> torch::jit::Stack { return {repeat_streams(in[0].toTensor(), 4)}; },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::repeat") != std::string::npos);
  CHECK_THROWS_WITH(repeat_streams(x, 0), Catch::Contains("streams must be >= 1"));
}
