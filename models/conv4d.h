// 4-D convolution (3-D space + time), which LibTorch lacks, built from Conv3d over the fourth axis:
//
//   out[n, o, t'] = bias[o] + sum_{i < kT} conv3d(x[n, :, t' * sT - pT + i * dT], weight[o, :, i])
//
// Frames outside [0, T) are the zero padding and contribute nothing. Each tap i of the time kernel is one
// batched conv3d over every output frame that reads a real input frame, so the cost is kT conv3d calls.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

struct Conv4dOptions {
  Conv4dOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<4> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  /// (time, depth, height, width)
  TORCH_ARG(torch::ExpandingArray<4>, kernel_size);
  TORCH_ARG(torch::ExpandingArray<4>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<4>, padding) = 0;
  TORCH_ARG(torch::ExpandingArray<4>, dilation) = 1;
  TORCH_ARG(bool, bias) = true;
};

/// Input [N, C, T, D, H, W] -> [N, out_channels, T', D', H', W'] with PyTorch's ConvNd size rule per axis:
/// L' = floor((L + 2 p - d (k - 1) - 1) / s) + 1. Parameters `weight` [O, C, kT, kD, kH, kW] and `bias` [O],
/// initialised like torch.nn.Conv3d (Kaiming-uniform with a = sqrt(5)).
class Conv4dImpl : public torch::nn::Cloneable<Conv4dImpl> {
 public:
  Conv4dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<4> kernel_size)
      : Conv4dImpl(Conv4dOptions(in_channels, out_channels, kernel_size)) {}
  explicit Conv4dImpl(Conv4dOptions options);
  void reset() override;
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  Conv4dOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(Conv4d);

}  // namespace zoo::models
