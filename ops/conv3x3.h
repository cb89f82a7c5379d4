// 3x3 convolutions (stride 1, padding 1) of small feature maps: the vector field of an ODE-ResNet.
//
// A continuous-depth network evaluates its field at every solver step: 32 Euler steps of torchdiffeq's odenet
// field at width 8 on 6 x 6 maps are 64 convolutions of [8, 9, 6, 6] per forward. oneDNN spends about 70 us on
// each (and 90 us on its backward) where the arithmetic is 190 k multiply-adds: setting up a primitive for every
// call. conv3x3 runs these as a direct convolution on a channels-last, zero-padded copy of the input with an
// AVX2 + FMA kernel (a block of 4 output pixels x 8 or 16 output channels in registers, the taps read in place:
// no im2col), and its backward as two more of the same kind. Larger problems go to torch::conv2d, where oneDNN's
// setup is paid back (see conv3x3_direct), without the lead channels (Conv3x3Kernel::library). bfloat16 input (the
// field's GroupNorm output under bf16-mixed) has a direct kernel of its own on CPUs with AVX512-BF16
// (ops/conv2d_bf16.h), at every size: oneDNN 2.6 reorders bfloat16 operands on every call. Not on CPUs with AMX,
// where oneDNN's AMX kernels are faster than it.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// Which implementation conv3x3 runs.
enum class Conv3x3Kernel {
  automatic,  ///< direct when conv3x3_direct says so, else library
  direct,     ///< the direct kernel (an error where conv3x3_direct_available is false)
  reference,  ///< torch::conv2d on the input with its lead channels concatenated
  /// torch::conv2d on x alone, plus the lead channels' share: lead_value times the convolution of a map of ones with
  /// the sum of their weights ([1, O, H, W], the same for every item), computed as one float32 matrix product of
  /// those sums [O, 9] and a 0/1 matrix of the taps inside the image [9, H W]. oneDNN then convolves C channels, not
  /// lead + C (a time channel made 32 channels 33, padded to 48 in its blocks of 16: the ODE-ResNet's training step
  /// 1.3x faster in float32, 1.05x in bf16-mixed, without it). A trace records reference instead.
  library,
};

/// torch::conv2d(cat({lead constant channels, x}, 1), weight, bias, /*stride=*/1, /*padding=*/1) for x
/// [N, C, H, W] and weight [O, lead + C, 3, 3], lead = weight.size(1) - C (0 or more), bias [O] or undefined.
/// The lead channels hold `lead_value` inside the image and 0 in the padding, as torchdiffeq's ConcatConv2d
/// builds its time channel. Differentiable in x, weight and bias, twice too: under create_graph the direct
/// kernel's backward recomputes the gradients through torch::conv2d's autograd.
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                      double lead_value = 0, Conv3x3Kernel kernel = Conv3x3Kernel::automatic);

/// Whether a direct kernel can run on these operands, on the CPU, not tracing (a trace records torch::conv2d, which
/// TorchScript and Python load): float32 x and weight (bias too) on an x86-64 CPU with AVX2 and FMA, or bfloat16 x
/// with a bfloat16 weight (a float32 one under autocast; bias float32 or bfloat16) on one with AVX512-BF16 (checked
/// at run time). The bfloat16 kernel's output and input gradient are bfloat16, its weight gradient float32.
bool conv3x3_direct_available(const torch::Tensor& x, const torch::Tensor& weight);

/// What Conv3x3Kernel::automatic picks: available, and for float32 a problem small enough (at most 4 M
/// multiply-adds forward) that oneDNN's per-call setup dominates (the crossover measured with zoo_bench's
/// Conv3x3Crossover); bfloat16 at every size (Conv3x3Bf16) on a CPU without AMX (detail::cpu_has_amx_bf16(): with
/// it, oneDNN), except that under autocast a small bfloat16 problem is widened for the float32 kernel, faster there in
/// training (on AMX too).
bool conv3x3_direct(const torch::Tensor& x, const torch::Tensor& weight);

/// Whether a 3x3 convolution of `items` maps of `positions` pixels, `in_channels` -> `out_channels`, is a small problem
/// in the sense above (at most 4 M multiply-adds forward).
bool conv3x3_small_problem(int64_t items, int64_t positions, int64_t out_channels, int64_t in_channels);

}  // namespace zoo::ops
