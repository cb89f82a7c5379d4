// The one training loop of zoo: every model trains through it.
//
//   for epoch: for batch in shard(permutation(seed, epoch)):
//       loss = objective.loss(model, batch) + sum(extra loss terms)      <- priors plug in here
//       backward; gradient hooks; clip; optimizer step; step hooks   <- all-reduce / proximal steps plug in here
//     evaluate on the test split; checkpoint (atomic); append to metrics.jsonl
//
// It knows no specific model: models are torch::nn::AnyModule, tasks are Objectives.
#pragma once

#include "datasets/dataset.h"
#include "training/objective.h"
#include "training/optim.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace zoo::training {

/// Hyperparameters of the loop; serialised in config.json under "train".
struct TrainOptions {
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, batch_size) = 64;
  TORCH_ARG(int64_t, eval_batch_size) = 1000;
  TORCH_ARG(std::string, optimizer) = "adam";
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, momentum) = 0.9;      ///< sgd only
  TORCH_ARG(double, weight_decay) = 0.0;  ///< the optimizer's own (coupled for sgd/adam, decoupled for adamw)
  TORCH_ARG(std::string, schedule) = "constant";
  TORCH_ARG(int64_t, step_size) = 1;  ///< epochs per decay of the "step" schedule
  TORCH_ARG(double, gamma) = 0.1;     ///< decay factor of the "step" schedule
  TORCH_ARG(int64_t, warmup) = 0;     ///< linear warm-up steps
  TORCH_ARG(double, clip_grad) = 0.0; ///< max global gradient norm; 0 = off
  TORCH_ARG(int64_t, seed) = 0;
  TORCH_ARG(int64_t, threads) = 0;  ///< intra-op threads; 0 = all cores
  TORCH_ARG(std::string, device) = "cpu";
  TORCH_ARG(bool, shuffle) = true;
  TORCH_ARG(bool, progress) = true;  ///< progress bar (terminal) or lines (log) on stderr during an epoch
};

json to_json(const TrainOptions& options);
/// Reads the keys present in `j` over `base`; unknown keys and wrong types are errors.
TrainOptions train_options_from_json(const json& j, TrainOptions base = {});
/// Throws std::invalid_argument naming the bad value and the valid choices.
void validate(const TrainOptions& options);

/// Sets LibTorch's intra-op threads: n > 0, or all cores for 0 (and OpenBLAS, if that is the BLAS, to one
/// thread: LibTorch parallelises around BLAS calls). Returns the number set.
int64_t apply_threads(int64_t n);
/// Parses "cpu" / "cuda" / "cuda:1" with a clear error when the device is unknown or unavailable.
torch::Device parse_device(const std::string& spec);

/// One line for an epoch's record: "epoch 2/3  train loss ...  test accuracy ... (18.7s, 3214 items/s)".
std::string format_epoch_summary(const json& record, int64_t epochs);

/// Asks a running Trainer to stop after its current step: it saves a checkpoint (also in the middle of an
/// epoch, exactly resumable) and throws Interrupted. Async-signal-safe (an atomic store), for SIGINT/SIGTERM
/// handlers; `signal` is reported back through Interrupted::signal.
void request_stop(int signal = 0);
bool stop_requested();
void clear_stop_request();

/// Thrown by Trainer::fit after a requested stop; the checkpoint (if the trainer has a run directory) is written.
class Interrupted : public std::runtime_error {
 public:
  Interrupted(const std::string& what, int signal) : std::runtime_error(what), signal(signal) {}
  int signal;
};

/// Where the loop is: saved in state.json.
struct TrainState {
  int64_t epoch = 0;       ///< completed epochs
  int64_t step = 0;        ///< optimizer steps taken
  int64_t epoch_step = 0;  ///< steps already taken in epoch `epoch + 1` (an interrupted epoch)
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

  /// Checkpoints and metrics.jsonl go to `dir` after each epoch; without one nothing is written.
  void set_run_dir(std::string dir) { run_dir_ = std::move(dir); }
  /// An extra term added to every training loss (e.g. a prior's -log p(w)); logged under `name`.
  void add_loss_term(std::string name, std::function<torch::Tensor(torch::nn::Module&)> term);
  /// Statistics recorded after every step's forward pass (named detached scalars or 1-D tensors, e.g. the
  /// fraction of tokens per expert), averaged over the epoch like the objective's terms and logged under "train".
  void add_log_terms(std::function<Terms(torch::nn::Module&)> terms);
  /// Called after backward and before clipping and the optimizer step (e.g. gradient all-reduce).
  void add_gradient_hook(std::function<void(torch::nn::Module&)> hook);
  /// Called after each optimizer step (e.g. a proximal step).
  void add_step_hook(std::function<void(torch::nn::Module&)> hook);
  /// Called with each epoch's metrics record, after the checkpoint is written.
  void add_epoch_hook(std::function<void(const json& record)> hook);
  /// Data-parallel training: this process is `rank` of `world_size`; `all_reduce_sum` sums a tensor in place
  /// over ranks (used for evaluation sums and to agree on stops). Only rank 0 writes files.
  void set_parallel(int64_t rank, int64_t world_size, std::function<void(torch::Tensor&)> all_reduce_sum);

  /// Runs the objective on two training items (eval mode, no gradient) and turns a failure into an error that
  /// names the item shape, so a model that does not fit its data fails before anything is written.
  void check_data_fits();
  /// Writes a checkpoint of the current state to the run directory (the trainer does so after every epoch and
  /// when stopped; Run writes one before the first epoch, so a run directory always holds one).
  void save_checkpoint();
  /// Restores model, optimizer, loop state and RNG from the checkpoint in `run_dir`.
  void restore(const std::string& run_dir);
  /// Trains epochs state().epoch + 1 .. options().epochs(); returns the last epoch's record.
  json fit();
  /// Metrics on the test split; `thorough` adds the objective's expensive metrics (see Objective::evaluator).
  json evaluate(bool thorough = false);

  torch::nn::AnyModule& model() { return model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const TrainState& state() const { return state_; }
  const TrainOptions& options() const { return options_; }
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  /// Only the number of epochs can change between runs of the loop (a resumed run may go on longer).
  void set_epochs(int64_t epochs);
  Objective& objective() { return *objective_; }
  int64_t steps_per_epoch() const;

 private:
  json train_epoch(int64_t epoch);
  /// stop_requested() on any rank (one tiny all-reduce per step when data-parallel).
  bool stop_agreed();
  void append_metrics(const json& record);
  Schedule schedule() const;

  torch::nn::AnyModule model_;
  std::shared_ptr<Objective> objective_;
  datasets::Splits data_;
  TrainOptions options_;
  torch::Device device_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  TrainState state_;
  std::string run_dir_;
  std::vector<std::pair<std::string, std::function<torch::Tensor(torch::nn::Module&)>>> loss_terms_;
  std::vector<std::function<Terms(torch::nn::Module&)>> log_terms_;
  std::vector<std::function<void(torch::nn::Module&)>> gradient_hooks_;
  std::vector<std::function<void(torch::nn::Module&)>> step_hooks_;
  std::vector<std::function<void(const json&)>> epoch_hooks_;
  int64_t rank_ = 0, world_size_ = 1;
  std::function<void(torch::Tensor&)> all_reduce_sum_;
};

}  // namespace zoo::training
