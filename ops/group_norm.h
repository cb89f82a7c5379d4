// Group normalisation, float32 or bfloat16 on the CPU: the ODE-ResNet's norm before every convolution of its field.
//
//   y = (x - mean_ng) / sqrt(var_ng + eps) * weight_c + bias_c,  mean_ng and var_ng (biased) over the channels of
//   group g (C / G of them) and every position, for each item n separately.
//
// (Wu & He, "Group Normalization", ECCV 2018.) LibTorch 1.13 has no autocast rule for group_norm and its kernel
// refuses bfloat16 x with float32 weight, so under bf16-mixed the norm ran in float32 between two casts (docs/
// precision.md); its own bfloat16 kernel is 3-6x slower than float32's and rounds its statistics. group_norm
// computes them as ops::batch_norm does (ops/norm_planes.h): in float32 within each plane, in double across planes,
// mean then squared deviations, then y = x * scale_c + shift_c; its backward, with the same sums per (n, g),
//   A = sum_c weight_c sum(dy_c),  B = sum_c weight_c sum(dy_c (x_c - mean)),  M = C / G * positions,
//   dx = invstd weight_c dy - invstd A / M - (x - mean) invstd^3 B / M,
//   dweight_c = sum_n invstd_ng sum(dy_c (x_c - mean_ng)),  dbias_c = sum_n sum(dy_c).
// x, y, dy and dx may be bfloat16 with float32 weight and bias (what PyTorch 2's mixed-type group norm takes under
// autocast); everything else is float32 or double. Each (item, group) is one task and the parameter gradients are
// summed over items in a fixed order: the same bits at any thread count. A channels-last x (NHWC or NDHWC, C a
// multiple of 8) has kernels of its own with the same formulas, one item per task, each position's channels as
// float32 vectors; y and dx come out channels-last too (under autocast on a CPU with AMX the group_norm rule hands
// the ODE-ResNet's maps on so, ops/autocast.cpp).
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::group_norm(x, num_groups, weight, bias, eps) for x [N, C, *] and weight, bias [C] or undefined. For
/// contiguous (or channels-last, C a multiple of 8) CPU tensors, x float32 or bfloat16 and weight, bias float32, on a
/// CPU with AVX2 + FMA and outside a trace, the kernels above (the output in x's type and layout); otherwise, or with
/// `fast` false, torch::group_norm itself (a trace records it, which TorchScript, ONNX and Python load). Differentiable
/// in x, weight and bias, twice too: under create_graph the backward goes through torch::group_norm's autograd.
torch::Tensor group_norm(const torch::Tensor& x, int64_t num_groups, const torch::Tensor& weight,
                         const torch::Tensor& bias, double eps = 1e-5, bool fast = true);

/// Whether group_norm runs its own kernels on these operands (see above).
bool group_norm_fast(const torch::Tensor& x, int64_t num_groups, const torch::Tensor& weight,
                     const torch::Tensor& bias);

}  // namespace zoo::ops
