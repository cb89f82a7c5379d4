// Multilayer perceptron classifier: x -> flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear.
// The baseline the sheet's other topics are compared against (Fashion-MNIST: ~0.88-0.90 test accuracy).
#pragma once

#include <torch/torch.h>

namespace zoo::models {

struct MLPOptions {
  TORCH_ARG(int64_t, in_features) = 784;
  TORCH_ARG(std::vector<int64_t>, hidden) = std::vector<int64_t>{256, 128};
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(double, dropout) = 0.0;
};

/// Parameters are named like the Python twin `self.net = nn.Sequential(...)`: net.0.weight, net.2.weight, ...
class MLPImpl : public torch::nn::Cloneable<MLPImpl> {
 public:
  explicit MLPImpl(MLPOptions options = {});
  void reset() override;
  /// x: [N, ...] with prod(...) == in_features; returns logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  MLPOptions options;
  torch::nn::Sequential net{nullptr};
};
TORCH_MODULE(MLP);

}  // namespace zoo::models
