// 3-D convolutions, with a direct kernel for the first layer of a volume network: 3x3x3, stride 1, padding 1, over
// one input channel.
//
// The conv3d model's first layer (64 volumes of 16^3, 1 -> 8 channels) and conv4d's (the same per frame and time
// tap) are 57 M multiply-adds each way. oneDNN's AVX-512 kernels block output channels by 16, so with 8 they compute
// 16 and discard half: 2.9 ms forward and 2.6 ms for the weight and bias gradients at 1 thread, about a third of
// this CPU's peak. The direct kernel (AVX2 + FMA) reads a zero-padded copy of the input, keeps two blocks of 8
// output voxels x 4 output channels in registers and streams the 27 taps through them (forward), or keeps 4 output
// channels x 3 taps of the weight gradient in registers and streams the voxels (backward): 1.3-1.5 ms each way. It
// applies where oneDNN wastes enough lanes (see conv3d_direct); elsewhere torch::conv3d runs. Under bf16-mixed on a
// CPU with AMX, for rows of 2, 4, 8 or 16 voxels and up to 16 output channels, its forward is autocast's bfloat16
// convolution on AMX tiles instead (x and the weight rounded to bfloat16, float32 sums): one tile product per 16
// voxels for all channels, the taps' inputs laid out by permutations of the zero-padded bfloat16 item (the .cpp).
// The conv3d model's first layer: 2.29 -> 0.84 ms; a 320-frame call of conv4d's: 1.45 -> 0.48 ms (Intel Xeon with
// AMX, 1 thread, 2026-12-07). Its weight and bias gradients there are autocast's too, on tiles, where 32 voxels make
// whole rows (C[taps, channels] += the 32 voxels' inputs at the 27 taps and a row of ones, times dy's 32 voxels in
// pairs): bf16-mixed training, three alternating process pairs, conv4d 22.4-27.5 -> 20.4-21.4 ms a step, conv3d
// 14.0-16.7 -> 12.9-14.7 ms. The input's gradient stays torch::conv_transpose3d's.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// Which implementation conv3d runs.
enum class Conv3dKernel {
  automatic,  ///< direct when conv3d_direct says so, else reference
  direct,     ///< the direct kernel (an error where conv3d_direct_available is false)
  reference,  ///< torch::conv3d
};

/// torch::conv3d(x, weight, bias, stride, padding, dilation, groups) for x [N, C, D, H, W], weight
/// [O, C / groups, kD, kH, kW] and bias [O] or undefined. Differentiable in x, weight and bias, twice too: under
/// create_graph the direct kernel's backward recomputes the gradients through torch::conv3d's autograd; the input
/// gradient (a first layer's input rarely wants one) is torch::conv_transpose3d's. Under CPU autocast the direct
/// kernel computes in float32 and hands its output on in autocast's type, as autocast's rule for conv3d would: in
/// bfloat16 it rounds the sums in its own stores and reads the bfloat16 gradient as it is (each plane widened to
/// float32 once, for all 27 taps), the same bits as a cast of the float32 output and its gradient without the casts'
/// passes over memory; on a CPU with AMX (rows of 2-16 voxels, up to 16
/// outputs) its forward computes as autocast's bfloat16 convolution does, within one bfloat16 rounding of it, and
/// its weight and bias gradients (where 32 voxels make whole rows) as float32 sums of x rounded to bfloat16.
torch::Tensor conv3d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                     torch::IntArrayRef stride = 1, torch::IntArrayRef padding = 0, torch::IntArrayRef dilation = 1,
                     int64_t groups = 1, Conv3dKernel kernel = Conv3dKernel::automatic);

/// Whether the direct kernel can run: one input channel, a 3x3x3 kernel, stride 1, padding 1, dilation 1, groups 1;
/// float32 CPU tensors (bias too); an x86-64 CPU with AVX2 and FMA (checked at run time); not tracing (a trace
/// records torch::conv3d, which TorchScript and Python load).
bool conv3d_direct_available(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                             torch::IntArrayRef stride, torch::IntArrayRef padding, torch::IntArrayRef dilation,
                             int64_t groups);

/// What Conv3dKernel::automatic picks: available, and ceil(O / 4) <= 3 ceil(O / 16): the direct kernel's time grows
/// with its groups of 4 output channels, oneDNN's with its blocks of 16, and a block takes about as long as 3 groups
/// (zoo_bench's Conv3dFirstLayer). So 1 to 12 output channels, 17 to 24, 33 to 36 run directly; 16, 32 and other
/// multiples of 16 (the 3-D U-Net's first layer) run oneDNN.
bool conv3d_direct(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                   torch::IntArrayRef stride, torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups);

}  // namespace zoo::ops
