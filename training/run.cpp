#include "training/run.h"

#include "training/loggers.h"

#include "core/plugins.h"
#include "models/registry.h"
#include "training/auxiliary.h"
#include "training/checkpoint.h"

#include <fmt/format.h>

#include <ctime>
#include <filesystem>

namespace zoo::training {
namespace fs = std::filesystem;

const Schema<RunConfig>& run_schema() {
  static const Schema<RunConfig> schema = [] {
    Schema<RunConfig> s("run setting");
    s.add("model", ZOO_MEMBER(RunConfig, model), "Registered model name (see 'zoo list')");
    s.add("options", ZOO_MEMBER(RunConfig, options), "Model options (see 'zoo list MODEL')").flag("--set");
    s.nest("data", ZOO_MEMBER(RunConfig, data), datasets::data_schema());
    s.add("task", ZOO_MEMBER(RunConfig, task), "Task (objective); empty: the model's");
    s.add("task_options", ZOO_MEMBER(RunConfig, task_options), "Task (objective) options").flag("--task-option");
    s.nest("train", ZOO_MEMBER(RunConfig, train), train_schema());
    s.nest("prior", ZOO_MEMBER(RunConfig, prior), prior_schema());
    s.add("callbacks", ZOO_MEMBER(RunConfig, callbacks),
          "Registered callbacks to add to the loop (see 'zoo list "
          "--callbacks')")
        .check([](const json& names) {
          for (const auto& n : names) CallbackRegistry::instance().at(n.get<std::string>());  // or the valid names
          return std::string();
        })
        .flag("--callback");
    s.add("plugins", ZOO_MEMBER(RunConfig, plugins), "Plugins the run needs (loaded again on resume and eval)");
    s.add("versions", ZOO_MEMBER(RunConfig, versions), "Library versions that made the run");
    s.add("classes", ZOO_MEMBER(RunConfig, classes), "Class names of the data the run began on (recorded by the run)");
    s.add("input_shape", ZOO_MEMBER(RunConfig, input_shape),
          "Shape of one input item of the data the run began on (recorded by the run)");
    s.add("mean", ZOO_MEMBER(RunConfig, mean),
          "Per-channel mean the inputs were normalised with when the run began (recorded by the run)");
    s.add("std", ZOO_MEMBER(RunConfig, std),
          "Per-channel standard deviation the inputs were normalised with when the run began (recorded by the run)");
    return s;
  }();
  return schema;
}

json to_json(const RunConfig& c) { return run_schema().to_json(c); }

RunConfig run_config_from_json(const json& j, const std::string& source) {
  try {
    if (!j.is_object() || !j.contains("model")) throw std::invalid_argument("no \"model\"");
    RunConfig c = run_schema().from_json(j);
    // Runs made before validation splits existed trained on the whole training split; a resume continues so.
    if (!j.contains("data") || !j["data"].is_object() || !j["data"].contains("val_fraction")) c.data.val_fraction = 0;
    return c;
  } catch (const std::exception& e) {
    throw std::runtime_error(source + " is not a zoo run configuration (" + std::string(e.what()) + ")");
  }
}

RunConfig read_run_config(const std::string& run_dir) {
  const json j = RunDirectory(run_dir, false).read_config();
  load_plugins(j.value("plugins", std::vector<std::string>{}), run_dir);
  return run_config_from_json(j, (fs::path(run_dir) / "config.json").string());
}

RunConfig complete_config(RunConfig c) {
  const auto& entry = models::ModelRegistry::instance().at(c.model);
  c.options = entry.complete_options(c.options);
  if (c.task.empty()) c.task = entry.task;
  if (c.data.name.empty()) c.data.name = entry.dataset;
  if (entry.data_options) {
    const json derived = entry.data_options(c.options);
    for (auto it = derived.begin(); it != derived.end(); ++it)
      if (!c.data.options.contains(it.key())) c.data.options[it.key()] = it.value();
  }
  run_schema().validate(c);
  validate(c.prior);  // the combinations (decoupled needs gaussian, ...)
  return c;
}

std::pair<RunConfig, torch::nn::AnyModule> load_run_model(const std::string& dir, const std::string& device,
                                                          const std::string& checkpoint) {
  auto config = complete_config(read_run_config(dir));
  auto model = models::ModelRegistry::instance().at(config.model).build(config.options);
  RunDirectory(dir, false).load_weights(*model.ptr(), checkpoint);
  model.ptr()->to(parse_device(device));
  model.ptr()->eval();
  return {config, model};
}

std::string default_run_dir(const std::string& model) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  const std::string base = "runs/" + model + "-" + stamp;
  std::string dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base + "-" + std::to_string(i);
  return dir;
}

std::string check_classes(const RunConfig& config, const std::vector<std::string>& classes) {
  const auto it = config.options.find("num_classes");
  if (classes.empty() || it == config.options.end() || !it->is_number_integer()) return "";
  const auto n = static_cast<int64_t>(classes.size());
  if (it->get<int64_t>() < n)
    throw std::invalid_argument(
        fmt::format("{} has num_classes {} but the data has {} classes ({}{}): add --set num_classes={}", config.model,
                    it->get<int64_t>(), n, fmt::join(classes.begin(), classes.begin() + std::min<int64_t>(n, 5), ", "),
                    n > 5 ? ", ..." : "", n));
  if (it->get<int64_t>() > n)
    return fmt::format("{} has {} outputs for {} classes: --set num_classes={} fits the data", config.model,
                       it->get<int64_t>(), n, n);
  return "";
}

void Run::build(bool train, bool fresh) {
  // config_ is complete: the model is built once, from options already checked.
  auto model = models::ModelRegistry::instance().at(config_.model).build(config_.options);
  // Before the trainer: its moving average and device copy start from these weights. Only a new run: a resumed
  // one has them in its checkpoints (epoch 0 is written at once).
  if (fresh && !config_.train.init().empty())
    init_report_ = init_from(*model.ptr(), read_weights(config_.train.init(), config_.train.init_key()),
                             "--init " + config_.train.init());
  auto objective = make_objective(config_.task, config_.options, config_.task_options);
  auto splits = datasets::load_splits(config_.data, static_cast<uint64_t>(config_.train.seed()));
  notes_ = splits.notes;
  if (auto note = check_classes(config_, splits.class_names); !note.empty()) notes_.push_back(note);
  if (fresh) {
    config_.classes = splits.class_names;
    config_.mean = splits.mean;
    config_.std = splits.std;
    if (splits.train->size() > 0)
      config_.input_shape = splits.train->get(torch::zeros({1}, torch::kInt64)).input.sizes().slice(1).vec();
  }
  trainer_ = std::make_unique<Trainer>(std::move(model), std::move(objective), std::move(splits), config_.train);
  if (!train) return;
  attach_prior(*trainer_, config_.prior);
  attach_auxiliary_losses(*trainer_);
  attach_distributed(*trainer_, group_);
  // The run's own callbacks come before the checkpoint, so the state it saves includes their epoch's update.
  for (const auto& name : config_.callbacks) trainer_->add_callback(CallbackRegistry::instance().at(name).make());
  if (trainer_->rank() == 0 && config_.train.progress()) trainer_->add_callback(std::make_shared<ProgressCallback>());
}

void Run::attach_writers() {
  // The loggers before the checkpoint: their files are on disk when a checkpoint commits.
  if (dir_->writer()) attach_loggers(*trainer_, dir_->path(), config_.train, to_json(config_));
  trainer_->add_callback(std::make_shared<CheckpointCallback>(dir_));
}

json Run::fit() {
  if (trainer_->rank() == 0) {  // once, after any callback a caller added: its epoch line comes last
    bool has_console = false;
    for (const auto& c : trainer_->callbacks()) has_console |= dynamic_cast<ConsoleCallback*>(c.get()) != nullptr;
    if (!has_console) trainer_->add_callback(std::make_shared<ConsoleCallback>());
  }
  try {
    return trainer_->fit();
  } catch (const Interrupted& e) {
    if (!dir_->writer()) throw;
    throw Interrupted(std::string(e.what()) + "; checkpoint saved in " + dir(), e.signal);
  } catch (const DivergedError& e) {
    std::string msg = e.what();
    if (dir_->writer())
      msg += fmt::format(" and the last good checkpoint in {} (epoch {}) is intact", dir(), trainer_->state().epoch);
    throw DivergedError(msg + ". Try a lower train.lr or train.clip_grad 1.0");
  }
}

std::unique_ptr<Run> Run::create(RunConfig config, const std::string& dir, std::shared_ptr<ProcessGroup> group) {
  std::unique_ptr<Run> run(new Run());
  run->group_ = std::move(group);
  const bool writer = !run->group_ || run->group_->rank() == 0;
  run->config_ = complete_config(std::move(config));
  run->config_.plugins = loaded_plugins();
  run->config_.versions = library_versions();
  run->dir_ = std::make_shared<RunDirectory>(dir, writer);
  run->dir_->lock(/*create=*/true);  // two writers never share a directory
  try {
    run->dir_->refuse_existing_run();
    // Every rank has looked before rank 0 writes: a rank that starts late must not find rank 0's new run and
    // take it for an old one.
    if (run->group_ && run->group_->world_size() > 1) run->group_->barrier();
    torch::manual_seed(static_cast<uint64_t>(run->config_.train.seed()));
    run->build(true, /*fresh=*/true);
    run->trainer_->check_data_fits();
  } catch (...) {
    run->dir_->remove_if_unused();
    throw;
  }
  run->dir_->create(to_json(run->config_));
  run->attach_writers();
  // Epoch 0: from now on the directory always holds a loadable checkpoint, whenever the process dies.
  run->dir_->save(*run->trainer_);
  return run;
}

std::unique_ptr<Run> Run::resume(const std::string& dir, int64_t epochs, int64_t threads, bool quiet,
                                 std::shared_ptr<ProcessGroup> group, bool restart_schedule,
                                 const std::string& precision) {
  std::unique_ptr<Run> run(new Run());
  run->group_ = std::move(group);
  const bool writer = !run->group_ || run->group_->rank() == 0;
  run->config_ = complete_config(read_run_config(dir));
  run->dir_ = std::make_shared<RunDirectory>(dir, writer);
  run->dir_->lock();  // before anything is repaired or read for training: one writer at a time
  if (threads >= 0) run->config_.train.threads(threads);
  if (quiet) run->config_.train.progress(false);
  const std::string was = run->config_.train.precision();
  if (!precision.empty() && precision != was) {
    parse_precision(precision);  // an unknown name: the valid ones
    if (was == "bf16" || precision == "bf16")
      throw SettingError("train.precision",
                         fmt::format("{} cannot change a run trained in {} to {}: bf16 keeps the weights and the "
                                     "optimizer's state in bfloat16; start a new run",
                                     precision, was, precision));
    run->config_.train.precision(precision);
  }
  torch::manual_seed(static_cast<uint64_t>(run->config_.train.seed()));
  run->build(true);
  run->attach_writers();
  // Rank 0 repairs the directory if needed (rolls a half-committed checkpoint forward) before the others read it.
  const bool parallel = run->group_ && run->group_->world_size() > 1;
  if (parallel && !writer) run->group_->barrier();
  std::exception_ptr failed;
  try {
    run->dir_->restore(*run->trainer_);
  } catch (...) {
    failed = std::current_exception();
  }
  if (parallel && writer) run->group_->barrier();
  if (failed) std::rethrow_exception(failed);
  if (parallel) run->check_same_checkpoint();
  if (epochs > 0 && epochs < run->trainer_->state().epoch)
    throw std::invalid_argument(
        fmt::format("{} has already trained {} epochs; train.epochs {} would undo nothing "
                    "(give more)",
                    dir, run->trainer_->state().epoch, epochs));
  if (restart_schedule && epochs == 0)
    throw std::invalid_argument("a schedule restart needs --epochs beyond the " +
                                std::to_string(run->config_.train.epochs()) + " planned");
  if (run->config_.train.precision() != was)
    run->dir_->update_config([&](json& saved) { saved["train"]["precision"] = run->config_.train.precision(); });
  if (epochs > 0) {
    // The trainer was built with the planned epochs: it extends the schedule from them (Trainer::extend).
    run->trainer_->extend(epochs, restart_schedule);
    run->config_.train.epochs(epochs);
    run->dir_->update_config([&](json& saved) { saved["train"]["epochs"] = epochs; });
  }
  return run;
}

void Run::check_same_checkpoint() {
  // Rank 0 names the checkpoint (its step and epoch); a rank that read another one (a host whose copy of the run
  // directory is stale or another path) would train on other optimizer state. Every rank learns of any mismatch,
  // so all stop at once.
  const auto& st = trainer_->state();
  const auto mine = torch::tensor({st.step, st.epoch}, torch::kInt64);
  auto named = mine.clone();
  group_->broadcast(named);
  auto mismatches = torch::tensor({torch::equal(mine, named) ? int64_t{0} : int64_t{1}}, torch::kInt64);
  group_->all_reduce_sum(mismatches);
  const int64_t bad = mismatches.item<int64_t>();
  if (bad == 0) return;
  if (!torch::equal(mine, named))
    throw std::runtime_error(fmt::format(
        "rank {} reads the checkpoint at step {} (epoch {}) in {}, but rank 0 resumes from step {} (epoch {}): every "
        "rank must see the same run directory; give every host one shared path for --resume",
        group_->rank(), st.step, st.epoch, dir_->path(), named[0].item<int64_t>(), named[1].item<int64_t>()));
  throw std::runtime_error(fmt::format(
      "{} of {} ranks read another checkpoint than rank {} (step {} in {}); every rank must see the same run "
      "directory: give every host one shared path for --resume",
      bad, group_->world_size(), group_->rank(), st.step, dir_->path()));
}

std::unique_ptr<Run> Run::open(const std::string& dir, const std::function<void(RunConfig&)>& adjust,
                               const std::string& checkpoint) {
  std::unique_ptr<Run> run(new Run());
  run->config_ = complete_config(read_run_config(dir));
  run->dir_ = std::make_shared<RunDirectory>(dir, false);
  run->config_.train.progress(false);
  if (adjust) adjust(run->config_);
  // An opened run is evaluated on test, not trained: nothing is selected, so no validation split is held out
  // (a smaller --limit for the evaluation could not leave one).
  run->config_.data.val_fraction = 0;
  run->config_.train.monitor("").early_stop(0).save_top_k(1).ema(0);
  if (run->config_.train.schedule() == "plateau") run->config_.train.schedule("constant");
  run->build(false);
  run->dir_->load_weights(*run->model().ptr(), checkpoint);
  run->model().ptr()->eval();
  return run;
}

}  // namespace zoo::training
