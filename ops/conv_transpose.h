// Transposed convolutions, with zoo's own for a kernel that equals its stride: U-Net's 2x2 (2x2x2) stride-2
// upsampling (Ronneberger et al. 2015; Cicek et al. 2016 in 3-D).
//
// When the kernel equals the stride, the taps of neighbouring inputs never overlap: each output pixel takes exactly
// one tap of one input pixel,
//   y[n, o, k_d d + a, k_h h + b, k_w w + c] = bias[o] + sum_i x[n, i, d, h, w] W[i, o, a, b, c],
// so the layer is one matrix product per item, Y[n] = W^T X[n] + bias, with W as [C, O K] (K = k_d k_h k_w taps) and
// X[n] as [C, D H W], whose rows (o, a, b, c) are then interleaved into the output. Its gradients are the same
// product read backwards: dY is the output gradient de-interleaved, dX[n] = W dY[n], dW = sum_n X[n] dY[n]^T, and the
// bias gradient is the output gradient summed per channel.
//
// Why: LibTorch 1.13 has no oneDNN path for transposed convolutions on the CPU; it runs `slow_conv_transpose2d/3d`
// (im2col-style column buffers and a matrix product per item), which under bf16-mixed does not use the CPU's bfloat16
// instructions. The 2-D U-Net's three upsampling layers took 30 ms forward and 63 ms backward of its 256 ms bf16-mixed
// step; the 3-D U-Net's two, 2.2 and 4.2 ms of 42 (Intel Xeon with AMX, 1 thread, 2026-12-07). Here the products are
// LibTorch's own matrix products (oneDNN's on bfloat16, OpenBLAS's on float32) and the interleaving is a copy.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::conv_transpose1d/2d/3d(x, weight, bias, stride, padding, output_padding, groups, dilation) for x
/// [N, C, *] with 1 to 3 spatial axes, weight [C, O / groups, k...] and bias [O] or undefined. Where
/// conv_transpose_by_product() says so, zoo's product (above); elsewhere LibTorch's own, autocast's rule included.
/// Under CPU autocast in bfloat16 (bf16-mixed) the product runs as autocast's rule would run the convolution: x,
/// the weight and the bias rounded to bfloat16, float32 sums rounded once, a bfloat16 output. Differentiable in x,
/// weight and bias, twice too (under create_graph the backward is LibTorch's transposed convolution's).
torch::Tensor conv_transpose(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                             torch::IntArrayRef stride, torch::IntArrayRef padding = 0,
                             torch::IntArrayRef output_padding = 0, int64_t groups = 1,
                             torch::IntArrayRef dilation = 1);

/// Whether conv_transpose runs zoo's product: CPU tensors with 1 to 3 spatial axes, a kernel equal to the stride on
/// every axis, no padding, no output padding, dilation 1, groups 1; float32, float64 or bfloat16 (in float32 or
/// bfloat16 under bf16-mixed) with the weight and bias in x's type (outside autocast); not tracing (a trace records
/// LibTorch's transposed convolution, which TorchScript and Python load).
bool conv_transpose_by_product(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                               torch::IntArrayRef stride, torch::IntArrayRef padding, torch::IntArrayRef output_padding,
                               int64_t groups, torch::IntArrayRef dilation);

}  // namespace zoo::ops
