// The training loop's settings, declared once (core/schema.h): config.json's "train" object, the flags of
// `zoo train`, their checks and which of them a resumed run may change all come from train_schema().
#pragma once

#include "core/schema.h"

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace zoo::training {

using json = nlohmann::json;

/// Hyperparameters of the loop; serialised in config.json under "train". Docs and checks: train_schema().
struct TrainOptions {
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, batch_size) = 64;
  TORCH_ARG(int64_t, accumulate) = 1;  ///< micro-batches of batch_size per optimizer step
  TORCH_ARG(int64_t, eval_batch_size) = 1000;
  TORCH_ARG(std::string, optimizer) = "adam";
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(std::string, schedule) = "constant";
  TORCH_ARG(int64_t, step_size) = 1;
  TORCH_ARG(double, gamma) = 0.1;
  TORCH_ARG(int64_t, warmup) = 0;
  TORCH_ARG(int64_t, plateau_patience) = 2;  ///< plateau: epochs without improvement before the rate drops
  TORCH_ARG(double, pct_start) = 0.3;        ///< onecycle: the fraction of steps spent rising to lr
  TORCH_ARG(double, clip_grad) = 0.0;
  TORCH_ARG(int64_t, seed) = 0;
  TORCH_ARG(int64_t, threads) = 0;
  TORCH_ARG(std::string, device) = "cpu";
  TORCH_ARG(std::string, precision) = "32";  ///< 32, bf16-mixed, bf16 or fp16-mixed (training/precision.h)
  TORCH_ARG(bool, shuffle) = true;
  TORCH_ARG(bool, progress) = true;
  TORCH_ARG(std::string, monitor) = "";  ///< "val.<metric>" that picks the best epoch; empty: the task's main one
  TORCH_ARG(int64_t, early_stop) = 0;    ///< stop after this many epochs without improvement (0 = off)
  TORCH_ARG(double, min_delta) = 0.0;    ///< an improvement smaller than this does not count
  TORCH_ARG(bool, eval_test_every_epoch) = false;
  TORCH_ARG(int64_t, save_top_k) = 1;  ///< keep the weights of this many best epochs (epoch-N.pt when above 1)
  /// Mid-epoch checkpoints every this many optimizer steps (0 = only at epoch ends) ...
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  /// ... and when this many minutes of training passed since the last checkpoint (0 = off).
  TORCH_ARG(double, checkpoint_minutes) = 2.0;
  TORCH_ARG(double, ema) = 0.0;      ///< decay of an exponential moving average of the weights (0 = off)
  TORCH_ARG(std::string, log) = "";  ///< loggers beside metrics.jsonl: "csv", "tensorboard" or both, comma-separated
  TORCH_ARG(std::string, log_errors) = "stop";  ///< a logger that cannot write: "stop" training or "warn" and go on
  /// Transfer learning: weights a new run starts from (a weights file or a run directory; training/weights.h) ...
  TORCH_ARG(std::string, init) = "";
  TORCH_ARG(std::string, init_key) = "";             ///< ... and the entry of a torch.save checkpoint dict holding them
  TORCH_ARG(std::vector<std::string>, freeze) = {};  ///< globs on parameter names: kept fixed, out of the optimizer
  TORCH_ARG(bool, freeze_bn) = true;  ///< batch-norm layers whose parameters are all frozen stay in eval mode
};

/// The loggers `log` may name: "csv", "tensorboard".
const std::vector<std::string>& logger_names();
/// "a, b,,c" -> {"a", "b", "c"}: the items of a comma-separated list, trimmed, empty ones dropped.
std::vector<std::string> split_list(const std::string& text);

/// Every setting of TrainOptions: name, doc, check, resumability.
const Schema<TrainOptions>& train_schema();

json to_json(const TrainOptions& options);
/// Reads the keys present in `j` over `base`; unknown keys and wrong types are errors.
TrainOptions train_options_from_json(const json& j, TrainOptions base = {});
/// Throws SettingError naming the setting, the bad value and what it must be.
void validate(const TrainOptions& options);

}  // namespace zoo::training
