// zoo experiment mhc-stability: why mHC constrains the residual mixing matrices. Stacks `layers` hyper-connection
// wrappers (n streams) around random sublayers (Linear + tanh), moves every mixing parameter away from its
// initialisation by Gaussian noise of a given scale (as training does), and follows a batch through the stack.
// Reported per variant and scale: the gain of the composite residual mapping H_L ... H_1 (largest absolute row sum:
// forward; largest absolute column sum: backward; mHC paper Figs. 3 and 7), the largest column-sum error of a
// single H_res (Sinkhorn's residual), and how much the activations grew. Doubly stochastic matrices are closed
// under products, so mHC-lite's composite gain is exactly 1 and mHC's stays near 1; HC's is unconstrained.
#include "core/files.h"
#include "models/mhc.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/trainer.h"

#include <fmt/format.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace zoo::cli {

namespace {

namespace fs = std::filesystem;
using torch::Tensor;

struct MhcArgs {
  int64_t layers = 64, streams = 4, width = 64, batch = 32, seed = 0, threads = 0;
  std::vector<double> scales{0, 0.1, 0.2, 0.5, 1, 2};
  std::string out;
  bool no_plot = false;
};

struct StabilityResult {
  double forward_gain = 0, backward_gain = 0, column_error = 0, activation_growth = 0;
  std::vector<double> backward_by_depth;
};

StabilityResult follow(const MhcArgs& a, const std::string& variant, double scale) {
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  std::vector<models::MHC> stack;
  for (int64_t l = 0; l < a.layers; ++l) {
    torch::nn::Linear linear(a.width, a.width);  // random sublayer F(h) = tanh(W h + b), default init
    auto m = models::MHC(
        models::MHCOptions(a.width).streams(a.streams).variant(variant).layer_index(l),
        torch::nn::Functional([linear](const Tensor& h) mutable { return torch::tanh(linear->forward(h)); }));
    torch::NoGradGuard no_grad;
    for (auto& p : m->named_parameters(/*recurse=*/false)) {
      if (p.key().rfind("alpha", 0) == 0) continue;
      const double fan_in = p.key().rfind("phi", 0) == 0 ? static_cast<double>(p.value().size(0)) : 1.0;
      p.value().add_(scale / std::sqrt(fan_in) * torch::randn_like(p.value()));
    }
    stack.push_back(m);
  }
  torch::NoGradGuard no_grad;
  auto x = models::expand_streams(torch::randn({a.batch, a.width}), a.streams);
  const auto x0_norm = x.flatten(1).norm(2, 1);
  auto composite =
      torch::eye(a.streams, torch::kFloat64).expand({a.batch, a.streams, a.streams});  // double: HC overflows float
  StabilityResult r;
  for (auto& m : stack) {
    const auto mix = m->mixing(x);
    r.column_error = std::max(r.column_error, (mix.res.sum(-2) - 1).abs().max().item<double>());
    composite = torch::matmul(mix.res.to(torch::kFloat64), composite);
    x = m->combine(x, mix);
    r.backward_by_depth.push_back(composite.abs().sum(-2).max().item<double>());
  }
  r.forward_gain = composite.abs().sum(-1).max().item<double>();
  r.backward_gain = composite.abs().sum(-2).max().item<double>();
  r.activation_growth = (x.flatten(1).norm(2, 1) / x0_norm).max().item<double>();
  return r;
}

void run_mhc_stability(const MhcArgs& a) {
  if (a.layers < 1 || a.streams < 1 || a.width < 1 || a.batch < 1)
    throw std::invalid_argument("--layers, --streams, --width and --batch must be >= 1");
  for (double s : a.scales)
    if (!(s >= 0)) throw std::invalid_argument("--scales must be >= 0");
  training::apply_threads(a.threads);
  const std::string dir = a.out.empty() ? experiment_dir("mhc-stability") : a.out;
  fs::create_directories(dir);
  const auto csv_path = (fs::path(dir) / "mhc_stability.csv").string();
  std::ostringstream csv;
  csv << "variant,scale,forward_gain,backward_gain,max_column_error,activation_growth\n";
  fmt::print("mhc-stability: {} layers, {} streams of width {}, Linear+tanh sublayers, batch {}, seed {}\n",
             static_cast<long long>(a.layers), static_cast<long long>(a.streams), static_cast<long long>(a.width),
             static_cast<long long>(a.batch), static_cast<long long>(a.seed));
  fmt::print("{:<9} {:>6} {:>14} {:>14} {:>12} {:>12}\n", "variant", "scale", "forward gain", "backward gain",
             "col error", "|x_L|/|x_0|");
  std::vector<std::string> variants{"hc", "mhc", "mhc-lite"};
  if (a.streams > 6) variants.pop_back();  // mhc-lite needs n! permutation matrices
  std::vector<std::string> depth_files;
  for (const auto& variant : variants) {
    for (double scale : a.scales) {
      const auto r = follow(a, variant, scale);
      fmt::print("{:<9} {:6g} {:14.6g} {:14.6g} {:12.3g} {:12.4g}\n", variant, scale, r.forward_gain, r.backward_gain,
                 r.column_error, r.activation_growth);
      std::fflush(stdout);
      csv << variant << "," << scale << "," << r.forward_gain << "," << r.backward_gain << "," << r.column_error << ","
          << r.activation_growth << "\n";
      if (scale == a.scales.back()) {
        const auto dat = (fs::path(dir) / ("depth_" + variant + ".dat")).string();
        std::ostringstream out;
        for (size_t l = 0; l < r.backward_by_depth.size(); ++l) out << l + 1 << " " << r.backward_by_depth[l] << "\n";
        write_text_atomically(dat, out.str());
        depth_files.push_back(dat);
      }
    }
  }
  write_text_atomically(csv_path, csv.str());
  fmt::print("wrote {}\n", csv_path);
  if (a.no_plot) return;
  // Two panels: every variant on a log scale (hc grows by tens of orders of magnitude), and the doubly
  // stochastic ones alone on a linear scale, where their gain of 1 is not a line on the bottom axis.
  std::string all = "plot ", bounded = "plot ";
  for (size_t i = 0; i < depth_files.size(); ++i) {
    const auto line =
        fmt::format("'{}' using 1:2 with lines lw 2 dt {} lc {} title '{}'", depth_files[i], i + 1, i + 1, variants[i]);
    all += std::string(i ? ", " : "") + line;
    if (variants[i] != "hc") bounded += std::string(bounded == "plot " ? "" : ", ") + line;
  }
  const auto png = (fs::path(dir) / "mhc_stability.png").string();
  std::string script = fmt::format(
      "set multiplot layout 1,2 title 'Backward gain of the composite residual mapping, mixing noise scale {:g}'\n"
      "set xlabel 'depth (sublayers)'\nset ylabel 'max column sum of |H_L ... H_1|'\nset key top left\nset grid\n"
      "set title 'all variants (log scale)'\nset logscale y\n{}\n",
      a.scales.back(), all);
  if (bounded != "plot ")
    script += "set title 'doubly stochastic mixing only (linear scale)'\nunset logscale y\nset yrange [0:2]\n" +
              bounded + "\n";
  run_gnuplot(script + "unset multiplot\n", png);
  fmt::print("wrote {}\n", png);
}

}  // namespace

void add_mhc_stability(CLI::App& experiment) {
  auto a = std::make_shared<MhcArgs>();
  auto* cmd = experiment.add_subcommand("mhc-stability",
                                        "Composite residual gain of hc, mhc and mhc-lite over a deep random stack");
  cmd->add_option("--layers", a->layers, "Depth: number of wrapped sublayers (default 64)")->check(positive());
  cmd->add_option("--streams", a->streams, "Residual streams n (default 4)")->check(positive());
  cmd->add_option("--width", a->width, "Features per stream (default 64)")->check(positive());
  cmd->add_option("--batch", a->batch, "Inputs followed through the stack (default 32)")->check(positive());
  cmd->add_option("--scales", a->scales, "Noise scales of the mixing parameters (default 0 0.1 0.2 0.5 1 2)");
  cmd->add_option("--seed", a->seed, "Random seed (default 0)")->check(non_negative());
  cmd->add_option("--out", a->out, "Output directory (default runs/mhc-stability-DATE-TIME)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only");
  cmd->callback([a] { run_mhc_stability(*a); });
}

}  // namespace zoo::cli
