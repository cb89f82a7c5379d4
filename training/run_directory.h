// The one reader and writer of a run's files. Nothing else opens these paths.
//
//   RUN/config.json    model name and options, dataset, training options, library versions
//   RUN/model.pt       parameters and buffers (TorchScript archive: torch.jit.load opens it)
//   RUN/best.pt        the same for the best epoch by the monitored metric; RUN/epoch-N.pt for each of the
//                      --save-top-k best epochs when that is above 1; RUN/ema.pt the --ema weights
//   RUN/optimizer.pt   optimizer state
//   RUN/state.json     epoch, step, best metric, last metrics, RNG state, callbacks' own state
//   RUN/metrics.jsonl  one JSON record per epoch (a log: repaired from state.json when a run resumes)
//
// The .pt files, optimizer.pt and state.json change together through the atomic protocol of training/checkpoint.h.
#pragma once

#include "training/callback.h"
#include "training/progress.h"
#include "training/trainer.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>

namespace zoo::training {

/// One line of metrics.jsonl as an epoch record (an object with a whole-number "epoch" of at least 1), or nothing
/// for a torn last line or a line that is no record of zoo's (edited by hand, damaged, nested too deep).
std::optional<json> parse_epoch_record(const std::string& line);

/// The run directory whose own file `path` would be (its config, state, log, test metrics, a checkpoint
/// `.pt` or the pending commit), or nothing. Writers of other files (zoo export) refuse such a path.
std::optional<std::string> run_owning(const std::string& path);

class RunDirectory {
 public:
  /// `writer`: this process may write (rank 0 of a data-parallel run); the others only read.
  explicit RunDirectory(std::string path, bool writer = true);
  const std::string& path() const { return path_; }
  bool writer() const { return writer_; }

  /// A writer's exclusive hold on the directory, kept until this object goes (the kernel drops it when the
  /// process dies, so a killed run never leaves it held): another process that writes here (train, resume,
  /// import) gets "RUN is being written by process PID; wait for it or choose another --out". `create`: makes
  /// the directory if needed, and refuses one that is not empty and holds no zoo run (nothing of the user's is
  /// touched). A reader does nothing.
  void lock(bool create = false) const;
  /// Removes the directory if lock() created it and nothing was written into it since (a run refused before it
  /// started leaves nothing behind).
  void remove_if_unused() const;
  /// Refuses a directory that holds a run (continue it with resume; a half-committed checkpoint is first rolled
  /// forward). One with only config.json (a run stopped in its first epoch) has nothing to lose.
  void refuse_existing_run() const;
  /// Starts a run here (a writer only; a reader does nothing): refuse_existing_run, then creates the directory and
  /// writes config.json.
  void create(const json& config) const;
  /// config.json, with an error that names the directory when it is not a run.
  json read_config() const;
  /// Rewrites config.json (atomically) after `change` (e.g. a resumed run that trains longer).
  void update_config(const std::function<void(json&)>& change) const;
  /// Whether a checkpoint (state.json) exists.
  bool has_checkpoint() const;
  /// The path of checkpoint file `name` to read (RUN/.commit/name while a commit is pending).
  std::string file(const std::string& name) const;

  /// Writes the trainer's model, optimizer, EMA weights and state (with every callback's state) as one
  /// checkpoint. `epoch_end`: the model holds the weights of the epoch just ended, which also go to best.pt when it
  /// is the best so far and to epoch-N.pt when it is among the top k; files of epochs that left the top k go.
  void save(Trainer& trainer, bool epoch_end = false) const;
  /// Restores model, optimizer, loop state, callbacks' state, RNG and the best weights; repairs metrics.jsonl.
  void restore(Trainer& trainer) const;
  /// Appends an epoch's record to metrics.jsonl.
  void append_metrics(const json& record) const;
  /// Writes test.json: the selected weights' test metrics (TrainState::final).
  void write_test(const json& final) const;
  /// Loads the weights of a checkpoint into `module`: "last" (model.pt), "best" (best.pt; a run without a
  /// validation split selects nothing, so its best is its last), "ema" (ema.pt) or "epoch-N" (a top-k epoch).
  /// Another name is an error listing those held.
  void load_weights(torch::nn::Module& module, const std::string& checkpoint = "last") const;
  /// The checkpoints this run holds, by the names load_weights takes.
  std::vector<std::string> checkpoints() const;

 private:
  void recover() const;
  std::string path_;
  bool writer_;
  struct Lock;
  mutable std::shared_ptr<Lock> lock_;
};

/// Writes a checkpoint at the end of every epoch (with best.pt when the epoch is the best so far) and when a stop
/// is requested mid-epoch, and appends the epoch's record to metrics.jsonl (after the commit: a crash in between
/// is repaired on resume). At the end of training: the state with the final test, and test.json.
class CheckpointCallback : public Callback {
 public:
  explicit CheckpointCallback(std::shared_ptr<const RunDirectory> dir) : dir_(std::move(dir)) {}
  void on_epoch_end(Trainer& trainer, const json& record) override;
  void on_interrupt(Trainer& trainer) override;
  void on_checkpoint(Trainer& trainer) override;
  void on_fit_end(Trainer& trainer) override;

 private:
  std::shared_ptr<const RunDirectory> dir_;
};

/// Prints each epoch's summary line on stdout (format_epoch_summary).
class ConsoleCallback : public Callback {
 public:
  void on_epoch_end(Trainer& trainer, const json& record) override;
};

/// The progress bar (terminal) or progress lines (log) on stderr during an epoch.
class ProgressCallback : public Callback {
 public:
  void on_epoch_start(Trainer& trainer, int64_t epoch, int64_t first_step, int64_t steps) override;
  void on_batch_end(Trainer& trainer, const StepInfo& step) override;
  void on_train_end(Trainer& trainer) override;

 private:
  std::unique_ptr<Progress> progress_;
};

}  // namespace zoo::training
