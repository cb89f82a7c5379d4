// mHC's input-dependent mixing logits (mHC, arXiv 2512.24880, Eqs. 7-8) in one autograd node: from the streams'
// features v [B, K] (K = n C, the n streams' C features flattened),
//
//   x~ = v / sqrt(mean_k v_k^2 + eps) * (1 + g)                                (RMSNorm, gain stored as g = w - 1)
//   pre  = sigmoid(b_pre  + alpha_pre  x~ phi_pre)                             [B, n]
//   post = 2 sigmoid(b_post + alpha_post x~ phi_post)                          [B, n]
//   res  = b_res + alpha_res x~ phi_res                                         [B, m]  (logits, for Sinkhorn or
//   softmax)
//
// Why: as tensor operations these are ~25 small operators per block forward and as many autograd nodes backward on
// [64, 128] x [128, 4-16] products (the mHC ResNet's), in both precisions, where the arithmetic is 0.2 M
// multiply-adds. Here the forward is one pass over the rows for the RMSNorm, one matrix product for the three
// projections side by side and one pass for the sigmoids; the backward the same with LibTorch's formulas, in the
// features' type (float32 or float64), with denormals flushed to zero (ops/simd.h's FlushDenormals: gradients below
// 2^-126 are zero there, which spares x86's slow path for them).
//
// Reference: mhc_mixing_reference, the same composition in tensor operations (what a trace records, and what the
// backward differentiates under create_graph), which the tests compare against in float64.
#pragma once

#include <torch/torch.h>

#include <array>

namespace zoo::ops {

struct MHCMixingParameters {
  torch::Tensor norm_gain;                         // g [K]: the RMSNorm's weight minus one
  torch::Tensor phi_pre, phi_post, phi_res;        // [K, n], [K, n], [K, m]
  torch::Tensor b_pre, b_post, b_res;              // [n], [n], [m]
  torch::Tensor alpha_pre, alpha_post, alpha_res;  // scalars
  double eps = 1e-6;
};

/// {pre, post, res} as above for features v [B, K]. The fused node for contiguous CPU float32 or float64 operands of
/// one type outside a trace; otherwise (or with `fused` false) mhc_mixing_reference. Differentiable in v and every
/// parameter, twice too.
std::array<torch::Tensor, 3> mhc_mixing(const torch::Tensor& v, const MHCMixingParameters& p, bool fused = true);

/// The same in tensor operations.
std::array<torch::Tensor, 3> mhc_mixing_reference(const torch::Tensor& v, const MHCMixingParameters& p);

}  // namespace zoo::ops
