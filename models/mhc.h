// Hyper-connections: n residual streams mixed around a sublayer F (Zhu et al., arXiv 2409.19606; mHC: Xie et al.,
// arXiv 2512.24880; mHC-lite: Yang & Gao, arXiv 2601.05732, code FFTYYY/mhc-lite).
//
//   x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)          x_l: n streams of C features, [B, n, C, ...]
//
// Output stream t is sum_s H_res[t, s] x_s + H_post[t] F(sum_s H_pre[s] x_s). Variants:
//   mhc       H_pre = sigmoid(.), H_post = 2 sigmoid(.), H_res = Sinkhorn-Knopp(exp(.)), in log space
//             (mHC Eqs. 7-9): rows sum to 1 exactly, columns to 1 within the Sinkhorn residual.
//   mhc-lite  H_res = sum_k a_k P_k over the n! permutation matrices, a = softmax(.) (Birkhoff-von Neumann):
//             exactly doubly stochastic without iterations.
//   hc        the original hyper-connections: alpha * tanh(theta x~) + b, no constraint (for comparison).
// Each (.) is a static bias plus an input-dependent part alpha * (RMSNorm(vec x) phi) (mHC Eq. 7), initialised as
// in mHC-lite: phi = 0, alpha = 0.01, b_res = 0 on the identity and -8 elsewhere, b_pre/b_post = -1 except +1 at
// stream layer_index mod n. So at initialisation H_res = I within 1e-3 and the residual path is the identity.
// For feature maps ([B, n, C, H, W]) the input-dependent part reads the streams averaged over space: one H per
// sample, as the paper has one H per token.
#pragma once

#include "core/schema.h"
#include "models/batch_norm.h"

#include <torch/torch.h>

#include <string>

namespace zoo::models {

/// All n! permutation matrices, [n!, n, n], in lexicographic order (index 0 is the identity); P_k[i][perm_k[i]] = 1
/// (as eye(n)[itertools.permutations(range(n))] in mHC-lite).
torch::Tensor permutation_matrices(int64_t n);

struct MHCOptions {
  /* implicit */ MHCOptions(int64_t width = 64) : width_(width) {}
  /// C: features (channels) per stream, the width of the sublayer.
  TORCH_ARG(int64_t, width);
  /// n: number of residual streams.
  TORCH_ARG(int64_t, streams) = 4;
  /// mhc, mhc-lite or hc.
  TORCH_ARG(std::string, variant) = "mhc";
  TORCH_ARG(int64_t, sinkhorn_iterations) = 20;
  /// Sinkhorn through the fused CPU kernel (false: autograd over tensor operations; for benchmarks).
  TORCH_ARG(bool, fused_sinkhorn) = true;
  /// The stream H_pre and H_post favour at initialisation: layer_index mod n.
  TORCH_ARG(int64_t, layer_index) = 0;
  TORCH_ARG(double, alpha_init) = 0.01;
  /// The input-dependent part of H (false: static matrices only).
  TORCH_ARG(bool, dynamic) = true;
  TORCH_ARG(double, eps) = 1e-6;
};

/// The settings of the stream mixing a user chooses (streams, sinkhorn_iterations, alpha_init, eps: not width,
/// variant or layer_index, which follow from where an MHC sits): names, docs and checks; nested as "mhc" in the
/// mhc-resnet model's options.
const Schema<MHCOptions>& mhc_schema();

/// The three mixing matrices for a batch: pre [B, n], post [B, n], res [B, n, n].
struct MixingMatrices {
  torch::Tensor pre, post, res;
};

/// Residual wrapper with n streams around any sublayer `branch` that maps [B, C, ...] to [B, C, ...].
/// Parameters: branch.*, norm_weight (RMSNorm gain, used as 1 + w), phi_pre, phi_post, phi_res (input-dependent
/// projections), b_pre, b_post, b_res (static logits), alpha_pre, alpha_post, alpha_res; mhc-lite has the buffer
/// `permutations`.
class MHCImpl : public torch::nn::Cloneable<MHCImpl> {
 public:
  MHCImpl(MHCOptions options, torch::nn::AnyModule branch);
  template <typename ModuleType>
  MHCImpl(MHCOptions options, ModuleType branch) : MHCImpl(std::move(options), torch::nn::AnyModule(branch)) {}

  void reset() override;
  /// x: [B, n, C, ...] -> same shape.
  torch::Tensor forward(const torch::Tensor& x);
  /// H_pre, H_post, H_res for the input x.
  MixingMatrices mixing(const torch::Tensor& x);
  /// H_res x + H_post^T branch(H_pre x) for given matrices.
  torch::Tensor combine(const torch::Tensor& x, const MixingMatrices& m);
  /// Deep copy, branch included.
  std::shared_ptr<torch::nn::Module> clone(
      const torch::optional<torch::Device>& device = torch::nullopt) const override;
  void pretty_print(std::ostream& stream) const override;

  MHCOptions options;
  torch::nn::AnyModule branch;
  torch::Tensor norm_weight, phi_pre, phi_post, phi_res, b_pre, b_post, b_res, alpha_pre, alpha_post, alpha_res;
  torch::Tensor permutations;

 private:
  void check_streams(const torch::Tensor& x) const;
  /// mixing(x) from the streams' means over space [B, n, C] (undefined unless options.dynamic()).
  MixingMatrices mixing_from(const torch::Tensor& x, const torch::Tensor& features);
  /// combine() with the streams as two reads, for H_pre x and for H_res x (ops::read_streams).
  torch::Tensor combine_reads(const torch::Tensor& for_pre, const torch::Tensor& for_res, const MixingMatrices& m);
};
TORCH_MODULE(MHC);

/// [B, C, ...] -> [B, n, C, ...]: n copies of the input (stream expansion).
torch::Tensor expand_streams(const torch::Tensor& x, int64_t streams);
/// [B, n, C, ...] -> [B, C, ...]: the sum of the streams (stream reduction).
torch::Tensor reduce_streams(const torch::Tensor& x);

// ---------------------------------------------------------------------------------------------------------------

struct BasicBlockOptions {
  /* implicit */ BasicBlockOptions(int64_t channels = 32) : channels_(channels) {}
  TORCH_ARG(int64_t, channels);
};

/// The ResNet basic block's residual function: conv1 (3x3) -> bn1 -> ReLU -> conv2 (3x3) -> bn2, no skip (the
/// wrapper adds it).
class BasicBlockImpl : public torch::nn::Cloneable<BasicBlockImpl> {
 public:
  explicit BasicBlockImpl(BasicBlockOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  BasicBlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  BatchNorm2d bn1{nullptr}, bn2{nullptr};
};
TORCH_MODULE(BasicBlock);

struct MHCResNetOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(int64_t, channels) = 32;
  TORCH_ARG(int64_t, blocks) = 4;
  /// mhc, mhc-lite, hc, or residual (a plain x + F(x) ResNet with one stream, the baseline).
  TORCH_ARG(std::string, variant) = "mhc";
  /// The blocks' stream mixing (their width, variant and layer_index are set from the above).
  TORCH_ARG(MHCOptions, mhc) = {};
};

/// Fashion-MNIST classifier whose residual blocks are hyper-connected:
///   stem:   Conv3x3(in, C) -> BN -> ReLU -> MaxPool2 -> Conv3x3(C, C) -> BN -> ReLU -> MaxPool2   (28 -> 7)
///   blocks: `blocks` x MHC(BasicBlock(C)) on n streams (expanded by copying, reduced by summing)
///   head:   ReLU -> global average pool -> Flatten -> Linear(C, num_classes)
class MHCResNetImpl : public torch::nn::Cloneable<MHCResNetImpl> {
 public:
  explicit MHCResNetImpl(MHCResNetOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  MHCResNetOptions options;
  torch::nn::Sequential stem{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(MHCResNet);

}  // namespace zoo::models
