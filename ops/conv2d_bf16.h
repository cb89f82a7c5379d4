// A direct 2-D convolution on bfloat16 operands with AVX512-BF16's dot products (vdpbf16ps: two bfloat16 products
// added into each float32 lane), float32 accumulators and float32 weight gradients: kernels of 1-7 taps per axis,
// strides up to the kernel's size, zero padding below it. Used by conv3x3 (ops/conv3x3.h: the ODE field, with its time
// channel) and by autocast's rule for conv1d (ops/autocast.cpp: 1-D convolutions of up to 64 channels, as single
// rows; 2-D ones stay with oneDNN, which it only matched on the models' layers). Its weight gradient alone
// (conv_bf16_weight_gradient, through ops/conv_weight_gradient.h) also serves narrow 2-D convolutions on small maps
// without AMX and strided 3-D convolutions with AMX. Not a public header.
//
// Why: under bf16-mixed oneDNN 2.6 reorders every bfloat16 operand into its blocked layout and back on each call,
// without a fast bfloat16 reorder, so its convolutions of 16-64 channels on small maps gain only 1.3-1.5x over
// float32 where the arithmetic can gain 2x or more (docs/precision.md).
//
// The forward and the input gradient are direct convolutions of a zero-padded channels-last copy (input channels in
// pairs, the pair a dot product takes) in blocks of 1-2 rows x 1-6 pixels x 16 or 32 output channels; for a stride
// s > 1 the input gradient is s x s such convolutions with the taps of each output phase (the transposed
// convolution's sub-pixel form, no multiplications by inserted zeros). The weight gradient is dot products over
// pairs of neighbouring output pixels, x laid out by column phase so that the pixels a pair reads are adjacent.
#pragma once

#include <torch/torch.h>

namespace zoo::ops::detail {

/// Whether this CPU has AVX512-BF16 (with AVX512F and BW), checked once; false where ScalarOnly (ops/simd.h) or
/// WithoutBf16Kernel lives, and on builds without the x86 kernels.
bool cpu_has_avx512_bf16();

/// While one lives, cpu_has_avx512_bf16() is false in this thread: bfloat16 convolutions go to LibTorch as on a CPU
/// without AVX512-BF16 (zoo_bench compares the two in one process; ScalarOnly turns off the float32 kernels too).
class WithoutBf16Kernel {
 public:
  WithoutBf16Kernel();
  ~WithoutBf16Kernel();
  WithoutBf16Kernel(const WithoutBf16Kernel&) = delete;
  WithoutBf16Kernel& operator=(const WithoutBf16Kernel&) = delete;

 private:
  bool previous_;
};

/// Whether this CPU has AMX with bfloat16 tiles (AMX-BF16 and AMX-TILE, the tile state enabled by the OS and granted
/// to this process, as oneDNN asks for it), checked once; false where cpu_has_avx512_bf16() is. oneDNN 2.6 runs
/// bfloat16 convolutions on AMX there (`brgconv:avx512_core_amx_bf16`), faster than zoo's AVX512-BF16 kernel at all
/// but one of the models' layers (1.2-5.9x; 0.9x at the 1-D ConvNet's first, 1 -> 16 channels), so zoo's bfloat16
/// convolution (conv2d_bf16: the ODE field, autocast's conv1d rule) and its weight gradient of narrow 2-D layers
/// (conv_weight_gradient.h) yield to oneDNN on such a CPU; the one-channel first layer (conv2d_one_channel.h, 2.4-2.7x
/// faster than oneDNN's AMX kernel there) and the experts' few-row linear layers (linear_bf16.h: the MoE trained as
/// fast or faster with it) stay zoo's, and strided 3-D convolutions' weight gradients go to zoo's
/// (conv_bf16_weight_gradient: oneDNN's AMX one is slow there) (zoo_bench ConvBf16, ConvWeightGradient,
/// ConvOneChannel and zoo bench A/B runs; docs/precision.md, "CPUs with AMX"). ZOO_CPU_AMX=0 or 1 in the environment
/// overrides the check (read once: comparing both routings on one machine); AmxOverride, per thread. Small-map weight
/// gradients go to zoo's own AMX tile kernel (conv2d_weight_gradient_tiles, ops/conv_weight_gradient.h).
bool cpu_has_amx_bf16();

/// Whether zoo's own AMX instructions may run here: the CPU and the OS as cpu_has_amx_bf16() asks them, without its
/// overrides (ZOO_CPU_AMX=1 and AmxOverride(true) route work as on a CPU with AMX, on any CPU; the tile kernel itself
/// runs only where this is true).
bool amx_tiles_present();

/// While one lives, cpu_has_amx_bf16() answers `has_amx` in this thread (tests of both routings on any CPU; it still
/// answers false where cpu_has_avx512_bf16() does).
class AmxOverride {
 public:
  explicit AmxOverride(bool has_amx);
  ~AmxOverride();
  AmxOverride(const AmxOverride&) = delete;
  AmxOverride& operator=(const AmxOverride&) = delete;

 private:
  int previous_;
};

/// Whether conv2d_bf16 takes this geometry: a weight [O, K, KH, KW] with 1 to 7 taps per axis, strides [2] from 1 to
/// the kernel's size and paddings [2] below it, and an input [N, C, H, W] (C <= K) at least the kernel's size once
/// padded. Shapes only; the caller checks the CPU, types and devices.
bool conv2d_bf16_geometry(const torch::Tensor& x, const torch::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding);

/// The direct bfloat16 convolution, torch::conv2d(cat({lead channels, x}, 1), weight, bias, stride, padding) for
/// x [N, C, H, W] (bfloat16 or float32, rounded to bfloat16 first), weight [O, lead + C, KH, KW] float32 or bfloat16,
/// bias [O] or undefined; the lead = weight.size(1) - C channels hold `lead_value` inside the image and 0 in the
/// padding (torchdiffeq's ConcatConv2d). Output bfloat16. Differentiable in all three (x's gradient in x's type,
/// the weight's and bias's in their own), twice too: under create_graph the backward recomputes the gradients
/// through torch::conv2d in bfloat16 (ops/twice.h). Needs cpu_has_avx512_bf16() and conv2d_bf16_geometry().
torch::Tensor conv2d_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, double lead_value = 0);

/// The weight gradient of a 2-D or 3-D convolution, [O, C, KH, KW] or [O, C, KD, KH, KW] in float32, of bfloat16 x
/// [N, C, H, W] or [N, C, D, H, W] and dy [N, O, OH, OW] or [N, O, OD, OH, OW] (its output's gradient) for a kernel,
/// stride and padding per spatial axis (depth first): 1-7 taps, strides up to the kernel and zero paddings below it,
/// no dilation, one group. Dot products over pairs of neighbouring output pixels, x laid out by column phase
/// (conv_weight_gradient.h says where it is used). The products of bfloat16 values are exact and summed in float32
/// per block of output channels, in a fixed order of item chunks (the same bits at any thread count).
torch::Tensor conv_bf16_weight_gradient(const torch::Tensor& x, const torch::Tensor& go, at::IntArrayRef kernel,
                                        at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace zoo::ops::detail
