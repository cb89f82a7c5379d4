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
  static const std::vector<std::string> names{"constant", "step", "cosine"};
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

double Schedule::at(int64_t step, int64_t epoch) const {
  double rate = lr;
  if (name == "step") {
    rate = lr * std::pow(gamma, static_cast<double>(epoch / std::max<int64_t>(1, step_size)));
  } else if (name == "cosine") {
    const double progress =
        std::min(1.0, static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, total_steps)));
    rate = lr * 0.5 * (1.0 + std::cos(M_PI * progress));
  } else if (name != "constant") {
    throw std::invalid_argument(unknown_choice("schedule", name, schedule_names()));
  }
  if (warmup > 0 && step < warmup) rate *= static_cast<double>(step + 1) / static_cast<double>(warmup);
  return rate;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace zoo::training
