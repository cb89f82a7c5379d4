// Mixture of Experts: an if-then-else that is learned. A gate G reads each token x and routes it to a few of N
// expert networks E_i; the output is their gate-weighted sum (Shazeer et al. 2017, arXiv 1701.06538):
//
//   y = sum_i G(x)_i E_i(x)
//   softmax      G(x) = softmax(x W_g)                                  every expert runs on every token (dense)
//   topk         G(x) = softmax(KeepTopK(x W_g, k))                      only k experts run per token (sparse)
//   noisy-topk   G(x) = softmax(KeepTopK(H(x), k)),  H(x) = x W_g + StandardNormal() * Softplus(x W_noise)
//                (noise in training only; the noise scale is learned)
// With `renormalize` false the chosen experts keep their full-softmax probabilities instead (Switch
// Transformer): at k = 1 the renormalised weight is always 1 and the gate would learn from the balancing loss only.
//
// Load balancing (an auxiliary loss, see models/auxiliary.h), over the T tokens of a batch:
//   switch   alpha * N * sum_i f_i P_i     f_i: fraction of the T*k assignments routed to expert i,
//                                          P_i: mean gate probability softmax(logits)_i   (= alpha at balance)
//   cv       alpha * (CV(Importance)^2 + CV(Load)^2)    Importance_i = sum_x G(x)_i,
//            Load_i = sum_x P(x, i) (Shazeer's smooth estimate, noisy-topk) or the count of tokens (otherwise),
//            CV(v)^2 = Var(v) / Mean(v)^2
// Expert capacity (Switch/GShard): an expert takes at most ceil(capacity_factor * T * k / N) assignments per
// batch; first choices of all tokens are served before second choices, each in token order, and the rest are
// dropped (a token whose every choice is dropped gets a zero output from the experts). Sparse dispatch: each
// expert runs only on the rows gathered for it, and its outputs are scattered back with index_add.
//
// Shared expert (`shared_hidden` > 0): one more expert E_s that every token passes through with weight 1,
//   y = E_s(x) + sum_i G(x)_i E_i(x)
// as Residual-MoE (Rajbhandari et al. 2022, DeepSpeed-MoE, arXiv 2201.05596, section 4.1) and DeepSeekMoE's
// shared experts (Dai et al. 2024, arXiv 2401.06066). A token dropped by every expert it chose keeps E_s(x), as a
// dropped token in the Switch Transformer keeps its residual connection; a head with no residual around it (the
// moe classifier) needs it for its dropped tokens to get logits at all.
#pragma once

#include "models/auxiliary.h"
#include "models/dropout.h"

#include "core/schema.h"

#include <torch/torch.h>

#include <string>

namespace zoo::models {

struct MixtureOfExpertsOptions {
  /// in_features and out_features are set by whoever builds the layer (0 until then: a wrapper such as the moe
  /// classifier derives them from its own layout).
  /* implicit */ MixtureOfExpertsOptions(int64_t in_features = 0, int64_t out_features = 0)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  /// Width of what the gate reads, when it is not the tokens themselves (see forward); 0 = in_features.
  TORCH_ARG(int64_t, gate_features) = 0;
  /// Each expert is Linear(in, hidden) -> ReLU -> Linear(hidden, out).
  TORCH_ARG(int64_t, hidden) = 64;
  TORCH_ARG(int64_t, experts) = 8;
  /// softmax (dense), topk or noisy-topk.
  TORCH_ARG(std::string, gate) = "topk";
  /// Experts per token (topk, noisy-topk).
  TORCH_ARG(int64_t, k) = 2;
  /// true: softmax over the top k (Shazeer); false: the full softmax's probabilities of the top k (Switch).
  TORCH_ARG(bool, renormalize) = true;
  /// none, switch or cv.
  TORCH_ARG(std::string, balance) = "switch";
  /// alpha, the weight of the balancing loss.
  TORCH_ARG(double, balance_coef) = 1e-2;
  /// Capacity per expert in training, as a multiple of the fair share T*k/N; 0 = unlimited.
  TORCH_ARG(double, capacity_factor) = 0.0;
  /// The same in evaluation mode (0 = unlimited, so a prediction never depends on the rest of the batch).
  TORCH_ARG(double, eval_capacity_factor) = 0.0;
  /// Added to the softplus noise scale (noisy-topk), as in Shazeer's reference code.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// Hidden units of the shared expert every token passes through (0 = none).
  TORCH_ARG(int64_t, shared_hidden) = 0;
};

/// The routing of one batch of T tokens.
struct Routing {
  torch::Tensor logits;     ///< [T, N] gate logits (with noise in noisy-topk training)
  torch::Tensor probs;      ///< [T, N] softmax(logits)
  torch::Tensor experts;    ///< [T, k] chosen experts, best first (softmax: all N)
  torch::Tensor gates;      ///< [T, k] their weights, summing to 1 per token (unless renormalize is false)
  torch::Tensor kept;       ///< [T, k] bool: the assignment fits in its expert's capacity (undefined: all fit)
  torch::Tensor soft_load;  ///< [N] Shazeer's smooth Load(X) (noisy-topk in training), else undefined
  torch::Tensor load;       ///< [N] fraction of the T*k assignments routed to each expert (before capacity)
  int64_t dropped = 0;      ///< assignments over capacity
};

/// One expert: fc1 -> ReLU -> fc2.
class ExpertImpl : public torch::nn::Cloneable<ExpertImpl> {
 public:
  ExpertImpl(int64_t in, int64_t hidden, int64_t out) : in_(in), hidden_(hidden), out_(out) { reset(); }
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  int64_t in_, hidden_, out_;
};
TORCH_MODULE(Expert);

/// Parameters: gate.weight [N, in] (W_g), noise.weight [N, in] (W_noise; noisy-topk only, zero at start),
/// experts.i.fc1.{weight,bias}, experts.i.fc2.{weight,bias}; shared.fc1.{weight,bias}, shared.fc2.{weight,bias}
/// (shared_hidden > 0 only).
class MixtureOfExpertsImpl : public torch::nn::Cloneable<MixtureOfExpertsImpl>, public AuxiliaryLoss {
 public:
  explicit MixtureOfExpertsImpl(MixtureOfExpertsOptions options);
  void reset() override;
  /// x: [..., in_features] (every leading position is a token) -> [..., out_features]. The gate reads x, or
  /// `gate_input` [..., gate_features] when given (e.g. a summary of the token that is cheaper to route on).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& gate_input = {});
  /// The gate's decisions for T tokens from what the gate reads: [T, gate_features].
  Routing route(const torch::Tensor& gate_input);
  /// Output for tokens x [T, in] under a routing: sparse dispatch (each expert sees only its tokens), or, with
  /// `dense`, every expert on every token weighted by the gates (the reference the sparse path must equal).
  torch::Tensor dispatch(const torch::Tensor& x, const Routing& routing, bool dense = false);
  /// One expert on tokens x [T, in].
  torch::Tensor expert(int64_t i, const torch::Tensor& x);

  torch::Tensor auxiliary_loss() const override { return aux_loss_; }
  /// expert_load [N], dropped (fraction of assignments), load_entropy (nats; ln N at perfect balance).
  std::vector<std::pair<std::string, torch::Tensor>> auxiliary_statistics() const override;
  /// The balancing loss of a routing (undefined for balance = none).
  torch::Tensor balance_loss(const Routing& routing) const;
  /// Capacity per expert for T tokens in the current mode (0 = unlimited).
  int64_t capacity(int64_t tokens) const;
  void pretty_print(std::ostream& stream) const override;

  MixtureOfExpertsOptions options;
  int64_t gate_features() const {
    return options.gate_features() > 0 ? options.gate_features() : options.in_features();
  }
  torch::nn::Linear gate{nullptr};
  torch::nn::Linear noise{nullptr};
  torch::nn::ModuleList experts{nullptr};
  Expert shared{nullptr};

 private:
  torch::Tensor aux_loss_;
  Routing last_;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(torch::Tensor())})
};
TORCH_MODULE(MixtureOfExperts);

/// The gate modes and balancing losses by name, for option checks and messages.
const std::vector<std::string>& moe_gate_names();
const std::vector<std::string>& moe_balance_names();
/// The layer's settings a user chooses (hidden, experts, gate, k, ...: not in/out/gate_features, which follow
/// from where the layer sits): names, docs and checks; nested as "moe" in the moe classifier's options.
const Schema<MixtureOfExpertsOptions>& moe_schema();

struct MoEClassifierOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;
  /// The conv stem: [Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per entry (as the cnn model).
  TORCH_ARG(std::vector<int64_t>, channels) = std::vector<int64_t>{32, 64};
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(double, dropout) = 0.25;
  /// The MoE head (its in_features, out_features and gate_features are set from the stem and num_classes).
  /// balance_coef 0.1, not Switch's 0.01: measured on Fashion-MNIST, 0.01 leaves 3 experts with 76 % of the
  /// tokens.
  TORCH_ARG(MixtureOfExpertsOptions, moe) = MixtureOfExpertsOptions().balance_coef(0.1).capacity_factor(2.0);
};

/// Fashion-MNIST classifier with a conv stem and a Mixture-of-Experts head: features.* as the cnn model, then
/// Dropout and moe.* mapping the flattened features to logits. The gate reads the stem's channel means (64
/// numbers), the experts the whole flattened map (3136): a gate on all 3136 inputs moves its logits by
/// lr * sum|x| per Adam step and collapses onto two experts within the first steps (measured). With the
/// defaults (top-2 of 8 experts of 64 hidden units) the active parameters per image equal the cnn's (one
/// 128-unit hidden layer).
class MoEClassifierImpl : public torch::nn::Cloneable<MoEClassifierImpl> {
 public:
  explicit MoEClassifierImpl(MoEClassifierOptions options = {});
  void reset() override;
  /// x: [N, in_channels, image_size, image_size] -> logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  MoEClassifierOptions options;
  torch::nn::Sequential features{nullptr};
  Dropout dropout{nullptr};
  MixtureOfExperts moe{nullptr};
};
TORCH_MODULE(MoEClassifier);

}  // namespace zoo::models
