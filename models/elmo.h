// ELMo (Peters et al. 2018): a character CNN with highway layers gives each word a context-free vector (layer
// 0); a 2-layer forward and a 2-layer backward LSTM language model (separate weights) give contextual ones
// (layers 1 and 2); a scalar mix gamma * sum_j softmax(s)_j h_j combines the layers for a task.
//
// Names follow AllenNLP's modules where it has them (Highway.layers, LstmCellWithProjection's
// input_linearity / state_linearity / state_projection, ScalarMix.scalar_parameters / gamma), so weights map
// 1:1 to a Python port. Input everywhere: character ids [N, T, W] (core/chars.h; padding words are all 0).
#pragma once

#include "models/language_model.h"
#include "models/pretty.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace zoo::models {

/// y = g * x + (1 - g) * relu(A x), g = sigmoid(B x); A and B are the halves of one Linear(d, 2d) per layer
/// (AllenNLP's Highway), the gate's bias starts at 1 (carry x).
struct HighwayOptions {
  HighwayOptions(int64_t dim, int64_t num_layers = 1) : dim_(dim), num_layers_(num_layers) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, num_layers);
};

class HighwayImpl : public torch::nn::Cloneable<HighwayImpl> {
 public:
  explicit HighwayImpl(HighwayOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  HighwayOptions options;
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(Highway);

/// AllenNLP's LstmCellWithProjection over a whole sequence in one direction: gates i, f, g, o from
/// input_linearity(x) (no bias) + state_linearity(h); c clipped to +-cell_clip; h = o * tanh(c), projected to
/// hidden_size (state_projection, no bias) when hidden_size != cell_size, then clipped to +-proj_clip.
/// Clips <= 0 are off. At masked positions the state is carried over unchanged and the output is 0, so
/// padding never reaches a real token's state in either direction.
///
/// The recurrence is ops::lstm_recurrence (ops/lstm.h): with gradients, one autograd node with a hand-written
/// backward through time (first derivatives only); without, a loop on weights packed once. `fused` false runs
/// ops::lstm_recurrence_reference, the plain loop the fast path is tested against (tests/ops/lstm.cpp).
struct LstmWithProjectionOptions {
  LstmWithProjectionOptions(int64_t input_size, int64_t hidden_size, int64_t cell_size)
      : input_size_(input_size), hidden_size_(hidden_size), cell_size_(cell_size) {}
  TORCH_ARG(int64_t, input_size);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, cell_size);
  TORCH_ARG(double, cell_clip) = 3.0;
  TORCH_ARG(double, proj_clip) = 3.0;
  TORCH_ARG(bool, go_forward) = true;  ///< false: from the last position to the first
  TORCH_ARG(bool, fused) = true;       ///< the fast path of ops/lstm.h (false: its plain reference)
};

class LstmWithProjectionImpl : public torch::nn::Cloneable<LstmWithProjectionImpl> {
 public:
  explicit LstmWithProjectionImpl(LstmWithProjectionOptions options);
  void reset() override;
  /// x [N, T, input_size], mask [N, T] bool -> outputs [N, T, hidden_size].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);
  void pretty_print(std::ostream& stream) const override;

  LstmWithProjectionOptions options;
  torch::nn::Linear input_linearity{nullptr}, state_linearity{nullptr}, state_projection{nullptr};
};
TORCH_MODULE(LstmWithProjection);

/// gamma * sum_j softmax(s)_j * h_j over `mixture_size` tensors of one shape; s starts at
/// `initial_scalar_parameters` (default all 0), gamma at 1. With do_layer_norm each h_j is first normalised by
/// one scalar mean and one scalar standard deviation over its unmasked elements (AllenNLP / bilm-tf: not a
/// per-token LayerNorm, no affine parameters).
struct ScalarMixOptions {
  /* implicit */ ScalarMixOptions(int64_t mixture_size) : mixture_size_(mixture_size) {}
  TORCH_ARG(int64_t, mixture_size);
  TORCH_ARG(bool, do_layer_norm) = false;
  TORCH_ARG(std::vector<double>, initial_scalar_parameters) = {};
  TORCH_ARG(bool, trainable) = true;
};

class ScalarMixImpl : public torch::nn::Cloneable<ScalarMixImpl> {
 public:
  explicit ScalarMixImpl(ScalarMixOptions options);
  void reset() override;
  /// `mask` [N, T] (bool) is needed with do_layer_norm; the tensors are [N, T, D].
  torch::Tensor forward(const std::vector<torch::Tensor>& tensors, const torch::Tensor& mask = {});
  /// softmax(s): the layer weights, which sum to 1.
  torch::Tensor weights() const;
  void pretty_print(std::ostream& stream) const override;

  ScalarMixOptions options;
  torch::nn::ParameterList scalar_parameters{nullptr};
  torch::Tensor gamma;
};
TORCH_MODULE(ScalarMix);

struct ElmoOptions {
  TORCH_ARG(int64_t, char_embedding) = 16;
  /// Character CNN filters as [width, count, width, count, ...].
  TORCH_ARG(std::vector<int64_t>, filters) = std::vector<int64_t>{1, 32, 2, 32, 3, 64, 4, 128, 5, 256};
  TORCH_ARG(int64_t, highway_layers) = 1;
  TORCH_ARG(int64_t, max_word_length) = 20;
  /// Width of every layer's output per direction: the token projection and the LSTMs' hidden state.
  TORCH_ARG(int64_t, projection_dim) = 128;
  /// LSTM cell size; equal to projection_dim means no LSTM projection.
  TORCH_ARG(int64_t, cell_size) = 256;
  TORCH_ARG(int64_t, num_layers) = 2;
  TORCH_ARG(double, cell_clip) = 3.0;
  TORCH_ARG(double, proj_clip) = 3.0;
  TORCH_ARG(double, dropout) = 0.1;
  /// Word-level softmax size (the corpus vocabulary: <unk>, <S>, </S> and the most frequent words).
  TORCH_ARG(int64_t, vocab_size) = 5000;
  /// The model's own scalar mix (`zoo embed --layer mix`) normalises each layer first.
  TORCH_ARG(bool, mix_layer_norm) = false;
};

/// ELMo's biLM. Submodules: char_embedding, char_convs.i, highway, projection, forward_layers.i,
/// backward_layers.i, softmax, scalar_mix.
class ElmoImpl : public torch::nn::Cloneable<ElmoImpl>, public BidirectionalLanguageModel {
 public:
  explicit ElmoImpl(ElmoOptions options = {});
  void reset() override;
  /// chars [N, T, W] -> the layer representations stacked, [num_layers + 1, N, T, 2 * projection_dim]:
  /// layer 0 = [x; x] (the token vector twice), layer j = [forward_j; backward_j].
  torch::Tensor forward(const torch::Tensor& chars);
  /// The same as a list, and the mask [N, T] of real (non-padding) words.
  std::vector<torch::Tensor> layers(const torch::Tensor& chars);
  /// The vectors of one tokenised sentence (<S> and </S> added for context, then dropped), in eval mode without
  /// gradients: [num_layers + 2, tokens, 2 * projection_dim], layers 0..num_layers and then the model's scalar
  /// mix, on the CPU.
  torch::Tensor sentence_vectors(const std::vector<std::string>& words);
  /// Layer 0 alone: chars [N, T, W] -> [N, T, projection_dim]; sees one word at a time.
  torch::Tensor token_embedding(const torch::Tensor& chars);
  /// [N, T] bool: words that are not padding.
  static torch::Tensor word_mask(const torch::Tensor& chars);
  /// The model's scalar mix of layers(chars).
  torch::Tensor mix(const torch::Tensor& chars);

  std::pair<torch::Tensor, torch::Tensor> lm_states(const torch::Tensor& chars) override;
  torch::Tensor word_logits(const torch::Tensor& states) override;
  void pretty_print(std::ostream& stream) const override;

  ElmoOptions options;
  torch::nn::Embedding char_embedding{nullptr};
  torch::nn::ModuleList char_convs{nullptr};
  Highway highway{nullptr};
  torch::nn::Linear projection{nullptr};
  torch::nn::ModuleList forward_layers{nullptr}, backward_layers{nullptr};
  torch::nn::Linear softmax{nullptr};
  ScalarMix scalar_mix{nullptr};

 private:
  /// Both directions' per-layer outputs (before the top-level dropout).
  void run_lstms(const torch::Tensor& x, const torch::Tensor& mask, std::vector<torch::Tensor>& fwd,
                 std::vector<torch::Tensor>& bwd);
};
TORCH_MODULE(Elmo);

}  // namespace zoo::models
