#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "tools/cli/settings.h"
#include "training/auxiliary.h"
#include "training/checkpoint.h"
#include "training/lr_find.h"
#include "training/optim.h"
#include "training/run.h"

#include "core/plugins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

namespace zoo::cli {

using nlohmann::json;

std::string format_metrics(const json& metrics) {
  auto number = [](const json& v) -> std::string {
    if (v.is_number_float()) return fmt::format("{:.4f}", v.get<double>());
    if (v.is_null()) return "-";
    return v.dump();
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

/// "test accuracy 0.9100  loss 0.2500 (best epoch 3 of 5, val accuracy 0.9200)": the one test of the selected
/// weights (TrainState::final), and why it was stopped early if it was.
std::string format_final(const training::TrainState& s, int64_t epochs) {
  const json& f = s.final;
  std::string line = "test " + format_metrics(f.value("test", json::object()));
  if (f.contains("monitor")) {
    const auto m = f["monitor"].get<std::string>();
    const auto dot = m.find('.');
    line +=
        fmt::format(" ({} epoch {} of {}, {} {} {:.4f})", f.value("checkpoint", std::string()),
                    f.value("epoch", int64_t{0}), s.epoch, m.substr(0, dot), m.substr(dot + 1), f.value("value", 0.0));
  } else {
    line += fmt::format(" (last epoch {}; no validation split, nothing selected)", s.epoch);
  }
  if (f.contains("ema")) line += "\nema weights: test " + format_metrics(f["ema"].value("test", json::object()));
  if (f.contains("stopped")) line += "\n" + f["stopped"].get<std::string>() + fmt::format(" (of {} planned)", epochs);
  return line;
}

/// What `zoo train` reads from its command line: the settings' flags come from the schemas.
struct TrainArgs {
  std::string model, resume, out, config;
  std::vector<std::string> set, prior_layers, data_options, task_options, callbacks, freeze;
  int64_t nproc = 1;
  int64_t max_restarts = 0;
  int64_t nnodes = 1, node_rank = 0, master_port = 0;
  std::string master_addr;
  double dist_timeout = 60;
  bool restart_schedule = false, force = false;
  std::unique_ptr<SettingFlags<training::TrainOptions>> train;
  std::unique_ptr<SettingFlags<datasets::DataConfig>> data;
  std::unique_ptr<SettingFlags<training::PriorOptions>> prior;
};

}  // namespace

std::pair<std::string, json> parse_set(const std::string& item, const std::string& flag) {
  const auto eq = item.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument(flag + " expects key=value (e.g. " + flag +
                                (flag == "--set" ? " hidden=[512,256]" : " size=32") + "), got '" + item + "'");
  const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
  json value = training::parse_json_or_discard(text, flag + " " + key);
  if (value.is_discarded()) value = text;
  return {key, value};
}

namespace {

/// "2 threads"; with --threads 0 "2 threads (auto)", or "1 thread (auto: other work holds 1 of 2 cores)".
std::string describe_threads(int64_t setting) {
  const int64_t n = torch::get_num_threads(), cores = training::auto_thread_limit();
  std::string s = fmt::format("{} thread{}", n, n > 1 ? "s" : "");
  if (setting == 0)
    s += n < cores ? fmt::format(" (auto: other work holds {} of {} cores)", cores - n, cores) : " (auto)";
  return s;
}

/// The precision for the run header: nothing for float32 (the default), ", bf16-mixed" otherwise, and on a resume
/// that changes it ", precision 32 (was bf16-mixed)".
std::string describe_precision(const std::string& now, const std::string& before) {
  if (now != before) return fmt::format(", precision {} (was {})", now, before);
  return now == "32" ? "" : ", " + now;
}

/// Starts the ranks of a --nproc run (same command, a shared run directory and threads split among them) and
/// ends the program with their result.
[[noreturn]] void launch(const TrainArgs& a, const CLI::App& cmd, const std::string& dir) {
  std::vector<std::string> extra;
  if (!dir.empty() && cmd.count("--out") == 0) extra = {"--out", dir};
  if (!a.train->was_given("threads")) {
    const auto cores = training::usable_cores();
    extra.insert(extra.end(), {"--threads", std::to_string(std::max<int64_t>(1, cores / a.nproc))});
  }
  LaunchOptions o;
  o.nproc = a.nproc;
  o.nnodes = a.nnodes;
  o.node_rank = a.node_rank;
  o.master_addr = a.master_addr;
  o.master_port = a.master_port;
  o.timeout_s = a.dist_timeout;
  o.max_restarts = a.max_restarts;
  o.run_dir = dir.empty() ? a.resume : dir;
  throw ExitCode{launch_ranks(o, extra)};
}

/// Whether this command starts ranks (--nproc N > 1, or --nnodes M > 1) rather than being one.
bool launches(const TrainArgs& a) { return a.nproc > 1 || a.nnodes > 1; }

/// The flags of a run over several hosts agree with each other.
void check_launch_flags(const TrainArgs& a, const CLI::App& cmd) {
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
  if (given("--max-restarts") && !launches(a))
    throw std::invalid_argument(
        "--max-restarts restarts the ranks of a --nproc run; add --nproc N (N >= 2), or restart a single process "
        "with --resume");
  if (a.nnodes == 1) {
    if (given("--node-rank") && a.node_rank != 0)
      throw std::invalid_argument(fmt::format("--node-rank {} is out of range for --nnodes 1 (nodes are 0..0)",
                                              static_cast<long long>(a.node_rank)));
    if ((given("--master-addr") || given("--master-port")) && a.nproc < 2)
      throw std::invalid_argument(
          "--master-addr and --master-port belong to a launcher: add --nproc N (N >= 2) or --nnodes M (M >= 2)");
    return;
  }
  if (a.node_rank >= a.nnodes)
    throw std::invalid_argument(fmt::format("--node-rank {} is out of range for --nnodes {} (nodes are 0..{})",
                                            static_cast<long long>(a.node_rank), static_cast<long long>(a.nnodes),
                                            static_cast<long long>(a.nnodes - 1)));
  if (!given("--node-rank") || !given("--master-addr") || !given("--master-port"))
    throw std::invalid_argument(
        "--nnodes " + std::to_string(a.nnodes) +
        " needs --node-rank R (this host's number, 0..M-1), --master-addr HOST (node 0's address) and "
        "--master-port P, the same address and port on every host");
  if (a.out.empty() && a.resume.empty())
    throw std::invalid_argument(
        "--nnodes " + std::to_string(a.nnodes) +
        " needs --out RUN (or --resume RUN): a run directory every host sees at the same path (rank 0 writes it)");
  if (given("--max-restarts"))
    throw std::invalid_argument(
        "--max-restarts restarts the ranks of one host; across hosts restart every launcher with --resume RUN");
}

/// This process's rank in a data-parallel run started by --nproc or torchrun (WORLD_SIZE in the environment).
std::shared_ptr<training::ProcessGroup> join_group(const TrainArgs& a) {
  auto options = training::distributed_options_from_env();
  if (!options || options->world_size < 2) return nullptr;
  options->timeout_s = a.dist_timeout;
  const json train = a.train->given();
  if (training::nccl_available() && torch::Device(train.value("device", std::string("cpu"))).is_cuda())
    options->backend = "nccl";
  return std::make_shared<training::ProcessGroup>(*options);
}

/// The run configuration the flags describe: a --config file (model options or a run's config.json), the model's
/// recommended settings, then every flag given.
training::RunConfig config_from_flags(const TrainArgs& a) {
  training::RunConfig config;
  json base_train = json::object();
  if (!a.config.empty()) {
    json file = training::read_json_file(a.config);
    if (file.is_object() && file.contains("model") && file.contains("options")) {  // a run's config.json
      auto saved = training::run_config_from_json(file, a.config);
      load_plugins(saved.plugins, a.config);  // the plugins that run needed
      base_train = training::to_json(saved.train);
      saved.versions = json::object();
      config = saved;
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
    config.options = models::merge_options(entry, config.options, {{key, value}});
  }
  // The model's recommended settings (or a run's), then the flags given.
  config.train = training::train_options_from_json(base_train.empty() ? entry.train_defaults : base_train);
  config.train = training::train_options_from_json(a.train->given(), config.train);
  config.data = datasets::data_schema().from_json(a.data->given(), config.data);
  config.prior = training::prior_schema().from_json(a.prior->given(), config.prior);
  for (const auto& layer : a.prior_layers) config.prior.layers.push_back(training::parse_prior_layer(layer));
  if (!a.freeze.empty()) config.train.freeze(a.freeze);
  for (const auto& item : a.data_options) {
    auto [key, value] = parse_set(item, "--data-option");
    config.data.options[key] = value;
  }
  for (const auto& item : a.task_options) {
    auto [key, value] = parse_set(item, "--task-option");
    config.task_options[key] = value;
  }

  config.callbacks.insert(config.callbacks.end(), a.callbacks.begin(), a.callbacks.end());
  return config;
}

void run_train(const TrainArgs& a, const CLI::App& cmd) {
  using training::Run;
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
  const json train_given = a.train->given();
  if (train_given.contains("ema") && train_given["ema"].get<double>() == 0)
    throw std::invalid_argument("--ema must be in (0, 1), e.g. 0.999, got 0; leave --ema out to train without one");
  if (train_given.contains("checkpoint_every") && train_given["checkpoint_every"].get<int64_t>() <= 0)
    throw std::invalid_argument(fmt::format(
        "--checkpoint-every must be a positive number of steps, got {}; leave it out to checkpoint at epoch ends "
        "(and every --checkpoint-minutes)",
        train_given["checkpoint_every"].dump()));
  check_launch_flags(a, cmd);
  if (a.restart_schedule && a.resume.empty())
    throw std::invalid_argument(
        "--restart-schedule restarts the schedule of a resumed run: give --resume RUN and "
        "--epochs beyond its planned epochs");

  if (!a.resume.empty()) {
    // A resumed run keeps its configuration: only the settings declared resumable (and --nproc) may change.
    std::vector<std::string> fixed = a.train->given_fixed();
    for (const auto& list : {a.data->given_fixed(), a.prior->given_fixed()})
      fixed.insert(fixed.end(), list.begin(), list.end());
    for (const char* flag :
         {"--out", "--set", "--config", "--prior-layer", "--data-option", "--task-option", "--callback", "--freeze"})
      if (given(flag)) fixed.push_back(flag);
    if (!fixed.empty())
      throw std::invalid_argument(fixed.front() +
                                  " cannot change a run being resumed (its config.json decides); "
                                  "only " +
                                  join(a.train->resumable()) + " and --nproc can; start a new run to change it");
    if (!a.model.empty()) {
      const auto saved = training::read_run_config(a.resume);
      if (saved.model != a.model)
        throw std::invalid_argument(a.resume + " is a run of model '" + saved.model + "', not '" + a.model + "'");
    }
    const auto precision = train_given.value("precision", std::string());  // empty: the run's
    const auto saved = training::read_run_config(a.resume);
    check_precision(precision.empty() ? saved.train.precision() : precision, saved.train.device(), a.force);
    if (launches(a)) launch(a, cmd, "");
    const bool quiet = train_given.contains("progress") && !train_given["progress"].get<bool>();
    auto run = Run::resume(a.resume, train_given.value("epochs", int64_t{0}), train_given.value("threads", int64_t{-1}),
                           quiet, join_group(a), a.restart_schedule, precision);
    const bool speak = run->trainer().rank() == 0;
    const auto& st = run->trainer().state();
    if (!speak) {
      run->fit();
      return;
    }
    fmt::print("resuming {} ({}) after epoch {} of {}", a.resume, run->config().model, st.epoch,
               run->config().train.epochs());
    if (st.epoch_step > 0) fmt::print(" and step {} of epoch {}", st.epoch_step, st.epoch + 1);
    fmt::print(" | {}{}\n", describe_threads(run->config().train.threads()),
               describe_precision(run->config().train.precision(), saved.train.precision()));
    std::fflush(stdout);
    run->fit();
    fmt::print("{}\nrun saved to {}\n", format_final(run->trainer().state(), run->config().train.epochs()), run->dir());
    return;
  }

  training::RunConfig config = config_from_flags(a);
  check_precision(config.train.precision(), config.train.device(), a.force);
  if (config.train.precision() == "bf16")
    fmt::print(stderr,
               "warning: --precision bf16 trains bfloat16 weights: an update smaller than 1/256 of a weight is "
               "lost, and the optimizer's state is bfloat16 too; bf16-mixed keeps float32 weights\n");

  const std::string dir = a.out.empty() ? training::default_run_dir(config.model) : a.out;
  if (launches(a)) launch(a, cmd, dir);
  auto run = Run::create(config, dir, join_group(a));
  if (run->trainer().rank() != 0) {  // only rank 0 speaks (and writes)
    run->fit();
    return;
  }
  const auto& c = run->config();
  const int64_t world = run->trainer().world_size();
  fmt::print("training {} ({} parameters) on {} | {} epochs, {} lr {}, batch {}{} | {}{}{} | run {}\n", c.model,
             models::count_parameters(*run->model().ptr()), c.data.name, c.train.epochs(), c.train.optimizer(),
             c.train.lr(), c.train.batch_size(), world > 1 ? fmt::format(" x {} ranks", world) : "",
             describe_threads(c.train.threads()), world > 1 ? " per rank" : "",
             describe_precision(c.train.precision(), c.train.precision()), dir);
  std::fflush(stdout);
  for (const auto& note : run->data_notes()) fmt::print(stderr, "note: {}\n", note);
  if (!c.train.init().empty()) {
    const auto& init = run->init_report();
    fmt::print("started from {}: {} of {} tensors{}\n", c.train.init(), init.copied, init.total,
               init.kept.empty() ? "" : "; kept fresh (name or shape differ):");
    for (const auto& k : init.kept) fmt::print("  {}\n", k);
    if (!init.unused.empty()) fmt::print("  not used from the file: {}\n", fmt::join(init.unused, ", "));
  }
  if (!c.train.freeze().empty()) {
    int64_t frozen = 0, total = 0;
    for (const auto& p : run->model().ptr()->parameters()) {
      total += p.numel();
      if (!p.requires_grad()) frozen += p.numel();
    }
    fmt::print("frozen ({}): {} of {} parameters\n", fmt::join(c.train.freeze(), ", "), frozen, total);
  }
  std::fflush(stdout);
  run->fit();
  fmt::print("{}\nrun saved to {}\n", format_final(run->trainer().state(), c.train.epochs()), dir);
}

}  // namespace

namespace {

/// The flags that describe a run's configuration: the model, every setting of the schemas, --set, --config, ...
void add_config_flags(CLI::App* cmd, TrainArgs& a) {
  cmd->add_option("model", a.model, "Registered model name (see 'zoo list'); default cnn");
  a.train = std::make_unique<SettingFlags<training::TrainOptions>>(*cmd, training::train_schema(),
                                                                   std::vector<std::string>{"freeze"});
  cmd->add_option("--freeze", a.freeze, training::train_schema().find("freeze")->doc);
  a.data = std::make_unique<SettingFlags<datasets::DataConfig>>(*cmd, datasets::data_schema(),
                                                                std::vector<std::string>{"options"});
  cmd->add_option("--data-option", a.data_options, datasets::data_schema().find("options")->doc);
  a.prior = std::make_unique<SettingFlags<training::PriorOptions>>(*cmd, training::prior_schema(),
                                                                   std::vector<std::string>{"layers"});
  cmd->add_option("--prior-layer", a.prior_layers, training::prior_schema().find("layers")->doc);
  cmd->add_option("--set", a.set, "Model option key=value (JSON value), repeatable, e.g. --set hidden=[512,256]");
  cmd->add_option("--task-option", a.task_options,
                  "Task (objective) option key=value, repeatable, e.g. --task-option dice=1 for segmentation");
  cmd->add_option("--config", a.config, "JSON file of model options, or a run's config.json");
}

constexpr const char* force_help = "Train in bfloat16 on a CPU without native bfloat16 (emulated: slower than float32)";

/// `zoo lr-find`: the LR range test on a fresh copy of the model the flags describe; writes PREFIX.csv and
/// PREFIX.png, prints the suggestion, touches no run directory.
void run_lr_find(const TrainArgs& a, const training::LrFindOptions& options, const std::string& prefix) {
  auto config = training::complete_config(config_from_flags(a));
  check_precision(config.train.precision(), config.train.device(), a.force);
  // Only the loop's step matters here: settings about epochs, selection and checkpoints do not apply.
  config.train.progress(false).schedule("constant").early_stop(0).save_top_k(1).ema(0).log("");
  config.data.val_fraction = 0;
  torch::manual_seed(static_cast<uint64_t>(config.train.seed()));
  auto model = models::ModelRegistry::instance().at(config.model).build(config.options);
  auto objective = training::make_objective(config.task, config.options, config.task_options);
  auto splits = datasets::load_splits(config.data, static_cast<uint64_t>(config.train.seed()));
  training::Trainer trainer(std::move(model), std::move(objective), splits, config.train);
  training::attach_prior(trainer, config.prior);
  training::attach_auxiliary_losses(trainer);
  trainer.check_data_fits();
  fmt::print("lr-find {} on {}: lr {:.3g} to {:.3g} over {} steps of batch {}\n", config.model, config.data.name,
             options.start_lr, options.end_lr, options.steps, config.train.batch_size());
  std::fflush(stdout);
  const auto result = training::lr_range_test(trainer, *splits.train, options);
  std::string csv = "step,lr,loss,smoothed\n";
  for (size_t i = 0; i < result.lrs.size(); ++i)
    csv += fmt::format("{},{:.9g},{:.9g},{:.9g}\n", i + 1, result.lrs[i], result.losses[i], result.smoothed[i]);
  zoo::write_text_atomically(prefix + ".csv", csv);
  std::string data = "$d << EOD\n";
  for (size_t i = 0; i < result.lrs.size(); ++i)
    data += fmt::format("{} {} {}\n", result.lrs[i], result.losses[i], result.smoothed[i]);
  data += "EOD\n";
  std::string drawn = prefix + ".png";
  try {
    run_gnuplot(data + fmt::format("set logscale x\nset grid\nset xlabel 'learning rate'\nset ylabel 'loss'\n"
                                   "set title 'LR range test: {}'\nset arrow from {},graph 0 to {},graph 1 nohead "
                                   "dt 2 lc rgb 'red'\nplot $d using 1:2 with lines lc rgb '#bbbbbb' title 'loss', "
                                   "$d using 1:3 with lines lw 2 lc rgb '#1f77b4' title 'smoothed'\n",
                                   config.model, result.suggestion, result.suggestion),
                drawn);
  } catch (const std::exception& e) {
    drawn = std::string("no plot: ") + e.what();
  }
  if (!result.stopped.empty()) fmt::print("stopped: {}\n", result.stopped);
  fmt::print("suggested learning rate: {:.3g} (steepest descent of the smoothed loss); {}.csv, {}\n", result.suggestion,
             prefix, drawn);
}

}  // namespace

void add_lr_find(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto o = std::make_shared<training::LrFindOptions>();
  auto prefix = std::make_shared<std::string>("lr_find");
  auto* cmd = app.add_subcommand(
      "lr-find", "The learning-rate range test: train briefly at growing rates, suggest one (writes no run)");
  add_config_flags(cmd, *a);
  cmd->add_option("--start-lr", o->start_lr, "First learning rate (default 1e-7)")->check(positive());
  cmd->add_option("--end-lr", o->end_lr, "Last learning rate (default 1)")->check(positive());
  cmd->add_option("--steps", o->steps, "Steps from the first to the last rate (default 100)")
      ->check(CLI::Range(int64_t{2}, int64_t{1000000}));
  cmd->add_option("--out", *prefix, "Where to write PREFIX.csv and PREFIX.png (default lr_find)");
  cmd->add_flag("--force", a->force, force_help);
  cmd->callback([a, o, prefix] {
    if (!(o->end_lr > o->start_lr))
      throw std::invalid_argument(fmt::format("--end-lr ({}) must be above --start-lr ({})", o->end_lr, o->start_lr));
    run_lr_find(*a, *o, *prefix);
  });
}

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a model (default: cnn on Fashion-MNIST) or resume a run");
  add_config_flags(cmd, *a);
  cmd->add_option("--out", a->out, "Run directory (default runs/MODEL-DATE-TIME)");
  cmd->add_option("--callback", a->callbacks, training::run_schema().find("callbacks")->doc + "; repeatable");
  cmd->add_option("--resume", a->resume, "Continue the run in this directory from its last checkpoint");
  cmd->add_flag("--force", a->force, force_help);
  cmd->add_flag("--restart-schedule", a->restart_schedule,
                "With --resume and --epochs beyond the planned ones: the added epochs are a new cycle of the "
                "schedule (a warm restart). Without it they go on at the schedule's last rate");
  cmd->add_option("--nproc", a->nproc,
                  "Train data-parallel with N local processes (c10d/Gloo); --batch-size is per process. Without it, "
                  "torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT make this process one rank")
      ->check(positive());
  cmd->add_option("--max-restarts", a->max_restarts,
                  "With --nproc: when a rank dies, stop the others and restart all from the last checkpoint, up to "
                  "K times (the same failure twice in a row with no new checkpoint ends the job)")
      ->check(non_negative());
  cmd->add_option("--nnodes", a->nnodes,
                  "Hosts in the run (default 1); start `zoo train` on each with the same flags but its own "
                  "--node-rank. Ranks are node-rank x nproc + 0..nproc-1 of nnodes x nproc, as torchrun numbers them")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--node-rank", a->node_rank, "With --nnodes: this host's number, 0..M-1 (node 0 holds rank 0)")
      ->check(non_negative());
  cmd->add_option("--master-addr", a->master_addr,
                  "Address or host name of node 0, where rank 0 serves the rendezvous (default: MASTER_ADDR, else "
                  "127.0.0.1)");
  cmd->add_option("--master-port", a->master_port,
                  "TCP port of the rendezvous on node 0 (default: MASTER_PORT, else a free port; one host only)")
      ->check(CLI::Range(int64_t{1}, int64_t{65535}));
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "Seconds to wait for the other ranks at the start and in each collective (default 60)")
      ->check(positive());
  cmd->callback([a, cmd] { run_train(*a, *cmd); });
}

}  // namespace zoo::cli
