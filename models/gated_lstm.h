// An LSTM cell with its gates in the open: the if-then-else of the course sheet made differentiable
// (Hochreiter & Schmidhuber 1997; the forget gate of Gers et al. 2000). With z = W_ih x + b_ih + W_hh h + b_hh
// split in four (PyTorch's order):
//
//   i = sigmoid(z_i)   input gate:  "if the input matters, write it"
//   f = sigmoid(z_f)   forget gate: "if the memory still matters, keep it"
//   g = tanh(z_g)      candidate
//   o = sigmoid(z_o)   output gate: "if the memory is needed now, show it"
//   c' = f * c + i * g,   h' = o * tanh(c')
//
// Parameters weight_ih [4H, I], weight_hh [4H, H], bias_ih [4H], bias_hh [4H]: the names, layout and
// initialisation (uniform +-1/sqrt(H)) of torch.nn.LSTMCell, so weights copy across and the outputs agree.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <tuple>

namespace zoo::models {

struct GatedLSTMCellOptions {
  GatedLSTMCellOptions(int64_t input_size, int64_t hidden_size) : input_size_(input_size), hidden_size_(hidden_size) {}
  TORCH_ARG(int64_t, input_size);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(bool, bias) = true;
  /// Added to bias_ih's forget-gate block at initialisation (0 = PyTorch's initialisation; 1 is common).
  TORCH_ARG(double, forget_bias) = 0.0;
};

/// One step: the new state and every gate activation, each [N, H].
struct GatedLSTMStep {
  torch::Tensor h, c;
  torch::Tensor input_gate, forget_gate, candidate, output_gate;
};

class GatedLSTMCellImpl : public torch::nn::Cloneable<GatedLSTMCellImpl> {
 public:
  explicit GatedLSTMCellImpl(GatedLSTMCellOptions options);
  void reset() override;
  /// x: [N, input_size]; state (h, c), each [N, hidden_size], zeros when absent.
  GatedLSTMStep forward(const torch::Tensor& x,
                        const std::optional<std::tuple<torch::Tensor, torch::Tensor>>& state = std::nullopt);
  void pretty_print(std::ostream& stream) const override;

  GatedLSTMCellOptions options;
  torch::Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};
TORCH_MODULE(GatedLSTMCell);

}  // namespace zoo::models
