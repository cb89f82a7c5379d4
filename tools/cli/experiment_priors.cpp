// zoo experiment priors: the Bayesian view of regularisation, measured. Trains the mlp with no prior, a
// Gaussian prior (L2) and a Laplace prior (L1, proximal steps) at the same lambdas, and reports test accuracy,
// the norm of the weights and the fraction of weights that are exactly zero; draws the weight histograms.
#include "core/files.h"
#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/priors.h"
#include "training/trainer.h"

#include <fmt/format.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace zoo::cli {

namespace {

struct PriorsArgs {
  std::vector<double> lambdas{1e-4, 1e-3};
  int64_t epochs = 5, limit = 0, threads = 0;
  double lr = 0.05;
  std::string out, data_dir;
  bool no_plot = false;
};

void run_priors(const PriorsArgs& a) {
  for (double l : a.lambdas)
    if (!(l > 0)) throw std::invalid_argument("--lambdas must be positive");
  datasets::DataConfig data;
  data.data_dir = a.data_dir;
  data.limit = a.limit;
  data.val_fraction = 0;  // the weights a prior made after the last epoch are what is compared: nothing is selected
  auto splits = datasets::load_splits(data);
  const std::string dir = a.out.empty() ? experiment_dir("priors") : a.out;
  std::filesystem::create_directories(dir);
  const auto csv_path = (std::filesystem::path(dir) / "priors.csv").string();
  std::ostringstream csv;
  csv << "prior,lambda,test_accuracy,weight_norm,zero_fraction,train_time_s\n";

  std::vector<std::pair<std::string, double>> runs{{"none", 0.0}};
  for (double l : a.lambdas) runs.emplace_back("gaussian", l);
  for (double l : a.lambdas) runs.emplace_back("laplace", l);
  fmt::print("priors: mlp, SGD lr {:g} momentum 0.9, {} epochs, {}\n", a.lr, static_cast<long long>(a.epochs),
             splits.train->describe());
  fmt::print("{:<9} {:>8} {:>9} {:>12} {:>10}\n", "prior", "lambda", "accuracy", "||w||_2", "zeros");
  std::vector<std::string> histogram_files;
  for (const auto& [kind, lambda] : runs) {
    torch::manual_seed(0);
    auto [model, options] = models::build_model("mlp");
    training::Trainer trainer(model, std::make_shared<training::ClassificationObjective>(), splits,
                              training::TrainOptions()
                                  .epochs(a.epochs)
                                  .batch_size(128)
                                  .optimizer("sgd")
                                  .lr(a.lr)
                                  .momentum(0.9)
                                  .threads(a.threads)
                                  .progress(false));
    training::PriorOptions prior;
    prior.kind = kind;
    prior.lambda = lambda;
    prior.proximal = kind == "laplace";
    training::attach_prior(trainer, prior);
    double seconds = 0;
    trainer.add_epoch_hook([&](const nlohmann::json& r) { seconds += r["train_time_s"].get<double>(); });
    // Weight statistics over the covered weights (what the prior acts on), the same set for every run.
    std::vector<torch::Tensor> weights;
    std::ostringstream quiet;
    auto record = trainer.fit();
    for (const auto& p : model.ptr()->named_parameters())
      if (p.value().dim() >= 2) weights.push_back(p.value().detach().flatten());
    auto w = torch::cat(weights);
    const double accuracy = record["test"]["accuracy"].get<double>();
    const double norm = w.norm().item<double>();
    const double zeros = w.eq(0).to(torch::kFloat64).mean().item<double>();
    fmt::print("{:<9} {:8g} {:9.4f} {:12.4f} {:10.4f}\n", kind, lambda, accuracy, norm, zeros);
    std::fflush(stdout);
    csv << kind << "," << lambda << "," << accuracy << "," << norm << "," << zeros << "," << seconds << "\n";
    // First-layer weights for the histogram.
    const auto first = model.ptr()->named_parameters()["net.0.weight"].detach().flatten();
    const auto hist_path =
        (std::filesystem::path(dir) / ("weights_" + kind + "_" + std::to_string(lambda) + ".dat")).string();
    std::ostringstream hist;
    const auto counts = torch::histc(first.clamp(-0.15, 0.15), 121, -0.15, 0.15);
    for (int64_t i = 0; i < counts.size(0); ++i)
      hist << (-0.15 + (i + 0.5) * 0.3 / 121) << " " << counts[i].item<float>() << "\n";
    write_text_atomically(hist_path, hist.str());
    if (lambda == a.lambdas.back() || kind == "none") histogram_files.push_back(hist_path);
  }
  write_text_atomically(csv_path, csv.str());
  fmt::print("wrote {}\n", csv_path);
  if (a.no_plot) return;
  const auto png = (std::filesystem::path(dir) / "priors_weights.png").string();
  std::string plot = "plot ";
  const char* titles[] = {"no prior", "Gaussian (L2)", "Laplace (L1, proximal)"};
  for (size_t i = 0; i < histogram_files.size(); ++i)
    plot += std::string(i ? ", " : "") + "'" + histogram_files[i] + "' using 1:($2+1) with steps lw 2 title '" +
            titles[i] + "'";
  run_gnuplot(
      "set title 'First-layer weights of the mlp after training, lambda = " + fmt::format("{:g}", a.lambdas.back()) +
          " (exact zeros pile up in the middle bin under the Laplace prior)'\n"
          "set xlabel 'weight value (clamped to +-0.15)'\nset ylabel 'count + 1'\nset logscale y\nset grid\n" +
          plot + "\n",
      png);
  fmt::print("wrote {}\n", png);
}

}  // namespace

void add_priors(CLI::App& experiment) {
  auto a = std::make_shared<PriorsArgs>();
  auto* cmd = experiment.add_subcommand("priors",
                                        "mlp with no, Gaussian (L2) and Laplace (L1) priors: accuracy, "
                                        "weight norm, exact zeros");
  cmd->add_option("--lambdas", a->lambdas, "Prior strengths (default 1e-4 1e-3)");
  cmd->add_option("--epochs", a->epochs, "Epochs per run (default 5)")->check(positive());
  cmd->add_option("--lr", a->lr, "SGD learning rate (default 0.05)")->check(positive());
  cmd->add_option("--limit", a->limit, "First N images of each split (0 = all)")->check(non_negative());
  cmd->add_option("--out", a->out, "Output directory (default runs/priors-DATE-TIME)");
  cmd->add_option("--data-dir", a->data_dir, "Fashion-MNIST directory");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only");
  cmd->callback([a] { run_priors(*a); });
}

void add_double_descent(CLI::App& experiment);
void add_ode_solvers(CLI::App& experiment);
void add_mhc_stability(CLI::App& experiment);
void add_unet_vs_deconvnet(CLI::App& experiment);
void add_elmo_senses(CLI::App& experiment);
void add_elmo_mix(CLI::App& experiment);

void add_experiment(CLI::App& app) {
  auto* experiment = app.add_subcommand("experiment", "Run an experiment that checks a claim of the course sheet");
  experiment->require_subcommand(1);
  add_priors(*experiment);
  add_double_descent(*experiment);
  add_ode_solvers(*experiment);
  add_mhc_stability(*experiment);
  add_unet_vs_deconvnet(*experiment);
  add_elmo_senses(*experiment);
  add_elmo_mix(*experiment);
}

}  // namespace zoo::cli
