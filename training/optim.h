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

/// Learning rate for a global step (counted from 0 over the whole run):
///   constant: lr
///   step:     lr * gamma^floor(epoch / step_size)                 epoch = (step - start) / steps_per_epoch
///   cosine:   lr * (1 + cos(pi * t / total_steps)) / 2            t = step - start
///   onecycle: PyTorch's OneCycleLR (cos annealing, learning rate only): from lr/25 up to lr over the first
///             pct_start of the steps, then down to lr/25/1e4 at the last step
///   plateau:  lr * scale, where the trainer multiplies scale by gamma when the monitored metric stalls
/// after a linear warm-up over the first `warmup` steps of the cycle. The cycle covers steps
/// [start, start + total_steps); past its end the rate of its last step holds (an extended run; a warm restart
/// starts a new cycle instead).
struct Schedule {
  std::string name = "constant";
  double lr = 1e-3;
  int64_t step_size = 1;    ///< epochs per decay (step)
  double gamma = 0.1;       ///< decay factor (step)
  int64_t warmup = 0;       ///< warm-up steps
  double pct_start = 0.3;   ///< onecycle: fraction of the cycle rising to lr
  int64_t start = 0;        ///< the cycle's first step
  int64_t total_steps = 1;  ///< the cycle's length in steps
  int64_t steps_per_epoch = 1;
  double scale = 1.0;  ///< plateau: the product of its reductions so far

  double at(int64_t step) const;
};

/// Sets every parameter group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace zoo::training
