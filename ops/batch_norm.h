// Batch normalisation in training mode, float32 or bfloat16 on the CPU: what every CNN stem here does after each
// convolution (cnn, moe, mhc-resnet, the U-Nets, DeconvNets and ResNets).
//
//   y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c,  mean_c and var_c (biased) over every item and
//   position of channel c; running_mean/var move towards mean_c and the unbiased var_c by `momentum`.
//
// (Ioffe & Szegedy, "Batch Normalization", ICML 2015.) LibTorch 1.13's CPU batch norm is slow at float32 training
// statistics (`torch::var_mean` over the same axes is slower still): 2.4 ms forward for [64, 32, 28, 28] on the
// 2-core VM, where its bfloat16 kernel takes 0.6 ms (15% of the cnn's float32 training step). batch_norm computes them
// with AVX2 + FMA, in float32 within each image plane and in double across them (two passes, mean then squared
// deviations, so no cancellation), then y = x * scale_c + shift_c; its backward is LibTorch's formula with the same
// sums:
//   dx = (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) * invstd * weight,
//   dweight = sum(dy * (x - mean)) * invstd,  dbias = sum(dy).
// Each channel is one task, its sums in a fixed order: the same bits at any thread count. Under bf16-mixed, autocast
// hands batch norm bfloat16 x with float32 weight, bias and running statistics: the kernels then read and write x,
// y, dy and dx in bfloat16 and compute everything else as above in float32 and double (y is the float32 path's y
// rounded to bfloat16), where LibTorch's bfloat16 kernel takes 1.1 ms forward and 1.6 ms backward of the cnn's first
// batch norm. A channels-last x (NHWC or NDHWC, C a multiple of 8) has kernels of its own with the same formulas
// (ops/norm_planes.h's rows_* loops): one item per task, each channel's sums over the item's positions in a float32
// lane, added over the items in item order in double (the same bits at any thread count); y and dx come out
// channels-last too. Under bf16-mixed on a CPU with AMX the mHC ResNet's blocks run on channels-last maps
// (ops/stream_mix.h, mix_streams_map), where LibTorch's channels-last batch norm took 2.66 ms for a backward zoo's
// kernel does in 0.48.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps) for x [N, C, *]; weight,
/// bias, running_mean and running_var [C] or undefined. In training mode, for contiguous (or channels-last, C a
/// multiple of 8) CPU tensors, x float32 or bfloat16 and the others float32, on a CPU with AVX2 + FMA and outside a
/// trace, the kernels above (running statistics updated in place, as LibTorch does); otherwise, or with `fast` false,
/// torch::batch_norm itself (a trace records it, which TorchScript, ONNX and Python load). Differentiable in x, weight
/// and bias, twice too: under create_graph the backward goes through torch::batch_norm's autograd.
torch::Tensor batch_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                         const torch::Tensor& running_mean, const torch::Tensor& running_var, bool training,
                         double momentum, double eps, bool fast = true);

/// Whether batch_norm runs its own kernels on these operands (see above).
bool batch_norm_fast(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                     const torch::Tensor& running_mean, const torch::Tensor& running_var, bool training);

}  // namespace zoo::ops
