// The one training loop of zoo: every model trains through it.
//
//   for epoch: for batch in shard(permutation(seed, epoch)):
//       loss = objective.loss(model, batch) + callbacks' loss terms          <- priors, auxiliary losses
//       backward; callbacks.after_backward; clip; optimizer step; callbacks.after_step
//     evaluate on validation; keep the best weights by the monitored metric; callbacks.on_epoch_end
//     stop early when it has not improved for `early_stop` epochs           <- checkpoint, metrics log, console
//   evaluate the best weights on test, once
//
// It knows no specific model (models are torch::nn::AnyModule, tasks are Objectives) and no files: the run
// directory, the console and every extra step are callbacks (training/callback.h).
#pragma once

#include "datasets/dataset.h"
#include "training/callback.h"
#include "training/device.h"
#include "training/grad_scaler.h"
#include "training/objective.h"
#include "training/optim.h"
#include "training/options.h"
#include "training/precision.h"
#include "training/stop.h"
#include "training/threads.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace zoo::training {

/// One line for an epoch's record: "epoch 2/3  train loss ...  val accuracy ... (18.7s, 3214 items/s)".
std::string format_epoch_summary(const json& record, int64_t epochs);

/// Where the loop is: saved in state.json.
struct TrainState {
  int64_t epoch = 0;              ///< completed epochs
  int64_t step = 0;               ///< optimizer steps taken
  int64_t epoch_step = 0;         ///< steps already taken in epoch `epoch + 1` (an interrupted epoch)
  json partial = json::object();  ///< that epoch's running sums, so its metrics come out as if uninterrupted
  double best = std::numeric_limits<double>::quiet_NaN();  ///< the monitored metric's best value
  int64_t best_epoch = 0;                                  ///< its epoch (0: nothing monitored yet)
  json last = json::object();                              ///< the last epoch's metrics record
  /// Once training has ended: the selected weights on test. {"checkpoint": "best" or "last", "epoch": E,
  /// "monitor": "val.accuracy", "value": v, "test": {...}} (no monitor and value without a validation split).
  json final = json::object();
  /// --save-top-k: the (epoch, monitored value) of the best epochs kept, best first.
  std::vector<std::pair<int64_t, double>> top_k;
  /// The learning-rate schedule's cycle: its first step and length (0: until the planned last epoch). Extending a
  /// run pins the length, so the added epochs go on at the last step's rate; a warm restart starts a new cycle.
  int64_t schedule_start = 0;
  int64_t schedule_steps = 0;
  /// plateau: the product of the reductions so far and the epoch of the last one.
  double lr_scale = 1.0;
  int64_t lr_reduced_epoch = 0;
  /// fp16-mixed: the loss scaler's state (GradScaler::state); empty otherwise.
  json grad_scaler = json::object();
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
  /// names the item shape, so a model that does not fit its data fails before anything is written; likewise a
  /// --monitor metric the task does not report (checked on two validation items).
  void check_data_fits();
  /// Trains epochs state().epoch + 1 .. options().epochs() (fewer when early stopping ends it), then tests the
  /// selected weights once (state().final); returns the last epoch's record with that "test". A stop requested
  /// (request_stop) in the middle of an epoch calls the callbacks' on_interrupt and throws Interrupted.
  json fit();
  /// One optimizer step on `batch` at learning rate `lr`, as the loop takes it: the objective's loss plus the
  /// callbacks' loss terms, backward, after_backward, clipping, the optimizer step, after_step. Returns the loss;
  /// `terms` gets the logged terms. Throws DivergedError ("loss became nan") before backward if the loss is not
  /// finite. `zoo bench` times this function.
  double train_step(const datasets::Batch& batch, double lr, Terms& terms);
  /// The same with gradient accumulation: one optimizer step over several micro-batches, each loss weighted by
  /// its share of the items, so a batch-mean loss gets the gradient of the whole (`--accumulate`). after_backward
  /// (and with it the data-parallel all-reduce) runs once, after the last micro-batch. The loss and terms
  /// returned are the item-weighted means.
  double train_step(const std::vector<datasets::Batch>& micro_batches, double lr, Terms& terms);
  /// Metrics on the test split; `thorough` adds the objective's expensive metrics (see Objective::evaluator).
  json evaluate(bool thorough = false);
  /// Metrics on the validation split (an error when there is none).
  json evaluate_validation(bool thorough = false);
  /// The objective's pictures (Objective::pictures) of the validation split's first items (the test split's
  /// without validation), the model in eval mode; the model is left as it was.
  Pictures pictures();
  /// The metric that picks the best epoch, "val.accuracy" or "train.loss"; empty: nothing is selected (no
  /// validation split and no train.* metric asked for).
  std::string monitor() const;
  /// +1 when the monitored metric is better higher, -1 lower.
  int monitor_direction() const;
  /// Sets the best epoch's weights (module_tensors order: parameters, then buffers): a resumed run's, from its
  /// best checkpoint.
  void set_best_weights(std::vector<torch::Tensor> weights) { best_weights_ = std::move(weights); }
  /// The selected weights on test (TrainState::final): the best epoch's when there are best weights and the
  /// last epoch is not the best, else the current weights. The model is left as it was.
  json test_selected();
  /// Asks fit() to end after the current epoch (e.g. early stopping), without an error.
  void stop_after_epoch(std::string reason);

  torch::nn::AnyModule& model() { return model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const TrainState& state() const { return state_; }
  /// Restores the loop's position (a resumed run).
  void set_state(TrainState state) { state_ = std::move(state); }
  const TrainOptions& options() const { return options_; }
  const torch::Device& device() const { return device_; }
  Precision precision() const { return precision_; }
  /// fp16-mixed: the loss scaler (null in the other precisions).
  GradScaler* grad_scaler() { return scaler_.get(); }
  /// The loss scaler's state from a checkpoint (TrainState::grad_scaler; ignored without a scaler).
  void load_grad_scaler(const json& state);
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  /// Only the number of epochs can change between runs of the loop (a resumed run may go on longer).
  void set_epochs(int64_t epochs);
  /// A resumed run that trains beyond its planned epochs: the schedule's cycle ends where it ended and the added
  /// epochs continue at its last step's rate; with `restart_schedule` they are a new cycle of the schedule (a warm
  /// restart: the rate goes back up to lr, on purpose).
  void extend(int64_t epochs, bool restart_schedule);
  /// --ema: the moving average of the weights (module_tensors order), empty without --ema; set from a checkpoint.
  const std::vector<torch::Tensor>& ema_weights() const { return ema_; }
  void set_ema_weights(std::vector<torch::Tensor> weights) { ema_ = std::move(weights); }
  Objective& objective() { return *objective_; }
  int64_t steps_per_epoch() const;
  /// The learning-rate schedule of the whole run.
  Schedule schedule() const;

  /// Every callback's resumable state by name, and back (see Callback::state).
  json callback_states() const;
  void load_callback_states(const json& states);

 private:
  json train_epoch(int64_t epoch);
  /// module.train(on); training, batch-norm layers whose parameters are all frozen stay in eval (train.freeze_bn).
  void train_mode(bool on);
  json evaluate_on(const datasets::Dataset& data, bool thorough);
  /// Whether early stopping asks to stop now (patience epochs without improvement).
  bool patience_exhausted() const;
  /// Refuses a monitored metric that `metrics` (one split's) does not have, listing those it has.
  void check_monitor(const json& metrics) const;
  /// stop_requested() on any rank (one tiny all-reduce per step when data-parallel).
  bool stop_agreed();
  /// (stop, late) agreed over the ranks: true on every rank when true on any (one tiny all-reduce per step when
  /// data-parallel; the values as given otherwise).
  std::pair<bool, bool> agree(bool stop, bool late);
  /// --checkpoint-minutes have passed since the last checkpoint (on this rank's clock).
  bool checkpoint_late() const;
  void update_best(const json& record);
  /// Keeps state_.top_k; plateau: lowers the rate when the monitored metric has stalled.
  void update_top_k(int64_t epoch, double value);
  void update_plateau();
  /// ema = d * ema + (1 - d) * weights after each optimizer step, d = min(decay, (1 + t) / (10 + t)) for the t-th
  /// update (integer buffers are copied).
  void update_ema();
  /// Runs `f` with `weights` loaded into the model, then puts the model's own back.
  template <typename F>
  auto with_weights(const std::vector<torch::Tensor>& weights, F&& f);
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
  std::vector<torch::Tensor> best_weights_;
  std::vector<torch::Tensor> ema_;
  Precision precision_ = Precision::fp32;
  std::unique_ptr<GradScaler> scaler_;
  std::chrono::steady_clock::time_point last_checkpoint_{};      ///< --checkpoint-minutes: since the last checkpoint
  std::unique_ptr<AutoThreads> auto_threads_;                    ///< --threads 0: the count follows the machine's load
  double grad_norm_ = std::numeric_limits<double>::quiet_NaN();  ///< the last step's (StepInfo::grad_norm)
};

/// The model's parameters then buffers, in registration order (detached; `clone` copies them).
std::vector<torch::Tensor> module_tensors(torch::nn::Module& module, bool clone);
/// Copies `tensors` (from module_tensors of the same architecture) into the module.
void load_module_tensors(torch::nn::Module& module, const std::vector<torch::Tensor>& tensors);

}  // namespace zoo::training
