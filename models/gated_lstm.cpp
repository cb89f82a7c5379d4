#include "models/gated_lstm.h"

#include <cmath>

namespace zoo::models {

GatedLSTMCellImpl::GatedLSTMCellImpl(GatedLSTMCellOptions options_) : options(std::move(options_)) { reset(); }

void GatedLSTMCellImpl::reset() {
  const int64_t in = options.input_size(), hidden = options.hidden_size();
  TORCH_CHECK(in > 0 && hidden > 0, "GatedLSTMCell: input_size and hidden_size must be positive, got ", in, ", ",
              hidden);
  weight_ih = register_parameter("weight_ih", torch::empty({4 * hidden, in}));
  weight_hh = register_parameter("weight_hh", torch::empty({4 * hidden, hidden}));
  if (options.bias()) {
    bias_ih = register_parameter("bias_ih", torch::empty({4 * hidden}));
    bias_hh = register_parameter("bias_hh", torch::empty({4 * hidden}));
  } else {
    bias_ih = register_parameter("bias_ih", torch::Tensor(), /*requires_grad=*/false);
    bias_hh = register_parameter("bias_hh", torch::Tensor(), /*requires_grad=*/false);
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) p.uniform_(-bound, bound);
  if (options.bias() && options.forget_bias() != 0) bias_ih.slice(0, hidden, 2 * hidden).add_(options.forget_bias());
}

GatedLSTMStep GatedLSTMCellImpl::forward(const torch::Tensor& x,
                                         const std::optional<std::tuple<torch::Tensor, torch::Tensor>>& state) {
  const int64_t hidden = options.hidden_size();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.input_size(), "GatedLSTMCell expects x [N, ",
              options.input_size(), "], got ", x.sizes());
  torch::Tensor h, c;
  if (state) {
    std::tie(h, c) = *state;
    TORCH_CHECK(h.sizes() == c.sizes() && h.dim() == 2 && h.size(0) == x.size(0) && h.size(1) == hidden,
                "GatedLSTMCell expects h and c [", x.size(0), ", ", hidden, "], got ", h.sizes(), " and ", c.sizes());
  } else {
    h = c = torch::zeros({x.size(0), hidden}, x.options());
  }
  auto z = torch::matmul(x, weight_ih.t()) + torch::matmul(h, weight_hh.t());
  if (options.bias()) z = z + bias_ih + bias_hh;
  const auto parts = z.chunk(4, 1);
  GatedLSTMStep step;
  step.input_gate = torch::sigmoid(parts[0]);
  step.forget_gate = torch::sigmoid(parts[1]);
  step.candidate = torch::tanh(parts[2]);
  step.output_gate = torch::sigmoid(parts[3]);
  step.c = step.forget_gate * c + step.input_gate * step.candidate;
  step.h = step.output_gate * torch::tanh(step.c);
  return step;
}

void GatedLSTMCellImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::GatedLSTMCell(input_size=" << options.input_size() << ", hidden_size=" << options.hidden_size()
         << ")";
}

}  // namespace zoo::models
