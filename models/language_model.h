// The interface the "bilm" objective trains through: any bidirectional language model (ELMo's is one), so that
// training/ knows this header and not a concrete model.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace zoo::models {

/// What the "bilm" objective needs of a bidirectional language model.
class BidirectionalLanguageModel {
 public:
  virtual ~BidirectionalLanguageModel() = default;
  /// chars [N, T, W] -> (forward top states, backward top states), each [N, T, D].
  virtual std::pair<torch::Tensor, torch::Tensor> lm_states(const torch::Tensor& chars) = 0;
  /// states [..., D] -> next-word logits [..., vocab] (one softmax for both directions).
  virtual torch::Tensor word_logits(const torch::Tensor& states) = 0;
};

}  // namespace zoo::models
