// A run: its configuration and everything built from it, over a RunDirectory (training/run_directory.h).
//
//   RunConfig (config.json) -> model (model registry), data (dataset registry), objective (task registry)
//                           -> Trainer with its callbacks (checkpoints, console, progress, prior, ...)
//
// The command-line tool is a thin layer over this: parse the settings, Run::create, Run::fit.
#pragma once

#include "datasets/registry.h"
#include "training/distributed.h"
#include "training/priors.h"
#include "training/run_directory.h"
#include "training/runtime.h"
#include "training/trainer.h"
#include "training/weights.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

struct RunConfig {
  std::string model;
  json options = json::object();  ///< complete model options
  datasets::DataConfig data;
  std::string task;  ///< empty: the model's registered task
  json task_options = json::object();
  TrainOptions train;
  PriorOptions prior;                  ///< MAP training: a prior on the weights (none by default)
  std::vector<std::string> callbacks;  ///< registered callbacks added to the trainer (zoo train --callback NAME)
  std::vector<std::string> plugins;    ///< shared libraries the run's model, data or task came from (core/plugins.h)
  json versions = json::object();
  /// The names of the class ids, as the data named them when the run began (class folders, CIFAR, Fashion-MNIST);
  /// zoo predict and zoo eval --per-class print them. Empty: the data names none.
  std::vector<std::string> classes;
  /// The shape of one input item when the run began ([C, H, W] for images): zoo predict brings images to it.
  std::vector<int64_t> input_shape;
  /// The per-channel normalisation (x - mean) / std of the inputs when the run began (--data-option mean/std, or
  /// the dataset's default): zoo predict applies it to images. Empty: none.
  std::vector<double> mean, std;
};

/// Every setting of a run: "model", "options", "data.*", "task", "task_options", "train.*", "prior.*", ...
const Schema<RunConfig>& run_schema();
json to_json(const RunConfig& config);
/// Reads a config.json; `source` names it in errors.
RunConfig run_config_from_json(const json& j, const std::string& source);
RunConfig read_run_config(const std::string& run_dir);

/// Refuses a model with fewer logits than the data has classes (its option num_classes, where it has one), with
/// the --set that fixes it; returns a note when it has more ("" otherwise).
std::string check_classes(const RunConfig& config, const std::vector<std::string>& classes);

/// Fills in a config from the registry: complete model options, default task and dataset; checks every setting
/// (SettingError names it by its path, e.g. "train.epochs").
RunConfig complete_config(RunConfig config);

class Run {
 public:
  /// A new run in `dir` (created; an existing run there is an error, never overwritten). Seeds torch with the
  /// config's seed, then builds the model once, so a run is reproducible from its config.
  /// With a process group of more than one rank the run trains data-parallel; only rank 0 writes files.
  static std::unique_ptr<Run> create(RunConfig config, const std::string& dir,
                                     std::shared_ptr<ProcessGroup> group = nullptr);
  /// Continues the run in `dir` from its last checkpoint; `epochs` > 0 changes the total number of epochs,
  /// `threads` >= 0 the threads, `quiet` turns the progress display off. Epochs beyond the planned ones go on at
  /// the schedule's last rate, or with `restart_schedule` as a new cycle of it (Trainer::extend). A `precision`
  /// other than the run's goes on in it (32 <-> bf16-mixed; a run in bf16, whose weights and optimizer state are
  /// bfloat16, cannot switch) and is recorded in config.json.
  static std::unique_ptr<Run> resume(const std::string& dir, int64_t epochs = 0, int64_t threads = -1,
                                     bool quiet = false, std::shared_ptr<ProcessGroup> group = nullptr,
                                     bool restart_schedule = false, const std::string& precision = "");
  /// Opens a finished or running run for evaluation and inspection: model with the weights of `checkpoint`
  /// ("best", "last", "ema" or "epoch-N", RunDirectory::load_weights), no training. `adjust` may change the
  /// configuration first (another --limit, device, evaluation batch size).
  static std::unique_ptr<Run> open(const std::string& dir, const std::function<void(RunConfig&)>& adjust = {},
                                   const std::string& checkpoint = "best");

  const RunConfig& config() const { return config_; }
  const std::string& dir() const { return dir_->path(); }
  const RunDirectory& directory() const { return *dir_; }
  Trainer& trainer() { return *trainer_; }
  /// What train.init copied into the new model (empty when the run did not start from weights).
  const InitReport& init_report() const { return init_report_; }
  /// What loading the data found worth a line (datasets::Splits::notes), for the tool to print.
  const std::vector<std::string>& data_notes() const { return notes_; }
  torch::nn::AnyModule& model() { return trainer_->model(); }
  /// Trains; each epoch's summary line goes to stdout (rank 0). Errors say where the last checkpoint is.
  json fit();
  json evaluate(bool thorough = false) { return trainer_->evaluate(thorough); }
  /// Writes a checkpoint of the current state (e.g. after importing weights).
  void save_checkpoint() { dir_->save(*trainer_); }

 private:
  Run() = default;
  /// Model, objective, data and trainer from config_, with the callbacks every run has.
  /// `fresh`: a new run, started from train.init when it names weights.
  void build(bool train, bool fresh = false);
  /// The callbacks that write into the run directory (loggers, then checkpoints), once it exists.
  void attach_writers();
  /// A resumed parallel run: every rank read the checkpoint rank 0 names (step and epoch), else all stop.
  void check_same_checkpoint();
  RunConfig config_;
  std::shared_ptr<RunDirectory> dir_;
  std::unique_ptr<Trainer> trainer_;
  InitReport init_report_;
  std::vector<std::string> notes_;
  std::shared_ptr<ProcessGroup> group_;
};

/// The model of a run with the weights of `checkpoint` ("best", "last", "ema" or "epoch-N"), without data or optimizer
/// (for sampling, export, inspection).
std::pair<RunConfig, torch::nn::AnyModule> load_run_model(const std::string& dir, const std::string& device = "cpu",
                                                          const std::string& checkpoint = "best");

/// "runs/<model>-<YYYYmmdd-HHMMSS>" (with a suffix if taken).
std::string default_run_dir(const std::string& model);

}  // namespace zoo::training
