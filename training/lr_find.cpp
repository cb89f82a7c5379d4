#include "training/lr_find.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace zoo::training {

int64_t steepest_descent(const std::vector<double>& lrs, const std::vector<double>& smoothed, int64_t skip_begin) {
  // Central differences (one-sided at the ends), as numpy.gradient, of smoothed against log(lr).
  const auto n = static_cast<int64_t>(smoothed.size());
  int64_t best = -1;
  double steepest = std::numeric_limits<double>::infinity();
  for (int64_t i = std::max<int64_t>(0, skip_begin); i + 1 < n; ++i) {
    const int64_t lo = i > 0 ? i - 1 : i, hi = i + 1;
    const double slope = (smoothed[hi] - smoothed[lo]) / (std::log(lrs[hi]) - std::log(lrs[lo]));
    if (slope < steepest) {
      steepest = slope;
      best = i;
    }
  }
  return best;
}

LrFindResult lr_range_test(Trainer& trainer, const datasets::Dataset& train, const LrFindOptions& options) {
  TORCH_CHECK(options.start_lr > 0 && options.end_lr > options.start_lr, "lr-find needs 0 < start_lr < end_lr");
  TORCH_CHECK(options.steps >= 2, "lr-find needs at least 2 steps");
  LrFindResult result;
  const int64_t batch = trainer.options().batch_size();
  const auto seed = static_cast<uint64_t>(trainer.options().seed());
  torch::Tensor order;
  int64_t at = 0, epoch = 0;
  double average = 0, lowest = std::numeric_limits<double>::infinity();
  trainer.model().ptr()->train();
  for (int64_t i = 0; i < options.steps; ++i) {
    if (!order.defined() || at + batch > order.size(0)) {
      order = datasets::epoch_order(train.size(), trainer.options().shuffle(), seed, ++epoch);
      at = 0;
    }
    const int64_t end = std::min<int64_t>(at + batch, order.size(0));
    const auto b = train.get(order.slice(0, at, end)).to(trainer.device());
    at = end;
    const double lr = options.start_lr * std::pow(options.end_lr / options.start_lr,
                                                  static_cast<double>(i) / static_cast<double>(options.steps - 1));
    Terms terms;
    double loss = std::numeric_limits<double>::quiet_NaN();
    try {
      loss = trainer.train_step(b, lr, terms);
    } catch (const DivergedError&) {
    }
    if (!std::isfinite(loss)) {
      result.stopped = fmt::format("the loss became {} at lr {:.3g} (step {})", loss, lr, i + 1);
      break;
    }
    average = options.beta * average + (1 - options.beta) * loss;
    const double smoothed = average / (1 - std::pow(options.beta, static_cast<double>(i + 1)));
    result.lrs.push_back(lr);
    result.losses.push_back(loss);
    result.smoothed.push_back(smoothed);
    lowest = std::min(lowest, smoothed);
    if (i > 0 && smoothed > options.diverge * lowest) {
      result.stopped = fmt::format("the smoothed loss {:.4g} passed {} x its minimum {:.4g} at lr {:.3g} (step {})",
                                   smoothed, options.diverge, lowest, lr, i + 1);
      break;
    }
  }
  const int64_t best = steepest_descent(result.lrs, result.smoothed, options.skip_begin);
  if (best < 0)
    throw std::runtime_error(
        fmt::format("lr-find has nothing to suggest: {} after {} step(s); start lower (--start-lr below {:.3g})",
                    result.stopped.empty() ? "too few steps" : result.stopped, result.lrs.size(), options.start_lr));
  result.suggestion = result.lrs[static_cast<size_t>(best)];
  return result;
}

}  // namespace zoo::training
