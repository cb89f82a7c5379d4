// torch::nn::ConvTranspose2d and ConvTranspose3d whose forward runs through ops::conv_transpose, so that U-Net's
// upsampling (a kernel equal to its stride) takes zoo's matrix product where LibTorch would run its slow native path
// (ops/conv_transpose.h); every other configuration, and a forward given an output size, is torch::nn's own. The
// modules are torch::nn's otherwise: the same options, parameters (`weight`, `bias`), initialisation and printout,
// so their weights load into torch.nn.ConvTranspose2d/3d as they are.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

class ConvTranspose2dImpl : public torch::nn::ConvTranspose2dImpl {
 public:
  using torch::nn::ConvTranspose2dImpl::ConvTranspose2dImpl;
  torch::Tensor forward(const torch::Tensor& input, const c10::optional<at::IntArrayRef>& output_size = c10::nullopt);
};
TORCH_MODULE(ConvTranspose2d);

class ConvTranspose3dImpl : public torch::nn::ConvTranspose3dImpl {
 public:
  using torch::nn::ConvTranspose3dImpl::ConvTranspose3dImpl;
  torch::Tensor forward(const torch::Tensor& input, const c10::optional<at::IntArrayRef>& output_size = c10::nullopt);
};
TORCH_MODULE(ConvTranspose3d);

}  // namespace zoo::models
