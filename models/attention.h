// Attention as a soft dictionary (Vaswani et al. 2017, "Attention Is All You Need", Eq. 1):
//
//   Attention(Q, K, V) = softmax(Q K^T / (sqrt(d_k) * tau)) V
//
// A dictionary maps a key to its value. Attention compares a query with every key and returns the values
// averaged by the softmax of the similarities: a soft lookup. As the temperature tau goes to 0 the softmax
// becomes one-hot on the most similar key, and a query equal to a key returns exactly that key's value (a hard
// lookup); tau = 0 is that limit, computed as argmax. tau = 1 is ordinary attention.
//
// Multi-head attention projects queries, keys and values h times (q_proj, k_proj, v_proj, out_proj, the names
// of PyTorch-style code) and attends in each head independently: MultiHead(Q, K, V) = Concat(head_1..h) W_O.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

struct AttentionResult {
  torch::Tensor output;   ///< [..., L, d_v]
  torch::Tensor weights;  ///< [..., L, S]: each row sums to 1 (over the keys a query may see)
};

/// q: [..., L, d], k: [..., S, d], v: [..., S, d_v]. `mask` (optional) broadcasts to [..., L, S]: bool, true
/// where a query MAY attend (as torch.nn.functional.scaled_dot_product_attention), or float, added to the scores.
/// A query that may attend to no key gets NaN, as in PyTorch. temperature: > 0, or 0 for the hard lookup.
AttentionResult scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                             const torch::Tensor& mask = {}, double temperature = 1.0);

struct AttentionOptions {
  AttentionOptions(int64_t embed_dim, int64_t num_heads) : embed_dim_(embed_dim), num_heads_(num_heads) {}
  TORCH_ARG(int64_t, embed_dim);
  TORCH_ARG(int64_t, num_heads);
  TORCH_ARG(bool, bias) = true;
  /// Dropout on the attention weights in training mode.
  TORCH_ARG(double, dropout) = 0.0;
  /// tau in softmax(QK^T / (sqrt(d_k) tau)); 0 = hard lookup.
  TORCH_ARG(double, temperature) = 1.0;
};

/// Multi-head attention on batch-first tensors. Parameters q_proj, k_proj, v_proj, out_proj ({weight, bias}); with
/// the same weights (in_proj_weight = cat(q, k, v)) it computes what torch.nn.MultiheadAttention computes.
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  explicit AttentionImpl(AttentionOptions options);
  void reset() override;
  /// query [N, L, E], key [N, S, E], value [N, S, E]. key_padding_mask [N, S] bool: true = padding (ignored);
  /// attn_mask [L, S] or [N*h, L, S]: bool, true = not allowed, or float added to the scores (both as
  /// torch.nn.MultiheadAttention). Returns the output [N, L, E] and the weights per head [N, h, L, S].
  AttentionResult forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                          const torch::Tensor& key_padding_mask = {}, const torch::Tensor& attn_mask = {});
  void pretty_print(std::ostream& stream) const override;

  AttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(Attention);

}  // namespace zoo::models
