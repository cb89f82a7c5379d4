// The experiments' claims: double descent (peak at N = n, descent beyond, interpolation), and the priors table.
#include "tests/helpers.h"

#include <catch2/catch.hpp>

#include <sstream>

using zoo::test::TempDir;

namespace {
/// Rows of a CSV with a header line, as name -> column of doubles (non-numeric cells read as NaN).
std::map<std::string, std::vector<double>> read_csv(const std::string& path) {
  std::istringstream in(zoo::test::read_text(path));
  std::string line;
  std::getline(in, line);
  std::vector<std::string> names;
  std::stringstream header(line);
  for (std::string cell; std::getline(header, cell, ',');) names.push_back(cell);
  std::map<std::string, std::vector<double>> columns;
  while (std::getline(in, line)) {
    std::stringstream row(line);
    size_t i = 0;
    for (std::string cell; std::getline(row, cell, ',') && i < names.size(); ++i) {
      char* end = nullptr;
      double v = std::strtod(cell.c_str(), &end);
      columns[names[i]].push_back(end && *end == 0 ? v : std::nan(""));
    }
  }
  return columns;
}
}  // namespace

TEST_CASE("Double descent: test error and norm peak at N = n and fall beyond, train error 0 from N = n",
          "[experiments][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const int n = 200;
  auto r = zoo::test::run_zoo(
      "experiment double-descent --n 200 --test-n 1000 --seeds 3 --no-plot "
      "--ratios 0.1 0.25 0.5 0.8 1 1.25 2 5 10 --out " +
      tmp.str());
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  auto c = read_csv(tmp.str("double_descent.csv"));
  const auto& features = c["features"];
  REQUIRE(features.size() == 9);
  auto argmax = [](const std::vector<double>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
  CHECK(features[argmax(c["test_mse"])] == n);
  CHECK(features[argmax(c["norm"])] == n);
  CHECK(features[argmax(c["test_error"])] == n);
  const size_t at_n = 4, last = 8, first = 0;
  CHECK(c["test_error"][last] < 0.6 * c["test_error"][at_n]);  // the second descent
  CHECK(c["test_error"][at_n] > c["test_error"][first]);       // ... after a rise: the classical U first
  CHECK(c["norm"][last] < c["norm"][at_n] / 10);
  for (size_t i = at_n; i < features.size(); ++i) {
    INFO("features " << features[i]);
    CHECK(c["train_error"][i] == 0.0);  // interpolation from the threshold on
    CHECK(c["train_mse"][i] < 1e-12);
  }
  CHECK(c["train_mse"][first] > 0.1);  // too few features cannot fit the labels
}

TEST_CASE("Priors experiment: Laplace makes exact zeros, the Gaussian shrinks, on a subset", "[experiments][priors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto r = zoo::test::run_zoo("experiment priors --limit 6000 --epochs 2 --lambdas 0.001 --out " + tmp.str());
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(std::filesystem::exists(tmp.path() / "priors_weights.png"));
  auto text = zoo::test::read_text(tmp.path() / "priors.csv");
  std::istringstream in(text);
  std::string header, none, gaussian, laplace;
  std::getline(in, header);
  std::getline(in, none);
  std::getline(in, gaussian);
  std::getline(in, laplace);
  auto field = [](const std::string& row, int i) {
    std::stringstream s(row);
    std::string cell;
    for (int k = 0; k <= i; ++k) std::getline(s, cell, ',');
    return std::stod(cell);
  };
  CHECK(none.rfind("none,", 0) == 0);
  CHECK(field(gaussian, 3) < field(none, 3));  // weight norm
  CHECK(field(laplace, 4) > 0.5);              // fraction of exact zeros (measured 0.84)
  CHECK(field(none, 4) == 0.0);
  CHECK(field(gaussian, 4) == 0.0);
  CHECK(field(laplace, 2) > 0.5);  // and it still classifies (measured 0.71; chance 0.1)
}

TEST_CASE("mhc-stability: HC's composite gain explodes, mHC's stays near 1, mHC-lite's is exactly 1",
          "[experiments][mhc]") {
  TempDir tmp;
  auto r = zoo::test::run_zoo("experiment mhc-stability --layers 32 --scales 0 0.5 --no-plot --threads 1 --out " +
                              tmp.str());
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  auto csv = read_csv(tmp.str("mhc_stability.csv"));
  REQUIRE(csv["backward_gain"].size() == 6);  // hc, mhc, mhc-lite at scales 0 and 0.5
  const auto& backward = csv["backward_gain"];
  const auto& forward = csv["forward_gain"];
  CHECK(backward[0] == Approx(1).margin(1e-9));  // hc at initialisation: H_res = I, no dynamic part yet
  CHECK(backward[1] > 100);                      // hc, perturbed: unconstrained products grow
  CHECK(backward[3] > 1.0);                      // mhc: Sinkhorn's columns are not exact ...
  CHECK(backward[3] < 1.1);                      // ... but the composite stays near 1
  CHECK(forward[3] == Approx(1).margin(1e-5));   // rows are normalised last: exact
  CHECK(backward[5] == Approx(1).margin(1e-5));  // mhc-lite: doubly stochastic by construction
  CHECK(forward[5] == Approx(1).margin(1e-5));
  CHECK(csv["max_column_error"][5] < 1e-6);
  auto bad = zoo::test::run_zoo("experiment mhc-stability --scales -1 --no-plot --out " + tmp.str("bad"));
  CHECK(bad.code != 0);
  CHECK_THAT(bad.err, Catch::Contains("--scales must be >= 0"));
}

TEST_CASE("ode-solvers: one trained ode-resnet evaluated with every solver, NFE as the solvers define it",
          "[experiments][ode][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto r = zoo::test::run_zoo(
      "experiment ode-solvers --limit 1000 --epochs 2 --no-baselines --no-plot --threads 2 --out " + tmp.str());
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  std::istringstream in(zoo::test::read_text(tmp.str("ode_solvers.csv")));
  std::string line;
  std::getline(in, line);
  int rows = 0;
  double rk4_2 = 0, euler_1 = 0;
  while (std::getline(in, line)) {
    std::stringstream row(line);
    std::string solver, steps, tolerance, accuracy, nfe;
    std::getline(row, solver, ',');
    std::getline(row, steps, ',');
    std::getline(row, tolerance, ',');
    std::getline(row, accuracy, ',');
    std::getline(row, nfe, ',');
    const int per_step = solver == "euler" ? 1 : solver == "midpoint" ? 2 : solver == "rk4" ? 4 : 0;
    if (per_step) CHECK(std::stod(nfe) == per_step * std::stoi(steps));
    if (solver == "dopri5") CHECK(std::stod(nfe) >= 8);  // 2 for the first step size + 6 per accepted step
    CHECK(std::stod(accuracy) > 0.3);                    // chance 0.1 for every solver
    if (solver == "rk4" && steps == "2") rk4_2 = std::stod(accuracy);
    if (solver == "euler" && steps == "1") euler_1 = std::stod(accuracy);
    ++rows;
  }
  CHECK(rows == 16);
  CHECK(rk4_2 > 0.4);  // the solver it was trained with: 4x chance (measured 0.50 after 2 epochs on 1000 images)
  CHECK(euler_1 > 0.3);
  auto wrong = zoo::test::run_zoo("experiment ode-solvers --run " + tmp.str("ode-resnet/nonexistent") + " --no-plot");
  CHECK(wrong.code != 0);
  // Runs without an ODE block are refused by name, in one line.
  REQUIRE(zoo::test::run_zoo("train mlp --limit 100 --epochs 1 --no-progress --out " + tmp.str("mlp")).code == 0);
  REQUIRE(zoo::test::run_zoo("train ode-resnet --set block=resnet --limit 100 --epochs 1 --no-progress --out " +
                             tmp.str("resnet"))
              .code == 0);
  auto mlp = zoo::test::run_zoo("experiment ode-solvers --no-plot --run " + tmp.str("mlp") + " --out " + tmp.str("e1"));
  CHECK(mlp.code == 1);
  CHECK_THAT(mlp.err, Catch::Contains("is a mlp run; --run needs an ode-resnet run"));
  CHECK(zoo::test::count_lines(mlp.err) == 1);
  auto resnet =
      zoo::test::run_zoo("experiment ode-solvers --no-plot --run " + tmp.str("resnet") + " --out " + tmp.str("e2"));
  CHECK(resnet.code == 1);
  CHECK_THAT(resnet.err, Catch::Contains("has no ODE block"));
}
