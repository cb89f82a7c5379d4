// Adam's and AdamW's update of one float32 parameter in a single pass over memory (Kingma & Ba, "Adam", ICLR 2015;
// Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019):
//
//   p <- p (1 - lr wd)                                   AdamW only (decoupled decay)
//   g <- g + wd p                                        Adam only (L2 in the gradient)
//   m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2,   (amsgrad: vmax <- max(vmax, v), read for v)
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// LibTorch's torch::optim::Adam/AdamW compute this as seven or more tensor operations (mul_, add_, addcmul_, sqrt,
// div, add_, addcdiv_), each reading and writing whole tensors: 3.3 ms per step for the MoE classifier's 1.65 M
// parameters on the 2-core VM, where one pass takes 1.0 ms. adam_update does each element's arithmetic in the same
// order and with the same roundings as ATen's AVX2 and AVX-512 kernels of those operations (a fused multiply-add where
// they use one: add_ with alpha, addcmul_), so the results are LibTorch's to the bit (tested against
// torch::optim::Adam and AdamW, with weight decay, amsgrad and every tail length); ATen's kernels without AVX2
// (ATEN_CPU_CAPABILITY=default) round otherwise, so the optimizers in training/optim.h keep LibTorch's step there.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// The step's scalars, from the optimizer's options and step count t (already incremented), as LibTorch converts
/// them to float32: see AdamScalars::make.
struct AdamScalars {
  float decay_scale = 1;  ///< AdamW: 1 - lr * wd (1: no decoupled decay)
  float l2 = 0;           ///< Adam: wd, added to the gradient as wd * p (when `has_l2`: a nonzero wd)
  bool has_l2 = false;
  float beta1 = 0.9f, one_minus_beta1 = 0.1f, beta2 = 0.999f, one_minus_beta2 = 0.001f;
  float sqrt_bias2 = 1;  ///< sqrt(1 - beta2^t)
  float eps = 1e-8f;
  float neg_step = 0;  ///< -lr / (1 - beta1^t)
  bool amsgrad = false;

  /// decoupled: AdamW's decay (p scaled first), else Adam's L2 term in the gradient.
  static AdamScalars make(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                          bool amsgrad, int64_t step);
};

/// Whether adam_update runs on these tensors: float32, CPU, contiguous, the same number of elements, a CPU with AVX2
/// + FMA, and ATen's vectorized kernels in use (not ATEN_CPU_CAPABILITY=default). `max_exp_avg_sq` may be undefined
/// when `s.amsgrad` is false.
bool adam_update_fits(const torch::Tensor& p, const torch::Tensor& grad, const torch::Tensor& exp_avg,
                      const torch::Tensor& exp_avg_sq, const torch::Tensor& max_exp_avg_sq, const AdamScalars& s);

/// One step of the update above for one parameter, in place on p, exp_avg, exp_avg_sq (and max_exp_avg_sq), grad
/// unchanged; requires adam_update_fits. Elementwise, so the same bits at any thread count.
void adam_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                 torch::Tensor& max_exp_avg_sq, const AdamScalars& s);

}  // namespace zoo::ops
