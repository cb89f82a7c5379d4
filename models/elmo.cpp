#include "models/elmo.h"

#include "core/chars.h"
#include "models/registry.h"
#include "ops/dropout.h"
#include "ops/lstm.h"

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

torch::Tensor LstmWithProjectionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const auto& o = options;
  TORCH_CHECK(x.dim() == 3 && x.size(2) == o.input_size(), "lstm expects [N, T, ", o.input_size(), "], got ",
              x.sizes());
  TORCH_CHECK(mask.sizes() == x.sizes().slice(0, 2), "lstm: mask must be [N, T], got ", mask.sizes());
  const auto xs = input_linearity->forward(x);  // W_x x_t for all steps in one product: [N, T, 4C]
  const auto w_proj = state_projection ? state_projection->weight : torch::Tensor();
  const ops::LstmClip clip{o.cell_clip(), o.proj_clip()};
  auto* recurrence = o.fused() ? &ops::lstm_recurrence : &ops::lstm_recurrence_reference;
  return recurrence(xs, state_linearity->weight, state_linearity->bias, w_proj, mask, clip, o.go_forward());
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
void check_elmo(const ElmoOptions& o) {
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
  check_elmo(o);
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
      auto h = list[l]->as<LstmWithProjection>()->forward(ops::dropout(input, p, is_training()), mask);
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
  return {ops::dropout(fwd.back(), p, is_training()), ops::dropout(bwd.back(), p, is_training())};
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
      .validate(check_elmo);
}

}  // namespace zoo::models
