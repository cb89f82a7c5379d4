// Bayesian view of regularisation: MAP training minimises  loss - log p(w).
//
//   Gaussian prior  p(w) = N(0, 1/lambda)          -log p(w) = (lambda / 2) ||w||^2 + const   (L2, "ridge")
//   Laplace prior   p(w) = Laplace(0, 1/lambda)    -log p(w) = lambda ||w||_1 + const        (L1, "lasso")
//
// The prior covers weights only: parameters with at least 2 dimensions (Linear, Conv, Embedding weights).
// Biases and normalisation parameters (1-D) shift and scale outputs rather than shape them, and are excluded
// unless `include_all` is set. Each layer may have its own lambda, chosen by a glob pattern on the parameter
// name (first match wins; lambda 0 excludes).
//
// Two alternative updates with the same fixed points as the penalty in the loss:
//   decoupled (Gaussian):  w <- (1 - tau * lambda) w - tau * grad    ("weight decay"; for plain SGD this is the
//                          same step as the penalty's gradient lambda * w)
//   proximal (Laplace):    after the step, w <- sign(w) max(|w| - tau * lambda, 0)   (soft threshold: exact zeros)
// where tau is the step the optimizer takes along a constant gradient g (prior_step_size): lr for plain SGD,
// lr / (1 - momentum) for SGD with momentum (its buffer grows to g / (1 - momentum)), lr / (sqrt(v_hat) + eps) per
// coordinate for Adam and AdamW, as in proximal Adam (Yun, Lozano, Yang, "Adaptive proximal gradient methods for
// structured neural networks", NeurIPS 2021). With tau = lr under momentum 0.9 the fixed point would be that of
// loss + 0.1 * lambda * ||w||_1. (Decoupled decay by lr alone, AdamW's, has no prior behind it under Adam:
// its fixed point is lambda (sqrt(v) + eps) w = -g; zoo's --weight-decay is that one.)
#pragma once

#include "core/schema.h"
#include "training/trainer.h"

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace zoo::training {

struct PriorOptions {
  std::string kind = "none";  ///< none | gaussian | laplace
  double lambda = 0.0;
  std::vector<std::pair<std::string, double>> layers;  ///< (glob pattern on the parameter name, lambda)
  bool decoupled = false;    ///< gaussian only: decoupled weight decay instead of the penalty's gradient
  bool proximal = false;     ///< laplace only: soft-threshold step instead of the (sub)gradient
  bool include_all = false;  ///< also biases and normalisation parameters
};

/// Every setting of PriorOptions (config.json's "prior"; flags --prior, --lambda, --prior-layer, ...).
const Schema<PriorOptions>& prior_schema();
json to_json(const PriorOptions& prior);
PriorOptions prior_options_from_json(const json& j);
/// Checks kind, lambdas and the decoupled/proximal combinations; throws std::invalid_argument.
void validate(const PriorOptions& prior);
/// "PATTERN=X" -> (PATTERN, X), for --prior-layer.
std::pair<std::string, double> parse_prior_layer(const std::string& text);

/// The parameters a prior covers, each with its lambda (0-lambda parameters are left out).
std::vector<std::pair<torch::Tensor, double>> prior_parameters(torch::nn::Module& module, const PriorOptions& prior);

/// -log p(w) up to a constant: sum over covered parameters of (lambda/2)||w||^2 or lambda||w||_1.
torch::Tensor prior_penalty(torch::nn::Module& module, const PriorOptions& prior);

/// The step size tau (0-d for SGD, per coordinate of w for Adam and AdamW) with which `optimizer` moves w by -tau * g
/// for a constant gradient g: the scale under which a decoupled or proximal prior step has the MAP fixed point.
/// `predict`: for the coming step (Adam's second moment updated with w's current gradient), else for the step just
/// taken. Throws std::invalid_argument for an optimizer other than SGD, Adam and AdamW.
torch::Tensor prior_step_size(torch::optim::Optimizer& optimizer, const torch::Tensor& w, bool predict);

/// Installs the prior on a trainer: the penalty is added to the loss (and logged as "prior"); with `decoupled`
/// or `proximal` it is only logged, and the decay or soft threshold is applied around the optimizer step with
/// the optimizer's current learning rate.
void attach_prior(Trainer& trainer, const PriorOptions& prior);

}  // namespace zoo::training
