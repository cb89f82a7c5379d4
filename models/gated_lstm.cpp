#include "models/gated_lstm.h"

#include "ops/autocast.h"

#include <torch/csrc/jit/frontend/tracer.h>

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

namespace {

/// One step as one autograd node: the forward computes the state and the gates without recording, the backward
/// is the chain rule of the formulas above written out (the gradients reaching any of the six outputs, including
/// a loss on the gates themselves). Per step that is one node instead of ~17, which is most of a training step's
/// cost at the small sizes where a cell is stepped in a loop. Bias tensors are empty when the cell has none
/// (custom autograd functions take no undefined inputs).
struct GatedLSTMStepFunction : public torch::autograd::Function<GatedLSTMStepFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                const torch::Tensor& h, const torch::Tensor& c,
                                                const torch::Tensor& w_ih, const torch::Tensor& w_hh,
                                                const torch::Tensor& b_ih, const torch::Tensor& b_hh) {
    const int64_t hidden = w_hh.size(1);
    auto z = b_ih.numel() > 0 ? torch::addmm(b_ih + b_hh, x, w_ih.t()) : torch::mm(x, w_ih.t());
    z.addmm_(h, w_hh.t());
    auto i = torch::sigmoid(z.slice(1, 0, hidden)), f = torch::sigmoid(z.slice(1, hidden, 2 * hidden));
    auto g = torch::tanh(z.slice(1, 2 * hidden, 3 * hidden)), o = torch::sigmoid(z.slice(1, 3 * hidden));
    auto c_new = torch::addcmul(f * c, i, g);
    auto tanh_c = torch::tanh(c_new);
    auto h_new = o * tanh_c;
    ctx->save_for_backward({x, h, c, w_ih, w_hh, i, f, g, o, tanh_c});
    ctx->saved_data["bias"] = b_ih.numel() > 0;
    return {h_new, c_new, i, f, g, o};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const ops::Float32Region float32_region;  // a float32 step has a float32 backward, autocast or not
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4], &i = saved[5],
               &f = saved[6], &g = saved[7], &o = saved[8], &tanh_c = saved[9];
    auto plus = [](torch::Tensor a, const torch::Tensor& b) { return b.defined() ? a + b : a; };
    const auto dh = grads[0].defined() ? grads[0] : torch::zeros_like(o);
    const auto dc = plus(dh * o * (1 - tanh_c * tanh_c), grads[1]);
    auto dz = torch::cat({plus(dc * g, grads[2]) * i * (1 - i), plus(dc * c, grads[3]) * f * (1 - f),
                          plus(dc * i, grads[4]) * (1 - g * g), plus(dh * tanh_c, grads[5]) * o * (1 - o)},
                         1);
    torch::autograd::variable_list out(7);
    if (ctx->needs_input_grad(0)) out[0] = torch::mm(dz, w_ih);
    if (ctx->needs_input_grad(1)) out[1] = torch::mm(dz, w_hh);
    if (ctx->needs_input_grad(2)) out[2] = dc * f;
    if (ctx->needs_input_grad(3)) out[3] = torch::mm(dz.t(), x);
    if (ctx->needs_input_grad(4)) out[4] = torch::mm(dz.t(), h);
    if (ctx->saved_data["bias"].toBool()) {
      auto db = dz.sum(0);
      if (ctx->needs_input_grad(5)) out[5] = db;
      if (ctx->needs_input_grad(6)) out[6] = db;
    }
    return out;
  }
};

}  // namespace

GatedLSTMStep GatedLSTMCellImpl::forward(const torch::Tensor& x_in,
                                         const std::optional<std::tuple<torch::Tensor, torch::Tensor>>& state) {
  const int64_t hidden = options.hidden_size();
  // The step runs in float32 under autocast (bf16-mixed) and with bfloat16 weights (bf16), as the LSTM recurrence
  // of ops/lstm.h: the cell state is a sum over steps that 8 bits of mantissa would erode (and the step's in-place
  // addmm_ takes no mixed types). Gradients flow back to the weights in their own precision.
  const ops::Float32Region float32_region;
  const auto x = ops::float32(x_in);
  const auto w_ih = ops::float32(weight_ih), w_hh = ops::float32(weight_hh);
  const auto b_ih = options.bias() ? ops::float32(bias_ih) : torch::Tensor(),
             b_hh = options.bias() ? ops::float32(bias_hh) : torch::Tensor();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.input_size(), "GatedLSTMCell expects x [N, ", options.input_size(),
              "], got ", x.sizes());
  torch::Tensor h, c;
  if (state) {
    std::tie(h, c) = *state;
    h = ops::float32(h);
    c = ops::float32(c);
    TORCH_CHECK(h.sizes() == c.sizes() && h.dim() == 2 && h.size(0) == x.size(0) && h.size(1) == hidden,
                "GatedLSTMCell expects h and c [", x.size(0), ", ", hidden, "], got ", h.sizes(), " and ", c.sizes());
  } else {
    h = c = torch::zeros({x.size(0), hidden}, x.options());
  }
  if (torch::GradMode::is_enabled() && !torch::jit::tracer::isTracing()) {
    const auto none = torch::empty({0}, x.options());
    auto r =
        GatedLSTMStepFunction::apply(x, h, c, w_ih, w_hh, options.bias() ? b_ih : none, options.bias() ? b_hh : none);
    GatedLSTMStep step;
    step.h = r[0];
    step.c = r[1];
    step.input_gate = r[2];
    step.forget_gate = r[3];
    step.candidate = r[4];
    step.output_gate = r[5];
    return step;
  }
  // Without gradients (and in traces): the same formulas, step by step.
  auto z = torch::matmul(x, w_ih.t()) + torch::matmul(h, w_hh.t());
  if (options.bias()) z = z + b_ih + b_hh;
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
