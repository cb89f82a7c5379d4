// A run directory and everything built from it: config.json -> model (registry), data (dataset registry),
// objective (task registry) and trainer. The command-line tool is a thin layer over this.
//
//   RUN/config.json    model name and options, dataset, training options, library versions
//   RUN/model.pt       parameters and buffers (TorchScript archive: torch.jit.load opens it)
//   RUN/optimizer.pt   optimizer state
//   RUN/state.json     epoch, step, best metric, last metrics, RNG state
//   RUN/metrics.jsonl  one JSON record per epoch
#pragma once

#include "datasets/registry.h"
#include "training/distributed.h"
#include "training/priors.h"
#include "training/trainer.h"

#include <functional>
#include <memory>
#include <string>

namespace zoo::training {

struct RunConfig {
  std::string model;
  json options = json::object();  ///< complete model options
  datasets::DataConfig data;
  std::string task;  ///< empty: the model's registered task
  json task_options = json::object();
  TrainOptions train;
  PriorOptions prior;  ///< MAP training: a prior on the weights (none by default)
  json versions = json::object();
};

json to_json(const RunConfig& config);
RunConfig run_config_from_json(const json& j, const std::string& source);
RunConfig read_run_config(const std::string& run_dir);
/// {"zoo": ..., "torch": ..., "compiler": ...}
json library_versions();

/// Fills in a config from the registry: complete model options, default task and dataset.
RunConfig complete_config(RunConfig config);

class Run {
 public:
  /// A new run in `dir` (created; an existing run there is an error, never overwritten). Seeds torch with the
  /// config's seed before the model is built, so a run is reproducible from its config.
  /// With a process group of more than one rank the run trains data-parallel; only rank 0 writes files.
  static std::unique_ptr<Run> create(RunConfig config, const std::string& dir,
                                     std::shared_ptr<ProcessGroup> group = nullptr);
  /// Continues the run in `dir` from its last checkpoint; `epochs` > 0 changes the total number of epochs,
  /// `threads` >= 0 the threads, `quiet` turns the progress display off.
  static std::unique_ptr<Run> resume(const std::string& dir, int64_t epochs = 0, int64_t threads = -1,
                                     bool quiet = false, std::shared_ptr<ProcessGroup> group = nullptr);
  /// Opens a finished or running run for evaluation and inspection: model with its weights, no training.
  /// `adjust` may change the configuration first (another --limit, device, evaluation batch size).
  static std::unique_ptr<Run> open(const std::string& dir, const std::function<void(RunConfig&)>& adjust = {});

  const RunConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  Trainer& trainer() { return *trainer_; }
  torch::nn::AnyModule& model() { return trainer_->model(); }
  /// Trains; each epoch's summary line goes to stdout (see format_epoch_summary).
  json fit();
  json evaluate(bool thorough = false) { return trainer_->evaluate(thorough); }

 private:
  Run() = default;
  void build();
  RunConfig config_;
  std::string dir_;
  std::unique_ptr<Trainer> trainer_;
  std::shared_ptr<ProcessGroup> group_;
  bool summary_hook_ = false;
};

/// The model of a run with its weights, without data or optimizer (for sampling, export, inspection).
std::pair<RunConfig, torch::nn::AnyModule> load_run_model(const std::string& dir, const std::string& device = "cpu");

/// "runs/<model>-<YYYYmmdd-HHMMSS>" (with a suffix if taken).
std::string default_run_dir(const std::string& model);

}  // namespace zoo::training
