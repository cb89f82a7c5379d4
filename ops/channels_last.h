// Channels-last copies of bfloat16 maps: [N, C, H, W] with each position's C channels side by side in memory, as
// oneDNN's convolutions compute (its AMX kernels in channels-last only).
//
// Why: LibTorch 1.13's copy between the two layouts (`x.contiguous(torch::MemoryFormat::ChannelsLast)`, and the
// `.contiguous()` of the gradient coming back) moves one 16-bit element at a time: 0.84 ms forward and 0.93 ms back
// for the ODE-ResNet's stem output, [64, 32, 26, 26], where the maps turn channels-last under bf16-mixed on a CPU with
// AMX (ops/autocast.cpp, group_norm's rule). Here each item's [C, H W] plane block is transposed through registers,
// eight rows of eight 16-bit values at a time (transpose8x8, ops/simd.h), and the gradient the same way back.
//
// Reference: x.contiguous(torch::MemoryFormat::ChannelsLast), the same values (a copy); the gradient contiguous.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// x.contiguous(torch::MemoryFormat::ChannelsLast) for x [N, C, H, W]: the same values in channels-last memory, with
/// strides LibTorch reads as channels-last (x.suggest_memory_format(), what its convolutions go by) also where one
/// channel or one position makes both layouts the same memory. Differentiable: the gradient comes back contiguous
/// ([N, C, H, W] row-major). A contiguous bfloat16 CPU x (and a channels-last bfloat16 gradient on the way back)
/// goes through zoo's transposes, outside a trace; anything else through LibTorch's copy. An x LibTorch already reads
/// as channels-last comes back as it is.
torch::Tensor to_channels_last(const torch::Tensor& x);

/// Whether t is a 4-D map in channels-last memory and not contiguous ([N, H, W, C] in memory, with more than one
/// channel and position): what zoo's channels-last kernels read as such (batch and group norm, the stream mixing,
/// the AMX weight gradient); a map that is both goes their contiguous way.
bool channels_last_only(const torch::Tensor& t);

namespace detail {
/// dst [K, R] = src [R, K] transposed: bfloat16 through the 8 x 8 register transposes above (a channels-last item
/// [S, C] and its plain order [C, S], either way), float32 one element at a time.
void transpose(const c10::BFloat16* src, c10::BFloat16* dst, int64_t R, int64_t K);
void transpose(const float* src, float* dst, int64_t R, int64_t K);
}  // namespace detail

}  // namespace zoo::ops
