#include "training/trainer.h"

#include "training/epoch_sums.h"
#include "training/messages.h"
#include "training/progress.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

namespace zoo::training {

namespace {
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
  device_ = parse_device(options_.device());
  apply_threads(options_.threads());
  model_.ptr()->to(device_);
  optimizer_ = make_optimizer(options_.optimizer(), model_.ptr()->parameters(), options_.lr(), options_.momentum(),
                              options_.weight_decay());
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

bool Trainer::stop_agreed() {
  if (world_size_ == 1 || !all_reduce_sum_) return stop_requested();
  // Every rank must leave the loop at the same step, or the others would wait in the next all-reduce.
  auto flag = torch::full({1}, stop_requested() ? 1.0 : 0.0, torch::kFloat32);
  all_reduce_sum_(flag);
  return flag.item<float>() > 0;
}

void Trainer::stop_after_epoch(std::string reason) { stop_reason_ = std::move(reason); }

void Trainer::set_epochs(int64_t epochs) {
  options_.epochs(epochs);
  validate(options_);
}

int64_t Trainer::steps_per_epoch() const {
  const int64_t shard = (data_.train->size() + world_size_ - 1) / world_size_;
  int64_t steps = (shard + options_.batch_size() - 1) / options_.batch_size();
  if (steps > 1 && shard % options_.batch_size() == 1) --steps;  // a last batch of one is dropped (batch norm)
  return steps;
}

Schedule Trainer::schedule() const {
  Schedule s;
  s.name = options_.schedule();
  s.lr = options_.lr();
  s.step_size = options_.step_size();
  s.gamma = options_.gamma();
  s.warmup = options_.warmup();
  s.total_steps = options_.epochs() * steps_per_epoch();
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
  set_learning_rate(*optimizer_, lr);
  optimizer_->zero_grad();
  auto loss = objective_->loss(model_, batch, terms);
  Terms extra;
  each([&](Callback& c) { c.loss_terms(*this, extra); });
  for (auto& [name, value] : extra) {
    terms.emplace_back(name, value.detach());
    loss = loss + value;
  }
  Terms logged;
  each([&](Callback& c) { c.log_terms(*this, logged); });
  for (auto& [name, value] : logged)
    if (value.defined()) terms.emplace_back(name, value.detach());
  const double loss_value = loss.item<double>();
  if (!std::isfinite(loss_value)) throw DivergedError(fmt::format("loss became {}", loss_value));
  loss.backward();
  each([&](Callback& c) { c.after_backward(*this); });
  if (options_.clip_grad() > 0) torch::nn::utils::clip_grad_norm_(model_.ptr()->parameters(), options_.clip_grad());
  optimizer_->step();
  each([&](Callback& c) { c.after_step(*this); });
  return loss_value;
}

json Trainer::train_epoch(int64_t epoch) {
  auto& module = *model_.ptr();
  module.train();
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
  for (int64_t s = first_step; s < steps; ++s) {
    const int64_t lo = s * options_.batch_size();
    const int64_t hi = std::min<int64_t>(lo + options_.batch_size(), order.size(0));
    const auto batch = data_.train->get(order.slice(0, lo, hi)).to(device_);
    const double lr = sched.at(state_.step, epoch - 1);
    Terms terms;
    double loss_value = 0;
    try {
      loss_value = train_step(batch, lr, terms);
    } catch (const DivergedError& e) {
      each([&](Callback& c) { c.on_train_end(*this); });
      throw DivergedError(
          fmt::format("{} at epoch {}, step {} of {}; training stopped", e.what(), epoch, s + 1, steps));
    }
    ++state_.step;

    sums.add(loss_value, static_cast<double>(batch.size()), terms);
    const StepInfo info{epoch, s + 1, steps, static_cast<int64_t>(sums.items()), loss_value, sums.mean_loss(), lr};
    each([&](Callback& c) { c.on_batch_end(*this, info); });
    if (stop_agreed() && s + 1 < steps) {
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
          {"lr", sched.at(std::max<int64_t>(0, state_.step - 1), epoch - 1)},
          {"train", sums.metrics(term_sums)},
          {"train_time_s", seconds},
          {"items_per_s", seconds > 0 ? sums.items() / seconds : 0.0}};  // items of all ranks
}

void Trainer::check_data_fits() {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  const auto batch = data_.train->get(torch::arange(std::min<int64_t>(2, data_.train->size()))).to(device_);
  try {
    Terms terms;
    objective_->loss(model_, batch, terms);
  } catch (const std::exception& e) {
    module.train(was_training);
    std::string what = e.what();
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) what = c10_error->what_without_backtrace();
    throw std::invalid_argument("the model does not fit the data (" + data_.train->describe() + ", items " +
                                c10::str(batch.input.sizes().slice(1)) + "): " + first_line(what) +
                                "; change the model's options (--set) or the dataset");
  }
  module.train(was_training);
}

json Trainer::evaluate(bool thorough) {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  auto evaluator = objective_->evaluator(thorough);
  const int64_t n = data_.test->size();
  // Each rank takes every world_size-th item (no padding, so no item counts twice).
  const auto mine = torch::arange(rank_, n, world_size_, torch::kInt64);
  for (int64_t lo = 0; lo < mine.size(0); lo += options_.eval_batch_size()) {
    const int64_t hi = std::min<int64_t>(lo + options_.eval_batch_size(), mine.size(0));
    evaluator->add(model_, data_.test->get(mine.slice(0, lo, hi)).to(device_));
  }
  auto state = evaluator->state();
  all_reduce_sum(state);
  module.train(was_training);
  return evaluator->result(state);
}

void Trainer::update_best(const json& record) {
  const auto metric = objective_->primary_metric();
  if (!record["test"].contains(metric)) return;
  const double value = record["test"][metric].get<double>();
  const bool better =
      std::isnan(state_.best) || (objective_->higher_is_better() ? value > state_.best : value < state_.best);
  if (better) {
    state_.best = value;
    state_.best_epoch = record["epoch"].get<int64_t>();
  }
}

json Trainer::fit() {
  json last = state_.last;
  stop_reason_.clear();
  each([&](Callback& c) { c.on_fit_start(*this); });
  for (int64_t epoch = state_.epoch + 1; epoch <= options_.epochs(); ++epoch) {
    json record = train_epoch(epoch);
    record["test"] = evaluate();
    each([&](Callback& c) { c.on_evaluation_end(*this, record); });
    state_.epoch = epoch;
    update_best(record);
    state_.last = record;
    each([&](Callback& c) { c.on_epoch_end(*this, record); });
    last = record;
    if (stop_agreed() && epoch < options_.epochs())
      throw Interrupted(fmt::format("stopped after epoch {}", epoch), stop_signal());
    if (!stop_reason_.empty()) break;
  }
  each([&](Callback& c) { c.on_fit_end(*this); });
  return last;
}

std::string format_epoch_summary(const json& record, int64_t epochs) {
  std::string line = fmt::format("epoch {}/{}", record.value("epoch", 0), epochs);
  const json train = record.value("train", json::object()), test = record.value("test", json::object());
  for (const auto& [k, v] : train.items()) {
    if (v.is_array()) {  // e.g. the fraction of tokens per expert, in two decimals
      std::vector<std::string> parts;
      for (const auto& x : v) parts.push_back(fmt::format("{:.2f}", x.get<double>()));
      line += fmt::format("  train {} [{}]", k, fmt::join(parts, " "));
    } else {
      line += fmt::format("  train {} {:.4f}", k, v.get<double>());
    }
  }
  for (const auto& [k, v] : test.items())
    if (v.is_number_float()) line += fmt::format("  test {} {:.4f}", k, v.get<double>());
  line += fmt::format(" ({}, {} items/s)", format_duration(record.value("train_time_s", 0.0)),
                      static_cast<int64_t>(record.value("items_per_s", 0.0)));
  return line;
}

}  // namespace zoo::training
