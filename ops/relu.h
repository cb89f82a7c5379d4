// ReLU on bfloat16's 16-bit patterns, y = max(x, 0), under CPU autocast (bf16-mixed): every convolutional model's
// activations after a bfloat16 convolution and batch norm.
//
// LibTorch 1.13's CPU relu of a bfloat16 tensor widens each element to float32, takes clamp_min and rounds back:
// 0.27 ms for the cnn's [64, 32, 28, 28], slower than its float32 relu (0.18-0.20 ms) though it moves half the bytes
// (a copy of that tensor takes 0.07 ms). The result is always one of two patterns, the input's or zero, so the kernel
// here picks between them on the 16-bit integers, 16 at a time in AVX2: zero where x is negative (sign bit set, not
// -0 and not NaN), x itself elsewhere (+0, -0, positive values, NaN of either sign), which is what LibTorch's
// clamp_min(x, 0) returns. The backward, also on the patterns, passes the gradient where the output is positive or
// NaN and zeros it elsewhere, LibTorch's threshold_backward(grad, y, 0). The plain reference is torch::relu.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::relu(x): the same values and gradient (a NaN keeps its bits, where LibTorch may return another NaN).
/// zoo's kernel runs for a dense bfloat16 CPU tensor (contiguous, channels-last or any other order of its axes in
/// memory, without gaps; the output has the input's strides, as torch::relu's) on a CPU with AVX2, outside a trace
/// (which records aten::relu for TorchScript and Python); otherwise torch::relu. Differentiable, twice too (under
/// create_graph the backward is LibTorch's threshold_backward).
torch::Tensor relu(const torch::Tensor& x);

namespace detail {
/// Whether relu() runs zoo's kernel on x.
bool relu_kernel_applies(const torch::Tensor& x);
}  // namespace detail

}  // namespace zoo::ops
