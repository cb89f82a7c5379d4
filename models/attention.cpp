#include "models/attention.h"

#include "ops/dropout.h"

#include <cmath>
#include <limits>

namespace zoo::models {

AttentionResult scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                             const torch::Tensor& mask, double temperature) {
  TORCH_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim(),
              "attention: q, k, v must have the same number of dimensions (>= 2), got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.size(-1) == k.size(-1), "attention: queries and keys differ in width: ", q.size(-1), " vs ",
              k.size(-1));
  TORCH_CHECK(k.size(-2) == v.size(-2), "attention: ", k.size(-2), " keys but ", v.size(-2), " values");
  TORCH_CHECK(temperature >= 0 && std::isfinite(temperature), "attention: temperature must be >= 0, got ", temperature);
  auto scores = torch::matmul(q, k.transpose(-2, -1));
  if (temperature > 0) scores = scores / (std::sqrt(static_cast<double>(q.size(-1))) * temperature);
  if (mask.defined()) {
    if (mask.scalar_type() == torch::kBool)
      scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
    else
      scores = scores + mask;
  }
  torch::Tensor weights;
  if (temperature > 0) {
    weights = torch::softmax(scores, -1);
  } else {
    // The limit tau -> 0: all weight on the best-matching key (ties go to the first).
    weights = torch::zeros_like(scores).scatter_(-1, scores.argmax(-1, /*keepdim=*/true), 1.0);
    const auto none_allowed = std::get<0>(scores.max(-1, /*keepdim=*/true)) == -std::numeric_limits<double>::infinity();
    weights = weights.masked_fill(none_allowed, std::numeric_limits<double>::quiet_NaN());
  }
  return {torch::matmul(weights, v), weights};
}

AttentionImpl::AttentionImpl(AttentionOptions options_) : options(std::move(options_)) { reset(); }

void AttentionImpl::reset() {
  const int64_t e = options.embed_dim(), h = options.num_heads();
  TORCH_CHECK(e > 0 && h > 0 && e % h == 0, "Attention: embed_dim (", e, ") must be a positive multiple of num_heads (",
              h, ")");
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1, "Attention: dropout must be in [0, 1)");
  TORCH_CHECK(options.temperature() >= 0, "Attention: temperature must be >= 0");
  auto linear = [&] { return torch::nn::Linear(torch::nn::LinearOptions(e, e).bias(options.bias())); };
  q_proj = register_module("q_proj", linear());
  k_proj = register_module("k_proj", linear());
  v_proj = register_module("v_proj", linear());
  out_proj = register_module("out_proj", linear());
  // As torch.nn.MultiheadAttention: Xavier-uniform input projections, zero biases.
  torch::NoGradGuard no_grad;
  for (auto& proj : {q_proj, k_proj, v_proj}) {
    torch::nn::init::xavier_uniform_(proj->weight);
    if (options.bias()) proj->bias.zero_();
  }
  if (options.bias()) out_proj->bias.zero_();
}

AttentionResult AttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                       const torch::Tensor& key_padding_mask, const torch::Tensor& attn_mask) {
  const int64_t e = options.embed_dim(), h = options.num_heads(), d = e / h;
  TORCH_CHECK(query.dim() == 3 && query.size(2) == e, "Attention expects query [N, L, ", e, "], got ", query.sizes());
  TORCH_CHECK(key.dim() == 3 && key.size(2) == e && key.size(0) == query.size(0), "Attention expects key [",
              query.size(0), ", S, ", e, "], got ", key.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), "Attention: value ", value.sizes(), " must have the key's shape ",
              key.sizes());
  const int64_t n = query.size(0), l = query.size(1), s = key.size(1);
  auto heads = [&](const torch::Tensor& x, int64_t len) { return x.view({n, len, h, d}).transpose(1, 2); };
  const auto q = heads(q_proj(query), l), k = heads(k_proj(key), s), v = heads(v_proj(value), s);
  // One additive float mask [N, h, L, S] (or broadcastable) from PyTorch's "true = not allowed" conventions.
  torch::Tensor mask;
  const double inf = std::numeric_limits<double>::infinity();
  auto as_additive = [&](const torch::Tensor& m) {
    return m.scalar_type() == torch::kBool ? torch::zeros(m.sizes(), q.options()).masked_fill(m, -inf) : m;
  };
  if (attn_mask.defined()) {
    TORCH_CHECK(
        (attn_mask.dim() == 2 && attn_mask.size(0) == l && attn_mask.size(1) == s) ||
            (attn_mask.dim() == 3 && attn_mask.size(0) == n * h && attn_mask.size(1) == l && attn_mask.size(2) == s),
        "Attention: attn_mask must be [", l, ", ", s, "] or [", n * h, ", ", l, ", ", s, "], got ", attn_mask.sizes());
    mask = as_additive(attn_mask);
    if (mask.dim() == 3) mask = mask.view({n, h, l, s});
  }
  if (key_padding_mask.defined()) {
    TORCH_CHECK(key_padding_mask.dim() == 2 && key_padding_mask.size(0) == n && key_padding_mask.size(1) == s,
                "Attention: key_padding_mask must be [", n, ", ", s, "], got ", key_padding_mask.sizes());
    const auto padding = as_additive(key_padding_mask).view({n, 1, 1, s});
    mask = mask.defined() ? mask + padding : padding;
  }
  auto result = scaled_dot_product_attention(q, k, v, mask, options.temperature());
  if (is_training() && options.dropout() > 0) {
    result.weights = ops::dropout(result.weights, options.dropout(), /*train=*/true);
    result.output = torch::matmul(result.weights, v);
  }
  result.output = out_proj(result.output.transpose(1, 2).reshape({n, l, e}));
  return result;
}

void AttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::Attention(embed_dim=" << options.embed_dim() << ", num_heads=" << options.num_heads()
         << ", temperature=" << options.temperature() << ")";
}

}  // namespace zoo::models
