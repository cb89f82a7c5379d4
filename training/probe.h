// Probes of frozen features with a learned scalar mix: the downstream half of ELMo (Peters et al. 2018, eq. 1),
//   ELMo_task = gamma_task * sum_j softmax(s_task)_j h_j,
// where the biLM's layers h_0..h_L stay fixed and s, gamma and a linear classifier are trained per task. The
// learned softmax(s) says which layers the task draws on (the paper: syntax from the lower layer, semantics from
// the top one). A probe of one layer alone (`layer` >= 0) is the baseline.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace zoo::training {

struct ProbeOptions {
  /// Full-batch Adam steps.
  TORCH_ARG(int64_t, steps) = 300;
  TORCH_ARG(double, lr) = 1e-2;
  /// L2 on the classifier's weights (not on s or gamma).
  TORCH_ARG(double, weight_decay) = 1e-4;
  TORCH_ARG(uint64_t, seed) = 0;
  /// -1: learn the scalar mix over every layer; k >= 0: layer k alone (no mix).
  TORCH_ARG(int64_t, layer) = -1;
};

struct ProbeResult {
  std::vector<double> weights;  ///< softmax(s) after training (one-hot for a single layer)
  double gamma = 1;             ///< the learned scale (1 for a single layer)
  double train_accuracy = 0;
  double test_accuracy = 0;
};

/// Trains a probe on `layers` (each [N, D], the same shape: item n's features in layer j), labels [N] in
/// 0..classes-1, on the items `train` and measures accuracy on `test` (index tensors). Each layer is first
/// standardised per feature with the training items' mean and deviation, so the mix weights compare layers, not
/// their scales. Deterministic for a seed.
ProbeResult train_probe(const std::vector<torch::Tensor>& layers, const torch::Tensor& labels, int64_t classes,
                        const torch::Tensor& train, const torch::Tensor& test, const ProbeOptions& options = {});

}  // namespace zoo::training
