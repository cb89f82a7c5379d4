#include "training/run.h"

#include "training/auxiliary.h"

#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/runtime.h"

#include <torch/version.h>
#include <zoo_version.h>

#include <cstdio>
#include <ctime>
#include <filesystem>

namespace zoo::training {
namespace fs = std::filesystem;

namespace {
std::string now_string(const char* format) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, format, &tm);
  return buf;
}
}  // namespace

json library_versions() {
  return {{"zoo", ZOO_VERSION},
          {"torch", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                        std::to_string(TORCH_VERSION_PATCH)},
          {"compiler", __VERSION__},
          {"allocator", allocator()},
          {"created", now_string("%Y-%m-%dT%H:%M:%S%z")}};
}

json to_json(const RunConfig& c) {
  return {{"model", c.model},          {"options", c.options},        {"data", datasets::to_json(c.data)},
          {"task", c.task},            {"task_options", c.task_options}, {"train", to_json(c.train)},
          {"prior", to_json(c.prior)}, {"versions", c.versions}};
}

RunConfig run_config_from_json(const json& j, const std::string& source) {
  RunConfig c;
  try {
    c.model = j.at("model").get<std::string>();
    c.options = j.value("options", json::object());
    c.data = datasets::data_config_from_json(j.value("data", json::object()));
    c.task = j.value("task", std::string());
    c.task_options = j.value("task_options", json::object());
    c.train = train_options_from_json(j.value("train", json::object()));
    c.prior = prior_options_from_json(j.value("prior", json::object()));
    c.versions = j.value("versions", json::object());
  } catch (const json::exception& e) {
    throw std::runtime_error(source + " is not a zoo run configuration (" + std::string(e.what()) + ")");
  }
  return c;
}

RunConfig read_run_config(const std::string& run_dir) {
  const auto path = (fs::path(run_dir) / "config.json").string();
  if (!fs::exists(run_dir)) throw std::runtime_error("run directory " + run_dir + " does not exist");
  if (!fs::exists(path)) throw std::runtime_error(run_dir + " is not a zoo run directory (no config.json)");
  return run_config_from_json(read_json_file(path), path);
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
  validate(c.train);
  validate(c.prior);
  return c;
}

std::pair<RunConfig, torch::nn::AnyModule> load_run_model(const std::string& dir, const std::string& device) {
  auto config = complete_config(read_run_config(dir));
  auto [model, options] = models::build_model(config.model, config.options);
  const auto model_path = checkpoint_file(dir, "model.pt");
  if (!fs::exists(model_path))
    throw std::runtime_error(dir + " has no model.pt yet: the run has not finished an epoch");
  load_module(*model.ptr(), model_path);
  model.ptr()->to(parse_device(device));
  model.ptr()->eval();
  return {config, model};
}

namespace {
void recover_checkpoint_if_writable(const std::string& dir) {
  if (fs::exists(fs::path(dir) / ".commit") || fs::exists(fs::path(dir) / ".staging")) recover_checkpoint(dir);
}
}  // namespace

std::string default_run_dir(const std::string& model) {
  const std::string base = "runs/" + model + "-" + now_string("%Y%m%d-%H%M%S");
  std::string dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base + "-" + std::to_string(i);
  return dir;
}

void Run::build() {
  auto [model, options] = models::build_model(config_.model, config_.options);
  config_.options = options;
  auto objective = ObjectiveRegistry::instance().make(config_.task, config_.options, config_.task_options);
  auto splits = datasets::load_splits(config_.data);
  trainer_ = std::make_unique<Trainer>(std::move(model), std::move(objective), std::move(splits), config_.train);
  attach_prior(*trainer_, config_.prior);
  attach_auxiliary_losses(*trainer_);
}

json Run::fit() {
  if (!summary_hook_ && trainer_->rank() == 0) {
    summary_hook_ = true;
    trainer_->add_epoch_hook([this](const json& record) {
      std::printf("%s\n", format_epoch_summary(record, trainer_->options().epochs()).c_str());
      std::fflush(stdout);
    });
  }
  return trainer_->fit();
}

std::unique_ptr<Run> Run::create(RunConfig config, const std::string& dir, std::shared_ptr<ProcessGroup> group) {
  std::unique_ptr<Run> run(new Run());
  run->group_ = std::move(group);
  const bool writer = !run->group_ || run->group_->rank() == 0;
  run->config_ = complete_config(std::move(config));
  run->config_.versions = library_versions();
  run->dir_ = dir;
  // A directory with a checkpoint is never overwritten. One with only config.json (a run stopped during its
  // first epoch) has nothing to lose and may be started again.
  if (writer) recover_checkpoint_if_writable(dir);
  if (fs::exists(fs::path(dir) / "state.json"))
    throw std::runtime_error(dir + " already holds a run; continue it with --resume " + dir +
                             " or choose another --out");
  torch::manual_seed(static_cast<uint64_t>(run->config_.train.seed()));
  run->build();
  run->trainer_->check_data_fits();
  if (writer) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error("cannot create run directory " + dir + ": " + ec.message());
    write_text_atomically((fs::path(dir) / "config.json").string(), to_json(run->config_).dump(2) + "\n");
  }
  attach_distributed(*run->trainer_, run->group_);
  run->trainer_->set_run_dir(dir);
  // Epoch 0: from now on the directory always holds a loadable checkpoint, whenever the process dies.
  run->trainer_->save_checkpoint();
  return run;
}

std::unique_ptr<Run> Run::resume(const std::string& dir, int64_t epochs, int64_t threads, bool quiet,
                                 std::shared_ptr<ProcessGroup> group) {
  std::unique_ptr<Run> run(new Run());
  run->group_ = std::move(group);
  const bool writer = !run->group_ || run->group_->rank() == 0;
  run->config_ = complete_config(read_run_config(dir));
  run->dir_ = dir;
  if (epochs > 0) run->config_.train.epochs(epochs);
  if (threads >= 0) run->config_.train.threads(threads);
  if (quiet) run->config_.train.progress(false);
  torch::manual_seed(static_cast<uint64_t>(run->config_.train.seed()));
  run->build();
  attach_distributed(*run->trainer_, run->group_);
  // Rank 0 repairs the directory if needed (rolls a half-committed checkpoint forward) before the others read it.
  const bool parallel = run->group_ && run->group_->world_size() > 1;
  if (parallel && !writer) run->group_->barrier();
  std::exception_ptr failed;
  try {
    run->trainer_->restore(dir);
  } catch (...) {
    failed = std::current_exception();
  }
  if (parallel && writer) run->group_->barrier();
  if (failed) std::rethrow_exception(failed);
  if (epochs > 0 && epochs < run->trainer_->state().epoch)
    throw std::invalid_argument(dir + " has already trained " + std::to_string(run->trainer_->state().epoch) +
                                " epochs; --epochs " + std::to_string(epochs) + " would undo nothing (give more)");
  if (epochs > 0 && writer) {
    json saved = read_json_file((fs::path(dir) / "config.json").string());
    saved["train"]["epochs"] = epochs;
    write_text_atomically((fs::path(dir) / "config.json").string(), saved.dump(2) + "\n");
  }
  return run;
}

std::unique_ptr<Run> Run::open(const std::string& dir, const std::function<void(RunConfig&)>& adjust) {
  std::unique_ptr<Run> run(new Run());
  run->config_ = complete_config(read_run_config(dir));
  run->dir_ = dir;
  run->config_.train.progress(false);
  if (adjust) adjust(run->config_);
  run->build();
  const auto model_path = checkpoint_file(dir, "model.pt");
  if (!fs::exists(model_path))
    throw std::runtime_error(dir + " has no model.pt yet: the run has not finished an epoch");
  load_module(*run->model().ptr(), model_path);
  run->model().ptr()->eval();
  return run;
}

}  // namespace zoo::training
