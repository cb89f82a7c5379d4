// zoo experiment ode-solvers: a ResNet is a few Euler steps of an ODE, so the steps can change after training.
// Trains ode-resnet (an ODE block solved by rk4 with 2 steps) and, as baselines, the untied 6-block Euler ResNet
// and the cnn, with the same epochs; then evaluates the one trained ode-resnet with every solver and step count
// (euler, midpoint, rk4, dopri5 at several tolerances): test accuracy against function evaluations.
#include "core/files.h"
#include "datasets/registry.h"
#include "models/ode.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/run.h"

#include <fmt/format.h>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace zoo::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct OdeArgs {
  std::string run, out, data_dir;
  int64_t epochs = 3, limit = 0, threads = 0;
  bool no_baselines = false, no_plot = false;
};

struct Row {
  std::string solver;
  int64_t steps = 0;
  double tolerance = 0, accuracy = 0, nfe = 0, seconds = 0;
};

/// Trains `model` with its registered defaults (and `options`) into `dir`; returns the test accuracy.
double train_model(const OdeArgs& a, const std::string& model, const json& options, const std::string& dir) {
  training::RunConfig config;
  config.model = model;
  config.options = options;
  config.data.name = models::ModelRegistry::instance().at(model).dataset;
  config.data.data_dir = a.data_dir;
  config.data.limit = a.limit;
  config.data.val_fraction = 0;  // equal training for every solver, the last weights tested: nothing is selected
  config.train = training::train_options_from_json(models::ModelRegistry::instance().at(model).train_defaults)
                     .epochs(a.epochs)
                     .threads(a.threads)
                     .progress(false);
  fmt::print("training {} {} for {} epochs -> {}\n", model, options.dump(), static_cast<long long>(a.epochs), dir);
  std::fflush(stdout);
  auto run = training::Run::create(config, dir);
  run->fit();
  return run->trainer().state().final["test"]["accuracy"].get<double>();
}

Row evaluate(models::ODEResNetImpl& net, const datasets::Dataset& test, const models::ODESolverOptions& solver) {
  net.set_solver(solver);
  torch::NoGradGuard no_grad;
  int64_t correct = 0, batches = 0;
  double nfe = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < test.size(); i += 500) {
    const auto batch = test.get(torch::arange(i, std::min(i + 500, test.size()), torch::kInt64));
    correct += net.forward(batch.input).argmax(1).eq(batch.target).sum().item<int64_t>();
    nfe += static_cast<double>(net.last_nfe());
    ++batches;
  }
  Row r;
  r.solver = solver.method();
  r.steps = solver.method() == "dopri5" ? 0 : solver.steps();
  r.tolerance = solver.method() == "dopri5" ? solver.rtol() : 0;
  r.accuracy = static_cast<double>(correct) / static_cast<double>(test.size());
  r.nfe = nfe / static_cast<double>(batches);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

void run_ode_solvers(const OdeArgs& a) {
  training::apply_threads(a.threads);
  const std::string dir = a.out.empty() ? experiment_dir("ode-solvers") : a.out;
  fs::create_directories(dir);
  std::string run_dir = a.run;
  json baselines = json::object();
  if (run_dir.empty()) {
    run_dir = (fs::path(dir) / "ode-resnet").string();
    baselines["ode-resnet (rk4, 2 steps)"] = train_model(a, "ode-resnet", json::object(), run_dir);
    if (!a.no_baselines) {
      baselines["resnet (6 untied Euler steps, h = 1)"] = train_model(
          a, "ode-resnet", {{"block", "resnet"}, {"solver", {{"steps", 6}}}}, (fs::path(dir) / "resnet-6").string());
      baselines["cnn"] = train_model(a, "cnn", json::object(), (fs::path(dir) / "cnn").string());
    }
  }
  auto [config, model] = training::load_run_model(run_dir);
  if (config.model != "ode-resnet")
    throw std::invalid_argument(run_dir + " is a " + config.model + " run; --run needs an ode-resnet run");
  auto net = std::dynamic_pointer_cast<models::ODEResNetImpl>(model.ptr());
  if (!net || net->options.block() != "ode")
    throw std::invalid_argument(run_dir + " has no ODE block (block = resnet): its steps are its layers");
  net->eval();
  datasets::DataConfig data = config.data;
  if (!a.data_dir.empty()) data.data_dir = a.data_dir;
  if (a.limit > 0) data.limit = a.limit;
  data.val_fraction = 0;  // only the test split is used: nothing held out for validation
  const auto splits = datasets::load_splits(data);

  std::vector<models::ODESolverOptions> grid;
  for (int64_t s : {1, 2, 4, 8, 16}) grid.push_back(models::ODESolverOptions().method("euler").steps(s));
  for (int64_t s : {1, 2, 4, 8}) grid.push_back(models::ODESolverOptions().method("midpoint").steps(s));
  for (int64_t s : {1, 2, 4}) grid.push_back(models::ODESolverOptions().method("rk4").steps(s));
  for (double tol : {1e-1, 1e-2, 1e-3, 1e-4})
    grid.push_back(models::ODESolverOptions().method("dopri5").rtol(tol).atol(tol));

  const auto csv_path = (fs::path(dir) / "ode_solvers.csv").string();
  std::ostringstream csv;
  csv << "solver,steps,tolerance,test_accuracy,nfe,eval_seconds\n";
  const json trained = models::ModelRegistry::instance().at("ode-resnet").complete_options(config.options)["solver"];
  fmt::print("\nthe ode-resnet of {} (trained with {}, {} steps), on {}:\n", run_dir,
             trained["method"].get<std::string>(), static_cast<long long>(trained["steps"].get<int64_t>()),
             splits.test->describe());
  fmt::print("{:<9} {:>6} {:>9} {:>9} {:>7} {:>8}\n", "solver", "steps", "tolerance", "accuracy", "NFE", "eval s");
  std::vector<Row> rows;
  for (const auto& solver : grid) {
    const auto r = evaluate(*net, *splits.test, solver);
    rows.push_back(r);
    const std::string tolerance = r.tolerance > 0 ? fmt::format("{:g}", r.tolerance) : "-";
    fmt::print("{:<9} {:>6} {:>9} {:9.4f} {:7.1f} {:8.2f}\n", r.solver, r.steps ? std::to_string(r.steps) : "-",
               tolerance, r.accuracy, r.nfe, r.seconds);
    std::fflush(stdout);
    csv << r.solver << "," << r.steps << "," << r.tolerance << "," << r.accuracy << "," << r.nfe << "," << r.seconds
        << "\n";
  }
  write_text_atomically(csv_path, csv.str());
  if (!baselines.empty()) {
    fmt::print("\ntrained models (test accuracy after {} epochs):\n", static_cast<long long>(a.epochs));
    for (auto it = baselines.begin(); it != baselines.end(); ++it)
      fmt::print("  {:<38} {:.4f}\n", it.key(), it.value().get<double>());
    write_text_atomically((fs::path(dir) / "trained.json").string(), baselines.dump(2) + "\n");
  }
  fmt::print("wrote {}\n", csv_path);
  if (a.no_plot) return;
  std::string plot = "plot ";
  const char* solvers[] = {"euler", "midpoint", "rk4", "dopri5"};
  for (int i = 0; i < 4; ++i) {
    const auto dat = (fs::path(dir) / (std::string("solver_") + solvers[i] + ".dat")).string();
    std::ostringstream out;
    for (const auto& r : rows)
      if (r.solver == solvers[i]) out << r.nfe << " " << r.accuracy << "\n";
    write_text_atomically(dat, out.str());
    plot +=
        std::string(i ? ", " : "") + "'" + dat + "' using 1:2 with linespoints lw 2 pt 7 title '" + solvers[i] + "'";
  }
  // The other trained models as dashed reference lines (the ode-resnet itself is the rk4 point at 8 evaluations).
  int dash = 2;
  for (auto it = baselines.begin(); it != baselines.end(); ++it)
    if (it.key().rfind("ode-resnet", 0) != 0)
      plot +=
          fmt::format(", {} with lines dt {} lw 2 title '{} (trained)'", it.value().get<double>(), dash++, it.key());
  double low = 1, high = 0;
  for (const auto& r : rows) low = std::min(low, r.accuracy), high = std::max(high, r.accuracy);
  for (auto it = baselines.begin(); it != baselines.end(); ++it)
    low = std::min(low, it.value().get<double>()), high = std::max(high, it.value().get<double>());
  // A margin of a tenth of the range above and below, so that no line runs along the frame.
  const double margin = std::max(0.002, 0.1 * (high - low));
  const auto yrange = fmt::format("set yrange [{:.4f}:{:.4f}]\n", low - margin, high + margin);
  const auto png = (fs::path(dir) / "ode_solvers.png").string();
  run_gnuplot(
      "set title 'One trained ode-resnet (rk4, 2 steps) evaluated with other solvers'\n"
      "set xlabel 'function evaluations per forward pass'\nset ylabel 'test accuracy'\nset logscale x 2\n"
      "set key bottom right\nset grid\n" +
          std::string(yrange) + plot + "\n",
      png);
  fmt::print("wrote {}\n", png);
}

}  // namespace

void add_ode_solvers(CLI::App& experiment) {
  auto a = std::make_shared<OdeArgs>();
  auto* cmd = experiment.add_subcommand(
      "ode-solvers", "ode-resnet: test accuracy against solver and steps at inference, against ResNet and cnn");
  cmd->add_option("--run", a->run, "Evaluate this ode-resnet run instead of training one");
  cmd->add_option("--epochs", a->epochs, "Epochs for each trained model (default 3)")->check(positive());
  cmd->add_option("--limit", a->limit, "First N images of each split (0 = all)")->check(non_negative());
  cmd->add_option("--out", a->out, "Output directory (default runs/ode-solvers-DATE-TIME)");
  cmd->add_option("--data-dir", a->data_dir, "Fashion-MNIST directory");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->add_flag("--no-baselines", a->no_baselines, "Train only the ode-resnet, not the ResNet and cnn baselines");
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only");
  cmd->callback([a] { run_ode_solvers(*a); });
}

}  // namespace zoo::cli
