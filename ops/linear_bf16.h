// A linear layer of few rows, y = x W^T + b, under CPU autocast in bfloat16 (bf16-mixed) with AVX512-BF16's dot
// products (vdpbf16ps: two bfloat16 products added into each float32 lane), reading the float32 weight directly and
// writing its gradient in float32.
//
// Why: the MoE's experts each see 4-32 rows of [.., 3136] features a step, and their first layers' [64, 3136]
// weights are what their products stream. Under autocast LibTorch casts each weight to bfloat16 (a copy), runs
// oneDNN's bfloat16 product (which packs the operands into its layout on every call) and casts the weight's bfloat16
// gradient back to float32 (another copy): forward and backward took 313 us per expert at 16 rows, 188-198 us here
// (`zoo_bench --benchmark_filter=LinearBf16`, 1 thread). Here the weight is rounded to bfloat16 as it is read (a few
// rows at a time, into an L1-sized buffer, or in registers), each product is one pass of dot products into float32
// accumulators (the input gradient's over pairs of outputs, the weight gradient's over pairs of rows), and the
// weight's gradient is stored in float32 without a rounding.
//
// Reference: torch::nn::functional::linear on the bfloat16-rounded operands (what autocast runs), which the tests
// compare against in float64. As AVX512-BF16's instructions do, subnormal values count as zero (LibTorch's casts keep
// them) and a NaN stays a NaN, not necessarily with LibTorch's bits.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::nn::functional::linear(x, weight, bias): x [T, in], weight [out, in], bias [out] or undefined. Under CPU
/// autocast in bfloat16 (bf16-mixed), on a CPU with AVX512-BF16 and outside a trace, for 1 to kLinearBf16MaxRows rows
/// of float32 or bfloat16 x and a float32 weight and bias, zoo's kernel: output bfloat16 (autocast's type), the
/// products accumulated in float32 from bfloat16-rounded x and weight, the bias added in float32 and the sum rounded
/// once. Differentiable: x's gradient in x's type, the weight's and bias's in float32; twice too (under create_graph
/// the backward is LibTorch's, on bfloat16 operands). Anywhere else LibTorch's linear, autocast's rule included.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

/// Up to this many rows the kernel beat autocast's cast + oneDNN product + cast back, forward and backward of the MoE's
/// [64, 3136] layer at 1 thread (`zoo_bench --benchmark_filter=LinearBf16`): 1.6-2.0x at 4-16 rows, 1.3-1.4x at 32,
/// 1.15-1.2x at 64, 1.09-1.10x at 96; 1.04x at 128 and 0.98x at 192, where oneDNN's blocked product takes over.
constexpr int64_t kLinearBf16MaxRows = 96;

namespace detail {
/// Whether linear() runs zoo's kernel on these operands (autocast, the CPU, a trace, shapes, types).
bool linear_bf16_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

/// The kernel itself, for any number of rows: x [T, in] float32 or bfloat16, weight [out, in] float32, bias [out]
/// float32 or undefined; output bfloat16 [T, out]. Needs cpu_has_avx512_bf16() (ops/conv2d_bf16.h).
torch::Tensor linear_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
}  // namespace detail

}  // namespace zoo::ops
