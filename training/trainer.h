// The one training loop of zoo: every model trains through it.
//
//   for epoch: for batch in shard(permutation(seed, epoch)):
//       loss = objective.loss(model, batch) + callbacks' loss terms          <- priors, auxiliary losses
//       backward; callbacks.after_backward; clip; optimizer step; callbacks.after_step
//     evaluate; callbacks.on_epoch_end                                       <- checkpoint, metrics log, console
//
// It knows no specific model (models are torch::nn::AnyModule, tasks are Objectives) and no files: the run
// directory, the console and every extra step are callbacks (training/callback.h).
#pragma once

#include "datasets/dataset.h"
#include "training/callback.h"
#include "training/device.h"
#include "training/objective.h"
#include "training/optim.h"
#include "training/options.h"
#include "training/stop.h"
#include "training/threads.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace zoo::training {

/// One line for an epoch's record: "epoch 2/3  train loss ...  test accuracy ... (18.7s, 3214 items/s)".
std::string format_epoch_summary(const json& record, int64_t epochs);

/// Where the loop is: saved in state.json.
struct TrainState {
  int64_t epoch = 0;              ///< completed epochs
  int64_t step = 0;               ///< optimizer steps taken
  int64_t epoch_step = 0;         ///< steps already taken in epoch `epoch + 1` (an interrupted epoch)
  json partial = json::object();  ///< that epoch's running sums, so its metrics come out as if uninterrupted
  double best = std::numeric_limits<double>::quiet_NaN();
  int64_t best_epoch = 0;
  json last = json::object();  ///< the last epoch's metrics record
};

/// Raised when the loss stops being finite.
class DivergedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Trainer {
 public:
  Trainer(torch::nn::AnyModule model, std::shared_ptr<Objective> objective, datasets::Splits data,
          TrainOptions options);

  /// Callbacks run in the order they were added.
  void add_callback(std::shared_ptr<Callback> callback);
  const std::vector<std::shared_ptr<Callback>>& callbacks() const { return callbacks_; }

  // One-function callbacks, for tests and small programs.
  /// An extra term added to every training loss (e.g. a prior's -log p(w)); logged under `name`.
  void add_loss_term(std::string name, std::function<torch::Tensor(torch::nn::Module&)> term);
  /// Statistics recorded after every step's forward pass, averaged over the epoch and logged under "train".
  void add_log_terms(std::function<Terms(torch::nn::Module&)> terms);
  /// Called after backward and before clipping and the optimizer step.
  void add_gradient_hook(std::function<void(torch::nn::Module&)> hook);
  /// Called after each optimizer step.
  void add_step_hook(std::function<void(torch::nn::Module&)> hook);
  /// Called with each epoch's metrics record, after the checkpoint is written.
  void add_epoch_hook(std::function<void(const json& record)> hook);

  /// Data-parallel training: this process is `rank` of `world_size`; `all_reduce_sum` sums a tensor in place
  /// over ranks (used for evaluation sums and to agree on stops).
  void set_parallel(int64_t rank, int64_t world_size, std::function<void(torch::Tensor&)> all_reduce_sum);
  /// Sums `t` over ranks in place (nothing to do with one rank).
  void all_reduce_sum(torch::Tensor& t) const;

  /// Runs the objective on two training items (eval mode, no gradient) and turns a failure into an error that
  /// names the item shape, so a model that does not fit its data fails before anything is written.
  void check_data_fits();
  /// Trains epochs state().epoch + 1 .. options().epochs(); returns the last epoch's record. A stop requested
  /// (request_stop) in the middle of an epoch calls the callbacks' on_interrupt and throws Interrupted.
  json fit();
  /// One optimizer step on `batch` at learning rate `lr`, as the loop takes it: the objective's loss plus the
  /// callbacks' loss terms, backward, after_backward, clipping, the optimizer step, after_step. Returns the loss;
  /// `terms` gets the logged terms. Throws DivergedError ("loss became nan") before backward if the loss is not
  /// finite. `zoo bench` times this function.
  double train_step(const datasets::Batch& batch, double lr, Terms& terms);
  /// Metrics on the test split; `thorough` adds the objective's expensive metrics (see Objective::evaluator).
  json evaluate(bool thorough = false);
  /// Asks fit() to end after the current epoch (e.g. early stopping), without an error.
  void stop_after_epoch(std::string reason);

  torch::nn::AnyModule& model() { return model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const TrainState& state() const { return state_; }
  /// Restores the loop's position (a resumed run).
  void set_state(TrainState state) { state_ = std::move(state); }
  const TrainOptions& options() const { return options_; }
  const torch::Device& device() const { return device_; }
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  /// Only the number of epochs can change between runs of the loop (a resumed run may go on longer).
  void set_epochs(int64_t epochs);
  Objective& objective() { return *objective_; }
  int64_t steps_per_epoch() const;
  /// The learning-rate schedule of the whole run.
  Schedule schedule() const;

  /// Every callback's resumable state by name, and back (see Callback::state).
  json callback_states() const;
  void load_callback_states(const json& states);

 private:
  json train_epoch(int64_t epoch);
  /// stop_requested() on any rank (one tiny all-reduce per step when data-parallel).
  bool stop_agreed();
  void update_best(const json& record);
  template <typename F>
  void each(F&& f) {
    for (auto& c : callbacks_) f(*c);
  }

  torch::nn::AnyModule model_;
  std::shared_ptr<Objective> objective_;
  datasets::Splits data_;
  TrainOptions options_;
  torch::Device device_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  TrainState state_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  std::string stop_reason_;
  int64_t rank_ = 0, world_size_ = 1;
  std::function<void(torch::Tensor&)> all_reduce_sum_;
};

}  // namespace zoo::training
