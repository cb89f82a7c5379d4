// Embedding as a table and attention as a soft dictionary.
#include "models/attention.h"
#include "helpers.h"
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
