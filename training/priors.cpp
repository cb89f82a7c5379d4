#include "training/priors.h"

#include "training/optim.h"

#include <fmt/format.h>

#include <fnmatch.h>

#include <cmath>

namespace zoo::training {

const Schema<PriorOptions>& prior_schema() {
  static const Schema<PriorOptions> schema = [] {
    Schema<PriorOptions> s("prior option");
    s.add("kind", ZOO_MEMBER(PriorOptions, kind),
          "Prior on the weights (MAP training): none, gaussian (L2), laplace (L1)")
        .one_of({"none", "gaussian", "laplace"}, "prior")
        .flag("--prior");
    s.add("lambda", ZOO_MEMBER(PriorOptions, lambda),
          "Prior strength: gaussian adds lambda/2 ||w||^2, laplace lambda ||w||_1")
        .at_least(0)
        .check([](const json& v) { return std::isfinite(v.get<double>()) ? "" : "must be finite"; })
        .flag("--lambda");
    s.add_json(
         "layers",
         [](const PriorOptions& p) {
           json layers = json::array();
           for (const auto& [pattern, lambda] : p.layers) layers.push_back({{"pattern", pattern}, {"lambda", lambda}});
           return layers;
         },
         [](PriorOptions& p, const json& v) {
           if (!v.is_array()) throw SettingError("layers", "must be a list of {pattern, lambda}");
           p.layers.clear();
           for (const auto& l : v) {
             if (!l.is_object() || !l.contains("pattern") || !l.contains("lambda"))
               throw SettingError("layers", "must be a list of {pattern, lambda}, got " + l.dump());
             p.layers.emplace_back(strict_get<std::string>(l.at("pattern"), "layers pattern"),
                                   strict_get<double>(l.at("lambda"), "layers lambda"));
           }
         },
         "Per-layer lambda PATTERN=X (glob on parameter names, e.g. 'net.0.*=1e-3'; first match wins)",
         "a list of {pattern, lambda}")
        .check([](const json& layers) -> std::string {
          for (const auto& l : layers)
            if (!(l["lambda"].get<double>() >= 0) || !std::isfinite(l["lambda"].get<double>()))
              return fmt::format("{}: lambda must be a number >= 0", l["pattern"].get<std::string>());
          return {};
        })
        .flag("--prior-layer");
    s.add("decoupled", ZOO_MEMBER(PriorOptions, decoupled),
          "Gaussian prior as decoupled weight decay w <- (1-tau*lambda)w, tau the optimizer's step size")
        .flag("--prior-decoupled");
    s.add("proximal", ZOO_MEMBER(PriorOptions, proximal),
          "Laplace prior as a soft-threshold step by tau*lambda (exact zeros)")
        .flag("--prior-proximal");
    s.add("include_all", ZOO_MEMBER(PriorOptions, include_all),
          "Also put the prior on biases and normalisation parameters")
        .flag("--prior-all-params");
    return s;
  }();
  return schema;
}

json to_json(const PriorOptions& p) { return prior_schema().to_json(p); }

PriorOptions prior_options_from_json(const json& j) {
  if (j.is_null()) return {};
  return prior_schema().from_json(j);
}

void validate(const PriorOptions& p) {
  try {
    prior_schema().validate(p);
  } catch (const SettingError& e) {
    throw SettingError("prior." + e.setting(), e.problem());
  }
  if (p.kind == "none" && (p.lambda > 0 || !p.layers.empty()))
    throw std::invalid_argument(
        "prior.lambda / prior.layers given without a prior; add prior.kind gaussian or laplace");
  if (p.decoupled && p.kind != "gaussian")
    throw std::invalid_argument("prior.decoupled is the decoupled form of the Gaussian prior; use prior.kind gaussian");
  if (p.proximal && p.kind != "laplace")
    throw std::invalid_argument(
        "prior.proximal is the soft-threshold step of the Laplace prior; use prior.kind laplace");
}

std::pair<std::string, double> parse_prior_layer(const std::string& text) {
  const auto eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw std::invalid_argument("--prior-layer expects PATTERN=LAMBDA (e.g. 'net.0.*=1e-3'), got '" + text + "'");
  size_t used = 0;
  double lambda = 0;
  try {
    lambda = std::stod(text.substr(eq + 1), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() - eq - 1)
    throw std::invalid_argument("--prior-layer " + text + ": '" + text.substr(eq + 1) + "' is not a number");
  return {text.substr(0, eq), lambda};
}

std::vector<std::pair<torch::Tensor, double>> prior_parameters(torch::nn::Module& module, const PriorOptions& prior) {
  std::vector<std::pair<torch::Tensor, double>> out;
  if (prior.kind == "none") return out;
  for (const auto& p : module.named_parameters()) {
    if (!prior.include_all && p.value().dim() < 2) continue;
    if (!p.value().requires_grad()) continue;  // frozen (train.freeze): fixed, the prior too
    double lambda = prior.lambda;
    for (const auto& [pattern, l] : prior.layers)
      if (fnmatch(pattern.c_str(), p.key().c_str(), 0) == 0) {
        lambda = l;
        break;
      }
    if (lambda > 0) out.emplace_back(p.value(), lambda);
  }
  return out;
}

torch::Tensor prior_penalty(torch::nn::Module& module, const PriorOptions& prior) {
  torch::Tensor total;
  for (const auto& [w, lambda] : prior_parameters(module, prior)) {
    auto term = prior.kind == "gaussian" ? 0.5 * lambda * w.pow(2).sum() : lambda * w.abs().sum();
    total = total.defined() ? total + term : term;
  }
  if (!total.defined()) {
    auto params = module.parameters();
    return torch::zeros({}, params.empty() ? torch::TensorOptions() : params.front().options());
  }
  return total;
}

namespace {

/// Adam's denominator sqrt(v_hat) + eps for a parameter. `predict`: the one the coming step will use (v and the
/// step count updated with the current gradient), otherwise the one the last step used.
template <typename State, typename Options>
torch::Tensor adam_denominator(torch::optim::Optimizer& optimizer, const torch::Tensor& w, const Options& o,
                               bool predict, bool l2_in_gradient) {
  auto* s = static_cast<State*>(optimizer_state(optimizer, w));
  const double beta2 = std::get<1>(o.betas());
  torch::Tensor v = s ? s->exp_avg_sq() : torch::zeros_like(w);
  int64_t step = s ? s->step() : 0;
  if (predict && w.grad().defined()) {
    auto g = l2_in_gradient && o.weight_decay() != 0 ? w.grad() + o.weight_decay() * w : w.grad();
    v = beta2 * v + (1 - beta2) * g * g;
    ++step;
  }
  if (step == 0) return torch::ones_like(w);  // no gradient seen yet: nothing to scale by
  return (v / (1 - std::pow(beta2, static_cast<double>(step)))).sqrt() + o.eps();
}

}  // namespace

torch::Tensor prior_step_size(torch::optim::Optimizer& optimizer, const torch::Tensor& w, bool predict) {
  const auto& group = optimizer.param_groups().front();
  const double lr = group.options().get_lr();
  // SGD's step is the same for every weight: a 0-d tensor that broadcasts (no weight-sized tensor per step).
  auto ones = [&](double tau) { return torch::scalar_tensor(tau, w.options()); };
  if (dynamic_cast<torch::optim::SGD*>(&optimizer)) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(group.options());
    const double beta = o.momentum(), d = o.dampening();
    if (beta == 0) return ones(lr);
    // Stationary buffer: buf = (1 - d) g / (1 - beta); the step is lr * buf, or lr * (g + beta * buf) (Nesterov).
    return ones(o.nesterov() ? lr * (1 + beta * (1 - d) / (1 - beta)) : lr * (1 - d) / (1 - beta));
  }
  if (dynamic_cast<torch::optim::AdamW*>(&optimizer)) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    return lr / adam_denominator<torch::optim::AdamWParamState>(optimizer, w, o, predict, false);
  }
  if (dynamic_cast<torch::optim::Adam*>(&optimizer)) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    return lr / adam_denominator<torch::optim::AdamParamState>(optimizer, w, o, predict, true);
  }
  throw std::invalid_argument(
      "the decoupled and proximal prior steps know SGD, Adam and AdamW; with another optimizer put the prior in "
      "the loss (drop prior.decoupled / prior.proximal)");
}

namespace {
/// The prior as a part of the loop: its penalty in the loss (or only logged, for the decoupled and proximal
/// forms), the decoupled decay before the optimizer step and the soft threshold after it, each scaled by the
/// optimizer's stationary step size (prior_step_size) so that its fixed point is the MAP estimate.
class PriorCallback : public Callback {
 public:
  explicit PriorCallback(PriorOptions prior) : prior_(std::move(prior)) {}

  void on_fit_start(Trainer& trainer) override {
    if (prior_.decoupled || prior_.proximal)
      (void)prior_step_size(trainer.optimizer(), trainer.model().ptr()->parameters().front(), false);
  }
  void loss_terms(Trainer& trainer, Terms& terms) override {
    auto& m = *trainer.model().ptr();
    if (prior_.decoupled || prior_.proximal) {
      torch::NoGradGuard no_grad;
      terms.emplace_back("prior", prior_penalty(m, prior_));
    } else {
      terms.emplace_back("prior", prior_penalty(m, prior_));
    }
  }
  // Applied before the optimizer step, to the weights the gradient was computed at:
  // (w - tau*lambda*w) - tau*grad = (1 - tau*lambda) w - tau*grad  (tau = lr for plain SGD).
  void after_backward(Trainer& trainer) override {
    if (!prior_.decoupled) return;
    torch::NoGradGuard no_grad;
    for (auto& [w, lambda] : prior_parameters(*trainer.model().ptr(), prior_))
      w.mul_(1.0 - lambda * prior_step_size(trainer.optimizer(), w, true));
  }
  // The proximal step of lambda ||w||_1 with the step size the optimizer just took: w <- S_{tau*lambda}(w).
  void after_step(Trainer& trainer) override {
    if (!prior_.proximal) return;
    torch::NoGradGuard no_grad;
    for (auto& [w, lambda] : prior_parameters(*trainer.model().ptr(), prior_)) {
      auto shrunk = (w.abs() - lambda * prior_step_size(trainer.optimizer(), w, false)).clamp_min(0);
      w.copy_(w.sign() * shrunk);
    }
  }

 private:
  PriorOptions prior_;
};
}  // namespace

void attach_prior(Trainer& trainer, const PriorOptions& prior) {
  validate(prior);
  if (prior.kind == "none") return;
  trainer.add_callback(std::make_shared<PriorCallback>(prior));
}

}  // namespace zoo::training
