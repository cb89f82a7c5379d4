#include "models/moe.h"

#include "models/cnn.h"

#include "models/pretty.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/linear_bf16.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>

namespace zoo::models {

namespace {
/// CV(v)^2 = Var(v) / (Mean(v)^2 + 1e-10) with the population variance (divided by the number of experts), as
/// Shazeer's reference code (tensor2tensor, expert_utils.cv_squared); PyTorch ports that call v.var() use the
/// unbiased one, n/(n-1) times larger. 0 for a single expert.
torch::Tensor cv_squared(const torch::Tensor& v) {
  if (v.numel() < 2) return torch::zeros({}, v.options());
  return v.var(/*unbiased=*/false) / (v.mean().pow(2) + 1e-10);
}
}  // namespace

const std::vector<std::string>& moe_gate_names() {
  static const std::vector<std::string> names{"softmax", "topk", "noisy-topk"};
  return names;
}
const std::vector<std::string>& moe_balance_names() {
  static const std::vector<std::string> names{"none", "switch", "cv"};
  return names;
}

const Schema<MixtureOfExpertsOptions>& moe_schema() {
  static const auto schema = [] {
    using O = MixtureOfExpertsOptions;
    Schema<O> s;
    s.add("hidden", ZOO_FIELD(O, hidden), "hidden units of each expert (Linear-ReLU-Linear)").at_least(1);
    s.add("experts", ZOO_FIELD(O, experts), "number of experts").at_least(1);
    s.add("gate", ZOO_FIELD(O, gate), "softmax (dense), topk or noisy-topk").one_of(moe_gate_names(), "gate");
    s.add("k", ZOO_FIELD(O, k), "experts per token (topk, noisy-topk)");
    s.require("k", [](const O& o) {
      return o.gate() == "softmax" || (o.k() >= 1 && o.k() <= o.experts())
                 ? ""
                 : fmt::format("must be in [1, {}] (the number of experts), got {}", o.experts(), o.k());
    });
    s.add("renormalize", ZOO_FIELD(O, renormalize), "softmax over the top k (false: the full softmax's weights)");
    s.add("balance", ZOO_FIELD(O, balance), "balancing loss: none, switch or cv")
        .one_of(moe_balance_names(), "balance");
    s.add("balance_coef", ZOO_FIELD(O, balance_coef), "weight of the balancing loss").at_least(0);
    s.add("capacity_factor", ZOO_FIELD(O, capacity_factor), "training: tokens per expert, x fair share (0: any)")
        .at_least(0);
    s.add("eval_capacity_factor", ZOO_FIELD(O, eval_capacity_factor), "the same in evaluation (0: any)").at_least(0);
    s.add("noise_epsilon", ZOO_FIELD(O, noise_epsilon), "noisy-topk: added to the noise scale").at_least(0);
    s.add("shared_hidden", ZOO_FIELD(O, shared_hidden),
          "hidden units of a shared expert every token passes through (a path for dropped tokens; 0: none)")
        .at_least(0);
    return s;
  }();
  return schema;
}

void ExpertImpl::reset() {
  fc1 = register_module("fc1", torch::nn::Linear(in_, hidden_));
  fc2 = register_module("fc2", torch::nn::Linear(hidden_, out_));
}

torch::Tensor ExpertImpl::forward(const torch::Tensor& x) {
  // ops::linear: fc1(x) and fc2(h), or zoo's kernel for the few rows of an expert under bf16-mixed.
  return ops::linear(torch::relu(ops::linear(x, fc1->weight, fc1->bias)), fc2->weight, fc2->bias);
}

MixtureOfExpertsImpl::MixtureOfExpertsImpl(MixtureOfExpertsOptions options_) : options(std::move(options_)) { reset(); }

void MixtureOfExpertsImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in_features() > 0 && o.out_features() > 0 && o.hidden() > 0,
              "MixtureOfExperts: in_features, out_features and hidden must be positive");
  check_options(moe_schema(), o, "MixtureOfExperts");
  TORCH_CHECK(o.gate_features() >= 0, "MixtureOfExperts: gate_features must be >= 0 (0 = in_features)");
  const int64_t g = gate_features();
  gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(g, o.experts()).bias(false)));
  if (o.gate() == "noisy-topk") {
    // W_noise starts at zero (Shazeer et al.): the noise scale starts at softplus(0) + eps for every expert.
    noise = register_module("noise", torch::nn::Linear(torch::nn::LinearOptions(g, o.experts()).bias(false)));
    torch::NoGradGuard no_grad;
    noise->weight.zero_();
  } else {
    noise = nullptr;
  }
  experts = torch::nn::ModuleList();
  for (int64_t i = 0; i < o.experts(); ++i) experts->push_back(Expert(o.in_features(), o.hidden(), o.out_features()));
  register_module("experts", experts);
  if (o.shared_hidden() > 0)
    shared = register_module("shared", Expert(o.in_features(), o.shared_hidden(), o.out_features()));
  else
    shared = nullptr;
}

int64_t MixtureOfExpertsImpl::capacity(int64_t tokens) const {
  const double factor = is_training() ? options.capacity_factor() : options.eval_capacity_factor();
  if (factor <= 0 || options.gate() == "softmax") return 0;
  const double share = static_cast<double>(tokens * options.k()) / static_cast<double>(options.experts());
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(factor * share)));
}

Routing MixtureOfExpertsImpl::route(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == gate_features(), "MixtureOfExperts.route expects [T, ", gate_features(),
              "], got ", x.sizes());
  const int64_t tokens = x.size(0), n = options.experts();
  Routing r;
  const auto clean = gate(x);
  r.logits = clean;
  torch::Tensor noise_std;
  const bool noisy = options.gate() == "noisy-topk" && is_training();
  if (noisy) {
    noise_std = torch::softplus(noise(x)) + options.noise_epsilon();
    r.logits = clean + torch::randn_like(clean) * noise_std;
  }
  r.probs = torch::softmax(r.logits, -1);
  if (options.gate() == "softmax") {
    r.experts = torch::arange(n, x.options().dtype(torch::kLong)).expand({tokens, n});
    r.gates = r.probs;
    r.load = r.probs.detach().mean(0);
    return r;
  }
  const int64_t k = options.k();
  // softmax over the top k logits = the full softmax renormalised over the top k (KeepTopK sets the rest to -inf).
  auto [top, index] = r.logits.topk(k, -1);
  r.experts = index;
  r.gates = options.renormalize() ? torch::softmax(top, -1) : r.probs.gather(1, index);
  r.load = torch::bincount(index.reshape(-1), {}, n).to(x.dtype()) / static_cast<double>(tokens * k);
  if (noisy && k < n) {
    // P(x, i): the probability that expert i stays in the top k when only its own noise is drawn again, i.e. that
    // clean_i + noise beats the k-th largest of the other noisy logits (Shazeer et al., Appendix A). The thresholds
    // are noisy logits, not probabilities (the bug of davidmrau/mixture-of-experts #31 is avoided).
    const auto top_k1 = std::get<0>(r.logits.topk(k + 1, -1));
    const auto threshold_if_in = top_k1.select(1, k).unsqueeze(1);
    const auto threshold_if_out = top_k1.select(1, k - 1).unsqueeze(1);
    const auto is_in = r.logits > threshold_if_in;
    auto normal_cdf = [](const torch::Tensor& z) { return 0.5 * (1 + torch::erf(z / std::sqrt(2.0))); };
    const auto p = torch::where(is_in, normal_cdf((clean - threshold_if_in) / noise_std),
                                normal_cdf((clean - threshold_if_out) / noise_std));
    r.soft_load = p.sum(0);
  }
  if (const int64_t cap = capacity(tokens); cap > 0) {
    // Priority: every token's first choice before any second choice, each in token order.
    const auto flat = index.t().reshape(-1);
    const auto position = torch::one_hot(flat, n).cumsum(0).gather(1, flat.unsqueeze(1)).squeeze(1) - 1;
    r.kept = (position < cap).view({k, tokens}).t();
    r.dropped = tokens * k - r.kept.sum().item<int64_t>();
  }
  return r;
}

torch::Tensor MixtureOfExpertsImpl::expert(int64_t i, const torch::Tensor& x) {
  return experts[static_cast<size_t>(i)]->as<Expert>()->forward(x);
}

torch::Tensor MixtureOfExpertsImpl::dispatch(const torch::Tensor& x, const Routing& r, bool dense) {
  const int64_t tokens = x.size(0), n = options.experts();
  auto gates = r.kept.defined() ? r.gates * r.kept.to(r.gates.dtype()) : r.gates;
  if (dense) {
    const auto full = torch::zeros_like(r.probs).scatter(1, r.experts, gates);  // zeros_like: traces keep T free
    auto out = full.select(1, 0).unsqueeze(1) * expert(0, x);
    for (int64_t i = 1; i < n; ++i) out = out + full.select(1, i).unsqueeze(1) * expert(i, x);
    return out;
  }
  // Sparse: group the (token, expert, gate) assignments by expert, run each expert once on its rows.
  auto expert_of = r.experts.reshape(-1);
  auto token_of = torch::arange(tokens, r.experts.options()).repeat_interleave(r.experts.size(1));
  auto gate_of = gates.reshape(-1);
  if (r.kept.defined()) {
    const auto keep = r.kept.reshape(-1).nonzero().squeeze(1);
    expert_of = expert_of.index_select(0, keep);
    token_of = token_of.index_select(0, keep);
    gate_of = gate_of.index_select(0, keep);
  }
  const auto order = std::get<1>(torch::sort(expert_of, /*stable=*/true, 0, /*descending=*/false));
  token_of = token_of.index_select(0, order);
  gate_of = gate_of.index_select(0, order);
  const auto counts = torch::bincount(expert_of, {}, n).to(torch::kCPU);
  const auto* count = counts.data_ptr<int64_t>();
  // One gather of every assigned row, one split into the experts' groups, one concatenation of their outputs and
  // one scatter-add back to the tokens: a split's backward is a single concatenation, where a gather per expert
  // would cost a token-sized zero tensor and an index_add in the backward for each expert.
  const auto groups = x.index_select(0, token_of).split_with_sizes(c10::IntArrayRef(count, static_cast<size_t>(n)));
  std::vector<torch::Tensor> outputs;
  outputs.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    if (count[i] > 0) outputs.push_back(expert(i, groups[static_cast<size_t>(i)]));
  if (outputs.empty()) return torch::zeros({tokens, options.out_features()}, x.options());
  const auto weighted = torch::cat(outputs) * gate_of.unsqueeze(1);
  // In the type of the weighted outputs: under autocast (bf16-mixed) they need not be x's.
  auto out = torch::zeros({tokens, options.out_features()}, weighted.options());
  out.index_add_(0, token_of, weighted);  // in place: needs neither operand
  return out;
}

torch::Tensor MixtureOfExpertsImpl::balance_loss(const Routing& r) const {
  const double alpha = options.balance_coef();
  const auto n = static_cast<double>(options.experts());
  if (options.balance() == "switch") return alpha * n * (r.load * r.probs.mean(0)).sum();
  if (options.balance() == "cv") {
    // Importance from the gate values before the capacity mask (Shazeer et al. 2017, section 4: Importance(X) =
    // sum over the batch of G(x)), so that it measures what the gate asks for, not what capacity let through.
    const int64_t tokens = r.gates.size(0);
    const auto importance =
        torch::zeros({tokens, options.experts()}, r.gates.options()).scatter(1, r.experts, r.gates).sum(0);
    const auto load = r.soft_load.defined() ? r.soft_load : r.load * static_cast<double>(r.experts.numel());
    return alpha * (cv_squared(importance) + cv_squared(load));
  }
  return {};
}

torch::Tensor MixtureOfExpertsImpl::forward(const torch::Tensor& x, const torch::Tensor& gate_input) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.in_features(), "MixtureOfExperts expects [..., ",
              options.in_features(), "], got ", x.sizes());
  const auto tokens = x.reshape({-1, options.in_features()});
  if (gate_input.defined()) {
    TORCH_CHECK(gate_input.dim() == x.dim() && gate_input.size(-1) == gate_features() &&
                    gate_input.numel() / gate_features() == tokens.size(0),
                "MixtureOfExperts: gate_input must be [..., ", gate_features(), "] with x's leading sizes, got ",
                gate_input.sizes(), " for x ", x.sizes());
  } else {
    TORCH_CHECK(gate_features() == options.in_features(), "MixtureOfExperts: the gate reads ", gate_features(),
                " features (gate_features), so forward needs a gate_input");
  }
  last_ = route(gate_input.defined() ? gate_input.reshape({-1, gate_features()}) : tokens);
  aux_loss_ = is_training() ? balance_loss(last_) : torch::Tensor();
  // Sparse dispatch sizes its work from the routing (counts read on the CPU), which a LibTorch trace would
  // freeze; a traced forward uses the dense form, the same sums.
  auto out = dispatch(tokens, last_, /*dense=*/options.gate() == "softmax" || torch::jit::tracer::isTracing());
  if (shared) out = out + shared->forward(tokens);
  auto shape = x.sizes().vec();
  shape.back() = options.out_features();
  shape.front() = -1;  // not x.size(0): a LibTorch trace keeps the batch size free
  return out.view(shape);
}

std::vector<std::pair<std::string, torch::Tensor>> MixtureOfExpertsImpl::auxiliary_statistics() const {
  if (!last_.load.defined()) return {};
  const auto load = last_.load.detach();
  const auto assignments = static_cast<double>(std::max<int64_t>(1, last_.experts.numel()));
  return {{"expert_load", load},
          {"load_entropy", -(load * torch::log(load.clamp_min(1e-12))).sum()},
          {"dropped", torch::tensor(static_cast<double>(last_.dropped) / assignments, torch::kFloat64)}};
}

void MixtureOfExpertsImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "zoo::MixtureOfExperts(in_features=" << o.in_features() << ", out_features=" << o.out_features()
         << ", hidden=" << o.hidden() << ", experts=" << o.experts() << ", gate=" << o.gate();
  if (o.gate() != "softmax") stream << ", k=" << o.k();
  stream << ", balance=" << o.balance() << ", capacity_factor=" << o.capacity_factor();
  if (o.shared_hidden() > 0) stream << ", shared_hidden=" << o.shared_hidden();
  stream << ")";
}

// ------------------------------------------------------------------------------------------ the moe classifier

namespace {

const Schema<MoEClassifierOptions>& moe_classifier_schema() {
  static const auto schema = [] {
    using O = MoEClassifierOptions;
    Schema<O> s;
    s.add("in_channels", ZOO_FIELD(O, in_channels), "channels of the input images").at_least(1);
    s.add("image_size", ZOO_FIELD(O, image_size), "height and width of the input images").at_least(1);
    s.add("channels", ZOO_FIELD(O, channels), "conv stem: channels of each conv-BN-ReLU-pool block");
    s.add("num_classes", ZOO_FIELD(O, num_classes), "number of classes (logits)").at_least(1);
    s.add("dropout", ZOO_FIELD(O, dropout), "dropout before the MoE head").at_least(0).check([](const json& v) {
      return v.get<double>() < 1 ? "" : "must be < 1, got " + v.dump();
    });
    s.nest("moe", ZOO_FIELD(O, moe), moe_schema());
    // The flat keys of zoo 0.1 (and the shorter spelling on the command line: --set experts=4).
    for (const auto& setting : moe_schema().settings()) s.alias(setting.name, "moe." + setting.name);
    return s;
  }();
  return schema;
}

}  // namespace

MoEClassifierImpl::MoEClassifierImpl(MoEClassifierOptions options_) : options(std::move(options_)) { reset(); }

void MoEClassifierImpl::reset() {
  namespace nn = torch::nn;
  const auto& o = options;
  check_options(moe_classifier_schema(), o, "moe");
  const auto stem = make_conv_stem(o.in_channels(), o.image_size(), o.channels(), "moe");
  features = stem.features;
  const int64_t in = stem.channels, size = stem.size;
  register_module("features", features);
  dropout = register_module("dropout", Dropout(o.dropout()));
  auto layer = o.moe();
  moe = register_module(
      "moe", MixtureOfExperts(layer.in_features(in * size * size).out_features(o.num_classes()).gate_features(in)));
}

torch::Tensor MoEClassifierImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels() && x.size(2) == options.image_size() &&
                  x.size(3) == options.image_size(),
              "moe expects [N, ", options.in_channels(), ", ", options.image_size(), ", ", options.image_size(),
              "], got ", x.sizes());
  const auto maps = features->forward(x);
  // The gate's channel means in float32 under mixed precision (ops::float32_mean: no float32 copy of the maps, and
  // a broadcast gradient where LibTorch's mean divides a bfloat16 gradient of the maps' size: 0.49 ms of the
  // bf16-mixed forward + backward, docs/precision.md).
  return moe->forward(dropout->forward(maps.flatten(1)), ops::float32_mean(maps, 2));
}

void MoEClassifierImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  const auto& m = o.moe();
  stream << "zoo::MoEClassifier(channels=" << format_list(o.channels()) << ", experts=" << m.experts()
         << ", hidden=" << m.hidden() << ", gate=" << m.gate() << ", k=" << m.k() << ", balance=" << m.balance() << ")";
}

ZOO_REGISTER_MODEL(moe) {
  return ModelSpec<MoEClassifier, MoEClassifierOptions>(
             "moe", "conv stem + Mixture-of-Experts head (top-2 of 8 experts, Switch balancing loss)")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 3}, {"optimizer", "adam"}, {"lr", 2e-3}, {"schedule", "cosine"}, {"batch_size", 64}})
      .options(moe_classifier_schema())
      .validate([](const MoEClassifierOptions& o) { check_conv_stem(o.image_size(), o.channels(), "moe"); });
}

}  // namespace zoo::models
