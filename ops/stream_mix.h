// The residual streams' mixing of hyper-connections (HC, Zhu et al. 2024, arXiv 2409.19606) and mHC (arXiv
// 2512.24880): each item b mixes its n streams with its own n x n matrix,
//
//   out[b, t, :] = sum_s H[b, t, s] x[b, s, :]          (torch::matmul(H, x) for H [B, n, n], x [B, n, L])
//   dx[b, s, :]  = sum_t H[b, t, s] g[b, t, :],   dH[b, t, s] = <g[b, t, :], x[b, s, :]>
//
// LibTorch 1.13 runs this float32 batched product as one matrix product per item (64 of them per call at batch 64,
// each a select, a conjugate check and a small GEMM: 2,300 selects per training step of the mHC ResNet, 3.9 ms of
// bmm in its float32 step), and under autocast casts both operands to bfloat16 first (a pass over the streams). The
// kernel reads x in its own type (float32 or bfloat16) and H in float32, accumulates in float32 (AVX2 + FMA, one
// item per task: the same bits at any thread count) and writes the result in the type torch::matmul gives: float32,
// or autocast's bfloat16 under CPU autocast (where H then enters unrounded: closer to float32 than autocast's
// bfloat16 product). The plain path, torch::matmul itself, is what it is tested against.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::matmul(h, x) for h [B, n, n] or [B, 1, n] (one weighted sum of the streams, mHC's H_pre x) and x
/// [B, n, L]. On the CPU, for contiguous x in float32 or bfloat16, h in float32 or bfloat16, n <= 8, on a CPU with
/// AVX2 + FMA and outside a trace, the kernel above; otherwise (or with `fast` false) torch::matmul. Differentiable
/// in h and x, twice too (under create_graph the backward goes through torch::matmul's autograd).
torch::Tensor mix_streams(const torch::Tensor& h, const torch::Tensor& x, bool fast = true);

/// mHC's H_pre x, the branch's input, for h [B, n] and streams x [B, n, C, ...]: mix_streams(h.unsqueeze(1),
/// x.flatten(2)) as a map [B, C, ...]. Under CPU autocast in bfloat16, where the kernel runs and amx_channels_last
/// (ops/autocast.h) picks the 2-D maps [B, C, H, W] (a CPU with AMX), the map comes out in channels-last memory: each
/// item computed in the plain order, then transposed (8 x 8 register blocks, ops/channels_last.h), and its gradient
/// read back the same way. The branch's convolutions (oneDNN's AMX kernels, which compute in channels-last), batch
/// norms and ReLUs then keep that layout, and LibTorch 1.13 neither reorders their inputs nor copies their outputs
/// and input gradients back to contiguous (the mHC ResNet's bf16-mixed training step: docs/precision.md). The same
/// values in either layout.
torch::Tensor mix_streams_map(const torch::Tensor& h, const torch::Tensor& x, bool fast = true);

/// mix_streams(h, x) + p.unsqueeze(2) * f.flatten(1).unsqueeze(1) for h [B, n, n], x [B, n, L], p [B, n] and f
/// [B, L] or [B, ...] of L values an item (the branch's output map): mHC's output streams H_res x + H_post^T F(.) in
/// one pass, and one pass for the four gradients. The kernel runs where mix_streams's would, with p and f in float32
/// or bfloat16 (f in any layout: a channels-last map is read item by item through transposes and its gradient
/// written in its layout, any other is made contiguous), and returns the plain path's type (the product's,
/// autocast's bfloat16 under CPU autocast, promoted with p f's: float32 for mHC's float32 H_post), but sums in float32
/// without rounding the product first; otherwise that plain path.
torch::Tensor mix_streams_add(const torch::Tensor& h, const torch::Tensor& x, const torch::Tensor& p,
                              const torch::Tensor& f, bool fast = true);

/// mHC's three reads of the streams x [B, n, C, ...] (one axis or more after C) as one autograd node: `means`, their
/// averages over the axes after C ([B, n, C], float32_mean(x, 3)'s values: what the input-dependent mixing
/// matrices read), and x twice, `for_pre` and `for_res` (for H_pre x and H_res x). Its backward adds the three
/// gradients in one float32 pass and rounds once to x's type, where LibTorch's engine adds them pairwise in x's type,
/// the means' as a broadcast: for the mHC ResNet's [64, 4, 32, 7, 7] streams 420-470 us in bfloat16 and 110-130 us in
/// float32, against 94 and 57-62 us (1 thread). On the CPU, for contiguous x in float32 or bfloat16, with AVX2 + FMA
/// and outside a trace; otherwise {float32_mean(x, 3), x, x}. In float32 the gradient is the plain path's to the bit
/// (the same two additions); under create_graph the backward is made of differentiable tensor operations.
struct StreamReads {
  torch::Tensor means, for_pre, for_res;
};
StreamReads read_streams(const torch::Tensor& x);

/// [B, C, ...] -> [B, n, C, ...]: n copies of x, x.unsqueeze(1).repeat(...) (a copy, not an expanded view: a trace
/// records repeat, which keeps the batch size free). Where read_streams's kernel would run, its backward sums the n
/// gradients in float32 and rounds once (LibTorch's sum over the streams in bfloat16: 269 us for the mHC ResNet's
/// [64, 4, 32, 7, 7], against 34; float32 62 against 28 us, the same bits); otherwise LibTorch's repeat.
torch::Tensor repeat_streams(const torch::Tensor& x, int64_t n);

}  // namespace zoo::ops
