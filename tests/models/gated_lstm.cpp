// GatedLSTMCell: the LSTM's gates exposed, its one-node backward, and learning to remember.
#include "models/gated_lstm.h"
#include "helpers.h"
#include "models/attention.h"
#include "models/moe.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "training/auxiliary.h"
#include "training/checkpoint.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <set>

using namespace zoo;
using torch::Tensor;

namespace {

using test::max_abs;

}  // namespace

TEST_CASE("GatedLSTMCell: its one-node backward equals autograd through the formulas, gates included", "[gates]") {
  for (const bool bias : {true, false}) {
    INFO("bias " << bias);
    torch::manual_seed(6);
    const int64_t n = 3, in = 4, hidden = 5, steps = 3;
    models::GatedLSTMCell cell(models::GatedLSTMCellOptions(in, hidden).bias(bias));
    const auto xs = torch::randn({steps, n, in});
    const auto h0 = torch::randn({n, hidden}), c0 = torch::randn({n, hidden});
    const auto w = torch::randn({6, n, hidden});
    // The cell, unrolled over 3 steps, with a loss on the state and on every gate of every step.
    auto run = [&](const std::function<std::vector<torch::Tensor>(const torch::Tensor&, const torch::Tensor&,
                                                                  const torch::Tensor&)>& step_fn,
                   const torch::Tensor& x, const torch::Tensor& h_init, const torch::Tensor& c_init) {
      auto h = h_init, c = c_init;
      torch::Tensor loss = torch::zeros({});
      for (int64_t t = 0; t < steps; ++t) {
        auto outs = step_fn(x[t], h, c);
        for (size_t k = 0; k < 6; ++k) loss = loss + (outs[k] * w[static_cast<int64_t>(k)]).sum();
        h = outs[0];
        c = outs[1];
      }
      return loss;
    };
    auto fused = [&](const torch::Tensor& x, const torch::Tensor& h, const torch::Tensor& c) {
      auto s = cell->forward(x, std::make_tuple(h, c));
      return std::vector<torch::Tensor>{s.h, s.c, s.input_gate, s.forget_gate, s.candidate, s.output_gate};
    };
    auto formulas = [&](const torch::Tensor& x, const torch::Tensor& h, const torch::Tensor& c) {
      auto z = torch::matmul(x, cell->weight_ih.t()) + torch::matmul(h, cell->weight_hh.t());
      if (bias) z = z + cell->bias_ih + cell->bias_hh;
      auto p = z.chunk(4, 1);
      auto i = torch::sigmoid(p[0]), f = torch::sigmoid(p[1]), g = torch::tanh(p[2]), o = torch::sigmoid(p[3]);
      auto c2 = f * c + i * g;
      return std::vector<torch::Tensor>{o * torch::tanh(c2), c2, i, f, g, o};
    };
    using StepFn =
        std::function<std::vector<torch::Tensor>(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;
    auto grads = [&](const StepFn& fn) {
      auto x = xs.clone().requires_grad_(true), h = h0.clone().requires_grad_(true),
           c = c0.clone().requires_grad_(true);
      cell->zero_grad();
      const auto loss = run(fn, x, h, c);
      loss.backward();
      std::vector<torch::Tensor> g{loss.detach(), x.grad(), h.grad(), c.grad()};
      for (const auto& p : cell->parameters()) g.push_back(p.grad().clone());
      return g;
    };
    const auto a = grads(fused), b = grads(formulas);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == (bias ? 8u : 6u));
    for (size_t k = 0; k < a.size(); ++k) {
      INFO("tensor " << k);
      CHECK(max_abs(a[k] - b[k]) < 1e-5 * std::max(1.0, max_abs(b[k])));
      CHECK(max_abs(b[k]) > 0);
    }
  }
}

TEST_CASE("GatedLSTMCell equals torch::nn::LSTMCell with the same weights, gates exposed", "[gates]") {
  torch::manual_seed(3);
  const int64_t n = 4, in = 5, hidden = 7;
  models::GatedLSTMCell cell(models::GatedLSTMCellOptions(in, hidden));
  torch::nn::LSTMCell reference(in, hidden);
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : reference->named_parameters()) p.value().copy_(cell->named_parameters()[p.key()]);
  }
  const auto x = torch::randn({n, in});
  const auto h0 = torch::randn({n, hidden}), c0 = torch::randn({n, hidden});
  const auto step = cell(x, std::make_tuple(h0, c0));
  const auto [h_ref, c_ref] = reference(x, std::make_tuple(h0, c0));
  CHECK(max_abs(step.h - h_ref) < 1e-6);
  CHECK(max_abs(step.c - c_ref) < 1e-6);
  // The gates are what the equations say they are.
  CHECK(max_abs(step.c - (step.forget_gate * c0 + step.input_gate * step.candidate)) < 1e-6);
  CHECK(max_abs(step.h - step.output_gate * torch::tanh(step.c)) < 1e-6);
  for (const auto& gate : {step.input_gate, step.forget_gate, step.output_gate}) {
    CHECK(gate.min().item<double>() > 0);
    CHECK(gate.max().item<double>() < 1);
  }
  // Gradients of the same loss agree too.
  step.h.sum().add(step.c.pow(2).sum()).backward();
  auto [h2, c2] = reference(x, std::make_tuple(h0, c0));
  h2.sum().add(c2.pow(2).sum()).backward();
  CHECK(max_abs(cell->weight_hh.grad() - reference->weight_hh.grad()) < 1e-5);
  CHECK(max_abs(cell->bias_ih.grad() - reference->bias_ih.grad()) < 1e-5);
  // forget_bias shifts only the forget block of bias_ih.
  torch::manual_seed(4);
  models::GatedLSTMCell plain(models::GatedLSTMCellOptions(in, hidden));
  torch::manual_seed(4);
  models::GatedLSTMCell biased(models::GatedLSTMCellOptions(in, hidden).forget_bias(1.0));
  const auto shift = biased->bias_ih - plain->bias_ih;
  CHECK(max_abs(shift.slice(0, hidden, 2 * hidden) - 1) < 1e-6);
  CHECK(max_abs(shift.slice(0, 0, hidden)) == 0);
  CHECK(max_abs(shift.slice(0, 2 * hidden)) == 0);
}

TEST_CASE("GatedLSTMCell learns to remember a flag over a gap: the forget gate of its memory unit goes to 1",
          "[gates][learning]") {
  // Step 0 shows a flag (+1 or -1) and a marker; then `gap` steps of noise; the last step asks for the flag.
  torch::manual_seed(5);
  const int64_t gap = 10, hidden = 8, batch = 64, length = gap + 2;
  models::GatedLSTMCell cell(models::GatedLSTMCellOptions(3, hidden));
  torch::nn::Linear head(hidden, 1);
  std::vector<Tensor> params = cell->parameters();
  for (const auto& p : head->parameters()) params.push_back(p);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(3e-2));
  auto make_batch = [&](int64_t n) {
    const auto flag = torch::randint(0, 2, {n}).to(torch::kFloat) * 2 - 1;
    auto x = torch::randn({length, n, 3}) * 0.5;
    x.select(2, 1).zero_();
    x.select(2, 2).zero_();
    x[0].select(1, 1).copy_(flag);
    x[0].select(1, 2).fill_(1);    // "remember this"
    x[-1].select(1, 2).fill_(-1);  // "answer now"
    return std::make_pair(x, flag);
  };
  // Mean forget gate over the gap per unit, and the accuracy, on fresh sequences.
  auto probe = [&] {
    torch::NoGradGuard no_grad;
    const auto [x, flag] = make_batch(256);
    std::optional<std::tuple<Tensor, Tensor>> state;
    auto forget = torch::zeros({hidden});
    models::GatedLSTMStep step;
    for (int64_t t = 0; t < length; ++t) {
      step = cell(x[t], state);
      state = std::make_tuple(step.h, step.c);
      if (t >= 1 && t <= gap) forget += step.forget_gate.mean(0) / static_cast<double>(gap);
    }
    // The unit that carries the flag: the one whose cell state at the end best separates the classes.
    const auto separation = (step.c * flag.unsqueeze(1)).mean(0).abs();
    const int64_t unit = separation.argmax().item<int64_t>();
    const double accuracy =
        ((head(step.h).squeeze(1) > 0).to(torch::kFloat) * 2 - 1 == flag).to(torch::kFloat).mean().item<double>();
    return std::make_tuple(forget[unit].item<double>(), accuracy);
  };
  const auto [forget_before, accuracy_before] = probe();
  for (int it = 0; it < 400; ++it) {
    const auto [x, flag] = make_batch(batch);
    std::optional<std::tuple<Tensor, Tensor>> state;
    Tensor h;
    for (int64_t t = 0; t < length; ++t) {
      const auto step = cell(x[t], state);
      state = std::make_tuple(step.h, step.c);
      h = step.h;
    }
    const auto loss = torch::binary_cross_entropy_with_logits(head(h).squeeze(1), (flag + 1) / 2);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  const auto [forget_after, accuracy_after] = probe();
  INFO("forget gate of the memory unit over the gap: " << forget_before << " -> " << forget_after << ", accuracy "
                                                       << accuracy_before << " -> " << accuracy_after);
  CHECK(forget_before < 0.7);
  CHECK(forget_after > 0.85);
  // What the gate buys: the share of the flag's cell content left after the gap, prod f, from ~0 to most of it.
  CHECK(std::pow(forget_before, gap) < 0.03);
  CHECK(std::pow(forget_after, gap) > 0.2);
  CHECK(accuracy_after > 0.95);
}

TEST_CASE("GatedLSTMCell under bf16-mixed autocast steps in float32: the same state and gradients as without",
          "[gated_lstm][precision]") {
  // It once failed under autocast ("self and mat2 must have the same dtype": the step's addmm_ met a bfloat16 z).
  torch::manual_seed(0);
  models::GatedLSTMCell cell(models::GatedLSTMCellOptions(6, 5));
  const auto x = torch::randn({3, 6});
  auto run = [&](bool autocast) {
    cell->zero_grad();
    zoo::ops::AutocastScope scope(c10::DeviceType::CPU, torch::kBFloat16, autocast);
    auto s1 = cell->forward(x);
    auto s2 = cell->forward(x, std::make_tuple(s1.h, s1.c));
    s2.h.sum().backward();
    return std::make_pair(s2.h.detach().clone(), cell->weight_ih.grad().clone());
  };
  const auto [h32, g32] = run(false);
  const auto [hmixed, gmixed] = run(true);
  CHECK(hmixed.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(h32, hmixed));
  CHECK(torch::equal(g32, gmixed));
}

TEST_CASE("GatedLSTMCell with bfloat16 weights (--precision bf16) steps in float32 on the rounded weights",
          "[gated_lstm][precision]") {
  torch::manual_seed(0);
  models::GatedLSTMCell cell(models::GatedLSTMCellOptions(6, 5));
  models::GatedLSTMCell rounded(models::GatedLSTMCellOptions(6, 5));
  cell->to(torch::kBFloat16);
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : rounded->named_parameters())
      p.value().copy_(cell->named_parameters()[p.key()].to(torch::kFloat32));
  }
  const auto x = torch::randn({3, 6}).to(torch::kBFloat16);
  const auto s = cell->forward(x, std::make_tuple(x.new_zeros({3, 5}), x.new_zeros({3, 5})));
  s.h.sum().backward();
  const auto r = rounded->forward(x.to(torch::kFloat32));
  CHECK(s.h.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(s.h, r.h));
  CHECK(cell->weight_ih.grad().scalar_type() == torch::kBFloat16);
  CHECK(cell->weight_ih.grad().abs().sum().item<double>() > 0);
}
