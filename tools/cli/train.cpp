#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/optim.h"
#include "training/run.h"
#include "tools/cli/cli.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

namespace zoo::cli {

using nlohmann::json;

std::string format_metrics(const json& metrics) {
  auto number = [](const json& v) {
    char buf[64];
    if (v.is_number_float()) std::snprintf(buf, sizeof buf, "%.4f", v.get<double>());
    else if (v.is_null()) std::snprintf(buf, sizeof buf, "-");
    else std::snprintf(buf, sizeof buf, "%s", v.dump().c_str());
    return std::string(buf);
  };
  std::string out;
  for (const auto& [k, v] : metrics.items()) {
    std::string text;
    if (v.is_array()) {  // e.g. per-class IoU: [0.9812 0.4410 - ...], "-" for a class that never occurs
      for (const auto& x : v) text += (text.empty() ? "[" : " ") + number(x);
      text += "]";
    } else {
      text = number(v);
    }
    out += (out.empty() ? "" : "  ") + k + " " + text;
  }
  return out;
}

namespace {

struct TrainArgs {
  std::string model;
  std::string resume, out, config, data_dir, dataset, optimizer, schedule, device;
  std::vector<std::string> set, prior_layers, data_options, task_options;
  std::string prior;
  double lambda = 0;
  bool prior_decoupled = false, prior_proximal = false, prior_all = false;
  int64_t epochs = 0, batch_size = 0, eval_batch_size = 0, seed = 0, threads = 0, limit = 0, step_size = 0, warmup = 0;
  double lr = 0, momentum = 0, weight_decay = 0, gamma = 0, clip_grad = 0;
  bool no_progress = false;
  int64_t nproc = 1;
  double dist_timeout = 60;
};

}  // namespace

std::pair<std::string, json> parse_set(const std::string& item, const std::string& flag) {
  const auto eq = item.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument(flag + " expects key=value (e.g. " + flag +
                                (flag == "--set" ? " hidden=[512,256]" : " size=32") + "), got '" + item + "'");
  const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  return {key, value};
}

namespace {

/// Starts the ranks of a --nproc run (same command, a shared run directory and threads split among them) and
/// ends the program with their result.
[[noreturn]] void launch(const TrainArgs& a, const CLI::App& cmd, const std::string& dir) {
  std::vector<std::string> extra;
  if (!dir.empty() && cmd.count("--out") == 0) extra = {"--out", dir};
  if (cmd.count("--threads") == 0) {
    const auto cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
    extra.insert(extra.end(), {"--threads", std::to_string(std::max<int64_t>(1, cores / a.nproc))});
  }
  throw ExitCode{launch_ranks(a.nproc, extra, a.dist_timeout)};
}

/// This process's rank in a data-parallel run started by --nproc or torchrun (WORLD_SIZE in the environment).
std::shared_ptr<training::ProcessGroup> join_group(const TrainArgs& a) {
  auto options = training::distributed_options_from_env();
  if (!options || options->world_size < 2) return nullptr;
  options->timeout_s = a.dist_timeout;
  if (training::nccl_available() && torch::Device(a.device.empty() ? "cpu" : a.device).is_cuda())
    options->backend = "nccl";
  return std::make_shared<training::ProcessGroup>(*options);
}

void run_train(const TrainArgs& a, const CLI::App& cmd) {
  using training::Run;
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };

  if (!a.resume.empty()) {
    // A resumed run keeps its configuration; only the length and the threads may change.
    for (const char* flag : {"--batch-size", "--lr", "--optimizer", "--schedule", "--seed", "--limit", "--data-dir",
                             "--dataset", "--out", "--set", "--config", "--momentum", "--weight-decay",
                             "--step-size", "--gamma", "--warmup", "--clip-grad", "--device", "--eval-batch-size",
                             "--prior", "--lambda", "--prior-layer", "--prior-decoupled", "--prior-proximal",
                             "--prior-all-params", "--data-option", "--task-option"})
      if (given(flag))
        throw std::invalid_argument(std::string(flag) + " cannot change a run being resumed (its config.json decides); "
                                    "only --epochs, --threads and --nproc can; start a new run to change it");
    if (!a.model.empty()) {
      auto saved = training::read_run_config(a.resume);
      if (saved.model != a.model)
        throw std::invalid_argument(a.resume + " is a run of model '" + saved.model + "', not '" + a.model + "'");
    }
    if (a.nproc > 1) launch(a, cmd, "");
    auto run = Run::resume(a.resume, given("--epochs") ? a.epochs : 0, given("--threads") ? a.threads : -1,
                           a.no_progress, join_group(a));
    const bool speak = run->trainer().rank() == 0;
    const auto& st = run->trainer().state();
    if (!speak) {
      run->fit();
      return;
    }
    std::printf("resuming %s (%s) after epoch %lld of %lld", a.resume.c_str(), run->config().model.c_str(),
                static_cast<long long>(st.epoch), static_cast<long long>(run->config().train.epochs()));
    if (st.epoch_step > 0) std::printf(" and step %lld of epoch %lld", static_cast<long long>(st.epoch_step),
                                       static_cast<long long>(st.epoch + 1));
    std::printf("\n");
    std::fflush(stdout);
    run->fit();
    const auto& s = run->trainer().state();
    std::printf("test %s\nrun saved to %s\n", format_metrics(s.last.value("test", json::object())).c_str(),
                run->dir().c_str());
    return;
  }

  training::RunConfig config;
  json base_train = json::object();
  if (!a.config.empty()) {
    json file = training::read_json_file(a.config);
    if (file.is_object() && file.contains("model") && file.contains("options")) {  // a run's config.json
      auto saved = training::run_config_from_json(file, a.config);
      config.model = saved.model;
      config.options = saved.options;
      config.data = saved.data;
      config.task = saved.task;
      config.task_options = saved.task_options;
      config.prior = saved.prior;
      base_train = training::to_json(saved.train);
    } else if (file.is_object()) {
      config.options = file;
    } else {
      throw std::invalid_argument(a.config + " must hold a JSON object of model options");
    }
  }
  if (!a.model.empty()) {
    if (!config.model.empty() && config.model != a.model) config.options = json::object();
    config.model = a.model;
  }
  if (config.model.empty()) config.model = "cnn";
  const auto& entry = models::ModelRegistry::instance().at(config.model);
  if (a.config.empty() || base_train.empty()) config.data.name = entry.dataset;
  for (const auto& item : a.set) {
    auto [key, value] = parse_set(item);
    config.options[key] = value;
  }

  auto train = training::train_options_from_json(entry.train_defaults);
  if (!base_train.empty()) train = training::train_options_from_json(base_train);
  if (given("--epochs")) train.epochs(a.epochs);
  if (given("--batch-size")) train.batch_size(a.batch_size);
  if (given("--eval-batch-size")) train.eval_batch_size(a.eval_batch_size);
  if (given("--lr")) train.lr(a.lr);
  if (given("--optimizer")) train.optimizer(a.optimizer);
  if (given("--momentum")) train.momentum(a.momentum);
  if (given("--weight-decay")) train.weight_decay(a.weight_decay);
  if (given("--schedule")) train.schedule(a.schedule);
  if (given("--step-size")) train.step_size(a.step_size);
  if (given("--gamma")) train.gamma(a.gamma);
  if (given("--warmup")) train.warmup(a.warmup);
  if (given("--clip-grad")) train.clip_grad(a.clip_grad);
  if (given("--seed")) train.seed(a.seed);
  if (given("--threads")) train.threads(a.threads);
  if (given("--device")) train.device(a.device);
  if (a.no_progress) train.progress(false);
  config.train = train;
  if (given("--prior")) config.prior.kind = a.prior;
  if (given("--lambda")) config.prior.lambda = a.lambda;
  for (const auto& layer : a.prior_layers) config.prior.layers.push_back(training::parse_prior_layer(layer));
  if (a.prior_decoupled) config.prior.decoupled = true;
  if (a.prior_proximal) config.prior.proximal = true;
  if (a.prior_all) config.prior.include_all = true;
  if (given("--dataset")) config.data.name = a.dataset;
  if (given("--data-dir")) config.data.data_dir = a.data_dir;
  if (given("--limit")) config.data.limit = a.limit;
  for (const auto& item : a.data_options) {
    auto [key, value] = parse_set(item, "--data-option");
    config.data.options[key] = value;
  }
  for (const auto& item : a.task_options) {
    auto [key, value] = parse_set(item, "--task-option");
    config.task_options[key] = value;
  }

  const std::string dir = a.out.empty() ? training::default_run_dir(config.model) : a.out;
  if (a.nproc > 1) launch(a, cmd, dir);
  auto run = Run::create(config, dir, join_group(a));
  if (run->trainer().rank() != 0) {  // only rank 0 speaks (and writes)
    run->fit();
    return;
  }
  const auto& c = run->config();
  const int64_t world = run->trainer().world_size();
  const std::string ranks = world > 1 ? " x " + std::to_string(world) + " ranks" : "";
  std::printf("training %s (%lld parameters) on %s | %lld epochs, %s lr %g, batch %lld%s | %d threads%s | run %s\n",
              c.model.c_str(), static_cast<long long>(models::count_parameters(*run->model().ptr())),
              c.data.name.c_str(), static_cast<long long>(c.train.epochs()), c.train.optimizer().c_str(),
              c.train.lr(), static_cast<long long>(c.train.batch_size()), ranks.c_str(), torch::get_num_threads(),
              world > 1 ? " per rank" : "", dir.c_str());
  std::fflush(stdout);
  run->fit();
  const auto& s = run->trainer().state();
  std::printf("test %s\nrun saved to %s\n", format_metrics(s.last.value("test", json::object())).c_str(), dir.c_str());
}

}  // namespace

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a model (default: cnn on Fashion-MNIST) or resume a run");
  cmd->add_option("model", a->model, "Registered model name (see 'zoo list'); default cnn");
  cmd->add_option("--epochs", a->epochs, "Number of epochs (default: the model's recommendation)")
      ->check(positive());
  cmd->add_option("--batch-size", a->batch_size, "Training batch size")->check(positive());
  cmd->add_option("--eval-batch-size", a->eval_batch_size, "Evaluation batch size (default 1000)")
      ->check(positive());
  cmd->add_option("--lr", a->lr, "Learning rate")->check(positive());
  cmd->add_option("--optimizer", a->optimizer, "Optimizer")->check(CLI::IsMember(training::optimizer_names()));
  cmd->add_option("--momentum", a->momentum, "SGD momentum (default 0.9)")->check(non_negative());
  cmd->add_option("--weight-decay", a->weight_decay, "Optimizer weight decay (default 0)")
      ->check(non_negative());
  cmd->add_option("--schedule", a->schedule, "Learning-rate schedule")->check(CLI::IsMember(training::schedule_names()));
  cmd->add_option("--step-size", a->step_size, "Epochs per decay of the step schedule (default 1)")
      ->check(positive());
  cmd->add_option("--gamma", a->gamma, "Decay factor of the step schedule (default 0.1)")->check(positive());
  cmd->add_option("--warmup", a->warmup, "Linear warm-up steps (default 0)")->check(non_negative());
  cmd->add_option("--clip-grad", a->clip_grad, "Clip the global gradient norm to this value (0 = off)")
      ->check(non_negative());
  cmd->add_option("--seed", a->seed, "Random seed (default 0)")->check(non_negative());
  cmd->add_option("--threads", a->threads, "Intra-op threads (default 0 = all cores)")->check(non_negative());
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--dataset", a->dataset, "Dataset name (default: the model's; see 'zoo list --datasets')");
  cmd->add_option("--data-dir", a->data_dir, "Data directory (default $ZOO_DATA_DIR or the dataset's default)");
  cmd->add_option("--limit", a->limit, "Use only the first N items of each split (0 = all)")
      ->check(non_negative());
  cmd->add_option("--out", a->out, "Run directory (default runs/MODEL-DATE-TIME)");
  cmd->add_option("--set", a->set, "Model option key=value (JSON value), repeatable, e.g. --set hidden=[512,256]");
  cmd->add_option("--data-option", a->data_options,
                  "Dataset option key=value (JSON value), repeatable, e.g. --data-option size=32 (see README, Data)");
  cmd->add_option("--task-option", a->task_options,
                  "Task (objective) option key=value, repeatable, e.g. --task-option dice=1 for segmentation");
  cmd->add_option("--config", a->config, "JSON file of model options, or a run's config.json");
  cmd->add_option("--resume", a->resume, "Continue the run in this directory from its last checkpoint");
  cmd->add_option("--prior", a->prior, "Prior on the weights (MAP training): none, gaussian (L2), laplace (L1)")
      ->check(CLI::IsMember({"none", "gaussian", "laplace"}));
  cmd->add_option("--lambda", a->lambda, "Prior strength: gaussian adds lambda/2 ||w||^2, laplace lambda ||w||_1")
      ->check(non_negative());
  cmd->add_option("--prior-layer", a->prior_layers,
                  "Per-layer lambda PATTERN=X (glob on parameter names, e.g. 'net.0.*=1e-3'; first match wins)");
  cmd->add_flag("--prior-decoupled", a->prior_decoupled, "Gaussian prior as decoupled weight decay w <- (1-lr*lambda)w");
  cmd->add_flag("--prior-proximal", a->prior_proximal, "Laplace prior as a soft-threshold step (exact zeros)");
  cmd->add_flag("--prior-all-params", a->prior_all, "Also put the prior on biases and normalisation parameters");
  cmd->add_flag("--no-progress", a->no_progress, "No progress bar or per-epoch lines");
  cmd->add_option("--nproc", a->nproc,
                  "Train data-parallel with N local processes (c10d/Gloo); --batch-size is per process. Without it, "
                  "torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT make this process one rank")
      ->check(positive());
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "Seconds to wait for the other ranks at the start and in each collective (default 60)")
      ->check(positive());
  cmd->callback([a, cmd] { run_train(*a, *cmd); });
}

}  // namespace zoo::cli
