// The "bilm" task: a bidirectional language model's loss, the mean of the forward and the backward next-word
// cross-entropies, and its perplexities.
#pragma once

#include "models/language_model.h"
#include "training/objective.h"

namespace zoo::training {

/// Batches as datasets::LanguageModelDataset gives them: input [N, T, W] character ids, target [N, 2, T]
/// word ids (row 0 forward, row 1 backward; -1 = nothing to predict). The loss is
/// (mean forward NLL + mean backward NLL) / 2 over the positions with a target; the terms forward_nll and
/// backward_nll are logged. Evaluation: forward_perplexity, backward_perplexity, perplexity = their mean
/// (the paper's "average of the forward and backward perplexities"), loss, tokens.
class BidirectionalLMObjective : public Objective {
 public:
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) override;
  std::unique_ptr<Evaluator> evaluator(bool thorough) const override;
  std::string primary_metric() const override { return "perplexity"; }
  bool higher_is_better() const override { return false; }

  static models::BidirectionalLanguageModel& language_model(torch::nn::AnyModule& model);
  /// Summed NLL and the number of predicted positions of each direction: [4] float64
  /// (forward sum, forward count, backward sum, backward count).
  static torch::Tensor nll_sums(torch::nn::AnyModule& model, const datasets::Batch& batch);
};

}  // namespace zoo::training
