// Modules with a training loss of their own.
//
// Some layers carry a loss besides the task's: a Mixture of Experts adds a load-balancing loss so that its gate
// spreads tokens over the experts (Shazeer et al. 2017; Switch Transformers). Such a layer implements this
// interface; the trainer finds every such submodule of any model, adds their losses to the training loss and logs
// their statistics each epoch (training/auxiliary.h), so neither the model nor the trainer knows the other.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace zoo::models {

class AuxiliaryLoss {
 public:
  virtual ~AuxiliaryLoss() = default;
  /// The loss of the last forward pass in training mode, a scalar that requires grad; undefined when there is
  /// none (evaluation mode, or switched off).
  virtual torch::Tensor auxiliary_loss() const = 0;
  /// Named statistics of the last forward pass, detached scalars or 1-D tensors (e.g. the fraction of tokens
  /// per expert), for the epoch logs.
  virtual std::vector<std::pair<std::string, torch::Tensor>> auxiliary_statistics() const { return {}; }
};

}  // namespace zoo::models
