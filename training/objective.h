// Objectives: what a batch's loss and an evaluation's metrics are for one kind of task.
//
// The trainer knows models only as torch::nn::AnyModule and tasks only through this interface, so a new model
// family adds an objective (or reuses one) and never touches the loop.
#pragma once

#include "core/registry.h"
#include "datasets/dataset.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace zoo::training {

using json = nlohmann::json;

/// Named per-batch means worth logging (e.g. "recon", "kl", "accuracy"): 0-dim tensors, detached. The trainer
/// keeps them as tensors and averages them (weighted by batch size) once per epoch, so logging costs no
/// per-step synchronisation.
using Terms = std::vector<std::pair<std::string, torch::Tensor>>;
/// Named pictures a model makes (samples, reconstructions, predicted label maps): [3, H, W] float in [0, 1].
using Pictures = std::vector<std::pair<std::string, torch::Tensor>>;

/// Accumulates evaluation results batch by batch as running sums, so that distributed ranks can all-reduce
/// their sums before the metrics are computed.
class Evaluator {
 public:
  virtual ~Evaluator() = default;
  /// Called with the model in eval mode, under NoGradGuard.
  virtual void add(torch::nn::AnyModule& model, const datasets::Batch& batch) = 0;
  /// Running sums as a 1-D float64 tensor.
  virtual torch::Tensor state() const = 0;
  /// Metrics from (possibly all-reduced) sums.
  virtual json result(const torch::Tensor& state) const = 0;
};

class Objective {
 public:
  virtual ~Objective() = default;
  /// Loss of one training batch: a scalar that requires grad. Parts worth logging go to `terms`.
  virtual torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) = 0;
  /// `thorough`: also the expensive metrics (e.g. IWAE likelihoods), as `zoo eval` reports them; the
  /// per-epoch evaluation during training is not thorough.
  virtual std::unique_ptr<Evaluator> evaluator(bool thorough) const = 0;
  /// The evaluation metric that decides the best epoch.
  virtual std::string primary_metric() const = 0;
  virtual bool higher_is_better() const { return true; }
  /// Pictures of what the model does on a few items of `data` (called in eval mode, without gradient), for
  /// loggers such as TensorBoard; none by default.
  virtual Pictures pictures(torch::nn::AnyModule& /*model*/, const datasets::Dataset& /*data*/) const { return {}; }
};

/// Which way a metric of the built-in evaluators improves: 1 higher is better (accuracy, miou, elbo, ...), -1 lower
/// (loss, perplexity, kl, ...), 0 unknown (counts such as items, or a plugin's own metric: then only the task's
/// primary metric can be monitored, with Objective::higher_is_better).
int metric_direction(const std::string& metric);

/// A task by name ("classify", ...): the tag a model's registry entry names. `make` builds the objective from
/// the model's complete options (a task may read some, e.g. "beta") and the run's task options.
struct TaskEntry {
  static constexpr const char* registry_kind = "task";
  static constexpr const char* registry_hint = "";
  using Factory = std::function<std::shared_ptr<Objective>(const json& model_options, const json& task_options)>;
  std::string name;
  Factory make;
};
using ObjectiveRegistry = ::zoo::Registry<TaskEntry>;

/// The objective of `task` (an error lists the registered tasks).
std::shared_ptr<Objective> make_objective(const std::string& task, const json& model_options = json::object(),
                                          const json& task_options = json::object());

namespace detail {
struct ObjectiveRegistrar {
  ObjectiveRegistrar(const std::string& task, TaskEntry::Factory f) {
    ObjectiveRegistry::instance().add({task, std::move(f)});
  }
};
}  // namespace detail

/// Classification: cross-entropy on logits [N, C] against int64 labels [N]; metrics loss and accuracy.
class ClassificationObjective : public Objective {
 public:
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) override;
  std::unique_ptr<Evaluator> evaluator(bool thorough) const override;
  std::string primary_metric() const override { return "accuracy"; }
};

}  // namespace zoo::training
