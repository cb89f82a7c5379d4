// Loggers beside metrics.jsonl (`--log csv,tensorboard`): callbacks that write what people plot from.
//
//   csv          RUN/steps.csv  step,epoch,loss,<terms>,lr,grad_norm,items_per_s   one row per optimizer step
//                RUN/epochs.csv epoch,step,lr,train.*,val.*,test.*,ema.*,...        one row per epoch
//   tensorboard  RUN/tb/events.out.tfevents.<time>.<host>: per-step scalars, per-epoch metrics, the model's
//                pictures (Objective::pictures) and the run's config as text
//
// They run on rank 0 only and before the checkpoint callback, so their files are on disk (fsync) when a checkpoint
// commits: a resumed run drops the rows written after its checkpoint (the CSV) or tells TensorBoard to (a
// SessionLog START), and logs those steps again, so no step is missing or twice.
#pragma once

#include "training/callback.h"
#include "training/options.h"
#include "training/tensorboard.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

class CsvLogger : public Callback {
 public:
  /// Opens (creates) RUN/steps.csv and RUN/epochs.csv for appending; an error names the file when it cannot.
  explicit CsvLogger(std::string run_dir);
  bool wants_grad_norm() const override { return true; }
  void on_fit_start(Trainer& trainer) override;
  void on_batch_end(Trainer& trainer, const StepInfo& step) override;
  void on_epoch_end(Trainer& trainer, const json& record) override;
  void on_interrupt(Trainer& trainer) override;
  void on_fit_end(Trainer& trainer) override;

 private:
  void write_pending();
  std::string steps_path_, epochs_path_;
  std::vector<std::string> step_columns_, epoch_columns_;  ///< the headers (empty until the first row)
  std::string pending_;                                    ///< step rows not yet written
  int64_t pending_rows_ = 0;
};

class TensorBoardLogger : public Callback {
 public:
  /// A new event file in RUN/tb; `config` (the run's config.json) is logged as text when training starts.
  TensorBoardLogger(const std::string& run_dir, json config);
  bool wants_grad_norm() const override { return true; }
  void on_fit_start(Trainer& trainer) override;
  void on_batch_end(Trainer& trainer, const StepInfo& step) override;
  void on_epoch_end(Trainer& trainer, const json& record) override;
  void on_interrupt(Trainer& trainer) override;
  void on_fit_end(Trainer& trainer) override;
  const EventWriter& writer() const { return *writer_; }

 private:
  std::unique_ptr<EventWriter> writer_;
  json config_;
};

/// Adds the loggers `options.log()` names to the trainer (call before adding the checkpoint callback). With
/// `options.log_errors()` "warn" a logger that cannot open or write its files says so in one line on stderr and
/// is dropped, and training goes on; with "stop" (the default) the error ends the run (before training when the
/// files cannot be opened).
void attach_loggers(Trainer& trainer, const std::string& run_dir, const TrainOptions& options, const json& config);

/// The rows of a CSV file written by CsvLogger: its header and every complete row (a torn last line is left out).
struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};
CsvTable read_csv(const std::string& path);

}  // namespace zoo::training
