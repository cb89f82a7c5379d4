// One convolutional classifier for 1-, 2-, 3- or 4-D data: "the maths is the same, just more axes".
//
//   features:   [ConvNd(3, stride 2 after the first block, padding 1) -> ReLU] per entry of `channels`
//   head:       global average over every spatial/temporal axis -> Linear(num_classes)
//
// ConvNd is torch::nn::Conv1d/2d, zoo::models::Conv3d (torch::nn::Conv3d with zoo's direct kernel for a first layer
// over one channel, models/conv3d.h) or zoo::models::Conv4d for dims = 4. Input [N, C, L1 .. L_dims].
#pragma once

#include <torch/torch.h>

namespace zoo::models {

struct ConvNetOptions {
  TORCH_ARG(int64_t, dims) = 2;
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(std::vector<int64_t>, channels) = std::vector<int64_t>{16, 32, 64};
  TORCH_ARG(int64_t, num_classes) = 10;
};

class ConvNetImpl : public torch::nn::Cloneable<ConvNetImpl> {
 public:
  explicit ConvNetImpl(ConvNetOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  ConvNetOptions options;
  torch::nn::Sequential features{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(ConvNet);

}  // namespace zoo::models
