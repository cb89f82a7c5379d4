// conv3x3's bfloat16 direct kernel (used by ops/conv3x3.cpp; not a public header): the same direct convolution as the
// float32 one, on bfloat16 operands with AVX512-BF16's dot products (vdpbf16ps: two bfloat16 products added into
// each float32 lane), float32 accumulators and float32 weight gradients.
//
// Why: under bf16-mixed oneDNN 2.6 reorders every bfloat16 operand into its blocked layout and back on each call,
// without a fast bfloat16 reorder, so its convolutions of the ODE-ResNet's field (32 channels on 6 x 6 maps) gained
// only 1.3-1.5x over float32 where the arithmetic can gain 2x or more (docs/precision.md).
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

/// The direct bfloat16 convolution: x [N, C, H, W] bfloat16, weight [O, lead + C, 3, 3] float32 or bfloat16, bias
/// [O] or undefined; output bfloat16 [N, O, H, W]. Differentiable in all three (x's gradient in bfloat16, the
/// weight's and bias's in their own type), twice too: under create_graph the backward recomputes the gradients
/// through conv3x3's reference (ops/twice.h). Needs cpu_has_avx512_bf16().
torch::Tensor conv3x3_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                           double lead_value);

}  // namespace zoo::ops::detail
