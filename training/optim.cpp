#include "training/optim.h"

#include "core/choices.h"
#include "ops/adam.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <vector>

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
    return std::make_unique<Adam>(parameters, torch::optim::AdamOptions(lr).weight_decay(weight_decay));
  if (name == "adamw")
    return std::make_unique<AdamW>(parameters, torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
  throw std::invalid_argument(unknown_choice("optimizer", name, optimizer_names()));
}

namespace {

/// The key of a parameter's state in the optimizer's map (see optimizer_state).
template <typename Map>
typename Map::key_type state_key(const Map&, const torch::Tensor& p) {
  if constexpr (std::is_same_v<typename Map::key_type, std::string>) {
    std::ostringstream s;
    s << p.unsafeGetTensorImpl();
    return s.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

/// LibTorch's Adam/AdamW step (1.13, torch/csrc/api/src/optim/adam.cpp and adamw.cpp) with each parameter's update
/// as one ops::adam_update: the same state created the same way, the same step count, scalars and roundings. Returns
/// false, having changed nothing, when some parameter with a gradient does not fit it; the caller then runs
/// LibTorch's step.
template <typename State, typename Options>
bool one_pass_step(torch::optim::Optimizer& optimizer, bool decoupled) {
  auto scalars = [&](const Options& o, int64_t step) {
    return ops::AdamScalars::make(o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.weight_decay(),
                                  decoupled, o.amsgrad(), step);
  };
  // Each parameter's state looked up once (a 1.13 key is the printed address): null before its first step.
  std::vector<State*> found;
  for (auto& group : optimizer.param_groups()) {
    const auto& o = static_cast<const Options&>(group.options());
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto* s = static_cast<State*>(optimizer_state(optimizer, p));
      found.push_back(s);
      // Before the first step the state is zeros_like(p): it fits where p does.
      const auto& m = s ? s->exp_avg() : p;
      const auto& v = s ? s->exp_avg_sq() : p;
      const auto& vmax = s && o.amsgrad() ? s->max_exp_avg_sq() : p;
      if (!ops::adam_update_fits(p, p.grad(), m, v, vmax, scalars(o, 1))) return false;
    }
  }
  auto& states = optimizer.state();
  size_t next = 0;
  for (auto& group : optimizer.param_groups()) {
    const auto& o = static_cast<const Options&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto* s = found[next++];
      if (s == nullptr) {
        auto state = std::make_unique<State>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (o.amsgrad()) state->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        s = state.get();
        states[state_key(states, p)] = std::move(state);
      }
      s->step(s->step() + 1);
      torch::Tensor vmax = o.amsgrad() ? s->max_exp_avg_sq() : torch::Tensor();
      ops::adam_update(p, p.grad(), s->exp_avg(), s->exp_avg_sq(), vmax, scalars(o, s->step()));
      // As the in-place operations it replaces: a graph that saved p sees that it changed.
      for (auto* t : {&p, &s->exp_avg(), &s->exp_avg_sq()}) t->unsafeGetTensorImpl()->bump_version();
      if (vmax.defined()) vmax.unsafeGetTensorImpl()->bump_version();
    }
  }
  return true;
}

/// Optimizer::step's frame: the closure's loss (computed with gradients on), then the update without them.
template <typename Base, typename State, typename Options>
torch::Tensor step_in_one_pass(Base& optimizer, torch::optim::Optimizer::LossClosure closure, bool decoupled) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (!one_pass_step<State, Options>(optimizer, decoupled)) optimizer.Base::step(nullptr);
  return loss;
}

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

torch::optim::OptimizerParamState* optimizer_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  auto& states = optimizer.state();
  auto it = states.find(state_key(states, p));
  return it == states.end() ? nullptr : it->second.get();
}

torch::Tensor Adam::step(LossClosure closure) {
  return step_in_one_pass<torch::optim::Adam, torch::optim::AdamParamState, torch::optim::AdamOptions>(
      *this, std::move(closure), false);
}

torch::Tensor AdamW::step(LossClosure closure) {
  return step_in_one_pass<torch::optim::AdamW, torch::optim::AdamWParamState, torch::optim::AdamWOptions>(
      *this, std::move(closure), true);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace zoo::training
