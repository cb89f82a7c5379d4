#include "training/options.h"

#include "training/device.h"
#include "training/optim.h"
#include "training/precision.h"
#include "training/threads.h"

#include "core/choices.h"

#include <algorithm>

namespace zoo::training {

const std::vector<std::string>& logger_names() {
  static const std::vector<std::string> names{"csv", "tensorboard"};
  return names;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    std::string item = text.substr(start, comma - start);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (!item.empty()) out.push_back(item);
    start = comma + 1;
  }
  return out;
}

const Schema<TrainOptions>& train_schema() {
  static const Schema<TrainOptions> schema = [] {
    Schema<TrainOptions> s("training option");
    s.add("epochs", ZOO_FIELD(TrainOptions, epochs), "Number of epochs (default: the model's recommendation)")
        .at_least(1)
        .resumable();
    s.add("batch_size", ZOO_FIELD(TrainOptions, batch_size), "Training batch size (per process when distributed)")
        .at_least(1);
    s.add("accumulate", ZOO_FIELD(TrainOptions, accumulate),
          "Gradient accumulation: batches per optimizer step (the step sees accumulate x batch_size items)")
        .at_least(1);
    s.add("eval_batch_size", ZOO_FIELD(TrainOptions, eval_batch_size), "Evaluation batch size").at_least(1);
    s.add("optimizer", ZOO_FIELD(TrainOptions, optimizer), "Optimizer").one_of(optimizer_names(), "optimizer");
    s.add("lr", ZOO_FIELD(TrainOptions, lr), "Learning rate").above(0);
    s.add("momentum", ZOO_FIELD(TrainOptions, momentum), "SGD momentum").at_least(0);
    s.add("weight_decay", ZOO_FIELD(TrainOptions, weight_decay),
          "The optimizer's own weight decay (coupled for sgd/adam, decoupled for adamw)")
        .at_least(0);
    s.add("schedule", ZOO_FIELD(TrainOptions, schedule), "Learning-rate schedule").one_of(schedule_names(), "schedule");
    s.add("step_size", ZOO_FIELD(TrainOptions, step_size), "Epochs per decay of the step schedule").at_least(1);
    s.add("gamma", ZOO_FIELD(TrainOptions, gamma), "Decay factor of the step and plateau schedules").above(0);
    s.add("warmup", ZOO_FIELD(TrainOptions, warmup), "Linear warm-up steps").at_least(0);
    s.add("plateau_patience", ZOO_FIELD(TrainOptions, plateau_patience),
          "plateau schedule: epochs without improvement of the monitored metric before the rate is multiplied by "
          "gamma")
        .at_least(0);
    s.add("pct_start", ZOO_FIELD(TrainOptions, pct_start),
          "onecycle schedule: fraction of the steps spent rising from lr/25 to lr")
        .above(0)
        .check([](const json& v) { return v.get<double>() < 1 ? "" : "must be below 1, e.g. 0.3"; });
    s.add("clip_grad", ZOO_FIELD(TrainOptions, clip_grad), "Clip the global gradient norm to this value (0 = off)")
        .at_least(0);
    s.add("seed", ZOO_FIELD(TrainOptions, seed), "Random seed (model initialisation, data order, dropout)").at_least(0);
    s.add("threads", ZOO_FIELD(TrainOptions, threads),
          "Intra-op threads (0 = auto: the cores other work leaves free, followed during training)")
        .at_least(0)
        .at_most(max_threads)
        .resumable();
    s.add("device", ZOO_FIELD(TrainOptions, device), "cpu, cuda or cuda:N").check([](const json& v) {
      parse_device(v.get<std::string>());  // throws with the valid devices
      return std::string();
    });
    s.add("precision", ZOO_FIELD(TrainOptions, precision),
          "Numeric precision: 32 (float32), bf16-mixed (float32 weights, the forward under bfloat16 autocast), "
          "bf16 (bfloat16 weights: inference; training with a warning) or fp16-mixed (CUDA: float16 autocast "
          "with loss scaling)")
        .one_of(precision_names(), "precision")
        .resumable();
    s.add("shuffle", ZOO_FIELD(TrainOptions, shuffle), "Shuffle the training items every epoch");
    s.add("progress", ZOO_FIELD(TrainOptions, progress), "Progress bar or lines on stderr during an epoch").resumable();
    s.add("monitor", ZOO_FIELD(TrainOptions, monitor),
          "Metric that picks the best epoch, e.g. val.accuracy, val.loss (default: the task's main metric on "
          "validation)")
        .check([](const json& v) {
          const auto m = v.get<std::string>();
          return m.empty() || m.rfind("val.", 0) == 0 || m.rfind("train.", 0) == 0
                     ? ""
                     : "must be val.<metric> or train.<metric> (the test split is never used to select)";
        });
    s.add("early_stop", ZOO_FIELD(TrainOptions, early_stop),
          "Stop after this many epochs without improvement of the monitored metric (0 = off)")
        .at_least(0);
    s.add("min_delta", ZOO_FIELD(TrainOptions, min_delta),
          "Smallest change of the monitored metric that counts as an improvement")
        .at_least(0);
    s.add("eval_test_every_epoch", ZOO_FIELD(TrainOptions, eval_test_every_epoch),
          "Also evaluate the test split after every epoch (off: test once, the selected weights, at the end)");
    s.add("save_top_k", ZOO_FIELD(TrainOptions, save_top_k),
          "Keep the weights of this many best epochs by the monitored metric (epoch-N.pt when above 1)")
        .at_least(1);
    s.add("checkpoint_every", ZOO_FIELD(TrainOptions, checkpoint_every),
          "Also checkpoint in the middle of an epoch every N optimizer steps (N > 0), so that a killed run loses at "
          "most N (default: at epoch ends, and every --checkpoint-minutes)")
        .at_least(0);
    s.add("checkpoint_minutes", ZOO_FIELD(TrainOptions, checkpoint_minutes),
          "Also checkpoint in the middle of an epoch when this many minutes passed since the last checkpoint "
          "(0 = off)")
        .at_least(0)
        .check([](const json& v) { return std::isfinite(v.get<double>()) ? "" : "must be finite"; });
    s.add("ema", ZOO_FIELD(TrainOptions, ema),
          "Also keep an exponential moving average of the weights with this decay per step, e.g. 0.999; it is "
          "evaluated and saved as its own checkpoint, ema (0 = off)")
        .check([](const json& v) {
          const double d = v.get<double>();
          return d == 0 || (d > 0 && d < 1) ? "" : "must be in (0, 1), e.g. 0.999 (0 = off)";
        });
    s.add("log", ZOO_FIELD(TrainOptions, log),
          "Loggers beside metrics.jsonl, comma-separated: csv (steps.csv, epochs.csv), tensorboard (tb/ event "
          "files)")
        .check([](const json& v) {
          for (const auto& name : split_list(v.get<std::string>()))
            if (std::find(logger_names().begin(), logger_names().end(), name) == logger_names().end())
              return unknown_choice("logger", name, logger_names());
          return std::string();
        });
    s.add("log_errors", ZOO_FIELD(TrainOptions, log_errors),
          "A logger that cannot write: stop (before training, or at once) or warn (one line; training goes on "
          "without it)")
        .one_of({"stop", "warn"});
    s.add("init", ZOO_FIELD(TrainOptions, init),
          "Start from these weights: a safetensors, TorchScript or torch.save file, or a run directory (its best "
          "weights); tensors whose name or shape differ (a new head) keep their fresh values and are listed");
    s.add("init_key", ZOO_FIELD(TrainOptions, init_key),
          "With --init of a torch.save checkpoint dict: the entry that holds the state_dict (default: the one)");
    s.add_json(
         "freeze", [](const TrainOptions& o) { return json(o.freeze()); },
         [](TrainOptions& o, const json& v) {
           if (!v.is_array()) throw SettingError("freeze", "must be a list of glob patterns");
           std::vector<std::string> patterns;
           for (const auto& p : v) patterns.push_back(strict_get<std::string>(p, "freeze pattern"));
           o.freeze(patterns);
         },
         "Keep the parameters whose names match this glob fixed and out of the optimizer, e.g. 'net.0.*'; "
         "repeatable",
         "a list of glob patterns")
        .check([](const json& v) -> std::string {
          for (const auto& p : v)
            if (p.get<std::string>().empty()) return "a pattern is empty";
          return {};
        });
    s.add("freeze_bn", ZOO_FIELD(TrainOptions, freeze_bn),
          "Batch-norm layers whose parameters are all frozen stay in eval mode (their running statistics are part "
          "of what was learnt; batches of the new data would move them)");
    return s;
  }();
  return schema;
}

json to_json(const TrainOptions& options) { return train_schema().to_json(options); }

TrainOptions train_options_from_json(const json& j, TrainOptions base) { return train_schema().from_json(j, base); }

void validate(const TrainOptions& options) { train_schema().validate(options); }

}  // namespace zoo::training
