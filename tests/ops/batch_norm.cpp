// ops::batch_norm: its float32 and bfloat16 training kernels, contiguous and channels-last, against LibTorch's batch
// norm in double precision (outputs, the three gradients, running statistics), bit-identical results at any thread
// count, second derivatives, and the cases that fall back to torch::batch_norm.
#include "ops/batch_norm.h"
#include "helpers.h"
#include "norm_checks.h"
#include "ops/simd.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

using zoo::ops::batch_norm;

using zoo::test::check_as_close_as;
using zoo::test::check_channels_last;
using zoo::test::check_results_as_close_as;
using zoo::test::max_rel;
using zoo::test::offset_channels;

namespace {

struct Result {
  torch::Tensor y, dx, dw, db, running_mean, running_var;
};

/// One training step of batch_norm on x in `type` (fast or LibTorch's), gradients of sum(y * go); the parameters
/// and running statistics in `parameter_type` (what autocast gives: float32 ones beside a bfloat16 x), by default
/// `type`.
Result run(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& go,
           torch::ScalarType type, bool fast, bool running = true, double momentum = 0.1,
           c10::optional<torch::ScalarType> parameter_type = c10::nullopt) {
  const auto p_type = parameter_type.value_or(type);
  const auto copy = [](const torch::Tensor& t, torch::ScalarType to) {
    return t.detach().to(to).clone().requires_grad_();
  };
  auto xv = copy(x, type);
  auto wv = w.defined() ? copy(w, p_type) : torch::Tensor();
  auto bv = b.defined() ? copy(b, p_type) : torch::Tensor();
  const int64_t c = x.size(1);
  auto rm = running ? torch::linspace(-1, 1, c, p_type) : torch::Tensor();
  auto rv = running ? torch::linspace(0.5, 2, c, p_type) : torch::Tensor();
  auto y = batch_norm(xv, wv, bv, rm, rv, /*training=*/true, momentum, 1e-5, fast);
  (y * go.to(type)).sum().backward();
  return {y.detach(), xv.grad(), wv.defined() ? wv.grad() : torch::Tensor(), bv.defined() ? bv.grad() : torch::Tensor(),
          rm,         rv};
}

bool fast_here() { return zoo::ops::cpu_has_avx2_fma(); }

}  // namespace

TEST_CASE("batch_norm: float32 training equals LibTorch's batch norm in double, gradients and running statistics",
          "[kernels]") {
  if (!fast_here()) {
    WARN("this CPU has no AVX2 + FMA: batch_norm runs torch::batch_norm here, its kernels are not tested");
    return;
  }
  torch::manual_seed(0);
  // Planes of 49, 63, 6 and 1 elements (the 8-lane loops' remainders), 1-, 2- and 3-D positions, a plane of 40
  // (two 16-element gradient blocks and one of 8), channel means far from 0 (two passes: no cancellation).
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {16, 8, 7, 7}, {3, 5, 7, 9}, {4, 3, 6}, {32, 6}, {2, 3, 2, 4, 5}, {5, 4, 40}, {64, 32, 14, 14}}) {
    for (const bool affine : {true, false}) {
      INFO(c10::str(c10::IntArrayRef(shape)) << (affine ? " affine" : " no weight or bias"));
      const int64_t c = shape[1];
      const auto x = offset_channels(shape, 100);
      const auto w = affine ? torch::rand({c}) + 0.5 : torch::Tensor(),
                 b = affine ? torch::randn({c}) : torch::Tensor();
      const auto go = torch::randn(shape);
      const auto got = run(x, w, b, go, torch::kFloat32, true), exact = run(x, w, b, go, torch::kFloat64, false);
      const auto lib = run(x, w, b, go, torch::kFloat32, false);
      CHECK(got.y.scalar_type() == torch::kFloat32);
      // As close to the exact values as LibTorch's own float32 kernel (whose y = x * scale + shift and offsets
      // of 100s leave errors of ~1e-5), and at most 1e-4 off.
      check_results_as_close_as(got, lib, exact, affine);
      check_as_close_as(got.running_mean, lib.running_mean, exact.running_mean);
      check_as_close_as(got.running_var, lib.running_var, exact.running_var);
    }
  }
  // Without running statistics, and with momentum 1 (the running statistics become the batch's).
  const auto x = torch::randn({6, 4, 5, 5}), go = torch::randn({6, 4, 5, 5});
  const auto a = run(x, {}, {}, go, torch::kFloat32, true, false),
             e = run(x, {}, {}, go, torch::kFloat64, false, false);
  CHECK(max_rel(a.y, e.y) < 1e-5);
  const auto m1 = run(x, {}, {}, go, torch::kFloat32, true, true, 1.0);
  const auto x64 = x.to(torch::kFloat64);
  CHECK(max_rel(m1.running_mean, x64.mean({0, 2, 3})) < 1e-6);
  CHECK(max_rel(m1.running_var, x64.var({0, 2, 3}, /*unbiased=*/true)) < 1e-5);
}

TEST_CASE("batch_norm: bfloat16 input with float32 parameters (autocast's operands) is as exact as LibTorch's bf16",
          "[kernels]") {
  if (!fast_here()) return;
  torch::manual_seed(4);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{16, 8, 7, 7}, {3, 5, 7, 9}, {2, 3, 2, 4, 5}, {32, 6}}) {
    INFO(c10::str(c10::IntArrayRef(shape)));
    const int64_t c = shape[1];
    std::vector<int64_t> view(shape.size(), 1);
    view[1] = c;
    // x and go exactly representable in bfloat16, so that every run sees the same operands.
    const auto x = (torch::randn(shape) * 3 + torch::arange(c, torch::kFloat32).mul(4).view(view))
                       .to(torch::kBFloat16)
                       .to(torch::kFloat32);
    const auto go = torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat32);
    const auto w = torch::rand({c}) + 0.5, b = torch::randn({c});
    REQUIRE(zoo::ops::batch_norm_fast(x.to(torch::kBFloat16), w, b, w, w, true));
    const auto got = run(x, w, b, go, torch::kBFloat16, true, true, 0.1, torch::kFloat32);
    const auto lib = run(x, w, b, go, torch::kBFloat16, false, true, 0.1, torch::kFloat32);
    const auto exact = run(x, w, b, go, torch::kFloat64, false);
    // LibTorch's types: y and dx in bfloat16, the parameters' gradients and running statistics in float32.
    CHECK(got.y.scalar_type() == torch::kBFloat16);
    CHECK(got.dx.scalar_type() == torch::kBFloat16);
    CHECK(got.dw.scalar_type() == torch::kFloat32);
    CHECK(got.running_var.scalar_type() == torch::kFloat32);
    // y and dx: one rounding to bfloat16 (8 bits: 2^-9 of the largest value at most) of float32 results.
    const auto close = [&](const torch::Tensor& ours, const torch::Tensor& theirs, const torch::Tensor& truth,
                           double bound) {
      const double e = max_rel(ours, truth), e_lib = max_rel(theirs, truth);
      INFO("error " << e << ", LibTorch's bfloat16 " << e_lib);
      CHECK(e <= 1.5 * e_lib + 1e-6);
      CHECK(e < bound);
    };
    close(got.y, lib.y, exact.y, 4e-3);
    close(got.dx, lib.dx, exact.dx, 4e-3);
    close(got.dw, lib.dw, exact.dw, 1e-5);
    close(got.db, lib.db, exact.db, 1e-5);
    close(got.running_mean, lib.running_mean, exact.running_mean, 1e-5);
    close(got.running_var, lib.running_var, exact.running_var, 1e-5);
    // Each y is the float32 value rounded to nearest (even): never more than half a unit in the last place off.
    const auto y32 = run(x, w, b, go, torch::kFloat32, true).y;
    CHECK(torch::equal(got.y, y32.to(torch::kBFloat16)));
  }
}

TEST_CASE("batch_norm: channels-last input gives a channels-last output, as close to LibTorch in double", "[kernels]") {
  if (!fast_here()) return;
  torch::manual_seed(5);
  // 8-64 channels (a block of 32 in registers, single vectors of 8, both), 2-D and 3-D maps, one position per item.
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {16, 32, 7, 7}, {3, 8, 5, 9}, {4, 40, 3, 3}, {2, 16, 2, 3, 5}, {64, 32, 14, 14}, {16, 64, 1, 1}}) {
    const auto layout = shape.size() == 4 ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::ChannelsLast3d;
    for (const bool affine : {true, false}) {
      INFO(c10::str(c10::IntArrayRef(shape)) << (affine ? ", affine" : ", no affine"));
      const int64_t c = shape[1];
      const auto x = offset_channels(shape, 100).contiguous(layout);
      const auto w = affine ? torch::rand({c}) + 0.5 : torch::Tensor(),
                 b = affine ? torch::randn({c}) : torch::Tensor();
      const auto go = torch::randn(shape);
      REQUIRE(zoo::ops::batch_norm_fast(x, w, b, {}, {}, true));
      const auto got = run(x, w, b, go, torch::kFloat32, true);
      const auto lib = run(x.contiguous(), w, b, go, torch::kFloat32, false);
      const auto exact = run(x.contiguous(), w, b, go, torch::kFloat64, false);
      check_channels_last(got, layout, shape);
      check_results_as_close_as(got, lib, exact, affine);
      check_as_close_as(got.running_mean, lib.running_mean, exact.running_mean);
      check_as_close_as(got.running_var, lib.running_var, exact.running_var);
      // bfloat16 in channels-last, on values bfloat16 holds exactly: y is the float32 result rounded to nearest
      // (even), bit for bit, as in the contiguous layout; the gradients one rounding off.
      const auto xr = x.to(torch::kBFloat16).to(torch::kFloat32), gr = go.to(torch::kBFloat16).to(torch::kFloat32);
      const auto low = run(xr, w, b, gr, torch::kBFloat16, true, true, 0.1, torch::kFloat32);
      const auto high = run(xr, w, b, gr, torch::kFloat32, true);
      CHECK(low.y.scalar_type() == torch::kBFloat16);
      CHECK(torch::equal(low.y, high.y.to(torch::kBFloat16)));
      CHECK(max_rel(low.dx, high.dx) < 1.0 / 128);
      if (affine) CHECK(max_rel(low.dw, high.dw) < 1e-5);
    }
  }
  // Channels not a multiple of 8 and gappy layouts go to LibTorch, with its result.
  const auto x = torch::randn({16, 16, 5, 5}).contiguous(torch::MemoryFormat::ChannelsLast);
  const auto w = torch::rand({16}) + 0.5, b = torch::randn({16});
  const auto twelve = torch::randn({4, 12, 5, 5}).contiguous(torch::MemoryFormat::ChannelsLast);
  CHECK_FALSE(zoo::ops::batch_norm_fast(twelve, {}, {}, {}, {}, true));
  CHECK(torch::equal(batch_norm(twelve, {}, {}, {}, {}, true, 0.1, 1e-5),
                     torch::batch_norm(twelve, {}, {}, {}, {}, true, 0.1, 1e-5, false)));
  CHECK_FALSE(zoo::ops::batch_norm_fast(x.slice(3, 0, 4), w, b, {}, {}, true));
}

TEST_CASE("batch_norm: the same bits at one and two threads, contiguous and channels-last", "[kernels]") {
  if (!fast_here()) return;
  torch::manual_seed(1);
  // A channel per task contiguous; channels-last, each item's sums, added in item order.
  for (const auto layout : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    const auto x = (torch::randn({32, 24, 9, 9}) * 2 + 1).contiguous(layout), w = torch::rand({24}),
               b = torch::randn({24}), go = torch::randn({32, 24, 9, 9});
    const int threads = torch::get_num_threads();
    torch::set_num_threads(1);
    const auto one = run(x, w, b, go, torch::kFloat32, true);
    torch::set_num_threads(2);
    const auto two = run(x, w, b, go, torch::kFloat32, true);
    torch::set_num_threads(threads);
    CHECK(torch::equal(one.y, two.y));
    CHECK(torch::equal(one.dx, two.dx));
    CHECK(torch::equal(one.dw, two.dw));
    CHECK(torch::equal(one.running_var, two.running_var));
  }
}

TEST_CASE("batch_norm: second derivatives flow through its backward", "[kernels]") {
  if (!fast_here()) return;
  torch::manual_seed(2);
  const auto x = torch::randn({4, 3, 5, 5}, torch::requires_grad());
  const auto w = (torch::rand({3}) + 0.5).requires_grad_();
  // A gradient penalty: d/dw of |dL/dx|^2, with L = sum(tanh(bn(x)) * r).
  const auto r = torch::randn({4, 3, 5, 5});
  auto penalty = [&](bool fast) {
    const auto y = batch_norm(x, w, {}, {}, {}, true, 0.1, 1e-5, fast);
    const auto gx = torch::autograd::grad({(torch::tanh(y) * r).sum()}, {x}, {}, true, /*create_graph=*/true)[0];
    return torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  };
  const auto expected = penalty(false);
  CHECK(expected.abs().max().item<double>() > 0.1);
  CHECK(max_rel(penalty(true), expected) < 1e-4);
}

TEST_CASE("batch_norm: evaluation, other dtypes, strided input, traces and CPUs without AVX2 run torch::batch_norm",
          "[kernels]") {
  torch::manual_seed(3);
  const auto x = torch::randn({4, 3, 6, 6}), w = torch::rand({3}), b = torch::randn({3});
  const auto rm = torch::randn({3}), rv = torch::rand({3}) + 0.5;
  CHECK(zoo::ops::batch_norm_fast(x, w, b, rm, rv, true) == fast_here());
  CHECK_FALSE(zoo::ops::batch_norm_fast(x, w, b, rm, rv, /*training=*/false));
  CHECK(zoo::ops::batch_norm_fast(x.to(torch::kBFloat16), w, b, rm, rv, true) == fast_here());
  CHECK_FALSE(zoo::ops::batch_norm_fast(x.to(torch::kBFloat16), w.to(torch::kBFloat16), b, rm, rv, true));
  CHECK_FALSE(zoo::ops::batch_norm_fast(x.to(torch::kFloat64), w, b, rm, rv, true));
  CHECK_FALSE(zoo::ops::batch_norm_fast(x.transpose(2, 3), w, b, rm, rv, true));
  CHECK_FALSE(zoo::ops::batch_norm_fast(x, w.to(torch::kFloat64), b, rm, rv, true));
  {
    zoo::ops::ScalarOnly plain;
    CHECK_FALSE(zoo::ops::batch_norm_fast(x, w, b, rm, rv, true));
  }
  // Where it falls back, the result is LibTorch's exactly.
  for (const auto& in : {x.transpose(2, 3), x.to(torch::kFloat64)}) {
    auto rm1 = rm.to(in.scalar_type()), rv1 = rv.to(in.scalar_type()), rm2 = rm1.clone(), rv2 = rv1.clone();
    const auto ww = w.to(in.scalar_type()), bb = b.to(in.scalar_type());
    CHECK(torch::equal(batch_norm(in, ww, bb, rm1, rv1, true, 0.1, 1e-5),
                       torch::batch_norm(in, ww, bb, rm2, rv2, true, 0.1, 1e-5, false)));
    CHECK(torch::equal(rv1, rv2));
  }
  CHECK(torch::equal(batch_norm(x, w, b, rm, rv, false, 0.1, 1e-5),
                     torch::batch_norm(x, w, b, rm, rv, false, 0.1, 1e-5, false)));
  // One value per channel in training: LibTorch's error.
  CHECK_THROWS_WITH(batch_norm(torch::randn({1, 3, 1, 1}), w, b, rm, rv, true, 0.1, 1e-5),
                    Catch::Contains("Expected more than 1 value per channel when training"));
  // A trace records aten::batch_norm (which TorchScript, ONNX and Python load).
  auto traced = torch::jit::tracer::trace(
      {x},
      [&](const torch::jit::Stack& in) -> torch::jit::Stack {
        return {batch_norm(in[0].toTensor(), w, b, {}, {}, true, 0.1, 1e-5)};
      },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::batch_norm") != std::string::npos);
}
