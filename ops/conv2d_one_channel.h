// A 3x3 convolution of one input channel (stride 1, padding p = 1 or 0): the first layer of the image networks here
// (the cnn, the MoE's and the mHC ResNet's stems with p = 1, the ODE-ResNet's with p = 0), under CPU autocast in
// bfloat16, in AVX512-BF16 dot products (vdpbf16ps: two bfloat16 products added into each float32 lane).
//
//   y[n, o, h, w] = b[o] + sum_{i, j < 3} W[o, 0, i, j] x[n, 0, h + i - p, w + j - p]      (zero outside the image)
//   dW[o, 0, i, j] = sum_{n, h, w} dy[n, o, h, w] x[n, 0, h + i - p, w + j - p],   db[o] = sum_{n, h, w} dy[n, o, h, w]
//
// Why: with one input channel the reduction is 9 taps long, too short for oneDNN 2.6's blocked bfloat16 kernels:
// for the cnn's [64, 1, 28, 28] -> 32 channels its forward took 0.56 ms and its weight gradient 0.7 ms at 1 thread
// (20 multiply-adds per ns, where its 32-channel layers reach 90), as much as the next layer's 14 times the work.
// Here each output pixel's 9 taps are laid out as 5 pairs (the last with a zero), so 16 pixels of one output
// channel take 5 dot products, and the weight gradient is dot products over pairs of neighbouring pixels of dy and
// of the input's 9 shifted copies (a 10th row of ones gives the bias's gradient), summed in float32 per chunk of
// images and across the chunks in double: the same bits at any thread count. Padding 0 only shrinks the shifted copies
// to the interior (the ODE-ResNet's stem: its bf16-mixed step 0.5-1.3 ms faster than with oneDNN's, on an Intel Xeon
// with AMX, docs/precision.md).
//
// Reference: autocast's rule, torch::conv2d on the bfloat16-rounded input and weight, which the tests compare against
// in float64: the output within one bfloat16 rounding (the bias added in float32 before it), the weight's and bias's
// gradients in float32, not rounded to bfloat16 (autocast's are).
#pragma once

#include <torch/torch.h>

namespace zoo::ops::detail {

/// Whether autocast's conv2d rule runs conv2d_one_channel: under CPU autocast in bfloat16, outside a trace, on a CPU
/// with AVX512-BF16; an input [N, 1, H, W] (float32 or bfloat16, on the CPU) that needs no gradient, a float32 weight
/// [O, 1, 3, 3], a float32 bias [O] or none, stride 1, padding 1 or 0 (at least 3 x 3 pixels then), no dilation, one
/// group, at most 4096 pixels a map.
bool conv2d_one_channel_applies(const torch::Tensor& input, const torch::Tensor& weight,
                                const c10::optional<torch::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

/// The convolution above: output bfloat16 [N, O, H + 2 padding - 2, W + 2 padding - 2]; differentiable in the weight
/// and bias (float32 gradients), twice too (under create_graph the backward is autocast's rule's, ops/twice.h). Needs
/// cpu_has_avx512_bf16().
torch::Tensor conv2d_one_channel(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                                 int64_t padding = 1);

}  // namespace zoo::ops::detail
