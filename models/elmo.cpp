#include "models/elmo.h"

#include "core/chars.h"
#include "models/registry.h"
#include "ops/packed_gemm.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <numeric>

namespace zoo::models {

// ---- Highway ---------------------------------------------------------------------------------------------

HighwayImpl::HighwayImpl(HighwayOptions options_) : options(std::move(options_)) { reset(); }

void HighwayImpl::reset() {
  TORCH_CHECK(options.dim() > 0 && options.num_layers() >= 0, "highway: dim must be > 0 and num_layers >= 0");
  layers = register_module("layers", torch::nn::ModuleList());
  const int64_t d = options.dim();
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    torch::nn::Linear layer(d, 2 * d);
    torch::NoGradGuard no_grad;
    layer->bias.slice(0, d).fill_(1.0);  // the gate starts by carrying x
    layers->push_back(layer);
  }
}

torch::Tensor HighwayImpl::forward(const torch::Tensor& x) {
  auto current = x;
  for (const auto& m : *layers) {
    auto projected = m->as<torch::nn::Linear>()->forward(current);
    auto parts = projected.chunk(2, -1);
    const auto gate = torch::sigmoid(parts[1]);
    current = gate * current + (1 - gate) * torch::relu(parts[0]);
  }
  return current;
}

void HighwayImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::Highway(dim=" << options.dim() << ", num_layers=" << options.num_layers() << ")";
}

// ---- LSTM with projection --------------------------------------------------------------------------------

LstmWithProjectionImpl::LstmWithProjectionImpl(LstmWithProjectionOptions options_) : options(std::move(options_)) {
  reset();
}

void LstmWithProjectionImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.input_size() > 0 && o.hidden_size() > 0 && o.cell_size() > 0,
              "lstm: input_size, hidden_size and cell_size must be > 0");
  const int64_t C = o.cell_size();
  input_linearity = register_module("input_linearity",
                                    torch::nn::Linear(torch::nn::LinearOptions(o.input_size(), 4 * C).bias(false)));
  state_linearity = register_module("state_linearity", torch::nn::Linear(o.hidden_size(), 4 * C));
  if (o.hidden_size() != C)
    state_projection = register_module("state_projection",
                                       torch::nn::Linear(torch::nn::LinearOptions(C, o.hidden_size()).bias(false)));
  else
    state_projection = nullptr;
  // AllenNLP: block-orthogonal weights (one orthogonal block per gate), zero biases but the forget gate's 1.
  torch::NoGradGuard no_grad;
  for (auto* w : {&input_linearity->weight, &state_linearity->weight})
    for (int64_t g = 0; g < 4; ++g) torch::nn::init::orthogonal_(w->slice(0, g * C, (g + 1) * C));
  state_linearity->bias.zero_();
  state_linearity->bias.slice(0, C, 2 * C).fill_(1.0);
}

namespace {

/// The recurrence of LstmWithProjection over all steps as one autograd node. Inputs: xs [N, T, 4C] (the input
/// product plus the state bias), the state weight [4C, H], the projection weight [H, C] (empty without
/// projection: custom autograd functions take no undefined inputs), keep [N, T] (bool). The forward saves each step's
/// gate activations, cell state and clip masks; the backward walks the steps in reverse and gathers dL/dz of every
/// step, so that the state and projection weight gradients are one matrix product each over all N * T rows.
struct LstmRecurrence : public torch::autograd::Function<LstmRecurrence> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& xs,
                               const torch::Tensor& w_state, const torch::Tensor& w_proj, const torch::Tensor& keep,
                               double cell_clip, double proj_clip, bool go_forward) {
    const int64_t N = xs.size(0), T = xs.size(1), C = xs.size(2) / 4, H = w_state.size(1);
    const bool padded = !keep.all().item<bool>(), project = w_proj.numel() > 0;
    auto opts = xs.options();
    auto acts = torch::empty({T, N, 4 * C}, opts), c_prev = torch::empty({T, N, C}, opts);
    auto tanh_c = torch::empty({T, N, C}, opts), p = torch::empty({T, N, C}, opts);
    auto h_prev = torch::empty({T, N, H}, opts);
    auto c_ok = cell_clip > 0 ? torch::empty({T, N, C}, opts.dtype(torch::kBool)) : torch::Tensor();
    auto h_ok = proj_clip > 0 ? torch::empty({T, N, H}, opts.dtype(torch::kBool)) : torch::Tensor();
    auto out = torch::empty({N, T, H}, opts);
    auto h = torch::zeros({N, H}, opts), c = torch::zeros({N, C}, opts);
    const auto w_state_t = w_state.t();
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = go_forward ? s : T - 1 - s;
      h_prev[s].copy_(h);
      c_prev[s].copy_(c);
      auto a = acts[s];
      torch::addmm_out(a, xs.select(1, t), h, w_state_t);  // z, then in place: sigmoid(i, f, o), tanh(g)
      auto candidate = a.slice(1, 2 * C, 3 * C);
      const auto g = torch::tanh(candidate);
      a.sigmoid_();
      candidate.copy_(g);
      const auto parts = a.chunk(4, 1);
      auto c_new = parts[1] * c + parts[0] * parts[2];
      if (cell_clip > 0) {
        auto ok = c_ok[s];
        torch::le_out(ok, c_new.abs(), cell_clip);
        c_new.clamp_(-cell_clip, cell_clip);
      }
      auto tc = tanh_c[s], ps = p[s];
      torch::tanh_out(tc, c_new);
      torch::mul_out(ps, parts[3], tc);
      auto h_new = project ? torch::mm(ps, w_proj.t()) : ps.clone();
      if (proj_clip > 0) {
        auto ok = h_ok[s];
        torch::le_out(ok, h_new.abs(), proj_clip);
        h_new.clamp_(-proj_clip, proj_clip);
      }
      if (padded) {
        const auto m = keep.select(1, t).unsqueeze(1);
        c = torch::where(m, c_new, c);
        h = torch::where(m, h_new, h);
        out.select(1, t).copy_(h_new * m);
      } else {
        c = c_new;
        h = h_new;
        out.select(1, t).copy_(h_new);
      }
    }
    ctx->save_for_backward({w_state, w_proj, keep, acts, c_prev, tanh_c, p, h_prev, c_ok, h_ok});
    ctx->saved_data["padded"] = padded;
    ctx->saved_data["go_forward"] = go_forward;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &w_state = saved[0], &w_proj = saved[1], &keep = saved[2], &acts = saved[3], &c_prev = saved[4],
               &tanh_c = saved[5], &p = saved[6], &h_prev = saved[7], &c_ok = saved[8], &h_ok = saved[9];
    const bool padded = ctx->saved_data["padded"].toBool(), go_forward = ctx->saved_data["go_forward"].toBool();
    const int64_t T = acts.size(0), N = acts.size(1), C = acts.size(2) / 4, H = w_state.size(1);
    const bool project = w_proj.numel() > 0;
    const auto& grad_out = grads[0];
    auto dz = torch::empty({T, N, 4 * C}, acts.options());
    auto dhp_all = project ? torch::empty({T, N, H}, acts.options()) : torch::Tensor();
    auto dh = torch::zeros({N, H}, acts.options()), dc = torch::zeros({N, C}, acts.options());
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = go_forward ? s : T - 1 - s;
      torch::Tensor dh_new = grad_out.defined() ? grad_out.select(1, t) : torch::zeros_like(dh), dc_new = dc;
      torch::Tensor m, carry_h, carry_c;
      if (padded) {
        m = keep.select(1, t).unsqueeze(1);
        dh_new = torch::where(m, dh_new + dh, torch::zeros_like(dh));
        dc_new = torch::where(m, dc, torch::zeros_like(dc));
        carry_h = torch::where(m, torch::zeros_like(dh), dh);
        carry_c = torch::where(m, torch::zeros_like(dc), dc);
      } else {
        dh_new = dh_new + dh;
      }
      if (h_ok.defined()) dh_new = dh_new * h_ok[s];
      torch::Tensor dp = dh_new;
      if (project) {
        dhp_all[s].copy_(dh_new);
        dp = torch::mm(dh_new, w_proj);
      }
      const auto parts = acts[s].chunk(4, 1);
      const auto &i = parts[0], &f = parts[1], &g = parts[2], &o = parts[3];
      const auto tc = tanh_c[s];
      auto dc_raw = dc_new + dp * o * (1 - tc * tc);
      if (c_ok.defined()) dc_raw = dc_raw * c_ok[s];
      auto d = dz[s].chunk(4, 1);
      torch::mul_out(d[0], dc_raw * g, i * (1 - i));
      torch::mul_out(d[1], dc_raw * c_prev[s], f * (1 - f));
      torch::mul_out(d[2], dc_raw * i, 1 - g * g);
      torch::mul_out(d[3], dp * tc, o * (1 - o));
      dc = dc_raw * f;
      dh = torch::mm(dz[s], w_state);
      if (padded) {
        dc = dc + carry_c;
        dh = dh + carry_h;
      }
    }
    // Rows of step s belong to position t(s); the weight gradients are sums over all rows, in any order.
    auto grad_xs = (go_forward ? dz : dz.flip(0)).transpose(0, 1);
    auto grad_w_state = torch::mm(dz.reshape({T * N, 4 * C}).t(), h_prev.reshape({T * N, H}));
    torch::Tensor grad_w_proj;
    if (project) grad_w_proj = torch::mm(dhp_all.reshape({T * N, H}).t(), p.reshape({T * N, C}));
    return {grad_xs, grad_w_state, grad_w_proj, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor LstmWithProjectionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const auto& o = options;
  TORCH_CHECK(x.dim() == 3 && x.size(2) == o.input_size(), "lstm expects [N, T, ", o.input_size(), "], got ",
              x.sizes());
  TORCH_CHECK(mask.sizes() == x.sizes().slice(0, 2), "lstm: mask must be [N, T], got ", mask.sizes());
  const int64_t N = x.size(0), T = x.size(1), C = o.cell_size();
  if (o.fused() && torch::GradMode::is_enabled() && !torch::jit::tracer::isTracing() && T > 0) {
    const auto xs = input_linearity->forward(x) + state_linearity->bias;  // [N, T, 4C]
    return LstmRecurrence::apply(xs, state_linearity->weight,
                                 state_projection ? state_projection->weight : torch::empty({0}, x.options()),
                                 mask != 0, o.cell_clip(), o.proj_clip(), o.go_forward());
  }
  // Without gradients, and not tracing (a trace records torch operations only), the recurrent products run on
  // weights packed once for all steps (ops/packed_gemm.h): the bench ELMo's four LSTMs (8 x 20 words) took
  // 19.3 -> 15.9 ms at 1 thread.
  const bool packed =
      !torch::GradMode::is_enabled() && !torch::jit::tracer::isTracing() && ops::PackedWeight::usable(x);
  ops::PackedWeight state_weight, projection_weight;
  if (packed) {
    state_weight = ops::PackedWeight(state_linearity->weight);
    if (state_projection) projection_weight = ops::PackedWeight(state_projection->weight);
  }
  // [N, T, 4C], all steps in one product (with the state bias when the packed product adds it to each step)
  const auto xs = packed ? input_linearity->forward(x) + state_linearity->bias : input_linearity->forward(x);
  const auto keep = mask.to(x.dtype()).unsqueeze(-1);  // [N, T, 1]
  auto h = torch::zeros({N, o.hidden_size()}, x.options());
  auto c = torch::zeros({N, C}, x.options());
  std::vector<torch::Tensor> out(static_cast<size_t>(T));
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = o.go_forward() ? s : T - 1 - s;
    const auto gates =
        (packed ? state_weight.addmm(xs.select(1, t), h) : xs.select(1, t) + state_linearity->forward(h)).chunk(4, 1);
    auto c_new = torch::sigmoid(gates[0]) * torch::tanh(gates[2]) + torch::sigmoid(gates[1]) * c;
    if (o.cell_clip() > 0) c_new = c_new.clamp(-o.cell_clip(), o.cell_clip());
    auto h_new = torch::sigmoid(gates[3]) * torch::tanh(c_new);
    if (state_projection) h_new = packed ? projection_weight.addmm({}, h_new) : state_projection->forward(h_new);
    if (o.proj_clip() > 0) h_new = h_new.clamp(-o.proj_clip(), o.proj_clip());
    const auto m = keep.select(1, t);
    c = m * c_new + (1 - m) * c;  // padding carries the state over untouched
    h = m * h_new + (1 - m) * h;
    out[static_cast<size_t>(t)] = h_new * m;
  }
  return torch::stack(out, 1);
}

void LstmWithProjectionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "zoo::LstmWithProjection(input_size=" << o.input_size() << ", hidden_size=" << o.hidden_size()
         << ", cell_size=" << o.cell_size() << ", cell_clip=" << o.cell_clip() << ", proj_clip=" << o.proj_clip()
         << ", go_forward=" << (o.go_forward() ? "True" : "False") << ")";
}

// ---- ScalarMix -------------------------------------------------------------------------------------------

ScalarMixImpl::ScalarMixImpl(ScalarMixOptions options_) : options(std::move(options_)) { reset(); }

void ScalarMixImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.mixture_size() > 0, "scalar mix: mixture_size must be > 0");
  auto initial = o.initial_scalar_parameters();
  if (initial.empty()) initial.assign(static_cast<size_t>(o.mixture_size()), 0.0);
  TORCH_CHECK(static_cast<int64_t>(initial.size()) == o.mixture_size(), "scalar mix: ", initial.size(),
              " initial_scalar_parameters for mixture_size ", o.mixture_size());
  scalar_parameters = register_module("scalar_parameters", torch::nn::ParameterList());
  for (double v : initial) scalar_parameters->append(torch::full({1}, v).set_requires_grad(o.trainable()));
  gamma = register_parameter("gamma", torch::ones({1}), o.trainable());
}

torch::Tensor ScalarMixImpl::weights() const {
  std::vector<torch::Tensor> s;
  for (const auto& p : *scalar_parameters) s.push_back(p.value());
  return torch::softmax(torch::cat(s), 0);
}

torch::Tensor ScalarMixImpl::forward(const std::vector<torch::Tensor>& tensors, const torch::Tensor& mask) {
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == options.mixture_size(), "scalar mix of ", options.mixture_size(),
              " tensors got ", tensors.size());
  const auto w = weights();
  torch::Tensor broadcast_mask, count;
  if (options.do_layer_norm()) {
    TORCH_CHECK(mask.defined(), "scalar mix with do_layer_norm needs the mask");
    broadcast_mask = mask.to(tensors[0].dtype()).unsqueeze(-1);
    count = mask.to(tensors[0].dtype()).sum() * tensors[0].size(-1);
  }
  torch::Tensor sum;
  for (size_t j = 0; j < tensors.size(); ++j) {
    auto t = tensors[j];
    if (options.do_layer_norm()) {  // one scalar mean and variance over the unmasked elements (AllenNLP)
      const auto masked = t * broadcast_mask;
      const auto mean = masked.sum() / count;
      const auto variance = (((masked - mean) * broadcast_mask).pow(2)).sum() / count;
      t = (t - mean) / torch::sqrt(variance + 1e-12);
    }
    const auto term = w[static_cast<int64_t>(j)] * t;
    sum = sum.defined() ? sum + term : term;
  }
  return gamma * sum;
}

void ScalarMixImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ScalarMix(mixture_size=" << options.mixture_size()
         << ", do_layer_norm=" << (options.do_layer_norm() ? "True" : "False") << ")";
}

// ---- ELMo ------------------------------------------------------------------------------------------------

namespace {
/// The constructor's checks, which the registry also runs on options without building the module.
void check(const ElmoOptions& o) {
  TORCH_CHECK(o.filters().size() >= 2 && o.filters().size() % 2 == 0, "elmo: filters must be [width, count, ...], got ",
              format_list(o.filters()));
  TORCH_CHECK(o.num_layers() >= 1, "elmo: num_layers must be >= 1");
  TORCH_CHECK(o.vocab_size() >= 4, "elmo: vocab_size must be >= 4");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "elmo: dropout must be in [0, 1)");
  TORCH_CHECK(o.char_embedding() > 0 && o.projection_dim() > 0 && o.cell_size() > 0,
              "elmo: char_embedding, projection_dim and cell_size must be > 0");
  TORCH_CHECK(o.highway_layers() >= 0, "elmo: highway_layers must be >= 0");
  for (size_t i = 0; i < o.filters().size(); i += 2) {
    const int64_t width = o.filters()[i], count = o.filters()[i + 1];
    TORCH_CHECK(width >= 1 && count >= 1, "elmo: filter widths and counts must be >= 1, got ",
                format_list(o.filters()));
    TORCH_CHECK(width <= o.max_word_length(), "elmo: filter width ", width, " exceeds max_word_length ",
                o.max_word_length());
  }
}
}  // namespace

ElmoImpl::ElmoImpl(ElmoOptions options_) : options(std::move(options_)) { reset(); }

void ElmoImpl::reset() {
  namespace nn = torch::nn;
  const auto& o = options;
  check(o);
  char_embedding = register_module(
      "char_embedding",
      nn::Embedding(nn::EmbeddingOptions(CharIds::kCount, o.char_embedding()).padding_idx(CharIds::kPad)));
  char_convs = register_module("char_convs", nn::ModuleList());
  int64_t total = 0;
  for (size_t i = 0; i < o.filters().size(); i += 2) {
    const int64_t width = o.filters()[i], count = o.filters()[i + 1];
    char_convs->push_back(nn::Conv1d(o.char_embedding(), count, width));
    total += count;
  }
  highway = register_module("highway", Highway(HighwayOptions(total, o.highway_layers())));
  projection = register_module("projection", nn::Linear(total, o.projection_dim()));
  forward_layers = register_module("forward_layers", nn::ModuleList());
  backward_layers = register_module("backward_layers", nn::ModuleList());
  for (int64_t l = 0; l < o.num_layers(); ++l)
    for (bool forward : {true, false}) {
      auto layer = LstmWithProjection(LstmWithProjectionOptions(o.projection_dim(), o.projection_dim(), o.cell_size())
                                          .cell_clip(o.cell_clip())
                                          .proj_clip(o.proj_clip())
                                          .go_forward(forward));
      (forward ? forward_layers : backward_layers)->push_back(layer);
    }
  softmax = register_module("softmax", nn::Linear(o.projection_dim(), o.vocab_size()));
  scalar_mix =
      register_module("scalar_mix", ScalarMix(ScalarMixOptions(o.num_layers() + 1).do_layer_norm(o.mix_layer_norm())));
}

namespace {

/// y [B, L, F] -> max over L, [B, F], as ceil(log2 L) elementwise maxima of the two (overlapping when L is odd)
/// halves: a reduction over a short inner dimension is slow in LibTorch (1.7 ms for [160, 256, 16]).
torch::Tensor max_over_windows(torch::Tensor y) {
  while (y.size(1) > 1) {
    const int64_t L = y.size(1), half = (L + 1) / 2;
    y = torch::maximum(y.narrow(1, 0, half), y.narrow(1, L - half, half));
  }
  return y.squeeze(1);
}

}  // namespace

torch::Tensor ElmoImpl::sentence_vectors(const std::vector<std::string>& words) {
  std::vector<std::string> with{kBeginSentence};
  with.insert(with.end(), words.begin(), words.end());
  with.push_back(kEndSentence);
  const auto chars = words_to_chars(with, options.max_word_length()).unsqueeze(0).to(char_embedding->weight.device());
  torch::NoGradGuard no_grad;
  eval();
  auto out = layers(chars);
  out.push_back(scalar_mix->forward(out, word_mask(chars)));
  const auto n = static_cast<int64_t>(words.size());
  return torch::stack(out, 0).select(1, 0).slice(1, 1, n + 1).cpu();
}

torch::Tensor ElmoImpl::word_mask(const torch::Tensor& chars) { return (chars != CharIds::kPad).any(-1); }

torch::Tensor ElmoImpl::token_embedding(const torch::Tensor& chars) {
  const auto& o = options;
  TORCH_CHECK(chars.dim() == 3 && chars.size(2) == o.max_word_length() && chars.scalar_type() == torch::kInt64,
              "elmo expects character ids [N, T, ", o.max_word_length(), "] (int64), got ", chars.sizes(), " ",
              chars.scalar_type());
  const int64_t T = chars.size(1), E = o.char_embedding();
  // [N*T, W, E]: one word per row, so nothing here sees a neighbour. (-1 rather than N: a LibTorch trace keeps
  // the batch size free.)
  const auto e = char_embedding->forward(chars.reshape({-1, o.max_word_length()}));
  std::vector<torch::Tensor> pooled;
  for (const auto& module : *char_convs) {
    auto& conv = *module->as<torch::nn::Conv1d>();
    if (torch::GradMode::is_enabled()) {  // relu(max over time of conv1d(e)), as AllenNLP
      pooled.push_back(torch::relu(std::get<0>(conv.forward(e.transpose(1, 2)).max(-1))));
      continue;
    }
    // Without gradients the same, with the convolution (valid, stride 1) as one product over all windows: the
    // L = W - w + 1 windows of each word as rows [N*T*L, w*E] times the weight as [F, w*E] give the output
    // channels-last, [N*T, L, F], whose max over L is a few elementwise maxima of halves. Measured on the bench's
    // ELMo (batch 8 x 20 words of 20 characters): 11.7 -> 8.2 ms for the token embedding at 1 thread; in
    // training, the backward of the windows and of the maxima made it twice as slow as conv1d's (35 -> 70 ms).
    const int64_t F = conv.weight.size(0), w = conv.weight.size(2), L = o.max_word_length() - w + 1;
    const auto windows = e.unfold(1, w, 1).transpose(2, 3).reshape({-1, w * E});
    const auto weight = conv.weight.permute({0, 2, 1}).reshape({F, w * E});
    pooled.push_back(torch::relu(max_over_windows(torch::addmm(conv.bias, windows, weight.t()).view({-1, L, F}))));
  }
  auto x = projection->forward(highway->forward(torch::cat(pooled, 1)));
  return (x * word_mask(chars).reshape({-1, 1}).to(x.dtype())).view({-1, T, o.projection_dim()});
}

void ElmoImpl::run_lstms(const torch::Tensor& x, const torch::Tensor& mask, std::vector<torch::Tensor>& fwd,
                         std::vector<torch::Tensor>& bwd) {
  const double p = is_training() ? options.dropout() : 0.0;
  for (bool forward : {true, false}) {
    auto& list = forward ? forward_layers : backward_layers;
    auto& out = forward ? fwd : bwd;
    auto input = x;
    for (int64_t l = 0; l < options.num_layers(); ++l) {
      auto h = list[l]->as<LstmWithProjection>()->forward(torch::dropout(input, p, is_training()), mask);
      if (l > 0) h = h + input;  // the residual connection between LSTM layers (none from the token layer)
      out.push_back(h);
      input = h;
    }
  }
}

std::vector<torch::Tensor> ElmoImpl::layers(const torch::Tensor& chars) {
  const auto mask = word_mask(chars);
  const auto x = token_embedding(chars);
  std::vector<torch::Tensor> fwd, bwd;
  run_lstms(x, mask, fwd, bwd);
  std::vector<torch::Tensor> out{torch::cat({x, x}, -1)};
  for (size_t l = 0; l < fwd.size(); ++l) out.push_back(torch::cat({fwd[l], bwd[l]}, -1));
  return out;
}

torch::Tensor ElmoImpl::forward(const torch::Tensor& chars) { return torch::stack(layers(chars), 0); }

torch::Tensor ElmoImpl::mix(const torch::Tensor& chars) { return scalar_mix->forward(layers(chars), word_mask(chars)); }

std::pair<torch::Tensor, torch::Tensor> ElmoImpl::lm_states(const torch::Tensor& chars) {
  const auto mask = word_mask(chars);
  std::vector<torch::Tensor> fwd, bwd;
  run_lstms(token_embedding(chars), mask, fwd, bwd);
  const double p = is_training() ? options.dropout() : 0.0;
  return {torch::dropout(fwd.back(), p, is_training()), torch::dropout(bwd.back(), p, is_training())};
}

torch::Tensor ElmoImpl::word_logits(const torch::Tensor& states) { return softmax->forward(states); }

void ElmoImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "zoo::Elmo(char_embedding=" << o.char_embedding() << ", filters=" << format_list(o.filters())
         << ", highway_layers=" << o.highway_layers() << ", projection_dim=" << o.projection_dim()
         << ", cell_size=" << o.cell_size() << ", num_layers=" << o.num_layers() << ", vocab_size=" << o.vocab_size()
         << ")";
}

ZOO_REGISTER_MODEL(elmo) {
  return ModelSpec<Elmo, ElmoOptions>(
             "elmo", "ELMo biLM: char-CNN + highway, 2-layer forward and backward LSTM LMs, scalar mix")
      .task("bilm")
      .dataset("fortunes")
      .train_defaults({{"epochs", 1},
                       {"optimizer", "adam"},
                       {"lr", 2e-3},
                       {"schedule", "cosine"},
                       {"batch_size", 32},
                       {"eval_batch_size", 128},
                       {"clip_grad", 10.0}})
      .data_options([](const json& o) {
        return json{{"vocab_size", o.at("vocab_size")}, {"max_word_length", o.at("max_word_length")}};
      })
      .ZOO_OPTION(ElmoOptions, char_embedding)
      .ZOO_OPTION(ElmoOptions, filters)
      .ZOO_OPTION(ElmoOptions, highway_layers)
      .ZOO_OPTION(ElmoOptions, max_word_length)
      .ZOO_OPTION(ElmoOptions, projection_dim)
      .ZOO_OPTION(ElmoOptions, cell_size)
      .ZOO_OPTION(ElmoOptions, num_layers)
      .ZOO_OPTION(ElmoOptions, cell_clip)
      .ZOO_OPTION(ElmoOptions, proj_clip)
      .ZOO_OPTION(ElmoOptions, dropout)
      .ZOO_OPTION(ElmoOptions, vocab_size)
      .ZOO_OPTION(ElmoOptions, mix_layer_norm)
      .validate(check);
}

}  // namespace zoo::models
