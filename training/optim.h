// Optimizers and learning-rate schedules by name, as the command line and config.json spell them.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

/// "sgd" (with momentum), "adam" or "adamw".
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<torch::Tensor> parameters,
                                                        double lr, double momentum, double weight_decay);

const std::vector<std::string>& optimizer_names();
const std::vector<std::string>& schedule_names();

/// Learning rate for a global step:
///   constant: lr
///   step:     lr * gamma^floor(epoch / step_size)
///   cosine:   lr * (1 + cos(pi * step / total_steps)) / 2
/// after a linear warm-up over the first `warmup` steps.
struct Schedule {
  std::string name = "constant";
  double lr = 1e-3;
  int64_t step_size = 1;  ///< epochs per decay (step)
  double gamma = 0.1;     ///< decay factor (step)
  int64_t warmup = 0;     ///< warm-up steps
  int64_t total_steps = 1;

  double at(int64_t step, int64_t epoch) const;
};

/// Sets every parameter group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace zoo::training
