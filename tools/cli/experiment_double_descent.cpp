// zoo experiment double-descent: random ReLU features fitted by minimum-norm least squares on a Fashion-MNIST
// subset (Belkin et al. 2019). Test error and the norm of the solution peak where the number of features N
// equals the number of training images n (the interpolation threshold) and fall again beyond it: past the
// threshold many solutions interpolate, and the pseudo-inverse picks the one of least norm, which is smooth.
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "core/files.h"
#include "datasets/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/threads.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace zoo::cli {

namespace {

struct DDArgs {
  int64_t n = 1000, test_n = 2000, seeds = 3, threads = 0;
  double noise = 0.0;
  std::vector<double> ratios{0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2, 3, 5, 10};
  std::string out, data_dir;
  bool no_plot = false;
};

struct Point {
  int64_t features = 0;
  double train_mse = 0, test_mse = 0, train_error = 0, test_error = 0, norm = 0;
};

/// One fit: random ReLU features of width `features`, min-norm least squares, errors and norm.
Point fit_point(const torch::Tensor& x_train, const torch::Tensor& y_train, const torch::Tensor& labels_train,
                const torch::Tensor& x_test, const torch::Tensor& y_test, const torch::Tensor& labels_test,
                int64_t features, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t d = x_train.size(1);
  auto v = at::randn({d, features}, gen, torch::kFloat64) / std::sqrt(static_cast<double>(d));
  auto phi_train = torch::relu(x_train.matmul(v));
  auto phi_test = torch::relu(x_test.matmul(v));
  // gelsd: SVD-based, returns the minimum-norm solution when the system is underdetermined (N > n).
  auto a = std::get<0>(torch::linalg_lstsq(phi_train, y_train, c10::nullopt, "gelsd"));
  auto pred_train = phi_train.matmul(a), pred_test = phi_test.matmul(a);
  Point p;
  p.features = features;
  p.train_mse = (pred_train - y_train).pow(2).sum(1).mean().item<double>();
  p.test_mse = (pred_test - y_test).pow(2).sum(1).mean().item<double>();
  p.train_error = pred_train.argmax(1).ne(labels_train).to(torch::kFloat64).mean().item<double>();
  p.test_error = pred_test.argmax(1).ne(labels_test).to(torch::kFloat64).mean().item<double>();
  p.norm = a.norm().item<double>();
  return p;
}

void run_double_descent(const DDArgs& a) {
  if (a.n < 10) throw std::invalid_argument("--n must be at least 10");
  if (a.noise < 0 || a.noise > 1) throw std::invalid_argument("--noise must be in [0, 1]");
  // Not training::apply_threads: that pins OpenBLAS to one thread, right for training but not here, where the
  // time goes into one large LAPACK least-squares solve per point (threaded OpenBLAS: 4.9 s against 5.9 s).
  torch::set_num_threads(static_cast<int>(a.threads > 0 ? a.threads : training::usable_cores()));
  datasets::DataConfig data;
  data.data_dir = a.data_dir;
  data.val_fraction = 0;  // closed-form fits on --n items: nothing is selected, so nothing is held out
  auto splits = datasets::load_splits(data);
  auto train = std::dynamic_pointer_cast<datasets::TensorDataset>(splits.train);
  auto test = std::dynamic_pointer_cast<datasets::TensorDataset>(splits.test);
  if (a.n > train->size() || a.test_n > test->size())
    throw std::invalid_argument("--n / --test-n exceed the dataset (" + std::to_string(train->size()) + " / " +
                                std::to_string(test->size()) + ")");
  auto gen = at::detail::createCPUGenerator(12345);
  auto pick = at::randperm(train->size(), gen, torch::kInt64).slice(0, 0, a.n);
  auto x_train = train->inputs().index_select(0, pick).flatten(1).to(torch::kFloat64);
  auto labels_train = train->targets().index_select(0, pick).clone();
  auto x_test = test->inputs().slice(0, 0, a.test_n).flatten(1).to(torch::kFloat64);
  auto labels_test = test->targets().slice(0, 0, a.test_n);
  // Label noise: a fraction of the training labels replaced by random classes (the peak gets sharper).
  if (a.noise > 0) {
    auto flip = at::rand({a.n}, gen, torch::kFloat64) < a.noise;
    labels_train = torch::where(flip, at::randint(0, 10, {a.n}, gen, torch::kInt64), labels_train);
  }
  // Standardise with the training statistics.
  auto mean = x_train.mean(0, true);
  const auto stdev = (x_train - mean).std().item<double>();
  x_train = (x_train - mean) / stdev;
  x_test = (x_test - mean) / stdev;
  auto y_train = torch::one_hot(labels_train, 10).to(torch::kFloat64);
  auto y_test = torch::one_hot(labels_test, 10).to(torch::kFloat64);

  const std::string dir = a.out.empty() ? experiment_dir("double-descent") : a.out;
  std::filesystem::create_directories(dir);
  const auto csv_path = (std::filesystem::path(dir) / "double_descent.csv").string();
  std::ostringstream csv;
  csv << "features,ratio,train_mse,test_mse,train_error,test_error,norm\n";
  fmt::print("double descent: n = {} training images, {} test images, label noise {:.2f}, {} seeds\n",
             static_cast<long long>(a.n), static_cast<long long>(a.test_n), a.noise, static_cast<long long>(a.seeds));
  fmt::print("{:>9} {:>6} {:>10} {:>10} {:>9} {:>9} {:>12}\n", "features", "N/n", "train_mse", "test_mse", "train_err",
             "test_err", "norm");
  for (double ratio : a.ratios) {
    const auto features = std::max<int64_t>(1, static_cast<int64_t>(std::llround(ratio * static_cast<double>(a.n))));
    Point mean_point;
    mean_point.features = features;
    for (int64_t s = 0; s < a.seeds; ++s) {
      auto p = fit_point(x_train, y_train, labels_train, x_test, y_test, labels_test, features, 1000 + s);
      const double w = 1.0 / static_cast<double>(a.seeds);
      mean_point.train_mse += w * p.train_mse;
      mean_point.test_mse += w * p.test_mse;
      mean_point.train_error += w * p.train_error;
      mean_point.test_error += w * p.test_error;
      mean_point.norm += w * p.norm;
    }
    const auto& m = mean_point;
    fmt::print("{:9} {:6.2f} {:10.4g} {:10.4g} {:9.4f} {:9.4f} {:12.4g}\n", static_cast<long long>(features), ratio,
               m.train_mse, m.test_mse, m.train_error, m.test_error, m.norm);
    std::fflush(stdout);
    csv << features << "," << ratio << "," << m.train_mse << "," << m.test_mse << "," << m.train_error << ","
        << m.test_error << "," << m.norm << "\n";
  }
  write_text_atomically(csv_path, csv.str());
  fmt::print("wrote {}\n", csv_path);
  if (a.no_plot) return;
  const auto png = (std::filesystem::path(dir) / "double_descent.png").string();
  run_gnuplot(
      "set datafile separator ','\n"
      "set title 'Double descent: random ReLU features, min-norm least squares, n = " +
          std::to_string(a.n) +
          " Fashion-MNIST images'\n"
          "set logscale x\nset xlabel 'number of random features N'\n"
          "set ylabel 'test error (0-1)'\nset y2label '||a|| (norm of the min-norm solution)'\n"
          "set logscale y2\nset ytics nomirror\nset y2tics\nset key top right\nset grid\n"
          "set arrow from " +
          std::to_string(a.n) + ", graph 0 to " + std::to_string(a.n) +
          ", graph 1 nohead dashtype 2 lc rgb 'gray40'\n"
          "set label 'N = n (interpolation threshold)' at " +
          std::to_string(a.n) +
          ", graph 0.95 offset 1,0 tc rgb 'gray40'\n"
          "plot '" +
          csv_path +
          "' every ::1 using 1:6 with linespoints lw 2 pt 7 title 'test error', "
          "'' every ::1 using 1:5 with linespoints lw 1 pt 6 title 'train error', "
          "'' every ::1 using 1:7 axes x1y2 with linespoints lw 2 pt 5 dashtype 3 title 'norm ||a||'\n",
      png);
  fmt::print("wrote {}\n", png);
}

}  // namespace

void add_double_descent(CLI::App& experiment) {
  auto a = std::make_shared<DDArgs>();
  auto* cmd = experiment.add_subcommand("double-descent",
                                        "Random ReLU features + min-norm least squares: test error against features");
  cmd->add_option("--n", a->n, "Training images (default 1000)")->check(positive());
  cmd->add_option("--test-n", a->test_n, "Test images (default 2000)")->check(positive());
  cmd->add_option("--noise", a->noise, "Fraction of training labels replaced by random ones (default 0)");
  cmd->add_option("--seeds", a->seeds, "Random feature draws averaged per point (default 3)")->check(positive());
  cmd->add_option("--ratios", a->ratios, "Feature counts as multiples of n (default 0.1 ... 10, dense near 1)");
  cmd->add_option("--out", a->out, "Output directory (default runs/double-descent-DATE-TIME)");
  cmd->add_option("--data-dir", a->data_dir, "Fashion-MNIST directory");
  cmd->add_option("--threads", a->threads, "Threads (0 = all cores)")->check(non_negative());
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only");
  cmd->callback([a] { run_double_descent(*a); });
}

}  // namespace zoo::cli
