// The LSTM recurrence: the fast path (fused backward through time; packed weights at inference) against the plain
// loop in tensor operations, and the path a CPU without AVX2 takes.
#include "ops/lstm.h"
#include "helpers.h"
#include "ops/conv3x3.h"
#include "ops/simd.h"

#include <catch2/catch.hpp>

using zoo::ops::lstm_recurrence;
using zoo::ops::lstm_recurrence_reference;
using zoo::ops::LstmClip;
using zoo::test::max_abs;

namespace {

struct LstmCase {
  int64_t hidden, cell;
  LstmClip clip;
};

const LstmCase kCases[] = {{3, 5, {0.6, 0.25}}, {4, 4, {0.6, 0.25}}, {3, 5, {0, 0}}};

struct Inputs {
  torch::Tensor xs, w_state, b_state, w_proj, mask;
};

/// N = 3 sequences of T = 6 steps; weights large enough for both clips to bite.
Inputs make_inputs(const LstmCase& c, bool pad, torch::Dtype dtype) {
  const auto opts = torch::TensorOptions(dtype);
  Inputs in;
  in.xs = torch::randn({3, 6, 4 * c.cell}, opts) * 2;
  in.w_state = torch::randn({4 * c.cell, c.hidden}, opts);
  in.b_state = torch::randn({4 * c.cell}, opts);
  if (c.hidden != c.cell) in.w_proj = torch::randn({c.hidden, c.cell}, opts) * 2;
  in.mask = torch::ones({3, 6}, torch::kBool);
  if (pad) {
    in.mask[1].slice(0, 4).fill_(false);  // padding at the end, as in batches of sentences
    in.mask[2][0] = false;                // and anywhere else
    in.mask[2][3] = false;
  }
  return in;
}

std::vector<torch::Tensor> leaves(const Inputs& in) {
  std::vector<torch::Tensor> out;
  for (const auto& t : {in.xs, in.w_state, in.b_state, in.w_proj})
    out.push_back(t.defined() ? t.clone().requires_grad_(true) : torch::Tensor());
  return out;
}

}  // namespace

TEST_CASE("LSTM recurrence: the fused backward through time gives autograd's outputs and gradients", "[ops][elmo]") {
  for (const bool forward : {true, false}) {
    for (const auto& c : kCases) {
      for (const bool pad : {false, true}) {
        INFO("go_forward " << forward << ", hidden " << c.hidden << ", cell " << c.cell << ", clips " << c.clip.cell
                           << "/" << c.clip.proj << ", padded " << pad);
        torch::manual_seed(5);
        const auto in = make_inputs(c, pad, torch::kFloat64);
        auto f = leaves(in), r = leaves(in);
        const auto out_f = lstm_recurrence(f[0], f[1], f[2], f[3], in.mask, c.clip, forward);
        const auto out_r = lstm_recurrence_reference(r[0], r[1], r[2], r[3], in.mask, c.clip, forward);
        REQUIRE(out_f.sizes() == std::vector<int64_t>{3, 6, c.hidden});
        CHECK(max_abs(out_f - out_r) < 1e-12);
        if (c.clip.proj > 0) CHECK(out_r.abs().max().item<double>() == Approx(c.clip.proj));  // the clip bit
        if (pad) CHECK(max_abs(out_r.masked_select(~in.mask.unsqueeze(-1))) == 0);            // masked steps output 0
        const auto weights = torch::randn({3, 6, c.hidden}, torch::kFloat64);
        (out_f * weights).sum().backward();
        (out_r * weights).sum().backward();
        for (size_t i = 0; i < f.size(); ++i) {
          if (!f[i].defined()) continue;
          INFO("input " << i << " (xs, w_state, b_state, w_proj)");
          REQUIRE(f[i].grad().defined());
          CHECK(max_abs(f[i].grad() - r[i].grad()) < 1e-10 * std::max(1.0, max_abs(r[i].grad())));
          CHECK(max_abs(r[i].grad()) > 0);
        }
      }
    }
  }
}

TEST_CASE("LSTM recurrence: at inference, packed weights and the path of a CPU without AVX2 equal the plain loop",
          "[ops][elmo]") {
  torch::NoGradGuard no_grad;
  for (const auto& c : kCases) {
    for (const bool forward : {true, false}) {
      INFO("hidden " << c.hidden << ", cell " << c.cell << ", go_forward " << forward);
      torch::manual_seed(7);
      const auto in = make_inputs(c, true, torch::kFloat32);
      const auto run = [&] {
        return lstm_recurrence(in.xs, in.w_state, in.b_state, in.w_proj, in.mask, c.clip, forward);
      };
      const auto expected =
          lstm_recurrence_reference(in.xs, in.w_state, in.b_state, in.w_proj, in.mask, c.clip, forward);
      CHECK(max_abs(run() - expected) < 1e-5);  // packed where the CPU has AVX2
      const zoo::ops::ScalarOnly scalar;
      CHECK_FALSE(zoo::ops::cpu_has_avx2_fma());
      CHECK(max_abs(run() - expected) < 1e-5);
    }
  }
  // The guard ends with its scope, and covers the other kernel too.
  {
    const zoo::ops::ScalarOnly scalar;
    CHECK_FALSE(zoo::ops::conv3x3_direct_available(torch::zeros({1, 1, 4, 4}), torch::zeros({1, 1, 3, 3})));
  }
#ifdef ZOO_X86_KERNELS
  CHECK(zoo::ops::cpu_has_avx2_fma() == (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")));
#endif
}

TEST_CASE("LSTM recurrence: empty sequences, and shapes that do not fit are named", "[ops][elmo]") {
  const auto w_state = torch::randn({8, 2}), b_state = torch::zeros({8});
  const auto empty = lstm_recurrence(torch::zeros({2, 0, 8}), w_state, b_state, {}, torch::ones({2, 0}), {}, true);
  CHECK(empty.sizes() == std::vector<int64_t>{2, 0, 2});
  const auto xs = torch::randn({2, 3, 8}), mask = torch::ones({2, 3});
  CHECK_THROWS_WITH(lstm_recurrence(xs, torch::randn({8, 3}), b_state, {}, mask, {}, true),
                    Catch::Contains("w_state must be [4C, H] = [8, 2], got [8, 3]"));
  CHECK_THROWS_WITH(lstm_recurrence(xs, w_state, b_state, {}, torch::ones({2, 4}), {}, true),
                    Catch::Contains("mask must be [N, T] = [2, 3], got [2, 4]"));
  CHECK_THROWS_WITH(lstm_recurrence(torch::randn({2, 3, 7}), w_state, b_state, {}, mask, {}, true),
                    Catch::Contains("xs must be [N, T, 4C]"));
}
