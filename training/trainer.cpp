#include "training/trainer.h"

#include "training/epoch_sums.h"
#include "training/messages.h"
#include "training/progress.h"
#include "training/runtime.h"

#include <fmt/format.h>

#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace zoo::training {

namespace {

/// The start of a step: every gradient released (PyTorch 2's zero_grad(set_to_none=True)), so that backward hands
/// each parameter its gradient tensor, where LibTorch 1.13's zero_grad() fills the old one with zeros and backward
/// adds into it: a write and a read-add-write of every parameter's size per step (0.6-1.7 ms of the MoE's ~35 ms
/// float32 step, docs/speed.md). Returns the parameters that had a gradient.
std::vector<torch::Tensor> release_gradients(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> had;
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params())
      if (p.grad().defined()) {
        had.push_back(p);
        p.mutable_grad().reset();
      }
  return had;
}

/// After backward: zeros again for those of them that backward gave no gradient (an expert no token chose), so the
/// optimizer steps exactly as after zero_grad() (SGD's weight decay and momentum and Adam's moments go on for them;
/// PyTorch 2 would skip them), and a parameter that never had a gradient stays without one, as before.
void restore_zero_gradients(std::vector<torch::Tensor>& had) {
  for (auto& p : had)
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
}

/// train.freeze: the parameters whose names match a pattern stop requiring gradients (so the optimizer never sees
/// them); a pattern that matches nothing, or patterns that match everything, are refused.
void freeze_parameters(torch::nn::Module& module, const std::vector<std::string>& patterns) {
  if (patterns.empty()) return;
  std::vector<bool> used(patterns.size(), false);
  size_t frozen = 0, total = 0;
  for (auto& p : module.named_parameters()) {
    ++total;
    bool match = false;
    for (size_t i = 0; i < patterns.size(); ++i)
      if (fnmatch(patterns[i].c_str(), p.key().c_str(), 0) == 0) used[i] = match = true;
    if (match) {
      p.value().set_requires_grad(false);
      ++frozen;
    }
  }
  for (size_t i = 0; i < patterns.size(); ++i)
    if (!used[i]) {
      std::string names;
      int n = 0;
      for (const auto& p : module.named_parameters())
        if (n++ < 12) names += (n > 1 ? ", " : "") + p.key();
      if (n > 12) names += fmt::format(" and {} more", n - 12);
      throw SettingError("train.freeze",
                         fmt::format("'{}' matches no parameter; the model's are {}", patterns[i], names));
    }
  if (frozen == total)
    throw SettingError("train.freeze", "the patterns freeze every parameter; nothing would be trained");
}

/// A callback made of one function, for the add_*_hook shorthands.
struct LambdaCallback : Callback {
  std::function<void(Trainer&, Terms&)> loss, log;
  std::function<void(Trainer&)> backward, step;
  std::function<void(const json&)> epoch;
  void loss_terms(Trainer& t, Terms& terms) override {
    if (loss) loss(t, terms);
  }
  void log_terms(Trainer& t, Terms& terms) override {
    if (log) log(t, terms);
  }
  void after_backward(Trainer& t) override {
    if (backward) backward(t);
  }
  void after_step(Trainer& t) override {
    if (step) step(t);
  }
  void on_epoch_end(Trainer&, const json& record) override {
    if (epoch) epoch(record);
  }
};
}  // namespace

Trainer::Trainer(torch::nn::AnyModule model, std::shared_ptr<Objective> objective, datasets::Splits data,
                 TrainOptions options)
    : model_(std::move(model)),
      objective_(std::move(objective)),
      data_(std::move(data)),
      options_(std::move(options)),
      device_(torch::kCPU) {
  validate(options_);
  TORCH_CHECK(data_.train && data_.test, "Trainer needs a train and a test split");
  const auto& m = options_.monitor();
  if (m.rfind("val.", 0) == 0 && !data_.val)
    throw SettingError("train.monitor", m + " needs a validation split; give --val-fraction above 0");
  const std::string watch =
      "needs a metric to watch: a validation split (--val-fraction above 0) or --monitor train.loss";
  if (options_.early_stop() > 0 && monitor().empty()) throw SettingError("train.early_stop", watch);
  if (options_.save_top_k() > 1 && monitor().empty()) throw SettingError("train.save_top_k", watch);
  if (options_.schedule() == "plateau" && monitor().empty()) throw SettingError("train.schedule", "plateau " + watch);
  device_ = parse_device(options_.device());
  precision_ = parse_precision(options_.precision());
  // What no flag can excuse (fp16-mixed off CUDA); an emulated bfloat16 is the caller's to refuse or accept.
  if (auto problem = precision_problem(precision_, device_, /*force=*/true); !problem.empty())
    throw SettingError("train.precision", problem);
  apply_threads(options_.threads());
  if (options_.threads() == 0) auto_threads_ = std::make_unique<AutoThreads>();
  model_.ptr()->to(device_);
  if (reduced_weights(precision_)) model_.ptr()->to(reduced_type(precision_));
  if (precision_ == Precision::fp16_mixed) scaler_ = std::make_unique<GradScaler>();
  if (options_.ema() > 0) ema_ = module_tensors(*model_.ptr(), true);  // the average starts at the initial weights
  freeze_parameters(*model_.ptr(), options_.freeze());
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model_.ptr()->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  optimizer_ =
      make_optimizer(options_.optimizer(), trainable, options_.lr(), options_.momentum(), options_.weight_decay());
}

void Trainer::load_grad_scaler(const json& state) {
  if (scaler_ && !state.empty()) scaler_->load_state(state);
  if (scaler_) state_.grad_scaler = scaler_->state();
}

void Trainer::add_callback(std::shared_ptr<Callback> callback) { callbacks_.push_back(std::move(callback)); }

void Trainer::add_loss_term(std::string name, std::function<torch::Tensor(torch::nn::Module&)> term) {
  auto c = std::make_shared<LambdaCallback>();
  c->loss = [name, term](Trainer& t, Terms& terms) { terms.emplace_back(name, term(*t.model().ptr())); };
  add_callback(c);
}
void Trainer::add_log_terms(std::function<Terms(torch::nn::Module&)> terms) {
  auto c = std::make_shared<LambdaCallback>();
  c->log = [terms](Trainer& t, Terms& out) {
    for (auto& term : terms(*t.model().ptr())) out.push_back(std::move(term));
  };
  add_callback(c);
}
void Trainer::add_gradient_hook(std::function<void(torch::nn::Module&)> hook) {
  auto c = std::make_shared<LambdaCallback>();
  c->backward = [hook](Trainer& t) { hook(*t.model().ptr()); };
  add_callback(c);
}
void Trainer::add_step_hook(std::function<void(torch::nn::Module&)> hook) {
  auto c = std::make_shared<LambdaCallback>();
  c->step = [hook](Trainer& t) { hook(*t.model().ptr()); };
  add_callback(c);
}
void Trainer::add_epoch_hook(std::function<void(const json&)> hook) {
  auto c = std::make_shared<LambdaCallback>();
  c->epoch = std::move(hook);
  add_callback(c);
}

void Trainer::set_parallel(int64_t rank, int64_t world_size, std::function<void(torch::Tensor&)> all_reduce_sum) {
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "bad rank ", rank, " of ", world_size);
  rank_ = rank;
  world_size_ = world_size;
  all_reduce_sum_ = std::move(all_reduce_sum);
}

void Trainer::all_reduce_sum(torch::Tensor& t) const {
  if (world_size_ > 1 && all_reduce_sum_) all_reduce_sum_(t);
}

bool Trainer::stop_agreed() { return agree(stop_requested(), false).first; }

std::pair<bool, bool> Trainer::agree(bool stop, bool late) {
  if (world_size_ == 1 || !all_reduce_sum_) return {stop, late};
  // Every rank must leave the loop (or checkpoint) at the same step, or the others would wait in the next
  // collective: one tiny all-reduce per step carries both flags.
  auto flags = torch::tensor({stop ? 1.0f : 0.0f, late ? 1.0f : 0.0f});
  all_reduce_sum_(flags);
  return {flags[0].item<float>() > 0, flags[1].item<float>() > 0};
}

bool Trainer::checkpoint_late() const {
  const double minutes = options_.checkpoint_minutes();
  return minutes > 0 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() >= minutes * 60;
}

void Trainer::stop_after_epoch(std::string reason) { stop_reason_ = std::move(reason); }

void Trainer::set_epochs(int64_t epochs) {
  options_.epochs(epochs);
  validate(options_);
}

void Trainer::extend(int64_t epochs, bool restart_schedule) {
  const int64_t planned = options_.epochs();
  if (restart_schedule && epochs <= planned)
    throw std::invalid_argument(fmt::format(
        "a schedule restart needs epochs beyond the {} planned: give --epochs above {} with --restart-schedule",
        planned, planned));
  const int64_t per_epoch = steps_per_epoch();
  if (restart_schedule) {
    state_.schedule_start = state_.step;
    state_.schedule_steps = epochs * per_epoch - state_.step;
  } else if (epochs != planned && state_.schedule_steps == 0) {
    state_.schedule_steps = planned * per_epoch - state_.schedule_start;  // the cycle ends where it was planned to
  }
  set_epochs(epochs);
}

int64_t Trainer::steps_per_epoch() const {
  const int64_t shard = (data_.train->size() + world_size_ - 1) / world_size_;
  const int64_t group = options_.batch_size() * options_.accumulate();  // items per optimizer step
  int64_t steps = (shard + group - 1) / group;
  if (steps > 1 && shard % group == 1) --steps;  // a last batch of one is dropped (batch norm)
  return steps;
}

Schedule Trainer::schedule() const {
  Schedule s;
  s.name = options_.schedule();
  s.lr = options_.lr();
  s.step_size = options_.step_size();
  s.gamma = options_.gamma();
  s.warmup = options_.warmup();
  s.pct_start = options_.pct_start();
  s.steps_per_epoch = steps_per_epoch();
  s.start = state_.schedule_start;
  s.total_steps = state_.schedule_steps > 0 ? state_.schedule_steps : options_.epochs() * s.steps_per_epoch - s.start;
  s.scale = state_.lr_scale;
  return s;
}

json Trainer::callback_states() const {
  json states = json::object();
  for (const auto& c : callbacks_)
    if (!c->name().empty()) states[c->name()] = c->state();
  return states;
}

void Trainer::load_callback_states(const json& states) {
  for (const auto& c : callbacks_)
    if (!c->name().empty() && states.contains(c->name())) c->load_state(states.at(c->name()));
}

double Trainer::train_step(const datasets::Batch& batch, double lr, Terms& terms) {
  return train_step(std::vector<datasets::Batch>{batch}, lr, terms);
}

double Trainer::train_step(const std::vector<datasets::Batch>& micro_batches, double lr, Terms& terms) {
  TORCH_CHECK(!micro_batches.empty(), "train_step: no batch");
  set_learning_rate(*optimizer_, lr);
  auto had_gradients = release_gradients(*optimizer_);
  double items = 0;
  for (const auto& b : micro_batches) items += static_cast<double>(b.size());
  double loss_mean = 0;
  for (const auto& batch : micro_batches) {
    const double share = static_cast<double>(batch.size()) / items;
    Terms step_terms;
    torch::Tensor loss;
    {
      auto scope = autocast(precision_, device_);  // the forward only: backward runs outside, as in PyTorch
      loss = objective_->loss(model_, batch, step_terms);
    }
    Terms extra;
    each([&](Callback& c) { c.loss_terms(*this, extra); });
    for (auto& [name, value] : extra) {
      step_terms.emplace_back(name, value.detach());
      loss = loss + value;
    }
    Terms logged;
    each([&](Callback& c) { c.log_terms(*this, logged); });
    for (auto& [name, value] : logged)
      if (value.defined()) step_terms.emplace_back(name, value.detach());
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) throw DivergedError(fmt::format("loss became {}", loss_value));
    auto weighted = micro_batches.size() == 1 ? loss : loss * share;
    (scaler_ ? scaler_->scale(weighted) : weighted).backward();
    loss_mean += share * loss_value;
    // The terms of the step: item-weighted means over the micro-batches (the same names in the same order).
    if (micro_batches.size() == 1) {
      terms = std::move(step_terms);
    } else if (&batch == &micro_batches.front()) {
      for (auto& [name, value] : step_terms) terms.emplace_back(name, value * share);
    } else {
      for (size_t i = 0; i < terms.size() && i < step_terms.size(); ++i)
        terms[i].second = terms[i].second + step_terms[i].second * share;
    }
  }
  restore_zero_gradients(had_gradients);
  each([&](Callback& c) { c.after_backward(*this); });
  // fp16-mixed: true gradients before clipping; a step whose gradients overflowed is skipped.
  const bool overflow = scaler_ && scaler_->unscale(model_.ptr()->parameters());
  grad_norm_ = std::numeric_limits<double>::quiet_NaN();
  if (options_.clip_grad() > 0) {
    grad_norm_ = torch::nn::utils::clip_grad_norm_(model_.ptr()->parameters(), options_.clip_grad());
  } else if (std::any_of(callbacks_.begin(), callbacks_.end(), [](const auto& c) { return c->wants_grad_norm(); })) {
    std::vector<torch::Tensor> norms;
    for (const auto& p : model_.ptr()->parameters())
      if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2.0));
    if (!norms.empty()) grad_norm_ = torch::stack(norms).norm(2.0).item<double>();
  }
  if (!overflow) optimizer_->step();
  if (scaler_) {
    scaler_->update(overflow);
    state_.grad_scaler = scaler_->state();
  }
  each([&](Callback& c) { c.after_step(*this); });
  update_ema();
  return loss_mean;
}

void Trainer::update_ema() {
  if (ema_.empty()) return;
  torch::NoGradGuard no_grad;
  const auto current = module_tensors(*model_.ptr(), false);
  // The warm-up of TensorFlow's ExponentialMovingAverage(num_updates): the average forgets the random initial
  // weights within the first steps instead of carrying them for ~1/(1 - decay) steps.
  const auto t = static_cast<double>(state_.step);  // updates so far
  const double decay = std::min(options_.ema(), (1 + t) / (10 + t));
  for (size_t i = 0; i < ema_.size(); ++i) {
    if (ema_[i].is_floating_point())
      ema_[i].mul_(decay).add_(current[i], 1 - decay);
    else
      ema_[i].copy_(current[i]);  // counters such as batch norm's num_batches_tracked
  }
}

template <typename F>
auto Trainer::with_weights(const std::vector<torch::Tensor>& weights, F&& f) {
  auto& module = *model_.ptr();
  const auto own = module_tensors(module, true);
  load_module_tensors(module, weights);
  try {
    auto result = f();
    load_module_tensors(module, own);
    return result;
  } catch (...) {
    load_module_tensors(module, own);
    throw;
  }
}

void Trainer::train_mode(bool on) {
  auto& module = *model_.ptr();
  module.train(on);
  if (!on || !options_.freeze_bn()) return;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (!m->named_buffers(/*recurse=*/false).contains("running_mean")) continue;
    const auto own = m->parameters(/*recurse=*/false);
    if (!own.empty() && std::none_of(own.begin(), own.end(), [](const torch::Tensor& p) { return p.requires_grad(); }))
      m->eval();
  }
}

json Trainer::train_epoch(int64_t epoch) {
  train_mode(true);
  data_.train->set_epoch(epoch);  // the augmentation of this epoch (the same on resume)
  const auto order = datasets::epoch_order(data_.train->size(), options_.shuffle(),
                                           static_cast<uint64_t>(options_.seed()), epoch, rank_, world_size_);
  const int64_t steps = steps_per_epoch();
  const auto sched = schedule();
  // An interrupted epoch goes on where it stopped, with the sums of the part already done. A resumed
  // data-parallel epoch: the saved sums are already over all ranks, so rank 0 alone carries them on.
  const int64_t first_step = state_.epoch_step;
  EpochSums sums(rank_ == 0 ? state_.partial : json::object());
  const double seconds_before = state_.partial.value("seconds", 0.0);
  std::function<void(torch::Tensor&)> over_ranks;
  if (world_size_ > 1 && all_reduce_sum_) over_ranks = all_reduce_sum_;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  each([&](Callback& c) { c.on_epoch_start(*this, epoch, first_step, steps); });
  last_checkpoint_ = start;  // the last epoch ended with a checkpoint (or the run has just started)
  const int64_t batch_size = options_.batch_size(), group = batch_size * options_.accumulate();
  for (int64_t s = first_step; s < steps; ++s) {
    const auto step_start = std::chrono::steady_clock::now();
    const int64_t lo = s * group;
    const int64_t hi = std::min<int64_t>(lo + group, order.size(0));
    // The step's items in micro-batches of batch_size; a last micro-batch of one joins the one before (batch norm).
    std::vector<datasets::Batch> micro;
    for (int64_t m = lo; m < hi;) {
      int64_t end = std::min<int64_t>(m + batch_size, hi);
      if (hi - end == 1) end = hi;
      micro.push_back(data_.train->get(order.slice(0, m, end)).to(device_));
      m = end;
    }
    int64_t items = 0;
    for (const auto& b : micro) items += b.size();
    const double lr = sched.at(state_.step);
    Terms terms;
    double loss_value = 0;
    try {
      loss_value = train_step(micro, lr, terms);
    } catch (const DivergedError& e) {
      each([&](Callback& c) { c.on_train_end(*this); });
      throw DivergedError(
          fmt::format("{} at epoch {}, step {} of {}; training stopped", e.what(), epoch, s + 1, steps));
    }
    ++state_.step;
    if (const int64_t n = auto_threads_ ? auto_threads_->tick() : 0) {
      fmt::print(
          stderr,
          "{}note: {} thread{} from step {}: other work kept {:.1f} of {} cores busy (--threads N fixes the count)\n",
          Progress::stderr_is_terminal() ? "\r\033[K" : "", n, n > 1 ? "s" : "", state_.step, auto_threads_->busy(),
          auto_threads_->cores());
    }

    sums.add(loss_value, static_cast<double>(items), terms);
    StepInfo info{epoch, s + 1, steps, static_cast<int64_t>(sums.items()), loss_value, sums.mean_loss(), lr};
    info.terms = &terms;
    info.grad_norm = grad_norm_;
    info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    info.step_items = items;
    each([&](Callback& c) { c.on_batch_end(*this, info); });
    const auto [stop, late] = agree(stop_requested(), checkpoint_late());
    const int64_t every = options_.checkpoint_every();
    if (s + 1 < steps && !stop && (late || (every > 0 && state_.step % every == 0))) {
      // The state an interruption here would save (the epoch's position and its sums so far, over all ranks),
      // saved while training goes on: the sums are reduced from a copy, the live ones stay this rank's.
      auto copy = sums;
      const json terms_so_far = copy.reduce(over_ranks);
      const auto saved_step = state_.epoch_step;
      auto saved_partial = state_.partial;
      state_.epoch_step = s + 1;
      state_.partial = copy.partial(elapsed(), terms_so_far);
      each([&](Callback& c) { c.on_checkpoint(*this); });
      state_.epoch_step = saved_step;
      state_.partial = std::move(saved_partial);
      last_checkpoint_ = std::chrono::steady_clock::now();
    }
    if (stop && s + 1 < steps) {
      each([&](Callback& c) { c.on_train_end(*this); });
      state_.epoch_step = s + 1;
      const json terms_so_far = sums.reduce(over_ranks);  // also sums the loss and the items over ranks
      state_.partial = sums.partial(elapsed(), terms_so_far);
      each([&](Callback& c) { c.on_interrupt(*this); });
      throw Interrupted(fmt::format("stopped at epoch {}, step {} of {}", epoch, s + 1, steps), stop_signal());
    }
  }
  each([&](Callback& c) { c.on_train_end(*this); });
  const double seconds = elapsed();
  const json term_sums = sums.reduce(over_ranks);  // also sums the loss and the items over ranks
  state_.epoch_step = 0;
  state_.partial = json::object();
  return {{"epoch", epoch},
          {"step", state_.step},
          {"lr", sched.at(std::max<int64_t>(0, state_.step - 1))},
          {"train", sums.metrics(term_sums)},
          {"train_time_s", seconds},
          {"threads", at::get_num_threads()},
          {"items_per_s", seconds > 0 ? sums.items() / seconds : 0.0},  // items of all ranks
          {"rss_mb", process_memory().rss_mb},
          {"peak_rss_mb", process_memory().peak_mb}};
}

void Trainer::check_data_fits() {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  const auto batch = data_.train->get(torch::arange(std::min<int64_t>(2, data_.train->size()))).to(device_);
  try {
    Terms terms;
    auto scope = autocast(precision_, device_);
    objective_->loss(model_, batch, terms);
  } catch (const std::exception& e) {
    train_mode(was_training);
    std::string what = e.what();
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) what = c10_error->what_without_backtrace();
    throw std::invalid_argument("the model does not fit the data (" + data_.train->describe() + ", items " +
                                c10::str(batch.input.sizes().slice(1)) + "): " + first_line(what) +
                                "; change the model's options (--set) or the dataset");
  }
  train_mode(was_training);
  // A misspelt --monitor fails now, not after the first epoch: the metric names of two validation items.
  if (data_.val && monitor().rfind("val.", 0) == 0) {
    const auto two = data_.val->get(torch::arange(std::min<int64_t>(2, data_.val->size()))).to(device_);
    module.eval();
    auto evaluator = objective_->evaluator(false);
    auto scope = autocast(precision_, device_);
    evaluator->add(model_, two);
    train_mode(was_training);
    check_monitor(evaluator->result(evaluator->state()));
  }
}

json Trainer::evaluate(bool thorough) { return evaluate_on(*data_.test, thorough); }

json Trainer::evaluate_validation(bool thorough) {
  TORCH_CHECK(data_.val, "this run has no validation split");
  return evaluate_on(*data_.val, thorough);
}

Pictures Trainer::pictures() {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  Pictures out;
  try {
    auto scope = autocast(precision_, device_);
    out = objective_->pictures(model_, data_.val ? *data_.val : *data_.test);
  } catch (...) {
    train_mode(was_training);
    throw;
  }
  train_mode(was_training);
  return out;
}

json Trainer::evaluate_on(const datasets::Dataset& data, bool thorough) {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  auto evaluator = objective_->evaluator(thorough);
  auto scope = autocast(precision_, device_);
  const int64_t n = data.size();
  // Each rank takes every world_size-th item (no padding, so no item counts twice).
  const auto mine = torch::arange(rank_, n, world_size_, torch::kInt64);
  for (int64_t lo = 0; lo < mine.size(0); lo += options_.eval_batch_size()) {
    const int64_t hi = std::min<int64_t>(lo + options_.eval_batch_size(), mine.size(0));
    evaluator->add(model_, data.get(mine.slice(0, lo, hi)).to(device_));
  }
  auto state = evaluator->state();
  all_reduce_sum(state);
  train_mode(was_training);
  return evaluator->result(state);
}

std::string Trainer::monitor() const {
  if (!options_.monitor().empty()) return options_.monitor();
  return data_.val ? "val." + objective_->primary_metric() : "";
}

int Trainer::monitor_direction() const {
  const auto m = monitor();
  const auto name = m.substr(m.find('.') + 1);
  if (name == objective_->primary_metric()) return objective_->higher_is_better() ? 1 : -1;
  return metric_direction(name);
}

void Trainer::check_monitor(const json& metrics) const {
  const auto m = monitor();
  const auto name = m.substr(m.find('.') + 1);
  if (metrics.contains(name) && metrics[name].is_number() && monitor_direction() != 0) return;
  std::vector<std::string> valid;
  const auto split = m.substr(0, m.find('.'));
  for (const auto& [k, v] : metrics.items())
    if (v.is_number() && (k == objective_->primary_metric() || metric_direction(k) != 0))
      valid.push_back(split + "." + k);
  throw SettingError("train.monitor",
                     fmt::format("{} is not a metric this task reports{}; valid: {}", m,
                                 metrics.contains(name) ? " with a known direction" : "", fmt::join(valid, ", ")));
}

void Trainer::update_best(const json& record) {
  const auto m = monitor();
  if (m.empty()) return;
  const auto split = m.substr(0, m.find('.'));
  check_monitor(record.value(split, json::object()));
  const double value = record[split][m.substr(m.find('.') + 1)].get<double>();
  const bool better = std::isnan(state_.best) || monitor_direction() * (value - state_.best) > options_.min_delta();
  if (better) {
    state_.best = value;
    state_.best_epoch = record["epoch"].get<int64_t>();
    best_weights_ = module_tensors(*model_.ptr(), true);
  }
  if (options_.save_top_k() > 1) update_top_k(record["epoch"].get<int64_t>(), value);
}

void Trainer::update_top_k(int64_t epoch, double value) {
  auto& top = state_.top_k;
  const int direction = monitor_direction();
  // After every entry at least as good (an earlier epoch wins a tie), then cut to k.
  auto at = top.begin();
  while (at != top.end() && direction * (at->second - value) >= 0) ++at;
  top.insert(at, {epoch, value});
  if (static_cast<int64_t>(top.size()) > options_.save_top_k()) top.resize(options_.save_top_k());
}

void Trainer::update_plateau() {
  if (options_.schedule() != "plateau" || state_.best_epoch == 0) return;
  // As torch.optim.lr_scheduler.ReduceLROnPlateau: more than `patience` epochs without improvement since the best
  // epoch or the last reduction lower the rate by gamma, and the count starts again.
  if (state_.epoch - std::max(state_.best_epoch, state_.lr_reduced_epoch) > options_.plateau_patience()) {
    state_.lr_scale *= options_.gamma();
    state_.lr_reduced_epoch = state_.epoch;
  }
}

bool Trainer::patience_exhausted() const {
  return options_.early_stop() > 0 && state_.best_epoch > 0 &&
         state_.epoch - state_.best_epoch >= options_.early_stop();
}

json Trainer::test_selected() {
  json out = {{"checkpoint", "last"}, {"epoch", state_.epoch}};
  const auto m = monitor();
  if (!m.empty() && state_.best_epoch > 0) {
    out["monitor"] = m;
    out["value"] = state_.best;
  }
  if (!m.empty() && state_.best_epoch > 0 && state_.best_epoch != state_.epoch && !best_weights_.empty()) {
    auto& module = *model_.ptr();
    const auto current = module_tensors(module, true);
    load_module_tensors(module, best_weights_);
    out["checkpoint"] = "best";
    out["epoch"] = state_.best_epoch;
    out["test"] = evaluate();
    load_module_tensors(module, current);
  } else {
    if (!m.empty() && state_.best_epoch == state_.epoch) out["checkpoint"] = "best";  // the last is the best
    out["test"] = evaluate();
  }
  if (!ema_.empty()) out["ema"] = {{"test", with_weights(ema_, [&] { return evaluate(); })}};
  return out;
}

json Trainer::fit() {
  const StopAnswered answered;  // a SIGINT/SIGTERM from here on stops after the step, with a checkpoint
  json last = state_.last;
  stop_reason_.clear();
  each([&](Callback& c) { c.on_fit_start(*this); });
  for (int64_t epoch = state_.epoch + 1; epoch <= options_.epochs(); ++epoch) {
    if (patience_exhausted()) break;  // a resumed run that had already stopped early
    json record = train_epoch(epoch);
    const bool test_now = !data_.val || options_.eval_test_every_epoch();
    if (data_.val) record["val"] = evaluate_on(*data_.val, false);
    if (test_now) record["test"] = evaluate();
    if (!ema_.empty()) {  // the averaged weights on the same splits, as their own record
      record["ema"] = with_weights(ema_, [&] {
        json ema = json::object();
        if (data_.val) ema["val"] = evaluate_on(*data_.val, false);
        if (test_now) ema["test"] = evaluate();
        return ema;
      });
    }
    each([&](Callback& c) { c.on_evaluation_end(*this, record); });
    state_.epoch = epoch;
    update_best(record);
    update_plateau();
    state_.last = record;
    each([&](Callback& c) { c.on_epoch_end(*this, record); });
    last = record;
    if (stop_agreed() && epoch < options_.epochs())
      throw Interrupted(fmt::format("stopped after epoch {}", epoch), stop_signal());
    if (!stop_reason_.empty()) break;
  }
  if (patience_exhausted() && state_.epoch < options_.epochs())
    stop_reason_ = fmt::format("early stopping after epoch {}: {} has not improved for {} epochs", state_.epoch,
                               monitor(), state_.epoch - state_.best_epoch);
  state_.final = test_selected();
  if (!stop_reason_.empty()) state_.final["stopped"] = stop_reason_;
  last["test"] = state_.final["test"];
  each([&](Callback& c) { c.on_fit_end(*this); });
  return last;
}

std::vector<torch::Tensor> module_tensors(torch::nn::Module& module, bool clone) {
  std::vector<torch::Tensor> out;
  for (const auto& p : module.parameters()) out.push_back(clone ? p.detach().clone() : p.detach());
  for (const auto& b : module.buffers()) out.push_back(clone ? b.detach().clone() : b.detach());
  return out;
}

void load_module_tensors(torch::nn::Module& module, const std::vector<torch::Tensor>& tensors) {
  auto mine = module_tensors(module, false);
  TORCH_CHECK(mine.size() == tensors.size(), "load_module_tensors: ", tensors.size(), " tensors for a module with ",
              mine.size());
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < mine.size(); ++i) mine[i].copy_(tensors[i]);
}

std::string format_epoch_summary(const json& record, int64_t epochs) {
  std::string line = fmt::format("epoch {}/{}", record.value("epoch", 0), epochs);
  const json train = record.value("train", json::object());
  for (const auto& [k, v] : train.items()) {
    if (v.is_array()) {  // e.g. the fraction of tokens per expert, in two decimals
      std::vector<std::string> parts;
      for (const auto& x : v) parts.push_back(fmt::format("{:.2f}", x.get<double>()));
      line += fmt::format("  train {} [{}]", k, fmt::join(parts, " "));
    } else {
      line += fmt::format("  train {} {:.4f}", k, v.get<double>());
    }
  }
  const json ema = record.value("ema", json::object());
  for (const auto& [prefix, source] : {std::pair<std::string, const json*>{"", &record}, {"ema ", &ema}}) {
    for (const char* split : {"val", "test"}) {
      const json metrics = source->value(split, json::object());  // a copy: items() of a temporary would dangle
      for (const auto& [k, v] : metrics.items())
        if (v.is_number_float()) line += fmt::format("  {}{} {} {:.4f}", prefix, split, k, v.get<double>());
    }
  }
  line += fmt::format(" ({}, {} items/s)", format_duration(record.value("train_time_s", 0.0)),
                      static_cast<int64_t>(record.value("items_per_s", 0.0)));
  return line;
}

}  // namespace zoo::training
