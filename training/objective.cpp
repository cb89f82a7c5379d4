#include "training/objective.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace zoo::training {

std::shared_ptr<Objective> make_objective(const std::string& task, const json& model_options,
                                          const json& task_options) {
  return ObjectiveRegistry::instance().at(task).make(model_options, task_options);
}

int metric_direction(const std::string& metric) {
  static const std::vector<std::string> higher = {"accuracy", "pixel_accuracy", "miou", "boundary_iou",
                                                  "dice",     "elbo",           "iwae"};
  static const std::vector<std::string> lower = {
      "loss", "perplexity", "forward_perplexity", "backward_perplexity", "kl", "recon", "nll", "bpd"};
  if (std::find(higher.begin(), higher.end(), metric) != higher.end()) return 1;
  if (std::find(lower.begin(), lower.end(), metric) != lower.end()) return -1;
  return 0;
}

namespace {

torch::Tensor logits_of(torch::nn::AnyModule& model, const datasets::Batch& batch) {
  auto logits = model.forward(batch.input);
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == batch.size(), "a classifier must return logits [N, classes], got ",
              logits.sizes());
  return logits;
}

class ClassificationEvaluator : public Evaluator {
 public:
  void add(torch::nn::AnyModule& model, const datasets::Batch& batch) override {
    auto logits = logits_of(model, batch);
    loss_sum_ += torch::nn::functional::cross_entropy(
                     logits, batch.target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                     .item<double>();
    correct_ += logits.argmax(1).eq(batch.target).sum().item<double>();
    count_ += static_cast<double>(batch.size());
  }
  torch::Tensor state() const override { return torch::tensor({loss_sum_, correct_, count_}, torch::kFloat64); }
  json result(const torch::Tensor& s) const override {
    auto a = s.accessor<double, 1>();
    const double n = a[2];
    return {{"loss", n > 0 ? a[0] / n : 0.0}, {"accuracy", n > 0 ? a[1] / n : 0.0}, {"items", static_cast<int64_t>(n)}};
  }

 private:
  double loss_sum_ = 0, correct_ = 0, count_ = 0;
};

}  // namespace

torch::Tensor ClassificationObjective::loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) {
  auto logits = logits_of(model, batch);
  auto loss = torch::nn::functional::cross_entropy(logits, batch.target);
  terms.emplace_back("accuracy", logits.detach().argmax(1).eq(batch.target).sum().div(batch.size()));
  return loss;
}

std::unique_ptr<Evaluator> ClassificationObjective::evaluator(bool) const {
  return std::make_unique<ClassificationEvaluator>();
}

namespace {
const detail::ObjectiveRegistrar classify{"classify",
                                          [](const json&, const json& task_options) -> std::shared_ptr<Objective> {
                                            if (!task_options.empty())
                                              throw std::invalid_argument("task 'classify' takes no options");
                                            return std::make_shared<ClassificationObjective>();
                                          }};
}  // namespace

}  // namespace zoo::training
