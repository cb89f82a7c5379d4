// A 2-D or 3-D convolution under CPU autocast in bfloat16 whose weight gradient is zoo's own: the forward and the
// input gradient are oneDNN's (autocast's rule), the weight gradient one of zoo's kernels.
//
// Without AMX (CPUs with AVX512-BF16 only), narrow 2-D layers on small maps: conv_bf16_weight_gradient
// (ops/conv2d_bf16.h), dot products over pairs of neighbouring output pixels,
//
//   dW[o, c, i, j] = sum_{n, h, w} dy[n, o, h, w] x_pad[n, c, s h + i, s w + j]
//
// Why: on small maps oneDNN 2.6's bfloat16 weight gradient reduces over N x H x W at 50-70% of its forward's rate.
// oneDNN time / zoo's, 1 thread, the weight gradient alone (AMD EPYC, Zen 5, 2026-12-07, best of 5 in two runs):
//   batch 64, 32 -> 32 channels, 7x7: 1.20-1.32 (the mHC ResNet's blocks)   batch 64, 32 -> 32, 14x14: 1.37-1.45
//   batch 64, 32 -> 64, 14x14: 1.26-1.36 (the cnn's second layer)           batch 16, 32 -> 32, 7x7: 1.40
//   batch 64, 16 -> 32, 14x14: 1.53      batch 32, 64 -> 128, 28x28, stride 2: 1.19-1.25
//   batch 32, 128 -> 128, 14x14: 0.94    batch 32, 256 -> 256, 7x7: 0.88-0.89    batch 32, 512 -> 512, 4x4: 0.40-0.65
// and in whole models it lost on large maps of small batches (the U-Net's 64x64 maps of 4 items, 64-512 channels:
// its training step 3-5% slower, though the layers alone were 1.04-1.5x faster). So autocast's conv2d rule
// (ops/autocast.cpp) takes batches of 16 or more, at most 64 channels in and out and output maps of at most 256
// pixels. Before (2026-12-06), the weight gradient there was a forward convolution with the batch and channel axes
// swapped (1.3-1.5x oneDNN's then); on 2026-12-07 it read 0.81-0.96x oneDNN's at the same layers, and the mHC
// ResNet's bf16-mixed step was 4.7-5.4% faster with zoo's dot products than with it (in-process A/B, 12-20 paired
// rounds, faster in 9/12 and 17/20).
//
// On a CPU with AMX (cpu_has_amx_bf16(), ops/conv2d_bf16.h) oneDNN's weight gradient runs on AMX tiles, faster than
// the dot products (and than the swap: Intel Xeon with AMX, 2026-12-07: batch 64, 32 channels, 7x7: 0.86; 64, 64,
// 7x7: 0.98; 64, 32, 10x10: 0.63; 16, 32, 7x7: 0.77), so the rule stays off there.
//
// On a CPU with AMX, small maps get a weight gradient of zoo's own on AMX tiles instead (conv2d_weight_gradient_tiles):
// one tile product per tap over the zero-padded grid of the batch's maps (the .cpp), where oneDNN 2.6's AMX weight
// gradient runs far below the tiles' speed on small maps (the mHC ResNet's 7x7 blocks, 58 M multiply-adds: 0.21 ms).
// zoo_bench's ConvWeightGradient/1 (Intel Xeon with AMX, 2026-12-07, 1 thread, channels-last operands, oneDNN time /
// zoo's, two runs): batch 64, 32 channels: 4x4 2.00-2.18, 7x7 1.50-1.58, 10x10 1.30-1.33, 14x14 1.00-1.07; 64
// channels at 7x7 1.55-1.56, 16 items of 32 at 7x7 1.77-1.89; 128 channels at 14x14 0.72-0.73; 256-512 channels at
// 4x4-8x8 1.70-2.93. So autocast's conv2d rule takes
// stride-1 convolutions with output maps of at most 100 pixels, channels multiples of 16 up to 64 in and out. The
// wider layers are faster alone but not in their models: ResNet-18, ResNet-50 and the U-Net trained as fast or
// slower with them (three alternating process pairs), and the mHC ResNet 15.7-15.9 -> 15.2-15.3 ms a step.
//
// A 3-D convolution with a stride of 2 or more on every axis, on a CPU with AMX, gets zoo's weight gradient too:
// conv_bf16_weight_gradient (ops/conv2d_bf16.h), the 2-D kernel's dot products over pairs of neighbouring output
// pixels with a depth axis. oneDNN 2.6's AMX weight gradient of strided 3-D convolutions is slow (conv4d's second
// layer, 192 frames of 8 x 8^3 -> 16 x 4^3: 3.3-4.0 ms for 42 M multiply-adds, where its AVX512-BF16 kernel, without
// AMX, takes 1.2), while its unstrided ones run near the tiles' speed. zoo_bench's Conv3dWeightGradient (Intel Xeon
// with AMX, 2026-12-07, 1 thread, oneDNN time / zoo's time): strided layers 1.20-2.37 (conv4d's second layer 2.31 and
// 2.37, conv3d's second and third 1.65 and 1.26, the 3-D U-Net's 2x2x2 downsampling 1.72 and 1.55, 64 -> 128 and
// 128 -> 128 channels on 8^3 1.20 and 1.45), unstrided ones 0.24-0.76; with oneDNN held to AVX512-BF16
// (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, what a CPU without AMX runs) 0.78-1.54, so the rule is for CPUs with AMX
// only (on the AMD EPYC, Zen 5, taking unstrided 3-D layers of 16 or more channels as well made conv3d's and conv4d's
// bf16-mixed steps 1-3% slower: in-process A/B, 10 paired rounds, 2026-12-07). In bf16-mixed training, three
// alternating process pairs: conv4d 37.8-39.7 -> 34.2-34.5 ms a step, conv3d 22.6-23.1 -> 21.5-21.7, the 3-D U-Net
// 39.0-40.3 and 39.7-41.1 (unchanged). Where AMX is really there, the output channels come in multiples of 16 and
// the taps overlap (a kernel longer than the stride: conv3d's and conv4d's 3x3x3 at stride 2), the weight gradient runs
// on AMX tiles instead (conv3d_weight_bias_gradient_tiles, which sums the bias's gradient on the way): x split into its
// stride phases, each a stride-1 grid read at 1-2 offsets per axis, with two phases of 8 channels in one tile's 16 rows
// (the .cpp).
// Conv3dWeightGradient's _tiles_ratio (Intel Xeon with AMX, 2026-12-07, 1 thread): conv3d's second and third
// layers 2.79 and 2.20, conv4d's second 2.71 and 2.93, 64 -> 128 and 128 -> 128 channels on 8^3 3.77 and 2.58 (the dot
// products 1.20-2.41 in the same run); the U-Net's 2x2x2 downsampling 0.89 and 1.54 (dot products 1.79 and 1.61), so a
// kernel equal to the stride keeps them. In bf16-mixed training conv3d's step went 1.30x -> 1.50-1.52x float32's
// (`zoo bench conv3d conv4d --threads 1 --precision 32,bf16-mixed --repeat 5`); conv4d's stayed at 1.32-1.36x until
// its first layer moved to AMX tiles too (ops/conv3d.h; both 2.0x since).
//
// Reference: autocast's rule, torch::conv2d (torch::conv3d) on the bfloat16-rounded operands. The output and the input
// gradient are the same bits; the weight gradient sums the same products in another order (float32 accumulators),
// rounded to bfloat16 once (as oneDNN's is) by the 2-D AMX tile kernel and kept in float32 by the dot products and the
// 3-D tiles; the bias gradient is summed in float32 and not rounded.
#pragma once

#include <torch/torch.h>

namespace zoo::ops::detail {

/// Whether autocast's conv2d rule runs conv2d_own_weight_gradient on these operands: under CPU autocast in bfloat16,
/// grad mode on, outside a trace, on a CPU with AVX512-BF16 and without AMX; a float32 or bfloat16 CPU input [N, C, H,
/// W] with N >= 16, a float32 weight [O, C, KH, KW] that needs its gradient, C, O <= 64, 1-7 taps per axis, strides up
/// to the kernel, no dilation, one group, padding below the kernel and output maps of at most 256 pixels (the region
/// above).
bool conv_weight_gradient_applies(const torch::Tensor& input, const torch::Tensor& weight,
                                  const c10::optional<torch::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

/// torch::conv2d(input, weight, bias, stride, padding) in bfloat16 (autocast's result), one autograd node: the input's
/// gradient in the input's type (oneDNN's), the weight's in float32 (conv_bf16_weight_gradient, ops/conv2d_bf16.h),
/// the bias's in float32. Twice differentiable (under create_graph the backward is autocast's rule's, ops/twice.h).
torch::Tensor conv2d_own_weight_gradient(const torch::Tensor& input, const torch::Tensor& weight,
                                         const torch::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding);

/// The weight gradient alone on AMX tiles, [O, C, KH, KW] in float32 (rounded to bfloat16 once): bfloat16 x
/// [N, C, H, W] (any layout) and dy [N, O, HO, WO] (channels-last read as it is, else converted) of a KH x KW
/// convolution at stride 1 with `padding`, C and O multiples of 16, on a CPU with AMX (see the .cpp for the scheme).
torch::Tensor conv2d_weight_gradient_tiles(const torch::Tensor& xb, const torch::Tensor& gy, int64_t KH, int64_t KW,
                                           at::IntArrayRef padding);

/// A 3-D convolution's weight and bias gradients on AMX tiles: [O, C, KD, KH, KW] and [O] in float32 (the products
/// exact, summed in float32) of bfloat16 x [N, C, D, H, W] and dy [N, O, OD, OH, OW] (O padded to a multiple of 16
/// with zeros inside), for `kernel` of 1-7 taps per axis, strides up to the kernel and paddings below it, on a CPU
/// with AMX (x split by stride phase; the .cpp). The same bits at any thread count.
std::pair<torch::Tensor, torch::Tensor> conv3d_weight_bias_gradient_tiles(const torch::Tensor& x,
                                                                          const torch::Tensor& gy,
                                                                          at::IntArrayRef kernel,
                                                                          at::IntArrayRef stride,
                                                                          at::IntArrayRef padding);

/// The weight gradient alone (conv3d_weight_bias_gradient_tiles' first).
torch::Tensor conv3d_weight_gradient_tiles(const torch::Tensor& x, const torch::Tensor& gy, at::IntArrayRef kernel,
                                           at::IntArrayRef stride, at::IntArrayRef padding);

/// Whether autocast's conv2d rule runs conv2d_weight_by_tiles on these operands: under CPU autocast in bfloat16, grad
/// mode on, outside a trace, on a CPU with AMX (cpu_has_amx_bf16(), and amx_tiles_present(): the instructions really
/// there); the operands of conv_weight_gradient_applies with stride 1, 16-64 channels in and out (multiples of 16),
/// 1-7 taps per axis and output maps of at most 100 pixels (the region above).
bool conv2d_weight_tiles_applies(const torch::Tensor& input, const torch::Tensor& weight,
                                 const c10::optional<torch::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

/// torch::conv2d(input, weight, bias, 1, padding) in bfloat16 (autocast's result), one autograd node: the input's
/// gradient oneDNN's, the weight's conv2d_weight_gradient_tiles, the bias's in float32.
torch::Tensor conv2d_weight_by_tiles(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                                     at::IntArrayRef padding);

/// Whether autocast's conv3d rule runs conv3d_own_weight_gradient on these operands: under CPU autocast in bfloat16,
/// grad mode on, outside a trace, on a CPU with AMX (cpu_has_amx_bf16()); a float32 or bfloat16 CPU input
/// [N, C, D, H, W] with C >= 2, a float32 weight [O, C, KD, KH, KW] that needs its gradient, 1-7 taps per axis,
/// strides of 2 or more on every axis and up to the kernel, paddings below it, no dilation, one group.
bool conv3d_weight_gradient_applies(const torch::Tensor& input, const torch::Tensor& weight,
                                    const c10::optional<torch::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

/// Whether conv3d_own_weight_gradient takes the weight gradient of `weight` [O, C, KD, KH, KW] at `stride` on AMX
/// tiles (conv3d_weight_gradient_tiles): AMX really present (amx_tiles_present()), O a multiple of 16 and a kernel
/// longer than the stride on some axis (taps that overlap; where the kernel equals the stride, as in the 3-D U-Net's
/// 2x2x2 downsampling, the dot products were as fast or faster: zoo_bench's Conv3dWeightGradient).
bool conv3d_weight_tiles_fit(const torch::Tensor& weight, at::IntArrayRef stride);

/// torch::conv3d(input, weight, bias, stride, padding) in bfloat16 (autocast's result), one autograd node: the
/// input's gradient in the input's type (oneDNN's), the weight's in float32 (conv3d_weight_gradient_tiles where
/// conv3d_weight_tiles_fit says so, else conv_bf16_weight_gradient, ops/conv2d_bf16.h), the bias's in float32.
/// Twice differentiable (under create_graph the backward is autocast's rule's).
torch::Tensor conv3d_own_weight_gradient(const torch::Tensor& input, const torch::Tensor& weight,
                                         const torch::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace zoo::ops::detail
