#include "training/optim.h"

#include "core/choices.h"

#include <cmath>
#include <stdexcept>

namespace zoo::training {

const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names{"sgd", "adam", "adamw"};
  return names;
}

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names{"constant", "step", "cosine", "onecycle", "plateau"};
  return names;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<torch::Tensor> parameters,
                                                        double lr, double momentum, double weight_decay) {
  if (!(lr > 0)) throw std::invalid_argument("learning rate must be > 0, got " + std::to_string(lr));
  if (name == "sgd")
    return std::make_unique<torch::optim::SGD>(
        parameters, torch::optim::SGDOptions(lr).momentum(momentum).weight_decay(weight_decay));
  if (name == "adam")
    return std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(lr).weight_decay(weight_decay));
  if (name == "adamw")
    return std::make_unique<torch::optim::AdamW>(parameters, torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
  throw std::invalid_argument(unknown_choice("optimizer", name, optimizer_names()));
}

namespace {
/// PyTorch's _annealing_cos: from `from` at pct 0 to `to` at pct 1 along half a cosine.
double anneal_cos(double from, double to, double pct) { return to + (from - to) / 2.0 * (std::cos(M_PI * pct) + 1); }
}  // namespace

double Schedule::at(int64_t step) const {
  const int64_t total = std::max<int64_t>(1, total_steps);
  const int64_t t = std::max<int64_t>(0, step - start);
  const int64_t held = std::min(t, total - 1);  // past the cycle's end, its last step's rate
  double rate = lr;
  if (name == "step") {
    const int64_t epoch = t / std::max<int64_t>(1, steps_per_epoch);
    rate = lr * std::pow(gamma, static_cast<double>(epoch / std::max<int64_t>(1, step_size)));
  } else if (name == "cosine") {
    rate = lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(held) / static_cast<double>(total)));
  } else if (name == "onecycle") {
    // torch.optim.lr_scheduler.OneCycleLR(max_lr=lr, total_steps, pct_start, anneal_strategy="cos",
    // div_factor=25, final_div_factor=1e4, three_phase=False), learning rate only.
    const double initial = lr / 25, final_lr = initial / 1e4;
    const double up_end = pct_start * static_cast<double>(total) - 1, down_end = static_cast<double>(total - 1);
    const auto s = static_cast<double>(held);
    rate = s <= up_end && up_end > 0 ? anneal_cos(initial, lr, s / up_end)
                                     : anneal_cos(lr, final_lr, (s - up_end) / (down_end - up_end));
  } else if (name == "plateau") {
    rate = lr * scale;
  } else if (name != "constant") {
    throw std::invalid_argument(unknown_choice("schedule", name, schedule_names()));
  }
  if (warmup > 0 && t < warmup) rate *= static_cast<double>(t + 1) / static_cast<double>(warmup);
  return rate;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace zoo::training
