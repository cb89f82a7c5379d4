#include "training/lm_objective.h"

#include "ops/autocast.h"

#include <cmath>

namespace zoo::training {

models::BidirectionalLanguageModel& BidirectionalLMObjective::language_model(torch::nn::AnyModule& model) {
  auto* lm = dynamic_cast<models::BidirectionalLanguageModel*>(model.ptr().get());
  if (!lm)
    throw std::invalid_argument(
        "the 'bilm' task needs a model that implements "
        "zoo::models::BidirectionalLanguageModel (lm_states, word_logits), such as elmo");
  return *lm;
}

namespace {

void check_batch(const datasets::Batch& batch) {
  TORCH_CHECK(batch.target.dim() == 3 && batch.target.size(1) == 2 && batch.input.dim() == 3 &&
                  batch.target.size(2) == batch.input.size(1),
              "the 'bilm' task expects character ids [N, T, W] and targets [N, 2, T] (a text dataset such as "
              "fortunes), got ",
              batch.input.sizes(), " and ", batch.target.sizes());
}

/// Cross-entropy summed over positions with a target, and their count.
std::pair<torch::Tensor, torch::Tensor> summed_nll(const torch::Tensor& logits, const torch::Tensor& target) {
  const auto flat = ops::float32(logits).reshape({-1, logits.size(-1)});  // float32 under mixed precision
  const auto t = target.reshape({-1});
  auto sum = torch::nn::functional::cross_entropy(
      flat, t, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1).reduction(torch::kSum));
  return {sum, (t >= 0).sum()};
}

}  // namespace

torch::Tensor BidirectionalLMObjective::loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) {
  check_batch(batch);
  auto& lm = language_model(model);
  auto [fwd, bwd] = lm.lm_states(batch.input);
  auto [fsum, fcount] = summed_nll(lm.word_logits(fwd), batch.target.select(1, 0));
  auto [bsum, bcount] = summed_nll(lm.word_logits(bwd), batch.target.select(1, 1));
  const auto f = fsum / fcount.clamp_min(1), b = bsum / bcount.clamp_min(1);
  terms.emplace_back("forward_nll", f.detach());
  terms.emplace_back("backward_nll", b.detach());
  return (f + b) / 2;
}

torch::Tensor BidirectionalLMObjective::nll_sums(torch::nn::AnyModule& model, const datasets::Batch& batch) {
  check_batch(batch);
  auto& lm = language_model(model);
  auto [fwd, bwd] = lm.lm_states(batch.input);
  auto [fsum, fcount] = summed_nll(lm.word_logits(fwd), batch.target.select(1, 0));
  auto [bsum, bcount] = summed_nll(lm.word_logits(bwd), batch.target.select(1, 1));
  return torch::stack({fsum.to(torch::kFloat64), fcount.to(torch::kFloat64), bsum.to(torch::kFloat64),
                       bcount.to(torch::kFloat64)})
      .cpu();
}

namespace {

class LMEvaluator : public Evaluator {
 public:
  void add(torch::nn::AnyModule& model, const datasets::Batch& batch) override {
    sums_ += BidirectionalLMObjective::nll_sums(model, batch);
  }
  torch::Tensor state() const override { return sums_; }
  json result(const torch::Tensor& s) const override {
    auto a = s.accessor<double, 1>();
    const double f = a[1] > 0 ? a[0] / a[1] : 0.0, b = a[3] > 0 ? a[2] / a[3] : 0.0;
    return {{"loss", (f + b) / 2},
            {"forward_perplexity", std::exp(f)},
            {"backward_perplexity", std::exp(b)},
            {"perplexity", (std::exp(f) + std::exp(b)) / 2},
            {"tokens", static_cast<int64_t>(a[1])}};
  }

 private:
  torch::Tensor sums_ = torch::zeros({4}, torch::kFloat64);
};

const detail::ObjectiveRegistrar bilm{"bilm", [](const json&, const json& task_options) -> std::shared_ptr<Objective> {
                                        if (!task_options.empty())
                                          throw std::invalid_argument("task 'bilm' takes no options");
                                        return std::make_shared<BidirectionalLMObjective>();
                                      }};

}  // namespace

std::unique_ptr<Evaluator> BidirectionalLMObjective::evaluator(bool) const { return std::make_unique<LMEvaluator>(); }

}  // namespace zoo::training
