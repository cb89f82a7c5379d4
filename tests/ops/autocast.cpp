// Autocast scopes, float32 regions, and what each hand-written kernel does under bfloat16 autocast: the
// convolution goes to LibTorch (bfloat16), the LSTM recurrence, Sinkhorn-Knopp and the MLP field's solver stay in
// float32 and give the float32 result exactly.
#include "ops/autocast.h"
#include "helpers.h"
#include "ops/conv2d_bf16.h"
#include "ops/conv3x3.h"
#include "ops/lstm.h"
#include "ops/ode.h"
#include "ops/packed_gemm.h"
#include "ops/simd.h"
#include "ops/sinkhorn.h"

#include <catch2/catch.hpp>

using zoo::test::max_abs;
namespace ops = zoo::ops;

namespace {
ops::AutocastScope bf16() { return ops::AutocastScope(c10::kCPU, torch::kBFloat16); }
}  // namespace

TEST_CASE("Autocast: a scope turns bfloat16 autocast on and puts the previous state back", "[ops][precision]") {
  const auto a = torch::randn({4, 8}), b = torch::randn({8, 3});
  CHECK_FALSE(ops::autocast_enabled());
  CHECK(torch::mm(a, b).scalar_type() == torch::kFloat32);
  {
    auto scope = bf16();
    CHECK(ops::autocast_enabled());
    const auto product = torch::mm(a, b);
    CHECK(product.scalar_type() == torch::kBFloat16);
    // bfloat16 keeps 8 bits of mantissa: the product agrees with float64's to about 1%.
    CHECK(max_abs(product.to(torch::kFloat32) - torch::mm(a.to(torch::kFloat64), b.to(torch::kFloat64))) <
          0.02 * max_abs(torch::mm(a, b)) + 0.02);
    {
      ops::Float32Region fp32;
      CHECK_FALSE(ops::autocast_enabled());
      CHECK(torch::mm(a, b).scalar_type() == torch::kFloat32);
    }
    CHECK(ops::autocast_enabled());
    {
      auto inner = bf16();  // nested: the outer scope's state comes back after it
      CHECK(ops::autocast_enabled());
    }
    CHECK(ops::autocast_enabled());
    CHECK(torch::mm(a, b).scalar_type() == torch::kBFloat16);
  }
  CHECK_FALSE(ops::autocast_enabled());
  CHECK(torch::mm(a, b).scalar_type() == torch::kFloat32);
  {
    ops::AutocastScope off(c10::kCPU, torch::kBFloat16, /*enabled=*/false);
    CHECK_FALSE(ops::autocast_enabled());
  }
}

TEST_CASE("Autocast: float32() widens bfloat16 and float16, keeps the rest, and passes gradients back",
          "[ops][precision]") {
  auto x = torch::randn({5}).to(torch::kBFloat16).requires_grad_(true);
  auto y = ops::float32(x);
  CHECK(y.scalar_type() == torch::kFloat32);
  (y * 3).sum().backward();
  REQUIRE(x.grad().defined());
  CHECK(x.grad().scalar_type() == torch::kBFloat16);
  CHECK(max_abs(x.grad().to(torch::kFloat32) - 3) == 0);
  CHECK(ops::float32(torch::ones({2}, torch::kHalf)).scalar_type() == torch::kFloat32);
  const auto d = torch::ones({2}, torch::kFloat64), i = torch::ones({2}, torch::kInt64);
  CHECK(ops::float32(d).scalar_type() == torch::kFloat64);
  CHECK(ops::float32(i).scalar_type() == torch::kInt64);
  CHECK_FALSE(ops::float32(torch::Tensor()).defined());
}

TEST_CASE("Autocast: float32_mean averages in float32 and passes back a broadcast gradient in x's type",
          "[ops][precision]") {
  torch::manual_seed(3);
  const auto x = (torch::randn({3, 4, 5, 6}) + 2).to(torch::kBFloat16).requires_grad_(true);
  const auto mean = ops::float32_mean(x, 2);
  CHECK(mean.scalar_type() == torch::kFloat32);
  CHECK(mean.sizes() == torch::IntArrayRef({3, 4}));
  // float64's mean of the same bfloat16 values, to float32's rounding (a bfloat16 result would be 2^-9 off).
  const auto exact = x.detach().to(torch::kFloat64).flatten(2).mean(-1);
  CHECK(max_abs(mean.to(torch::kFloat64) - exact) < 1e-6);
  CHECK(max_abs(mean.to(torch::kFloat64) - exact.to(torch::kBFloat16).to(torch::kFloat64)) > 1e-4);

  // The gradient: the upstream gradient / 30, rounded to bfloat16 once and broadcast (stride 0 over the averaged
  // axes), the same bits as LibTorch's mean of float32(x).
  const auto g = torch::randn({3, 4});
  const auto dx = torch::autograd::grad({mean}, {x}, {g})[0];
  CHECK(dx.scalar_type() == torch::kBFloat16);
  CHECK(dx.sizes() == x.sizes());
  CHECK(dx.stride(2) == 0);
  CHECK(dx.stride(3) == 0);
  const auto reference = torch::autograd::grad({ops::float32(x).flatten(2).mean(-1)}, {x}, {g})[0];
  CHECK(torch::equal(dx, reference));

  // float32 stays float32 (LibTorch's mean exactly), float64 stays float64; from axis 1 it averages [C, H, W].
  const auto f = torch::randn({2, 3, 7});
  CHECK(torch::equal(ops::float32_mean(f, 2), f.mean(-1)));
  CHECK(ops::float32_mean(f.to(torch::kFloat64), 1).scalar_type() == torch::kFloat64);
  CHECK(ops::float32_mean(f, 1).sizes() == torch::IntArrayRef({2}));

  // Twice differentiable: d/dx of sum(d(sum mean^2)/dx) = 2 / count for every element.
  const auto d = torch::randn({2, 3, 4}, torch::dtype(torch::kFloat64).requires_grad(true));
  const auto first = torch::autograd::grad({ops::float32_mean(d, 2).pow(2).sum()}, {d}, {}, true, true)[0];
  const auto second = torch::autograd::grad({first.sum()}, {d})[0];
  CHECK(max_abs(second - 2.0 / 4) < 1e-12);

  CHECK_THROWS_WITH(ops::float32_mean(f, 0), Catch::Contains("start_dim must be 1 to 2"));
  CHECK_THROWS_WITH(ops::float32_mean(f, 3), Catch::Contains("start_dim must be 1 to 2"));
  CHECK_THROWS_WITH(ops::float32_mean(torch::ones({2, 3}, torch::kInt64), 1), Catch::Contains("floating-point"));
}

TEST_CASE(
    "Autocast: conv3x3 keeps its float32 direct kernel for small problems, a large bfloat16 one goes to its "
    "bfloat16 kernel (or LibTorch)",
    "[ops][precision]") {
  torch::manual_seed(3);
  const auto x = torch::randn({2, 4, 8, 8}), w = torch::randn({6, 5, 3, 3}) * 0.2, b = torch::randn({6});
  const auto expected = ops::conv3x3(x, w, b, 1.0, ops::Conv3x3Kernel::reference);
  const auto direct = ops::conv3x3(x, w, b, 1.0);  // outside autocast
  const bool bf16_kernel = ops::detail::cpu_has_avx512_bf16() && !ops::detail::cpu_has_amx_bf16();
  auto scope = bf16();
  CHECK_FALSE(ops::PackedWeight::usable(x.flatten(1)));  // packed products give way to LibTorch's bfloat16
  CHECK(ops::conv3x3_direct_available(x, w) == ops::cpu_has_avx2_fma());
  const auto out = ops::conv3x3(x, w, b, 1.0);
  if (ops::cpu_has_avx2_fma())
    CHECK(torch::equal(out, direct));  // the float32 direct kernel, as without autocast
  else
    WARN("no AVX2 and FMA here: the float32 input went to LibTorch's convolution");
  // A bfloat16 input (a GroupNorm's output under autocast) of the same small problem: widened for the float32 kernel.
  const auto x16 = x.to(torch::kBFloat16);
  CHECK(ops::conv3x3_direct_available(x16, w) == ops::detail::cpu_has_avx512_bf16());
  const auto out16 = ops::conv3x3(x16, w, b, 1.0);
  if (ops::cpu_has_avx2_fma()) {
    CHECK(out16.scalar_type() == torch::kFloat32);
    {
      ops::Float32Region plain;
      CHECK(torch::equal(out16, ops::conv3x3(x16.to(torch::kFloat32), w, b, 1.0)));
    }
  }
  // A large one (above the float32 kernel's 4 M multiply-adds): zoo's bfloat16 kernel where the CPU has AVX512-BF16
  // without AMX, LibTorch's convolution autocast to bfloat16 elsewhere; bfloat16 either way, and the two agree to
  // rounding.
  const auto big = torch::randn({64, 32, 8, 8}).to(torch::kBFloat16), wide = torch::randn({32, 33, 3, 3}) * 0.05;
  CHECK(ops::conv3x3_direct(big, wide) == bf16_kernel);
  const auto big_out = ops::conv3x3(big, wide, {}, 1.0);
  CHECK(big_out.scalar_type() == torch::kBFloat16);
  const auto library = ops::conv3x3(big, wide, {}, 1.0, ops::Conv3x3Kernel::reference);
  CHECK(library.scalar_type() == torch::kBFloat16);
  ops::Float32Region plain;
  const auto big_expected = ops::conv3x3(big.to(torch::kFloat32), wide, {}, 1.0, ops::Conv3x3Kernel::reference);
  CHECK(max_abs(big_out.to(torch::kFloat32) - big_expected) < 0.05 * max_abs(big_expected));
  CHECK(max_abs(big_out.to(torch::kFloat32) - big_expected) > 0);  // it did round
  CHECK(max_abs(big_out.to(torch::kFloat32) - library.to(torch::kFloat32)) < 0.02 * max_abs(big_expected));
}

TEST_CASE("Autocast: group_norm takes bfloat16 inputs with float32 parameters (bfloat16 out, float32 statistics)",
          "[ops][precision]") {
  torch::manual_seed(6);
  torch::nn::GroupNorm norm(4, 8);
  torch::nn::init::normal_(norm->weight);
  torch::nn::init::normal_(norm->bias);
  const auto x = (torch::randn({2, 8, 5, 5}) * 3 + 1).to(torch::kBFloat16).requires_grad_();
  const auto g = torch::randn({2, 8, 5, 5}).to(torch::kBFloat16);
  const auto x32 = x.detach().to(torch::kFloat32).requires_grad_();
  const auto expected = norm(x32);
  const auto expected_grads = torch::autograd::grad({expected}, {x32, norm->weight}, {g.to(torch::kFloat32)});
  auto scope = bf16();
  const auto out = norm(x);  // LibTorch 1.13 alone refuses this: "expected scalar type BFloat16 but found Float"
  CHECK(out.scalar_type() == torch::kBFloat16);
  // float32's output rounded once: within half a unit of bfloat16's last place (2^-9 relative).
  CHECK(max_abs(out.to(torch::kFloat32) - expected) <= max_abs(expected) / 256);
  CHECK(max_abs(out.to(torch::kFloat32) - expected) > 0);
  const auto grads = torch::autograd::grad({out}, {x, norm->weight}, {g});
  CHECK(grads[0].scalar_type() == torch::kBFloat16);
  CHECK(grads[1].scalar_type() == torch::kFloat32);
  CHECK(max_abs(grads[0].to(torch::kFloat32) - expected_grads[0]) <= max_abs(expected_grads[0]) / 128);
  CHECK(max_abs(grads[1] - expected_grads[1]) <= 1e-4 * max_abs(expected_grads[1]));
  // A strided input, which zoo's kernel does not take: widened to float32, as PyTorch's rule for such operations.
  const auto strided = x.detach().transpose(2, 3);
  const auto wide = norm(strided);
  CHECK(wide.scalar_type() == torch::kFloat32);
  CHECK(max_abs(wide - norm(strided.to(torch::kFloat32))) < 1e-6);
}

TEST_CASE("Autocast: on a CPU with AMX group_norm hands on channels-last maps where the convolutions are oneDNN's",
          "[ops][precision]") {
  if (!ops::cpu_has_avx2_fma()) return;
  torch::manual_seed(8);
  torch::nn::GroupNorm norm(4, 32);
  torch::nn::init::normal_(norm->weight);
  // The ODE-ResNet's field, [64, 32, 6, 6]: a 3x3 convolution 32 -> 32 over it is above conv3x3's small problem.
  const auto x = (torch::randn({64, 32, 6, 6}) * 3 + 1).to(torch::kBFloat16).requires_grad_();
  REQUIRE_FALSE(ops::conv3x3_small_problem(64, 36, 32, 32));
  const auto g = torch::randn({64, 32, 6, 6}).to(torch::kBFloat16);
  auto scope = bf16();
  torch::Tensor contiguous, contiguous_dx;
  {
    zoo::ops::detail::AmxOverride without(false);
    contiguous = norm(x);
    contiguous_dx = torch::autograd::grad({contiguous}, {x}, {g})[0];
  }
  zoo::ops::detail::AmxOverride amx(true);
  const auto out = norm(x);
  CHECK(out.scalar_type() == torch::kBFloat16);
  CHECK(out.is_contiguous(torch::MemoryFormat::ChannelsLast));
  CHECK_FALSE(contiguous.is_contiguous(torch::MemoryFormat::ChannelsLast));
  // The same values up to the statistics' summation order: within one bfloat16 rounding.
  CHECK(max_abs(out.to(torch::kFloat32) - contiguous.to(torch::kFloat32)) <=
        max_abs(contiguous.to(torch::kFloat32)) / 128);
  const auto dx = torch::autograd::grad({out}, {x}, {g})[0];
  CHECK(max_abs(dx.to(torch::kFloat32) - contiguous_dx.to(torch::kFloat32)) <=
        max_abs(contiguous_dx.to(torch::kFloat32)) / 64);
  // A channels-last input stays so; small maps (conv3x3's own kernel reads contiguous ones), channels that are not a
  // multiple of 8 and float32 outside autocast stay contiguous.
  CHECK(norm(out).is_contiguous(torch::MemoryFormat::ChannelsLast));
  const auto small = torch::randn({8, 32, 6, 6}).to(torch::kBFloat16);
  REQUIRE(ops::conv3x3_small_problem(8, 36, 32, 32));
  CHECK(norm(small).is_contiguous());
  torch::nn::GroupNorm twelve(3, 12);
  CHECK(twelve(torch::randn({64, 12, 16, 16}).to(torch::kBFloat16)).is_contiguous());
  zoo::ops::Float32Region outside;
  CHECK(norm(x.detach().to(torch::kFloat32)).is_contiguous());
}

TEST_CASE("Autocast: a 3-D convolution over one input channel trains in float32 and hands on bfloat16",
          "[ops][precision]") {
  torch::manual_seed(7);
  const auto x = torch::randn({2, 1, 6, 6, 6}), g = torch::randn({2, 4, 6, 6, 6});
  auto w = (torch::randn({4, 1, 3, 3, 3}) * 0.3).requires_grad_(true), b = torch::randn({4}).requires_grad_(true);
  // What the rule computes: the float32 convolution rounded to bfloat16, and its float32 weight gradient.
  const auto expected = torch::conv3d(x, w, b, 1, 1).to(torch::kBFloat16);
  const auto expected_gw = torch::autograd::grad({expected}, {w}, {g.to(torch::kBFloat16)})[0];
  // What autocast's own rule computes: everything in bfloat16.
  const auto lowered = torch::conv3d(x.to(torch::kBFloat16), w.to(torch::kBFloat16), b.to(torch::kBFloat16), 1, 1);
  REQUIRE_FALSE(torch::equal(expected, lowered));  // the two differ in the last bits, so the checks below can tell

  auto scope = bf16();
  const auto out = torch::conv3d(x, w, b, 1, 1);
  CHECK(out.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(out, expected));
  const auto gw = torch::autograd::grad({out}, {w}, {g.to(torch::kBFloat16)})[0];
  CHECK(gw.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(gw, expected_gw));
  {
    torch::NoGradGuard inference;  // no weight gradient to compute: autocast's bfloat16 convolution
    CHECK(torch::equal(torch::conv3d(x, w, b, 1, 1), lowered));
  }
  // Two input channels, a 2-D convolution over one, grouped: autocast's rule, unchanged.
  const auto x2 = torch::randn({2, 2, 5, 5, 5}), w2 = torch::randn({4, 2, 3, 3, 3}).requires_grad_(true);
  CHECK(torch::equal(torch::conv3d(x2, w2), torch::conv3d(x2.to(torch::kBFloat16), w2.to(torch::kBFloat16))));
  const auto x1 = torch::randn({2, 1, 6, 6}), w1 = torch::randn({4, 1, 3, 3}).requires_grad_(true);
  CHECK(torch::equal(torch::conv2d(x1, w1), torch::conv2d(x1.to(torch::kBFloat16), w1.to(torch::kBFloat16))));
  const auto wg = torch::randn({2, 1, 3, 3, 3}).requires_grad_(true);
  namespace F = torch::nn::functional;
  const auto grouped = F::Conv3dFuncOptions().groups(2);
  CHECK(torch::equal(F::conv3d(x2, wg, grouped), F::conv3d(x2.to(torch::kBFloat16), wg.to(torch::kBFloat16), grouped)));
}

TEST_CASE("Autocast: the LSTM recurrence, Sinkhorn-Knopp and the MLP field's solver stay in float32",
          "[ops][precision]") {
  torch::manual_seed(4);
  // LSTM: bfloat16 input projections (what autocast's linear gives) run the float32 recurrence.
  const auto xs = torch::randn({2, 5, 4 * 3}), w_state = torch::randn({12, 3}), b_state = torch::randn({12});
  const auto mask = torch::ones({2, 5}, torch::kBool);
  const auto xs16 = xs.to(torch::kBFloat16);
  const auto expected_lstm = ops::lstm_recurrence(xs16.to(torch::kFloat32), w_state, b_state, {}, mask, {}, true);
  // Sinkhorn: logits as autocast would hand them over.
  const auto logits = torch::randn({3, 4, 4}) * 2;
  const auto expected_sk = ops::sinkhorn_knopp(logits.to(torch::kBFloat16).to(torch::kFloat32), 20);
  // The MLP field (torchdiffeq's ode_demo field), rk4.
  const auto y0 = torch::randn({6, 2}), w1 = torch::randn({16, 2}), b1 = torch::randn({16}),
             w2 = torch::randn({2, 16}) * 0.3, b2 = torch::randn({2});
  const auto expected_ode = ops::mlp_field_solve(y0, w1, b1, w2, b2, 0, 1, 4, "rk4").y;

  auto scope = bf16();
  for (const bool grad : {false, true}) {
    INFO("with gradients " << grad);
    torch::AutoGradMode mode(grad);
    const auto lstm = ops::lstm_recurrence(xs16, w_state, b_state, {}, mask, {}, true);
    CHECK(lstm.scalar_type() == torch::kFloat32);
    CHECK(max_abs(lstm - expected_lstm) < 1e-6);
    const auto sk = ops::sinkhorn_knopp(logits.to(torch::kBFloat16), 20);
    CHECK(sk.scalar_type() == torch::kFloat32);
    CHECK(max_abs(sk - expected_sk) < 1e-6);
    CHECK(zoo::test::row_error(sk) < 1e-5);  // doubly stochastic to float32 precision
    const auto ode = ops::mlp_field_solve(y0, w1, b1, w2, b2, 0, 1, 4, "rk4").y;
    CHECK(ode.scalar_type() == torch::kFloat32);
    CHECK(max_abs(ode - expected_ode) < 1e-6);
  }
  CHECK(ops::autocast_enabled());  // the float32 regions ended with the calls
}
