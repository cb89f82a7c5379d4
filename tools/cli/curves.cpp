// `zoo plot RUN [RUN...]`: learning curves of runs through gnuplot, read from metrics.jsonl (per epoch) and, when
// the run logged it (--log csv), steps.csv (per step).
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/checkpoint.h"
#include "training/loggers.h"
#include "training/run_directory.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace zoo::cli {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

/// One run's curves: series name ("train.loss", "val.accuracy", "step.loss") -> (x, y) points.
struct RunCurves {
  std::string name;
  std::map<std::string, std::vector<std::pair<double, double>>> series;
};

RunCurves read_curves(const std::string& dir, bool by_step) {
  if (!fs::exists(dir)) throw std::runtime_error("run directory " + dir + " does not exist");
  if (!fs::exists(fs::path(dir) / "config.json"))
    throw std::runtime_error(dir + " is not a zoo run directory (no config.json)");
  RunCurves run;
  run.name = fs::path(dir).lexically_normal().filename().string();
  if (run.name.empty()) run.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto parsed = training::parse_epoch_record(line);
    if (!parsed || (by_step && !(*parsed)["step"].is_number())) continue;
    json& record = *parsed;
    const double x = by_step ? record["step"].get<double>() : record["epoch"].get<double>();
    for (const char* split : {"train", "val", "test"}) {
      const auto it = record.find(split);
      if (it == record.end() || !it->is_object()) continue;
      const json& metrics = *it;
      for (const auto& [k, v] : metrics.items())
        if (v.is_number() && k != "items") run.series[std::string(split) + "." + k].emplace_back(x, v.get<double>());
    }
  }
  if (by_step) {  // the per-step training loss and terms, when the run logged them
    const auto table = training::read_csv((fs::path(dir) / "steps.csv").string());
    size_t step_column = table.columns.size();
    for (size_t i = 0; i < table.columns.size(); ++i)
      if (table.columns[i] == "step") step_column = i;
    for (const auto& row : table.rows) {
      if (step_column >= row.size()) break;
      const double x = std::atof(row[step_column].c_str());
      for (size_t i = 0; i < table.columns.size(); ++i) {
        const auto& c = table.columns[i];
        if (c == "step" || c == "epoch" || c == "lr" || c == "grad_norm" || c == "items_per_s" || row[i].empty())
          continue;
        run.series["step." + c].emplace_back(x, std::atof(row[i].c_str()));
      }
    }
  }
  return run;
}

/// The run's monitored metric without its split ("accuracy"), or "" when it has none.
std::string primary_metric(const std::string& dir) {
  const auto state = fs::path(dir) / "state.json";
  if (!fs::exists(state)) return {};
  const auto m = training::read_json_file(state.string()).value("best_metric", std::string());
  return m.empty() ? m : m.substr(m.find('.') + 1);
}

}  // namespace

void add_plot(CLI::App& app) {
  struct Args {
    std::vector<std::string> runs, metrics;
    std::string x = "epoch", out = "curves.png";
  };
  auto a = std::make_shared<Args>();
  auto* cmd =
      app.add_subcommand("plot", "Learning curves of one or more runs (gnuplot): train and validation per metric");
  cmd->add_option("runs", a->runs, "Run directories (overlaid, named by their directory)")->required();
  cmd->add_option("--metric", a->metrics,
                  "A metric to plot, repeatable (default: loss and the runs' monitored metric, e.g. accuracy)");
  cmd->add_option("--x", a->x, "The x axis: epoch, or step (with --log csv runs: the loss of every step too)")
      ->check(CLI::IsMember({"epoch", "step"}));
  cmd->add_option("--out", a->out, "PNG to write (default curves.png)");
  cmd->callback([a] {
    const bool by_step = a->x == "step";
    std::vector<RunCurves> runs;
    for (const auto& dir : a->runs) runs.push_back(read_curves(dir, by_step));
    std::vector<std::string> metrics = a->metrics;
    if (metrics.empty()) {
      metrics.push_back("loss");
      for (const auto& dir : a->runs) {
        const auto m = primary_metric(dir);
        if (!m.empty() && m != "loss" && std::find(metrics.begin(), metrics.end(), m) == metrics.end())
          metrics.push_back(m);
      }
    }
    std::set<std::string> available;
    for (const auto& r : runs)
      for (const auto& [name, points] : r.series) available.insert(name.substr(name.find('.') + 1));
    for (const auto& m : metrics)
      if (!available.count(m))
        throw std::invalid_argument(fmt::format("no run here has the metric '{}'; they have: {}", m,
                                                join(std::vector<std::string>(available.begin(), available.end()))));

    // One panel per metric; in each, every run's train (dashed), validation (solid) and test (dotted) curve.
    std::string data;
    int block = 0;
    const int panels = static_cast<int>(metrics.size());
    std::string script = fmt::format("set multiplot layout {},1\nset grid\nset key outside right top\n", panels);
    for (const auto& m : metrics) {
      std::vector<std::string> lines;
      int colour = 1;
      for (const auto& r : runs) {
        const std::vector<std::pair<std::string, int>> kinds{
            {"step", 3}, {"train", 2}, {"val", 1}, {"test", 4}};  // (split, dash type)
        for (const auto& [split, dash] : kinds) {
          const auto it = r.series.find(split + "." + m);
          if (it == r.series.end() || it->second.empty()) continue;
          const std::string name = fmt::format("$d{}", block++);
          data += name + " << EOD\n";
          for (const auto& [x, y] : it->second) data += fmt::format("{} {}\n", x, y);
          data += "EOD\n";
          const std::string label =
              (runs.size() > 1 ? r.name + " " : std::string()) + (split == "step"  ? "train (per step)"
                                                                  : split == "val" ? "validation"
                                                                                   : split);
          // Per-epoch values also as points: a run of one epoch has no line to draw.
          lines.push_back(fmt::format("{} using 1:2 with {} lw {} dt {} lc {} title {}", name,
                                      split == "step" ? "lines" : "linespoints pt 7 ps 0.6", split == "step" ? 1 : 2,
                                      dash, colour, gnuplot_string(label)));
        }
        ++colour;
      }
      script += fmt::format("set title {}\nset xlabel {}\nset ylabel {}\nplot {}\n", gnuplot_string(m),
                            gnuplot_string(a->x), gnuplot_string(m), join(lines, ", \\\n     "));
    }
    script += "unset multiplot\n";
    run_gnuplot(data + script, a->out, fmt::format("900,{}", 320 * panels + 40));
    fmt::print("wrote {} ({} for {} run(s))\n", a->out, join(metrics), runs.size());
  });
}

}  // namespace zoo::cli
