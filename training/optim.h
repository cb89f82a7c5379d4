// Optimizers and learning-rate schedules by name, as the command line and config.json spell them.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

/// "sgd" (with momentum), "adam" or "adamw" (Adam and AdamW below: LibTorch's, updated in one pass).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<torch::Tensor> parameters,
                                                        double lr, double momentum, double weight_decay);

const std::vector<std::string>& optimizer_names();

/// torch::optim::Adam and AdamW with the same options, state, checkpoints and results to the bit, whose step updates
/// each float32 parameter in one pass over its memory (ops/adam.h: 3.3 -> 1.0 ms per step for 1.65 M parameters)
/// instead of seven tensor operations. A step with any parameter the pass does not take (another type or device, a
/// non-contiguous tensor, a sparse gradient, a CPU without AVX2) is LibTorch's own.
class Adam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

class AdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

/// The optimizer's state of one parameter, or null before its first step. LibTorch 1.13 keys the state by the
/// printed TensorImpl address, later versions by the address itself.
torch::optim::OptimizerParamState* optimizer_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p);

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
