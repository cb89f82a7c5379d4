// Tables, dictionaries, gates: embedding as a table, attention as a soft dictionary, the LSTM's gates and the
// Mixture of Experts.
#include "helpers.h"
#include "models/attention.h"
#include "models/gated_lstm.h"
#include "models/moe.h"
#include "models/registry.h"
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

/// Entropy (nats) of a distribution.
double entropy(const Tensor& p) { return -(p * torch::log(p.clamp_min(1e-12))).sum().item<double>(); }

}  // namespace

TEST_CASE("Embedding is a table: Embedding(ids) == one_hot(ids) @ weight", "[gates]") {
  torch::manual_seed(0);
  torch::nn::Embedding table(10, 6);
  const auto ids = torch::tensor({3, 0, 9, 3, 7}, torch::kLong);
  const auto looked_up = table(ids);
  const auto product = torch::matmul(torch::one_hot(ids, 10).to(torch::kFloat), table->weight);
  CHECK(max_abs(looked_up - product) == 0);
  CHECK(max_abs(looked_up[0] - looked_up[3]) == 0);  // the same key, the same row
  CHECK(max_abs(looked_up[1] - table->weight[0]) == 0);
}

TEST_CASE("Attention is a soft dictionary: a query equal to a key returns that key's value as tau -> 0", "[gates]") {
  torch::manual_seed(1);
  const int64_t entries = 6, d = 8;
  // Keys of equal length (rows of an orthogonal matrix): a key matches itself best.
  const auto keys = std::get<0>(torch::linalg_qr(torch::randn({d, d}))).slice(0, 0, entries) * 3;
  const auto values = torch::randn({entries, 5});
  const auto queries = keys.index_select(0, torch::tensor({4, 1, 4}, torch::kLong));
  for (double tau : {1e-2, 1e-3}) {
    const auto r = models::scaled_dot_product_attention(queries, keys, values, {}, tau);
    CHECK(max_abs(r.output[0] - values[4]) < 1e-5);
    CHECK(max_abs(r.output[1] - values[1]) < 1e-5);
  }
  const auto hard = models::scaled_dot_product_attention(queries, keys, values, {}, 0.0);
  CHECK(max_abs(hard.output[0] - values[4]) == 0);  // tau = 0: exactly the value, a hard lookup
  CHECK(max_abs(hard.output[1] - values[1]) == 0);
  // Ordinary temperature: a weighted average of all values, weights in (0, 1) summing to 1, nearest key heaviest.
  const auto soft = models::scaled_dot_product_attention(queries, keys, values, {}, 1.0);
  CHECK(max_abs(soft.weights.sum(-1) - 1) < 1e-6);
  CHECK(soft.weights.min().item<double>() > 0);
  CHECK(soft.weights.max().item<double>() < 1);
  CHECK(soft.weights[0].argmax().item<int64_t>() == 4);
  CHECK(max_abs(soft.output - torch::matmul(soft.weights, values)) < 1e-6);
  CHECK(max_abs(soft.output[0] - values[4]) > 1e-2);
  // The formula by hand: softmax(q k^T / sqrt(d)) v.
  const auto by_hand = torch::matmul(torch::softmax(torch::matmul(queries, keys.t()) / std::sqrt(8.0), -1), values);
  CHECK(max_abs(soft.output - by_hand) < 1e-6);
  // A boolean mask removes keys: the best key masked, the weight goes elsewhere; a float mask adds to the scores.
  auto mask = torch::ones({3, entries}, torch::kBool);
  mask[0][4] = false;
  const auto masked = models::scaled_dot_product_attention(queries, keys, values, mask, 1.0);
  CHECK(masked.weights[0][4].item<double>() == 0);
  CHECK(max_abs(masked.weights.sum(-1) - 1) < 1e-6);
  CHECK_THROWS_WITH(models::scaled_dot_product_attention(queries, keys, values.slice(0, 0, 3)),
                    Catch::Contains("6 keys but 3 values"));
}

TEST_CASE("Attention: multi-head output and weights equal torch::nn::MultiheadAttention with the same weights",
          "[gates]") {
  torch::manual_seed(2);
  const int64_t n = 3, l = 4, s = 5, e = 12, h = 3;
  models::Attention mine(models::AttentionOptions(e, h));
  torch::nn::MultiheadAttention theirs(torch::nn::MultiheadAttentionOptions(e, h));
  {
    torch::NoGradGuard no_grad;
    theirs->in_proj_weight.copy_(torch::cat({mine->q_proj->weight, mine->k_proj->weight, mine->v_proj->weight}));
    mine->q_proj->bias.normal_();  // non-zero biases, so that they are compared too
    mine->v_proj->bias.normal_();
    mine->out_proj->bias.normal_();
    theirs->in_proj_bias.copy_(torch::cat({mine->q_proj->bias, mine->k_proj->bias, mine->v_proj->bias}));
    theirs->out_proj->weight.copy_(mine->out_proj->weight);
    theirs->out_proj->bias.copy_(mine->out_proj->bias);
  }
  const auto q = torch::randn({n, l, e}), k = torch::randn({n, s, e}), v = torch::randn({n, s, e});
  auto padding = torch::zeros({n, s}, torch::kBool);
  padding[1][4] = true;
  padding[2][0] = true;
  const auto causal = torch::ones({l, s}, torch::kBool).triu(2);  // true = not allowed
  const auto ours = mine(q, k, v, padding, causal);
  // The reference gets the same masks as additive -inf floats (LibTorch 1.13's C++ MultiheadAttention adds a bool
  // attn_mask to the scores as 0/1 instead of masking; Python's masks it).
  const double inf = std::numeric_limits<double>::infinity();
  const auto causal_float = torch::zeros({l, s}).masked_fill(causal, -inf);
  const auto ref = theirs(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), padding, true, causal_float);
  CHECK(max_abs(ours.output - std::get<0>(ref).transpose(0, 1)) < 1e-5);
  CHECK(max_abs(ours.weights.mean(1) - std::get<1>(ref)) < 1e-6);        // PyTorch averages the heads' weights
  CHECK(ours.weights[1].select(-1, 4).abs().max().item<double>() == 0);  // padding gets no weight
  CHECK(ours.weights.sizes() == torch::IntArrayRef({n, h, l, s}));
  // Names as a PyTorch user writes them.
  const auto names = mine->named_parameters().keys();
  CHECK(names == std::vector<std::string>{"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                                          "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias"});
  CHECK_THROWS_WITH(models::Attention(models::AttentionOptions(10, 3)), Catch::Contains("multiple of num_heads"));
}

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

TEST_CASE("MoE gating: weights sum to 1, top-k picks exactly k distinct experts", "[moe]") {
  torch::manual_seed(6);
  const auto x = torch::randn({50, 12});
  for (const std::string gate : {"softmax", "topk", "noisy-topk"}) {
    models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(12, 3).experts(6).k(2).gate(gate));
    const auto r = moe->route(x);
    INFO(gate);
    CHECK(max_abs(r.gates.sum(-1) - 1) < 1e-6);
    CHECK(r.gates.min().item<double>() >= 0);
    CHECK(max_abs(r.load.sum() - 1) < 1e-6);
    const int64_t k = gate == "softmax" ? 6 : 2;
    REQUIRE(r.experts.sizes() == torch::IntArrayRef({50, k}));
    // Distinct experts per token.
    const auto sorted = std::get<0>(r.experts.sort(1));
    CHECK((sorted.slice(1, 1) != sorted.slice(1, 0, k - 1)).all().item<bool>());
    if (gate == "topk") {
      // The chosen experts are the k largest logits, and their weights the softmax renormalised over them.
      const auto top = std::get<1>(r.logits.topk(2, -1));
      CHECK(torch::equal(top, r.experts));
      const auto renormalised = r.probs.gather(1, r.experts) / r.probs.gather(1, r.experts).sum(1, true);
      CHECK(max_abs(r.gates - renormalised) < 1e-6);
    }
  }
  CHECK_THROWS_WITH(models::MixtureOfExperts(models::MixtureOfExpertsOptions(4, 2).experts(4).k(5)),
                    Catch::Contains("k must be in [1, 4]"));
  CHECK_THROWS_WITH(models::MixtureOfExperts(models::MixtureOfExpertsOptions(4, 2).gate("top2")),
                    Catch::Contains("valid gates: softmax, topk, noisy-topk"));
}

TEST_CASE("MoE dispatch: sparse equals dense, with k = N equals the softmax gate", "[moe]") {
  torch::manual_seed(7);
  const auto x = torch::randn({40, 10});
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(10, 4).experts(5).k(2));
  const auto r = moe->route(x);
  CHECK(max_abs(moe->dispatch(x, r) - moe->dispatch(x, r, /*dense=*/true)) < 1e-5);
  // The same gradients too, for the input, the gate and every expert, with and without a capacity limit
  // (capacity 1.0 on 40 tokens x 2 choices / 5 experts = 16 slots drops some assignments).
  for (const double capacity : {0.0, 1.0}) {
    INFO("capacity_factor " << capacity);
    models::MixtureOfExperts limited(models::MixtureOfExpertsOptions(10, 4).experts(5).k(2).capacity_factor(capacity));
    auto gradients = [&](bool dense) {
      limited->zero_grad(/*set_to_none=*/true);
      const auto xg = x.clone().requires_grad_(true);
      const auto routing = limited->route(xg);
      if (capacity > 0) REQUIRE(routing.dropped > 0);
      limited->dispatch(xg, routing, dense).pow(2).sum().backward();
      std::vector<torch::Tensor> g{xg.grad()};
      for (const auto& p : limited->parameters()) g.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
      return g;
    };
    const auto sparse = gradients(false), dense = gradients(true);
    for (size_t i = 0; i < sparse.size(); ++i) {
      INFO("gradient " << i);
      CHECK(max_abs(sparse[i] - dense[i]) < 1e-5);
    }
    CHECK(max_abs(sparse[0]) > 1e-2);
  }
  // All experts selected: the sparse top-N layer computes the dense softmax mixture.
  models::MixtureOfExperts all(models::MixtureOfExpertsOptions(10, 4).experts(5).k(5));
  models::MixtureOfExperts dense(models::MixtureOfExpertsOptions(10, 4).experts(5).gate("softmax"));
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : dense->named_parameters()) p.value().copy_(all->named_parameters()[p.key()]);
  }
  const auto y_sparse = all(x), y_dense = dense(x);
  CHECK(max_abs(y_sparse - y_dense) < 1e-5);
  CHECK(max_abs(y_dense) > 1e-2);
  // By hand, for one token: sum_i softmax(x W_g)_i E_i(x).
  const auto p = torch::softmax(dense->gate(x[3]), -1);
  auto by_hand = torch::zeros({4});
  for (int64_t i = 0; i < 5; ++i) by_hand += p[i] * dense->expert(i, x[3].unsqueeze(0))[0];
  CHECK(max_abs(y_dense[3] - by_hand) < 1e-5);
  // Leading dimensions are tokens.
  CHECK(moe(torch::randn({2, 3, 10})).sizes() == torch::IntArrayRef({2, 3, 4}));
}

TEST_CASE("MoE gradients reach the gate and only the selected experts", "[moe]") {
  torch::manual_seed(8);
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(6, 3).experts(8).k(1));
  const auto x = torch::randn({3, 6});
  const auto r = moe->route(x);
  std::set<int64_t> chosen;
  for (int64_t t = 0; t < 3; ++t) chosen.insert(r.experts[t][0].item<int64_t>());
  REQUIRE(chosen.size() < 8);
  // Renormalised top-1 gives every token gate weight 1 (no gradient to the gate); k = 2 below checks the gate.
  moe(x).pow(2).sum().backward();
  for (int64_t i = 0; i < 8; ++i) {
    const auto& w = moe->experts[static_cast<size_t>(i)]->as<models::Expert>()->fc1->weight;
    INFO("expert " << i);
    if (chosen.count(i)) {
      REQUIRE(w.grad().defined());
      CHECK(max_abs(w.grad()) > 0);
    } else {
      CHECK((!w.grad().defined() || max_abs(w.grad()) == 0));
    }
  }
  // Switch-style top-1 (renormalize false): the gate weight is the full-softmax probability, so it learns.
  models::MixtureOfExperts switch_top1(
      models::MixtureOfExpertsOptions(6, 3).experts(8).k(1).renormalize(false).balance("none"));
  const auto rs = switch_top1->route(x);
  CHECK(max_abs(rs.gates - rs.probs.gather(1, rs.experts)) == 0);
  switch_top1(x).pow(2).sum().backward();
  REQUIRE(switch_top1->gate->weight.grad().defined());
  CHECK(max_abs(switch_top1->gate->weight.grad()) > 0);
  models::MixtureOfExperts two(models::MixtureOfExpertsOptions(6, 3).experts(8).k(2).balance("none"));
  two(x).pow(2).sum().backward();
  REQUIRE(two->gate->weight.grad().defined());
  CHECK(max_abs(two->gate->weight.grad()) > 0);
  // noisy-topk: the noise scale is trained too (through the smooth load of the cv loss).
  models::MixtureOfExperts noisy(
      models::MixtureOfExpertsOptions(6, 3).experts(8).k(2).gate("noisy-topk").balance("cv"));
  CHECK(max_abs(noisy->noise->weight) == 0);  // zero at start (Shazeer et al.)
  noisy->train();
  const auto y = noisy(torch::randn({64, 6}));
  (y.pow(2).mean() + noisy->auxiliary_loss()).backward();
  REQUIRE(noisy->noise->weight.grad().defined());
  CHECK(max_abs(noisy->noise->weight.grad()) > 0);
}

TEST_CASE("MoE capacity drops exactly the overflow, first choices before second choices", "[moe]") {
  // Gate logits = x W_g with x = [1, 0] for "prefers expert 0" tokens and [0, 1] for "prefers expert 1".
  auto make = [](int64_t k, double factor) {
    models::MixtureOfExperts moe(
        models::MixtureOfExpertsOptions(2, 3).experts(2).k(k).capacity_factor(factor).balance("none"));
    torch::NoGradGuard no_grad;
    moe->gate->weight.copy_(torch::tensor({{2.0f, 0.0f}, {0.0f, 2.0f}}));
    return moe;
  };
  // k = 1, 10 tokens all for expert 0, capacity ceil(1.2 * 10 / 2) = 6: tokens 0..5 kept, 6..9 dropped.
  auto one = make(1, 1.2);
  one->train();
  const auto x = torch::tensor({1.0f, 0.0f}).repeat({10, 1});
  CHECK(one->capacity(10) == 6);
  const auto y = one(x);
  const auto r = one->route(x);
  CHECK(r.dropped == 4);
  CHECK(torch::equal(r.kept.squeeze(1), torch::arange(10) < 6));
  CHECK(max_abs(y.slice(0, 6)) == 0);  // dropped tokens get nothing
  CHECK(max_abs(y.slice(0, 0, 6) - one->expert(0, x.slice(0, 0, 6))) < 1e-6);
  const auto stats = one->auxiliary_statistics();
  CHECK(stats[2].first == "dropped");
  CHECK(stats[2].second.item<double>() == Approx(0.4));
  // In evaluation the capacity is unlimited by default: nothing dropped.
  one->eval();
  CHECK(one->route(x).dropped == 0);
  // k = 2, tokens 0-1 prefer expert 0, tokens 2-3 expert 1, capacity ceil(0.5 * 4 * 2 / 2) = 2: the four first
  // choices fill both experts, every second choice is dropped.
  auto two = make(2, 0.5);
  two->train();
  const auto x2 = torch::tensor({{1.0f, 0.0f}, {1.0f, 0.0f}, {0.0f, 1.0f}, {0.0f, 1.0f}});
  const auto r2 = two->route(x2);
  CHECK(r2.dropped == 4);
  CHECK(r2.kept.select(1, 0).all().item<bool>());
  CHECK(!r2.kept.select(1, 1).any().item<bool>());
}

TEST_CASE("MoE balancing losses: the Switch form is alpha at balance, both forms by hand", "[moe]") {
  torch::manual_seed(9);
  models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(8, 2).experts(4).k(1).balance_coef(0.01));
  moe->train();
  const auto x = torch::randn({100, 8});
  moe(x);
  const auto r = moe->route(x);
  const auto f = torch::bincount(r.experts.reshape(-1), {}, 4).to(torch::kFloat) / 100;
  CHECK(moe->auxiliary_loss().item<double>() == Approx((0.01 * 4 * (f * r.probs.mean(0)).sum()).item<double>()));
  {
    torch::NoGradGuard no_grad;
    moe->gate->weight.zero_();  // uniform probabilities: P_i = 1/N, so the loss is alpha whatever f is
  }
  moe(x);
  CHECK(moe->auxiliary_loss().item<double>() == Approx(0.01));
  // cv: alpha (CV(importance)^2 + CV(load)^2) with the unbiased variance.
  models::MixtureOfExperts cv(models::MixtureOfExpertsOptions(8, 2).experts(4).k(2).balance("cv").balance_coef(0.1));
  cv->train();
  cv(x);
  const auto rc = cv->route(x);
  const auto importance = torch::zeros({100, 4}).scatter(1, rc.experts, rc.gates).sum(0);
  const auto load = torch::bincount(rc.experts.reshape(-1), {}, 4).to(torch::kFloat);
  auto cv2 = [](const Tensor& v) { return v.var() / v.mean().pow(2); };
  CHECK(cv->auxiliary_loss().item<double>() ==
        Approx((0.1 * (cv2(importance) + cv2(load))).item<double>()).epsilon(1e-4));
  // Evaluation mode carries no loss; balance none carries none at all.
  cv->eval();
  cv(x);
  CHECK(!cv->auxiliary_loss().defined());
}

TEST_CASE("MoE learning: the balancing loss spreads the tokens over the experts", "[moe][learning]") {
  // Regression on 8 clusters. The gate starts biased towards expert 0 (a constant input feature), so without a
  // balancing loss the experts that win early keep winning; with it, the load spreads out.
  auto train = [](const std::string& balance) {
    torch::manual_seed(10);
    const int64_t n = 8, d = 9;
    models::MixtureOfExperts moe(models::MixtureOfExpertsOptions(d, 1)
                                     .experts(n)
                                     .k(1)
                                     .renormalize(false)
                                     .hidden(16)
                                     .balance(balance)
                                     .balance_coef(0.1));
    {
      torch::NoGradGuard no_grad;
      moe->gate->weight.select(1, d - 1).zero_();
      moe->gate->weight[0][d - 1] = 3.0;  // feature d-1 is always 1: a head start for expert 0
    }
    const auto centres = torch::randn({8, d - 1}) * 2;
    const auto targets = torch::randn({8});
    torch::optim::Adam optimizer(moe->parameters(), torch::optim::AdamOptions(1e-2));
    moe->train();
    for (int step = 0; step < 200; ++step) {
      const auto cluster = torch::randint(0, 8, {256}, torch::kLong);
      auto x =
          torch::cat({centres.index_select(0, cluster) + 0.1 * torch::randn({256, d - 1}), torch::ones({256, 1})}, 1);
      const auto y = targets.index_select(0, cluster);
      auto loss = (moe(x).squeeze(1) - y).pow(2).mean();
      if (auto aux = moe->auxiliary_loss(); aux.defined()) loss = loss + aux;
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
    const auto cluster = torch::arange(8).repeat(64);
    const auto x = torch::cat({centres.index_select(0, cluster), torch::ones({512, 1})}, 1);
    return entropy(moe->route(x).load);
  };
  const double without = train("none"), with = train("switch");
  INFO("load entropy without " << without << ", with switch balancing " << with << " (max " << std::log(8.0) << ")");
  CHECK(with > without + 0.3);
  CHECK(with > 0.8 * std::log(8.0));
}

TEST_CASE("The trainer adds a layer's auxiliary loss and logs expert utilisation each epoch", "[moe][trainer]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  auto config = test::small_run("moe", 600, training::TrainOptions().progress(false).threads(1).epochs(2));
  config.options = {{"experts", 4}, {"hidden", 16}, {"capacity_factor", 1.0}, {"balance_coef", 0.1}};
  auto run = training::Run::create(config, dir.str("run"));
  const auto last = run->fit();
  const auto train = last.at("train");
  REQUIRE(train.contains("expert_load"));
  const auto load = train.at("expert_load").get<std::vector<double>>();
  REQUIRE(load.size() == 4);
  double sum = 0;
  for (double v : load) sum += v;
  CHECK(sum == Approx(1.0).epsilon(1e-6));
  // alpha N sum f P: alpha = 0.1 at balance, N alpha = 0.4 if one expert took everything.
  CHECK(train.at("aux").get<double>() > 0.08);
  CHECK(train.at("aux").get<double>() < 0.2);
  CHECK(train.at("dropped").get<double>() >= 0);
  CHECK(train.at("load_entropy").get<double>() <= std::log(4.0) + 1e-6);
  // Chance is 0.1. This configuration reaches 0.42-0.56 over seeds 0-5 (zoo train moe, the same settings).
  CHECK(last.at("test").at("accuracy").get<double>() > 0.35);
  // The log line shows the load per expert.
  const auto lines = test::read_text(dir.path() / "run" / "metrics.jsonl");
  CHECK(test::count_lines(lines) == 2);
  CHECK(training::format_epoch_summary(last, 2).find("train expert_load [") != std::string::npos);
}

TEST_CASE("Expert utilisation survives a mid-epoch stop: the resumed epoch logs what an uninterrupted one does",
          "[moe][trainer][resume]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  auto config = test::small_run("moe", 600, training::TrainOptions().progress(false).threads(1).batch_size(100));
  config.options = {{"experts", 4}, {"hidden", 16}};
  const auto whole = training::Run::create(config, dir.str("whole"))->fit();
  {
    auto run = training::Run::create(config, dir.str("split"));
    int steps = 0;
    run->trainer().add_step_hook([&](torch::nn::Module&) {
      if (++steps == 3) training::request_stop(0);
    });
    CHECK_THROWS_AS(run->fit(), training::Interrupted);
    training::clear_stop_request();
    const auto partial = training::read_json_file(dir.str("split/state.json")).at("partial").at("terms");
    CHECK(partial.at("expert_load")[0].size() == 4);  // [weighted sums per expert, weight]
  }
  const auto resumed = training::Run::resume(dir.str("split"))->fit();
  const auto a = whole.at("train").at("expert_load").get<std::vector<double>>();
  const auto b = resumed.at("train").at("expert_load").get<std::vector<double>>();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).margin(1e-12));
  CHECK(resumed.at("train").at("aux").get<double>() == Approx(whole.at("train").at("aux").get<double>()).margin(1e-12));
  CHECK(resumed.at("test").at("accuracy") == whole.at("test").at("accuracy"));
}
