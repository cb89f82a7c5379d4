#include "training/objective.h"

#include "ops/autocast.h"

#include <algorithm>
#include <cmath>
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
  return ops::float32(logits);  // losses and metrics in float32 under mixed precision
}

/// Loss, accuracy and, when thorough, the confusion matrix (rows: true class, columns: predicted) with each
/// class's precision, recall and F1.
class ClassificationEvaluator : public Evaluator {
 public:
  explicit ClassificationEvaluator(bool thorough) : thorough_(thorough) {}
  void add(torch::nn::AnyModule& model, const datasets::Batch& batch) override {
    auto logits = logits_of(model, batch);
    loss_sum_ += torch::nn::functional::cross_entropy(
                     logits, batch.target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                     .item<double>();
    const auto predicted = logits.argmax(1);
    correct_ += predicted.eq(batch.target).sum().item<double>();
    count_ += static_cast<double>(batch.size());
    if (thorough_) {
      const int64_t c = logits.size(1);
      if (!confusion_.defined()) confusion_ = torch::zeros({c * c}, torch::kFloat64);
      confusion_ +=
          torch::bincount((batch.target.cpu() * c + predicted.cpu()).to(torch::kInt64), {}, c * c).to(torch::kFloat64);
    }
  }
  torch::Tensor state() const override {
    auto sums = torch::tensor({loss_sum_, correct_, count_}, torch::kFloat64);
    return confusion_.defined() ? torch::cat({sums, confusion_}) : sums;
  }
  json result(const torch::Tensor& s) const override {
    auto a = s.accessor<double, 1>();
    const double n = a[2];
    json out = {
        {"loss", n > 0 ? a[0] / n : 0.0}, {"accuracy", n > 0 ? a[1] / n : 0.0}, {"items", static_cast<int64_t>(n)}};
    if (s.size(0) > 3) {
      const auto c = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(s.size(0) - 3))));
      const auto m = s.slice(0, 3).view({c, c});
      const auto tp = m.diagonal(), predicted = m.sum(0), actual = m.sum(1);
      json confusion = json::array(), precision = json::array(), recall = json::array(), f1 = json::array();
      for (int64_t i = 0; i < c; ++i) {
        json row = json::array();
        for (int64_t j = 0; j < c; ++j) row.push_back(static_cast<int64_t>(m[i][j].item<double>()));
        confusion.push_back(row);
        const double t = tp[i].item<double>(), p = predicted[i].item<double>(), r = actual[i].item<double>();
        // A class never predicted (or never present) has no precision (recall): null, as sklearn's zero_division.
        const json pi = p > 0 ? json(t / p) : json(nullptr), ri = r > 0 ? json(t / r) : json(nullptr);
        precision.push_back(pi);
        recall.push_back(ri);
        f1.push_back(p + r > 0 ? json(2 * t / (p + r)) : json(nullptr));
      }
      out["confusion"] = confusion;
      out["per_class"] = {{"precision", precision}, {"recall", recall}, {"f1", f1}};
    }
    return out;
  }

 private:
  bool thorough_;
  double loss_sum_ = 0, correct_ = 0, count_ = 0;
  torch::Tensor confusion_;
};

}  // namespace

torch::Tensor ClassificationObjective::loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) {
  auto logits = logits_of(model, batch);
  auto loss = torch::nn::functional::cross_entropy(logits, batch.target);
  terms.emplace_back("accuracy", logits.detach().argmax(1).eq(batch.target).sum().div(batch.size()));
  return loss;
}

std::unique_ptr<Evaluator> ClassificationObjective::evaluator(bool thorough) const {
  return std::make_unique<ClassificationEvaluator>(thorough);
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
