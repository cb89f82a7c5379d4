// Second derivatives through zoo's hand-written backwards. Each kernel's backward computes its gradients without
// recording them; under create_graph (a gradient penalty, double backward) it hands over to its plain reference's
// autograd instead, so that the gradients it returns are differentiable again.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace zoo::ops {

/// The gradients, recorded, of `reference()` (the function recomputed from the saved operands) with respect to
/// operands[i] for each i whose input of the autograd function needs one (operands[i] being that function's input
/// i; an empty tensor stands for an absent one), in a list of `inputs` entries, the function's input count.
inline torch::autograd::variable_list gradients_through(torch::autograd::AutogradContext* ctx,
                                                        const std::vector<torch::Tensor>& operands,
                                                        const std::function<torch::Tensor()>& reference,
                                                        const torch::Tensor& go, size_t inputs) {
  std::vector<torch::Tensor> wrt;
  std::vector<size_t> which;
  for (size_t i = 0; i < operands.size(); ++i) {
    const auto& t = operands[i];
    if (ctx->needs_input_grad(i) && t.numel() > 0 && t.requires_grad()) {
      wrt.push_back(t);
      which.push_back(i);
    }
  }
  torch::autograd::variable_list out(inputs);
  if (wrt.empty()) return out;
  const auto g = torch::autograd::grad({reference()}, wrt, {go}, /*retain_graph=*/true, /*create_graph=*/true,
                                       /*allow_unused=*/true);
  for (size_t j = 0; j < which.size(); ++j) out[which[j]] = g[j];
  return out;
}

}  // namespace zoo::ops
