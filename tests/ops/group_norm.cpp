// ops::group_norm: its float32 and bfloat16 kernels, contiguous and channels-last, against LibTorch's group norm in
// double precision (outputs and the three gradients), bit-identical results at any thread count, second derivatives,
// and the cases that fall back to torch::group_norm.
#include "ops/group_norm.h"
#include "helpers.h"
#include "norm_checks.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

using zoo::test::check_channels_last;
using zoo::test::check_results_as_close_as;
using zoo::test::max_rel;
using zoo::test::offset_channels;

namespace {

struct GroupNormResult {
  torch::Tensor y, dx, dw, db;
};

/// group_norm of x in `type` (fast or LibTorch's) with weight and bias in `parameter_type`; gradients of sum(y * go).
GroupNormResult run(const torch::Tensor& x, int64_t groups, const torch::Tensor& w, const torch::Tensor& b,
                    const torch::Tensor& go, torch::ScalarType type, bool fast, torch::ScalarType parameter_type) {
  const auto copy = [](const torch::Tensor& t, torch::ScalarType to) {
    return t.detach().to(to).clone().requires_grad_();
  };
  auto xv = copy(x, type);
  auto wv = w.defined() ? copy(w, parameter_type) : torch::Tensor();
  auto bv = b.defined() ? copy(b, parameter_type) : torch::Tensor();
  auto y = zoo::ops::group_norm(xv, groups, wv, bv, 1e-5, fast);
  (y * go.to(type)).sum().backward();
  return {y.detach(), xv.grad(), wv.defined() ? wv.grad() : torch::Tensor(),
          bv.defined() ? bv.grad() : torch::Tensor()};
}

GroupNormResult run(const torch::Tensor& x, int64_t groups, const torch::Tensor& w, const torch::Tensor& b,
                    const torch::Tensor& go, torch::ScalarType type, bool fast) {
  return run(x, groups, w, b, go, type, fast, type);
}

/// group_norm of x in 4 groups at 1 and at 2 threads: the same bits in y and the three gradients. Returns the first.
GroupNormResult check_same_bits_at_two_threads(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                                               const torch::Tensor& go) {
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const auto one = run(x, 4, w, b, go, torch::kFloat32, true);
  torch::set_num_threads(2);
  const auto two = run(x, 4, w, b, go, torch::kFloat32, true);
  torch::set_num_threads(threads);
  CHECK(torch::equal(one.y, two.y));
  CHECK(torch::equal(one.dx, two.dx));
  CHECK(torch::equal(one.dw, two.dw));
  CHECK(torch::equal(one.db, two.db));
  return one;
}

}  // namespace

TEST_CASE("group_norm: float32 equals LibTorch's group norm in double, with the three gradients", "[kernels]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: group_norm runs torch::group_norm here, its kernels are not tested");
    return;
  }
  torch::manual_seed(0);
  struct Case {
    std::vector<int64_t> shape;
    int64_t groups;
  };
  // Planes of 36, 63, 6, 1 and 40 elements (the 8-lane loops' remainders), 0-3 spatial axes, one group, one channel
  // per group, and the ODE-ResNet's [64, 32, 6, 6] in 4 groups; channel means far from 0 (two passes).
  for (const auto& [shape, groups] : std::vector<Case>{{{8, 32, 6, 6}, 4},
                                                       {{3, 6, 7, 9}, 3},
                                                       {{4, 4, 6}, 2},
                                                       {{5, 12}, 3},
                                                       {{2, 4, 2, 4, 5}, 1},
                                                       {{3, 4, 40}, 4},
                                                       {{64, 32, 13, 13}, 4}}) {
    for (const bool affine : {true, false}) {
      INFO(c10::str(c10::IntArrayRef(shape)) << ", " << groups << " groups" << (affine ? ", affine" : ", no affine"));
      const int64_t c = shape[1];
      const auto x = offset_channels(shape, 50);
      const auto w = affine ? torch::rand({c}) + 0.5 : torch::Tensor(),
                 b = affine ? torch::randn({c}) : torch::Tensor();
      const auto go = torch::randn(shape);
      REQUIRE(zoo::ops::group_norm_fast(x, groups, w, b));
      const auto got = run(x, groups, w, b, go, torch::kFloat32, true);
      const auto lib = run(x, groups, w, b, go, torch::kFloat32, false);
      const auto exact = run(x, groups, w, b, go, torch::kFloat64, false);
      CHECK(got.y.scalar_type() == torch::kFloat32);
      // At least as close to the exact values as LibTorch's own float32 kernel, and at most 1e-4 off.
      check_results_as_close_as(got, lib, exact, affine);
    }
  }
}

TEST_CASE("group_norm: bfloat16 input with float32 parameters gives the float32 result rounded", "[kernels]") {
  if (!zoo::ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(1);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{8, 32, 6, 6}, {3, 6, 7, 9}, {2, 4, 2, 4, 5}}) {
    INFO(c10::str(c10::IntArrayRef(shape)));
    const int64_t c = shape[1];
    // x and go exactly representable in bfloat16, so that every run sees the same operands.
    const auto x = (torch::randn(shape) * 3 + 2).to(torch::kBFloat16).to(torch::kFloat32);
    const auto go = torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat32);
    const auto w = torch::rand({c}) + 0.5, b = torch::randn({c});
    REQUIRE(zoo::ops::group_norm_fast(x.to(torch::kBFloat16), 2, w, b));
    const auto got = run(x, 2, w, b, go, torch::kBFloat16, true, torch::kFloat32);
    const auto f32 = run(x, 2, w, b, go, torch::kFloat32, true, torch::kFloat32);
    const auto exact = run(x, 2, w, b, go, torch::kFloat64, false, torch::kFloat64);
    // y and dx in bfloat16, the parameters' gradients in float32.
    CHECK(got.y.scalar_type() == torch::kBFloat16);
    CHECK(got.dx.scalar_type() == torch::kBFloat16);
    CHECK(got.dw.scalar_type() == torch::kFloat32);
    CHECK(got.db.scalar_type() == torch::kFloat32);
    // The same statistics as float32 on the same values: y is float32's y rounded to nearest (even), bit for bit;
    // the parameters' gradients, summed in float32 from bfloat16 dy, as close as float32's.
    CHECK(torch::equal(got.y, f32.y.to(torch::kBFloat16)));
    CHECK(max_rel(got.dx, exact.dx) < 4e-3);
    CHECK(max_rel(got.dw, exact.dw) < 1e-5);
    CHECK(max_rel(got.db, exact.db) < 1e-5);
    // LibTorch's own bfloat16 kernel (bfloat16 parameters too) is no closer.
    const auto lib = run(x, 2, w, b, go, torch::kBFloat16, false, torch::kBFloat16);
    CHECK(max_rel(got.y, exact.y) <= 1.5 * max_rel(lib.y, exact.y) + 1e-6);
  }
}

TEST_CASE("group_norm: channels-last input gives a channels-last output, as close to LibTorch in double", "[kernels]") {
  if (!zoo::ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(3);
  struct Case {
    std::vector<int64_t> shape;
    int64_t groups;
  };
  // 8-64 channels (whole vectors of 8), one group, one channel per group, 2-D and 3-D maps.
  for (const auto& [shape, groups] : std::vector<Case>{{{8, 32, 6, 6}, 4},
                                                       {{3, 16, 7, 9}, 2},
                                                       {{2, 8, 2, 4, 5}, 1},
                                                       {{2, 8, 3, 2, 2}, 8},
                                                       {{64, 32, 13, 13}, 4},
                                                       {{2, 64, 1, 1}, 4}}) {
    const auto layout = shape.size() == 4 ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::ChannelsLast3d;
    for (const bool affine : {true, false}) {
      INFO(c10::str(c10::IntArrayRef(shape)) << ", " << groups << " groups" << (affine ? ", affine" : ", no affine"));
      const int64_t c = shape[1];
      const auto x = offset_channels(shape, 50).contiguous(layout);
      const auto w = affine ? torch::rand({c}) + 0.5 : torch::Tensor(),
                 b = affine ? torch::randn({c}) : torch::Tensor();
      const auto go = torch::randn(shape);
      REQUIRE(zoo::ops::group_norm_fast(x, groups, w, b));
      const auto got = run(x, groups, w, b, go, torch::kFloat32, true);
      const auto lib = run(x.contiguous(), groups, w, b, go, torch::kFloat32, false);
      const auto exact = run(x.contiguous(), groups, w, b, go, torch::kFloat64, false);
      check_channels_last(got, layout, shape);
      check_results_as_close_as(got, lib, exact, affine);
      // bfloat16 in channels-last, on values bfloat16 holds exactly: the same statistics as float32's, y its result
      // rounded to nearest (even), bit for bit, as in the contiguous layout.
      const auto xr = x.to(torch::kBFloat16).to(torch::kFloat32), gr = go.to(torch::kBFloat16).to(torch::kFloat32);
      const auto low = run(xr, groups, w, b, gr, torch::kBFloat16, true, torch::kFloat32);
      const auto high = run(xr, groups, w, b, gr, torch::kFloat32, true, torch::kFloat32);
      CHECK(low.y.scalar_type() == torch::kBFloat16);
      CHECK(torch::equal(low.y, high.y.to(torch::kBFloat16)));
      CHECK(max_rel(low.dx, high.dx) < 1.0 / 128);
    }
  }
  // The same bits at 1 and 2 threads; channels not a multiple of 8 and gappy layouts go to LibTorch.
  const auto x = (torch::randn({16, 16, 5, 5}) * 2 + 1).contiguous(torch::MemoryFormat::ChannelsLast);
  const auto go = torch::randn({16, 16, 5, 5}), w = torch::rand({16}) + 0.5, b = torch::randn({16});
  check_same_bits_at_two_threads(x, w, b, go);
  const auto twelve = torch::randn({4, 12, 5, 5}).contiguous(torch::MemoryFormat::ChannelsLast);
  CHECK_FALSE(zoo::ops::group_norm_fast(twelve, 3, {}, {}));
  CHECK(torch::equal(zoo::ops::group_norm(twelve, 3, {}, {}), torch::group_norm(twelve, 3)));
  const auto gappy = x.slice(3, 0, 4);
  CHECK_FALSE(zoo::ops::group_norm_fast(gappy, 4, w, b));
}

TEST_CASE("group_norm: the same bits at 1 and 2 threads, second derivatives, and its fallbacks", "[kernels]") {
  if (!zoo::ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(2);
  const auto x = torch::randn({16, 8, 5, 5}) * 2 + 1, go = torch::randn({16, 8, 5, 5});
  const auto w = torch::rand({8}) + 0.5, b = torch::randn({8});
  const auto one = check_same_bits_at_two_threads(x, w, b, go);
  {
    // Without gradients (inference) the kernel runs outside autograd: the same output.
    torch::NoGradGuard inference;
    const auto y = zoo::ops::group_norm(x, 4, w, b);
    CHECK_FALSE(y.requires_grad());
    CHECK(torch::equal(y, one.y));
  }

  // A gradient penalty: under create_graph the backward goes through torch::group_norm, so it is differentiable.
  auto penalty = [&](bool fast) {
    auto xv = x.clone().requires_grad_(), wv = w.clone().requires_grad_();
    const auto y = zoo::ops::group_norm(xv, 4, wv, b, 1e-5, fast);
    const auto gx = torch::autograd::grad({(torch::tanh(y) * go).sum()}, {xv}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {wv})[0];
  };
  const auto expected = penalty(false);
  CHECK(expected.abs().max().item<double>() > 1e-3);
  CHECK(max_rel(penalty(true), expected) < 1e-5);

  // Fallbacks, equal to torch::group_norm exactly: float64, a strided input, float64 parameters, no fast flag.
  const auto x64 = x.to(torch::kFloat64);
  CHECK_FALSE(zoo::ops::group_norm_fast(x64, 4, {}, {}));
  CHECK(torch::equal(zoo::ops::group_norm(x64, 4, {}, {}), torch::group_norm(x64, 4)));
  const auto strided = x.transpose(2, 3);
  CHECK_FALSE(zoo::ops::group_norm_fast(strided, 4, w, b));
  CHECK(torch::equal(zoo::ops::group_norm(strided, 4, w, b), torch::group_norm(strided, 4, w, b)));
  CHECK_FALSE(zoo::ops::group_norm_fast(x, 4, w.to(torch::kFloat64), b));
  CHECK(torch::equal(zoo::ops::group_norm(x, 4, w, b, 1e-5, false), torch::group_norm(x, 4, w, b)));
  // LibTorch's own errors: channels not divisible by the groups.
  CHECK_FALSE(zoo::ops::group_norm_fast(x, 3, w, b));
  CHECK_THROWS_WITH(zoo::ops::group_norm(x, 3, w, b), Catch::Contains("divisible"));
  // A trace records torch::group_norm, which TorchScript, ONNX and Python load.
  auto traced = torch::jit::tracer::trace(
      {x},
      [&](const torch::jit::Stack& in) -> torch::jit::Stack {
        return {zoo::ops::group_norm(in[0].toTensor(), 4, w, b)};
      },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::group_norm") != std::string::npos);
}
