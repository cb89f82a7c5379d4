// Callbacks: what the training loop does besides training, called at fixed points of Trainer::fit.
//
//   fit start
//   for each epoch:
//     epoch_start
//     for each step:  forward -> loss_terms / log_terms -> backward -> after_backward -> clip -> optimizer step
//                     -> after_step -> batch_end
//     (a requested stop in the middle of an epoch: train_end, interrupt, then Interrupted is thrown)
//     train_end -> evaluation -> evaluation_end -> epoch_end
//   fit end
//
// Checkpoints, the metrics log, the console, the progress bar, priors' extra steps, auxiliary losses and the
// data-parallel gradient all-reduce are callbacks; a user's own is a few lines (docs/extending.md). A callback
// with state of its own returns it from state() and gets it back from load_state() when a run resumes, so a
// resumed run behaves as an uninterrupted one.
#pragma once

#include "core/registry.h"
#include "training/objective.h"

#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include <functional>
#include <limits>
#include <memory>
#include <string>

namespace zoo::training {

class Trainer;

/// Where the loop is after a step.
struct StepInfo {
  int64_t epoch = 0;     ///< 1-based
  int64_t step = 0;      ///< 1-based, within the epoch
  int64_t steps = 0;     ///< steps in this epoch
  int64_t items = 0;     ///< training items so far this epoch (this rank's, plus the saved part of a resumed epoch)
  double loss = 0;       ///< this step's loss
  double mean_loss = 0;  ///< the epoch's mean loss so far
  double lr = 0;
  const Terms* terms = nullptr;  ///< this step's logged terms (the objective's and the callbacks'), item-weighted
  /// The global gradient norm before clipping: computed when clipping or when a callback wants_grad_norm(), else NaN.
  double grad_norm = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0;      ///< wall time of this step (data, forward, backward, optimizer step)
  int64_t step_items = 0;  ///< items of this step (this rank's)
};

class Callback {
 public:
  virtual ~Callback() = default;
  /// Its key in state.json's "callbacks" object; empty: it keeps no state.
  virtual std::string name() const { return {}; }
  /// Whether it reads StepInfo::grad_norm (the trainer computes the norm only then, or when clipping).
  virtual bool wants_grad_norm() const { return false; }

  virtual void on_fit_start(Trainer&) {}
  /// Before an epoch's first step (`first_step` > 0 when an interrupted epoch goes on).
  virtual void on_epoch_start(Trainer&, int64_t /*epoch*/, int64_t /*first_step*/, int64_t /*steps*/) {}
  /// Terms added to this step's loss and logged by name (e.g. a prior's -log p(w)).
  virtual void loss_terms(Trainer&, Terms&) {}
  /// Statistics of this step's forward pass logged by name, not added to the loss.
  virtual void log_terms(Trainer&, Terms&) {}
  /// After backward, before clipping and the optimizer step (e.g. the gradient all-reduce).
  virtual void after_backward(Trainer&) {}
  /// After the optimizer step (e.g. a proximal step).
  virtual void after_step(Trainer&) {}
  virtual void on_batch_end(Trainer&, const StepInfo&) {}
  /// After an epoch's last step, before its evaluation; also before the loop leaves an epoch early (a stop, a
  /// diverged loss).
  virtual void on_train_end(Trainer&) {}
  /// Before an epoch's evaluation record is logged; may add to it.
  virtual void on_evaluation_end(Trainer&, json& /*record*/) {}
  /// The epoch's record (train, test, lr, timing) after evaluation; checkpoints are written here.
  virtual void on_epoch_end(Trainer&, const json& /*record*/) {}
  /// A stop was requested in the middle of an epoch; the trainer's state holds the partial epoch.
  virtual void on_interrupt(Trainer&) {}
  /// A periodic checkpoint is due in the middle of an epoch (--checkpoint-every, --checkpoint-minutes): the
  /// trainer's state holds the partial epoch, as for on_interrupt, and training goes on after it.
  virtual void on_checkpoint(Trainer&) {}
  virtual void on_fit_end(Trainer&) {}

  /// Resumable state of its own (saved with each checkpoint).
  virtual json state() const { return nullptr; }
  virtual void load_state(const json&) {}
};

/// A callback by name, for `zoo train --callback NAME` (recorded in the run, added again on resume).
struct CallbackEntry {
  static constexpr const char* registry_kind = "callback";
  static constexpr const char* registry_hint = " (see 'zoo list --callbacks')";
  std::string name;
  std::string description;
  std::function<std::shared_ptr<Callback>()> make;
};
using CallbackRegistry = ::zoo::Registry<CallbackEntry>;

}  // namespace zoo::training
