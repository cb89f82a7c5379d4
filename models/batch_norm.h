// Batch normalisation layers (Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
// Internal Covariate Shift", ICML 2015): torch::nn::BatchNorm2d and BatchNorm3d, training through ops::batch_norm,
// whose float32 kernels are several times faster than LibTorch 1.13's, and which takes bfloat16 input under autocast
// too (ops/batch_norm.h).
//
//   y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias,  per channel, over the batch and every position;
//   running_mean/var <- (1 - momentum) running + momentum * batch statistics (unbiased variance).
//
// The same options, parameters and buffers, under the same names (weight, bias, running_mean, running_var,
// num_batches_tracked), as torch::nn's and Python's, so weights map 1:1; evaluation mode and other dtypes (float64,
// bfloat16 parameters) run LibTorch's own, and a trace records torch::batch_norm.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

template <size_t D>
class BatchNormImpl : public torch::nn::NormImplBase<D, BatchNormImpl<D>, torch::nn::BatchNormOptions> {
 public:
  using torch::nn::NormImplBase<D, BatchNormImpl<D>, torch::nn::BatchNormOptions>::NormImplBase;
  /// x [N, C, *] with D spatial axes, as torch::nn::BatchNorm2d/3d take it.
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

 protected:
  void _check_input_dim(const torch::Tensor& x) override;
};

using BatchNorm2dImpl = BatchNormImpl<2>;
using BatchNorm3dImpl = BatchNormImpl<3>;
TORCH_MODULE(BatchNorm2d);
TORCH_MODULE(BatchNorm3d);

}  // namespace zoo::models
