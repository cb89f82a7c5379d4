// torch::nn::Conv3d whose forward runs through ops::conv3d, so that a volume network's first layer (3x3x3, stride
// 1, padding 1, one input channel) takes zoo's direct kernel where it beats oneDNN (ops/conv3d.h); every other
// configuration is torch::nn::Conv3d's own forward. The module is a torch::nn::Conv3d otherwise: the same options,
// parameters (`weight`, `bias`), initialisation and printout, so its weights load into torch.nn.Conv3d as they are.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

class Conv3dImpl : public torch::nn::Conv3dImpl {
 public:
  using torch::nn::Conv3dImpl::Conv3dImpl;
  torch::Tensor forward(const torch::Tensor& input);
};
TORCH_MODULE(Conv3d);

}  // namespace zoo::models
