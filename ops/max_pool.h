// 2x2 max pooling with stride 2: what every CNN stem here does after each convolution block (cnn, moe, mhc-resnet,
// the U-Net encoder).
//
// LibTorch 1.13's CPU kernel for torch::max_pool2d on NCHW tensors, with the int64 indices autograd keeps, spends
// about 25 ns per output: the largest item in a profile of the cnn's bf16-mixed training step on the 2-core VM.
// max_pool2x2 keeps a window position (0..3) per output instead, and a backward that writes each window's gradient
// to that position and zeros to the other three. On x86-64 CPUs with AVX2 both run 8 windows at a time (float32
// and bfloat16; a row's last few windows through zero-padded copies), elsewhere and for double a plain loop per
// channel plane (the tests run both). Same results as torch::max_pool2d(x, 2): floor sizes (an odd last row or column
// is left out), the first maximum of each window in row-major order, NaN propagates (a later NaN wins, as LibTorch's
// `val > max || isnan(val)`).
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::max_pool2d(x, 2) for x [N, C, H, W] (or [C, H, W]). The loop runs for contiguous float, double and
/// bfloat16 CPU tensors of at least 2 x 2, when not tracing (a trace records torch::max_pool2d, which TorchScript
/// and Python load); otherwise, or with `fast` false, torch::max_pool2d itself. Differentiable, twice too: under
/// create_graph the backward goes through torch::max_pool2d's autograd.
torch::Tensor max_pool2x2(const torch::Tensor& x, bool fast = true);

}  // namespace zoo::ops
