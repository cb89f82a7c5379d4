#include "training/priors.h"

#include "models/registry.h"

#include <fnmatch.h>

#include <cmath>

namespace zoo::training {

json to_json(const PriorOptions& p) {
  json layers = json::array();
  for (const auto& [pattern, lambda] : p.layers) layers.push_back({{"pattern", pattern}, {"lambda", lambda}});
  return {{"kind", p.kind},           {"lambda", p.lambda},     {"layers", layers},
          {"decoupled", p.decoupled}, {"proximal", p.proximal}, {"include_all", p.include_all}};
}

PriorOptions prior_options_from_json(const json& j) {
  using models::strict_get;
  PriorOptions p;
  if (j.is_null()) return p;
  if (!j.is_object()) throw std::invalid_argument("prior options must be a JSON object, got " + j.dump());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& k = it.key();
    const auto what = "prior option '" + k + "'";
    if (k == "kind") p.kind = strict_get<std::string>(it.value(), what);
    else if (k == "lambda") p.lambda = strict_get<double>(it.value(), what);
    else if (k == "decoupled") p.decoupled = strict_get<bool>(it.value(), what);
    else if (k == "proximal") p.proximal = strict_get<bool>(it.value(), what);
    else if (k == "include_all") p.include_all = strict_get<bool>(it.value(), what);
    else if (k == "layers") {
      if (!it.value().is_array()) throw std::invalid_argument(what + " must be a list");
      for (const auto& l : it.value())
        p.layers.emplace_back(strict_get<std::string>(l.at("pattern"), what + " pattern"),
                              strict_get<double>(l.at("lambda"), what + " lambda"));
    } else {
      throw std::invalid_argument("unknown prior option '" + k +
                                  "'; valid: kind, lambda, layers, decoupled, proximal, include_all");
    }
  }
  return p;
}

void validate(const PriorOptions& p) {
  if (p.kind != "none" && p.kind != "gaussian" && p.kind != "laplace")
    throw std::invalid_argument("unknown prior '" + p.kind + "'; valid priors: none, gaussian, laplace");
  auto check_lambda = [](double l, const std::string& what) {
    if (!(l >= 0) || !std::isfinite(l)) throw std::invalid_argument(what + " must be a number >= 0");
  };
  check_lambda(p.lambda, "--lambda");
  for (const auto& [pattern, l] : p.layers) check_lambda(l, "--prior-layer " + pattern);
  if (p.kind == "none" && (p.lambda > 0 || !p.layers.empty()))
    throw std::invalid_argument("--lambda / --prior-layer given without a prior; add --prior gaussian or laplace");
  if (p.decoupled && p.kind != "gaussian")
    throw std::invalid_argument("--prior-decoupled is the decoupled form of the Gaussian prior; use --prior gaussian");
  if (p.proximal && p.kind != "laplace")
    throw std::invalid_argument("--prior-proximal is the soft-threshold step of the Laplace prior; use --prior laplace");
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

void attach_prior(Trainer& trainer, const PriorOptions& prior) {
  validate(prior);
  if (prior.kind == "none") return;
  const bool only_log = prior.decoupled || prior.proximal;
  trainer.add_loss_term("prior", [prior, only_log](torch::nn::Module& m) {
    if (!only_log) return prior_penalty(m, prior);
    torch::NoGradGuard no_grad;
    return prior_penalty(m, prior);
  });
  auto* t = &trainer;
  auto lr = [t] { return t->optimizer().param_groups().front().options().get_lr(); };
  if (prior.decoupled) {
    // Applied before the optimizer step, to the weights the gradient was computed at:
    // (w - eta*lambda*w) - eta*grad = (1 - eta*lambda) w - eta*grad.
    trainer.add_gradient_hook([prior, lr](torch::nn::Module& m) {
      torch::NoGradGuard no_grad;
      const double eta = lr();
      for (auto& [w, lambda] : prior_parameters(m, prior)) w.mul_(1.0 - eta * lambda);
    });
  }
  if (prior.proximal) {
    trainer.add_step_hook([prior, lr](torch::nn::Module& m) {
      torch::NoGradGuard no_grad;
      const double eta = lr();
      for (auto& [w, lambda] : prior_parameters(m, prior)) {
        auto shrunk = (w.abs() - eta * lambda).clamp_min(0);
        w.copy_(w.sign() * shrunk);
      }
    });
  }
}

}  // namespace zoo::training
