#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/checkpoint.h"
#include "training/device.h"
#include "training/precision.h"
#include "training/run.h"

#include <fmt/format.h>
#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace zoo::cli {

using nlohmann::json;

void add_checkpoint_option(CLI::App* cmd, std::string& checkpoint) {
  cmd->add_option("--checkpoint", checkpoint,
                  "Which weights: best (the epoch the monitored validation metric was best; a run without "
                  "validation: its last), last, ema (a run trained with --ema) or epoch-N (one of the --save-top-k "
                  "best epochs; 'zoo info RUN' lists those a run holds)")
      ->check(CLI::Validator(
          [](std::string& name) -> std::string {
            const bool epoch = name.rfind("epoch-", 0) == 0 && name.size() > 6 &&
                               name.find_first_not_of("0123456789", 6) == std::string::npos;
            if (name == "best" || name == "last" || name == "ema" || epoch) return {};
            return "'" + name + "' is not a checkpoint name: best, last, ema or epoch-N";
          },
          "best|last|ema|epoch-N", "checkpoint name"))
      ->default_str("best");
}

void add_precision_options(CLI::App* cmd, std::string& precision, bool& force, const std::string& default_text) {
  cmd->add_option("--precision", precision,
                  "32 (float32), bf16-mixed (the forward under bfloat16 autocast) or bf16 (bfloat16 weights); "
                  "default: " +
                      default_text)
      ->check(CLI::Validator(
          [](std::string& name) -> std::string {
            try {
              training::parse_precision(name);
            } catch (const SettingError& e) {
              return e.problem();
            }
            return {};
          },
          "PRECISION", "precision"));
  cmd->add_flag("--force", force, "Run bfloat16 on a CPU without native bfloat16 (emulated: slower than float32)");
}

void check_precision(const std::string& precision, const std::string& device, bool force) {
  const auto p = training::parse_precision(precision);
  if (auto problem = training::precision_problem(p, training::parse_device(device), force); !problem.empty())
    throw SettingError("train.precision", problem);
}

namespace {

/// The class names a run recorded, else its dataset's, else the ids as text.
std::vector<std::string> class_labels(const training::RunConfig& config, size_t classes) {
  std::vector<std::string> names = config.classes;
  const auto& dataset = config.data.name;
  if (names.empty() && datasets::DatasetRegistry::instance().contains(dataset))
    names = datasets::DatasetRegistry::instance().at(dataset).class_names;
  while (names.size() < classes) names.push_back(std::to_string(names.size()));
  names.resize(classes);
  return names;
}

std::string cell(const json& v) { return v.is_null() ? "-" : fmt::format("{:.4f}", v.get<double>()); }

/// The per-class table of `zoo eval --per-class`.
void print_per_class(const json& metrics, const std::vector<std::string>& names) {
  const json& pc = metrics["per_class"];
  const json& confusion = metrics["confusion"];
  size_t width = 5;
  for (const auto& n : names) width = std::max(width, n.size());
  fmt::print("{:<{}}  precision  recall     f1         support\n", "class", width);
  for (size_t i = 0; i < names.size(); ++i) {
    int64_t support = 0;
    for (const auto& v : confusion[i]) support += v.get<int64_t>();
    fmt::print("{:<{}}  {:<9}  {:<9}  {:<9}  {}\n", names[i], width, cell(pc["precision"][i]), cell(pc["recall"][i]),
               cell(pc["f1"][i]), support);
  }
}

/// The confusion matrix as a labelled heat map (gnuplot): true class down, predicted across, counts in the cells.
void draw_confusion(const json& confusion, const std::vector<std::string>& names, const std::string& title,
                    const std::string& png) {
  const size_t c = names.size();
  std::string tics;
  for (size_t i = 0; i < c; ++i) tics += (i ? ", " : "") + gnuplot_string(names[i]) + " " + std::to_string(i);
  int64_t largest = 1;
  for (const auto& row : confusion)
    for (const auto& v : row) largest = std::max(largest, v.get<int64_t>());
  std::string data = "$m << EOD\n";
  for (size_t i = 0; i < c; ++i)
    for (size_t j = 0; j < c; ++j) {
      const int64_t n = confusion[i][j].get<int64_t>();
      data += fmt::format("{} {} {} {}\n", j, i, n, n * 2 > largest ? "white" : "black");
    }
  data += "EOD\n";
  const std::string script = fmt::format(
      "set title {}\nset xlabel 'predicted'\nset ylabel 'true'\nset xtics ({}) rotate by 45 right\n"
      "set ytics ({})\nset xrange [-0.5:{}]\nset yrange [{}:-0.5]\nset palette defined (0 'white', 1 '#08306b')\n"
      "set cbrange [0:{}]\nunset key\nset size ratio 1\nset tics nomirror\n"
      "plot $m using 1:2:3 with image, $m using 1:2:(sprintf('%d', $3)):(strcol(4) eq 'white' ? 0xffffff : 0) "
      "with labels tc rgb variable font ',8'\n",
      gnuplot_string(title), tics, tics, c - 0.5, c - 0.5, largest);
  const int size = static_cast<int>(std::max<size_t>(560, 60 * c + 200));
  run_gnuplot(data + script, png, fmt::format("{},{}", size, size));
}

}  // namespace

void add_eval(CLI::App& app) {
  struct Args {
    std::string run, data_dir, device, checkpoint = "best", confusion, precision;
    int64_t limit = 0, threads = 0, batch_size = 0;
    bool json_out = false, per_class = false, force = false;
    std::vector<std::string> set;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a run's model on the test split");
  cmd->add_option("run", a->run, "Run directory")->required();
  cmd->add_flag("--json", a->json_out, "Print the metrics as one JSON object on the last line");
  cmd->add_flag("--per-class", a->per_class,
                "Classifiers: each class's precision, recall and F1 (with --json: per_class and confusion)");
  cmd->add_option("--confusion", a->confusion, "Classifiers: draw the confusion matrix as a labelled heat map (PNG)");
  add_checkpoint_option(cmd, a->checkpoint);
  cmd->add_option("--data-dir", a->data_dir, "Data directory (default: the run's)");
  cmd->add_option("--limit", a->limit, "First N test items (default: the run's; 0 = all)")->check(non_negative());
  cmd->add_option("--batch-size", a->batch_size, "Evaluation batch size")->check(positive());
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default: the run's)");
  add_precision_options(cmd, a->precision, a->force, "the run's");
  cmd->add_option(
      "--set", a->set,
      "Model option key=value for this evaluation only, e.g. --set solver.method=dopri5 (options that change "
      "parameter shapes do not match the saved weights)");
  cmd->callback([a, cmd] {
    auto run = training::Run::open(
        a->run,
        [&](training::RunConfig& c) {
          if (cmd->count("--data-dir")) c.data.data_dir = a->data_dir;
          if (cmd->count("--limit")) c.data.limit = a->limit;
          if (cmd->count("--batch-size")) c.train.eval_batch_size(a->batch_size);
          if (cmd->count("--device")) c.train.device(a->device);
          if (cmd->count("--precision")) c.train.precision(a->precision);
          check_precision(c.train.precision(), c.train.device(), a->force);
          c.train.threads(a->threads);
          const auto& entry = models::ModelRegistry::instance().at(c.model);
          for (const auto& item : a->set) {
            auto [key, value] = parse_set(item);
            c.options = models::merge_options(entry, c.options, {{key, value}});
          }
          if (!a->set.empty()) c.options = entry.complete_options(c.options);
        },
        a->checkpoint);
    json metrics = run->evaluate(/*thorough=*/true);
    const bool diagnostics = a->per_class || !a->confusion.empty();
    if (diagnostics && !metrics.contains("confusion"))
      throw std::invalid_argument(fmt::format("--per-class and --confusion are for classifiers; {} is a '{}' model",
                                              run->config().model, run->config().task));
    const json confusion = metrics.value("confusion", json());
    const json per_class = metrics.value("per_class", json());
    metrics.erase("confusion");  // printed only when asked for
    metrics.erase("per_class");
    std::vector<std::string> names;
    if (diagnostics) names = class_labels(run->config(), confusion.size());
    if (!a->confusion.empty()) {
      draw_confusion(confusion, names,
                     fmt::format("{} ({}) on {} test", run->config().model, a->checkpoint, run->config().data.name),
                     a->confusion);
      if (!a->json_out) fmt::print("wrote {}\n", a->confusion);
    }
    if (a->per_class && !a->json_out) print_per_class({{"per_class", per_class}, {"confusion", confusion}}, names);
    if (a->per_class && a->json_out) {
      metrics["per_class"] = per_class;
      metrics["per_class"]["class"] = names;
      metrics["confusion"] = confusion;
    }
    if (a->json_out) {
      fmt::print("{}\n", metrics.dump());
    } else {
      fmt::print("{} ({} checkpoint) on {} test: {}\n", run->config().model, a->checkpoint, run->config().data.name,
                 format_metrics(metrics));
    }
  });
}

void add_info(CLI::App& app) {
  struct Args {
    std::string run;
    bool json_out = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("info", "Show a run's configuration, parameter count and metrics");
  cmd->add_option("run", a->run, "Run directory")->required();
  cmd->add_flag("--json", a->json_out, "Print everything as one JSON object");
  cmd->callback([a] {
    namespace fs = std::filesystem;
    auto config = training::complete_config(training::read_run_config(a->run));
    auto [model, options] = models::build_model(config.model, config.options);
    json out = {
        {"run", a->run}, {"config", training::to_json(config)}, {"parameters", models::count_parameters(*model.ptr())}};
    try {  // the data may be gone (a run copied to another machine): info still shows the rest
      const auto splits = datasets::load_splits(config.data, static_cast<uint64_t>(config.train.seed()));
      out["data"] = {
          {"train", splits.train->size()}, {"val", splits.val ? splits.val->size() : 0}, {"test", splits.test->size()}};
    } catch (const std::exception& e) {
      out["data"] = {{"error", e.what()}};
    }
    const auto state_path = training::checkpoint_file(a->run, "state.json");
    json state;
    if (fs::exists(state_path)) {
      state = training::read_json_file(state_path);
      out["epoch"] = state.value("epoch", 0);
      out["step"] = state.value("step", 0);
      out["best"] = {{"metric", state.value("best_metric", std::string())},
                     {"value", state.value("best", json(nullptr))},
                     {"epoch", state.value("best_epoch", 0)}};
      out["last"] = state.value("last", json::object());
      out["final"] = state.value("final", json::object());
      out["checkpoints"] = training::RunDirectory(a->run, false).checkpoints();
      out["top_k"] = state.value("top_k", json::array());
    }
    if (a->json_out) {
      fmt::print("{}\n", out.dump());
      return;
    }
    std::ostringstream model_text;
    model.ptr()->pretty_print(model_text);
    fmt::print("run         {}\nmodel       {}\nmodule      {}\nparameters  {}\ndataset     {} (limit {})\n", a->run,
               config.model, model_text.str(), static_cast<long long>(out["parameters"].get<int64_t>()),
               config.data.name, static_cast<long long>(config.data.limit));
    if (out["data"].contains("error"))
      fmt::print("splits      unknown: {}\n", out["data"]["error"].get<std::string>());
    else
      fmt::print("splits      train {}, validation {}, test {}\n", out["data"]["train"].get<int64_t>(),
                 out["data"]["val"].get<int64_t>(), out["data"]["test"].get<int64_t>());
    fmt::print("options     {}\ntrain       {}\nversions    {}\n", config.options.dump(),
               training::to_json(config.train).dump(), config.versions.dump());
    if (state.is_null()) {
      fmt::print("progress    no checkpoint yet\n");
      return;
    }
    fmt::print("progress    epoch {} of {}, step {}\n", static_cast<long long>(out["epoch"].get<int64_t>()),
               static_cast<long long>(config.train.epochs()), static_cast<long long>(out["step"].get<int64_t>()));
    if (!out["best"]["value"].is_null())
      fmt::print("best        {} {:.4f} at epoch {}\n", out["best"]["metric"].get<std::string>(),
                 out["best"]["value"].get<double>(), static_cast<long long>(out["best"]["epoch"].get<int64_t>()));
    if (out["last"].contains("val")) fmt::print("last val    {}\n", format_metrics(out["last"]["val"]));
    if (out["last"].contains("test")) fmt::print("last test   {}\n", format_metrics(out["last"]["test"]));
    if (out["final"].contains("test"))
      fmt::print("final test  {} ({} checkpoint, epoch {})\n", format_metrics(out["final"]["test"]),
                 out["final"].value("checkpoint", std::string()), out["final"].value("epoch", int64_t{0}));
    if (out["final"].contains("ema"))
      fmt::print("final ema   test {}\n", format_metrics(out["final"]["ema"].value("test", json::object())));
    if (out["last"].contains("train")) fmt::print("last train  {}\n", format_metrics(out["last"]["train"]));
    std::string held = join(out["checkpoints"].get<std::vector<std::string>>());
    if (!out["top_k"].empty()) {
      std::vector<std::string> ranked;
      for (const auto& e : out["top_k"])
        ranked.push_back(fmt::format("epoch-{} {:.4f}", e["epoch"].get<int64_t>(), e["value"].get<double>()));
      held += " (top " + std::to_string(ranked.size()) + ": " + join(ranked) + ")";
    }
    fmt::print("checkpoints {}\n", held);
  });
}

}  // namespace zoo::cli
