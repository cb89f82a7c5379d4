// What the trainer does around the step: the plateau schedule on the monitored metric, extending a run without a
// jump in the learning rate (or with a warm restart when asked), the top-k checkpoints and the moving average of
// the weights (--ema), each exact across a resume.
#include "datasets/registry.h"
#include "models/mlp.h"
#include "tests/helpers.h"
#include "tests/training/run_helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace zoo;
using nlohmann::json;
using zoo::test::metrics_log;
using zoo::test::quiet_options;
using zoo::test::same_file_tensors;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// The learning rate of every optimizer step the trainer takes from now on.
std::shared_ptr<std::vector<double>> record_rates(training::Trainer& trainer) {
  auto rates = std::make_shared<std::vector<double>>();
  trainer.add_gradient_hook([rates, &trainer](torch::nn::Module&) {
    rates->push_back(trainer.optimizer().param_groups()[0].options().get_lr());
  });
  return rates;
}

/// Classification whose training loss is a scripted number per epoch (one step per epoch), so the monitored
/// train.loss follows the script; the gradient is zero.
struct ScriptedLoss : training::ClassificationObjective {
  std::vector<double> script;
  size_t calls = 0;
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch&, training::Terms&) override {
    auto& module = *model.ptr();
    const double value = module.is_training() ? script.at(calls++) : script.front();
    return module.parameters().front().sum() * 0 + value;
  }
};

}  // namespace

TEST_CASE("Schedules: plateau lowers the rate on a stalled metric as torch's ReduceLROnPlateau does",
          "[trainer][schedule]") {
  // The reference: torch.optim.lr_scheduler.ReduceLROnPlateau(SGD(lr=0.1), mode="min", factor=0.5, patience=1,
  // threshold=0, threshold_mode="abs") stepped with these ten values gives the rates
  // 0.1 0.1 0.1 0.1 0.05 0.05 0.05 0.05 0.025 0.025 and then 0.0125 (PyTorch 1.13, /usr/bin/python3).
  const std::vector<double> script{5, 4, 4, 4, 4, 3, 3, 3, 3, 3};
  auto objective = std::make_shared<ScriptedLoss>();
  objective->script = script;
  auto x = torch::randn({8, 1, 28, 28});
  auto y = torch::randint(0, 10, {8}, torch::kInt64);
  datasets::Splits data{std::make_shared<datasets::TensorDataset>(x, y, "eight"),
                        std::make_shared<datasets::TensorDataset>(x, y, "eight")};
  training::Trainer trainer(torch::nn::AnyModule(models::MLP()), objective, data,
                            quiet_options()
                                .epochs(10)
                                .batch_size(8)
                                .optimizer("sgd")
                                .lr(0.1)
                                .schedule("plateau")
                                .plateau_patience(1)
                                .gamma(0.5)
                                .monitor("train.loss"));
  auto rates = record_rates(trainer);
  trainer.fit();
  CHECK(*rates == std::vector<double>{0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025});
  CHECK(trainer.state().lr_scale == 0.125);
  CHECK(trainer.state().lr_reduced_epoch == 10);
}

TEST_CASE("Schedules: plateau's state is in the checkpoint, so a resumed run lowers the rate at the same epochs",
          "[trainer][schedule][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // min_delta 1 (no epoch improves on the first by a whole unit of accuracy) and patience 0: every epoch after the
  // first halves the rate.
  const auto options =
      quiet_options().epochs(4).seed(4).schedule("plateau").plateau_patience(0).gamma(0.5).min_delta(1.0);
  auto straight = training::Run::create(zoo::test::small_run("mlp", 200, options), tmp.str("straight"));
  straight->fit();
  auto half = training::Run::create(
      zoo::test::small_run(
          "mlp", 200,
          quiet_options().epochs(2).seed(4).schedule("plateau").plateau_patience(0).gamma(0.5).min_delta(1.0)),
      tmp.str("resumed"));
  half->fit();
  auto resumed = training::Run::resume(tmp.str("resumed"), 4);
  resumed->fit();
  const auto a = metrics_log(tmp.str("straight")), b = metrics_log(tmp.str("resumed"));
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(a[i]["lr"].get<double>() == 1e-3 * std::pow(0.5, std::max(0, i - 1)));
  for (int i = 0; i < 4; ++i) CHECK(b[i]["lr"] == a[i]["lr"]);
  CHECK(same_file_tensors(tmp.str("straight/model.pt"), tmp.str("resumed/model.pt")));
}

TEST_CASE(
    "Extending a run: the added epochs go on at the schedule's last rate (no step jumps), --restart-schedule starts "
    "a new cycle",
    "[trainer][schedule][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // 200 items, 180 for training in batches of 50: 4 steps per epoch.
  const auto options = quiet_options().epochs(2).seed(6).batch_size(50).lr(0.01).schedule("cosine");
  auto first = training::Run::create(zoo::test::small_run("mlp", 200, options), tmp.str("hold"));
  auto planned = record_rates(first->trainer());
  first->fit();
  REQUIRE(planned->size() == 8);
  for (size_t i = 0; i < 8; ++i) CHECK((*planned)[i] == Approx(0.005 * (1 + std::cos(M_PI * i / 8.0))).epsilon(1e-12));
  fs::copy(tmp.path() / "hold", tmp.path() / "restart", fs::copy_options::recursive);

  // Extended to 4 epochs: the cosine is not stretched over 4; every added step takes the last planned rate.
  auto held = training::Run::resume(tmp.str("hold"), 4);
  auto added = record_rates(held->trainer());
  held->fit();
  REQUIRE(added->size() == 8);
  for (double lr : *added) CHECK(lr == planned->back());
  CHECK(training::read_json_file(tmp.str("hold/state.json"))["schedule"]["steps"] == 8);
  // Extended once more: the same.
  auto again = training::Run::resume(tmp.str("hold"), 5);
  auto more = record_rates(again->trainer());
  again->fit();
  REQUIRE(more->size() == 4);
  for (double lr : *more) CHECK(lr == planned->back());

  // Asked for: a warm restart, a new cosine over the 8 added steps from lr.
  auto restarted = training::Run::resume(tmp.str("restart"), 4, -1, false, nullptr, true);
  auto cycle = record_rates(restarted->trainer());
  restarted->fit();
  REQUIRE(cycle->size() == 8);
  for (size_t i = 0; i < 8; ++i) CHECK((*cycle)[i] == Approx(0.005 * (1 + std::cos(M_PI * i / 8.0))).epsilon(1e-12));
  const auto schedule = training::read_json_file(tmp.str("restart/state.json"))["schedule"];
  CHECK(schedule["start"] == 8);
  CHECK(schedule["steps"] == 8);
  CHECK_THROWS_WITH(training::Run::resume(tmp.str("restart"), 4, -1, false, nullptr, true),
                    Catch::Contains("a schedule restart needs epochs beyond the 4 planned"));
}

TEST_CASE("Top-k checkpoints: the k best epochs by the monitored metric are kept as epoch-N.pt, exact across a resume",
          "[selection][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto options = quiet_options().epochs(5).seed(8).lr(3e-3).save_top_k(2).monitor("val.loss");
  const auto dir = tmp.str("run");
  auto run = training::Run::create(zoo::test::small_run("mlp", 300, options), dir);
  run->fit();
  // The two lowest validation losses of the log, by hand.
  auto log = metrics_log(dir);
  REQUIRE(log.size() == 5);
  std::vector<std::pair<double, int64_t>> ranked;
  for (const auto& r : log) ranked.emplace_back(r["val"]["loss"].get<double>(), r["epoch"].get<int64_t>());
  std::sort(ranked.begin(), ranked.end());
  const auto& st = run->trainer().state();
  REQUIRE(st.top_k.size() == 2);
  CHECK(st.top_k[0].first == ranked[0].second);
  CHECK(st.top_k[1].first == ranked[1].second);
  CHECK(st.best_epoch == ranked[0].second);
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind("epoch-", 0) == 0) files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  std::vector<std::string> expected{fmt::format("epoch-{}.pt", std::min(ranked[0].second, ranked[1].second)),
                                    fmt::format("epoch-{}.pt", std::max(ranked[0].second, ranked[1].second))};
  CHECK(files == expected);
  CHECK(same_file_tensors(dir + fmt::format("/epoch-{}.pt", ranked[0].second), dir + "/best.pt"));
  // Each file holds its epoch's weights: those of a run that stopped after that epoch.
  const int64_t second = ranked[1].second;
  auto prefix = training::Run::create(
      zoo::test::small_run("mlp", 300, quiet_options().epochs(second).seed(8).lr(3e-3).monitor("val.loss")),
      tmp.str("prefix"));
  prefix->fit();
  CHECK(same_file_tensors(dir + fmt::format("/epoch-{}.pt", second), tmp.str("prefix/model.pt")));
  // They load by name; an epoch not kept is refused with the list of those held.
  CHECK(training::Run::open(dir, {}, fmt::format("epoch-{}", second))->evaluate()["items"] == 300);
  const int64_t dropped = ranked[4].second;
  CHECK_THROWS_WITH(training::Run::open(dir, {}, fmt::format("epoch-{}", dropped)),
                    Catch::Contains(fmt::format("not 'epoch-{}'", dropped)) && Catch::Contains("best, last, epoch-"));

  // Two epochs, then resumed to five: the same files with the same weights.
  auto part = training::Run::create(
      zoo::test::small_run("mlp", 300, quiet_options().epochs(2).seed(8).lr(3e-3).save_top_k(2).monitor("val.loss")),
      tmp.str("resumed"));
  part->fit();
  auto resumed = training::Run::resume(tmp.str("resumed"), 5);
  resumed->fit();
  CHECK(resumed->trainer().state().top_k == st.top_k);
  for (const auto& f : expected) CHECK(same_file_tensors(dir + "/" + f, tmp.str("resumed/" + f)));
  CHECK(training::RunDirectory(tmp.str("resumed"), false).checkpoints() ==
        training::RunDirectory(dir, false).checkpoints());
}

TEST_CASE("EMA: the moving average of the weights step by step by hand, evaluated and saved as its own checkpoint",
          "[selection][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const double decay = 0.3;  // reached from the 4th step on: before it the warm-up's (1 + t) / (10 + t) is smaller
  const auto options = quiet_options().epochs(2).seed(9).batch_size(50).lr(0.01).ema(decay);
  const auto dir = tmp.str("run");
  auto run = training::Run::create(zoo::test::small_run("mlp", 200, options), dir);
  // By hand: ema = the initial weights, then after step t (0, 1, ...) ema = d_t ema + (1 - d_t) w with
  // d_t = min(decay, (1 + t) / (10 + t)).
  auto& module = *run->model().ptr();
  std::vector<torch::Tensor> expected;
  for (const auto& p : module.parameters()) expected.push_back(p.detach().clone().to(torch::kFloat64));
  int64_t t = 0;
  std::vector<double> decays;
  run->trainer().add_step_hook([&](torch::nn::Module& m) {
    const double d = std::min(decay, (1.0 + t) / (10.0 + t));
    decays.push_back(d);
    ++t;
    auto params = m.parameters();
    for (size_t i = 0; i < params.size(); ++i)
      expected[i] = d * expected[i] + (1 - d) * params[i].detach().to(torch::kFloat64);
  });
  run->fit();
  const auto& ema = run->trainer().ema_weights();
  REQUIRE(ema.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    CHECK(torch::allclose(ema[i].to(torch::kFloat64), expected[i], 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(ema[0], module.parameters()[0]));  // not the weights themselves
  REQUIRE(decays.size() == 8);
  CHECK(decays[0] == Approx(0.1));
  CHECK(decays[3] == decay);

  // Evaluated on validation each epoch and on test at the end, as its own weights: ema.pt.
  const auto log = metrics_log(dir);
  REQUIRE(log.size() == 2);
  CHECK(log[1]["ema"]["val"]["items"] == 20);
  CHECK(log[1]["ema"]["val"]["loss"] != log[1]["val"]["loss"]);
  const json final = run->trainer().state().final;
  auto opened = training::Run::open(dir, {}, "ema");
  CHECK(opened->evaluate()["loss"].get<double>() == Approx(final["ema"]["test"]["loss"].get<double>()).epsilon(1e-12));
  const auto saved = training::read_tensors(dir + "/ema.pt");
  CHECK(torch::equal(saved.at("net.0.weight"), ema[0]));

  // A run stopped after epoch 1 and resumed goes on from the saved average: the same ema.pt.
  auto part = training::Run::create(
      zoo::test::small_run("mlp", 200, quiet_options().epochs(1).seed(9).batch_size(50).lr(0.01).ema(decay)),
      tmp.str("resumed"));
  part->fit();
  training::Run::resume(tmp.str("resumed"), 2)->fit();
  CHECK(same_file_tensors(dir + "/ema.pt", tmp.str("resumed/ema.pt")));
  CHECK(same_file_tensors(dir + "/model.pt", tmp.str("resumed/model.pt")));
  // Without --ema there is no such checkpoint.
  auto plain = training::Run::create(zoo::test::small_run("mlp", 200, quiet_options().epochs(1)), tmp.str("plain"));
  plain->fit();
  CHECK_THROWS_WITH(training::Run::open(tmp.str("plain"), {}, "ema"),
                    Catch::Contains("holds the checkpoints best, last, not 'ema' (ema exists only for a run trained "
                                    "with --ema)"));
}

TEST_CASE("Top-k, EMA and schedules: bad settings are refused before anything is written", "[selection][errors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto dir = tmp.str("run");
  auto fails = [&](training::TrainOptions options, double val_fraction = 0.1) {
    auto config = zoo::test::small_run("mlp", 100, options);
    config.data.val_fraction = val_fraction;
    return [config, dir] { training::Run::create(config, dir); };
  };
  CHECK_THROWS_WITH(fails(quiet_options().save_top_k(0))(), Catch::Contains("train.save_top_k"));
  CHECK_THROWS_WITH(fails(quiet_options().save_top_k(-2))(), Catch::Contains("train.save_top_k"));
  CHECK_THROWS_WITH(fails(quiet_options().save_top_k(2), 0)(),
                    Catch::Contains("train.save_top_k needs a metric to watch"));
  CHECK_THROWS_WITH(fails(quiet_options().ema(1))(), Catch::Contains("train.ema must be in (0, 1)"));
  CHECK_THROWS_WITH(fails(quiet_options().ema(-0.5))(), Catch::Contains("train.ema must be in (0, 1)"));
  CHECK_THROWS_WITH(fails(quiet_options().ema(std::nan("")))(), Catch::Contains("train.ema"));
  CHECK_THROWS_WITH(fails(quiet_options().schedule("plateau"), 0)(),
                    Catch::Contains("train.schedule plateau needs a metric to watch"));
  CHECK_THROWS_WITH(fails(quiet_options().schedule("onecycle").pct_start(1))(), Catch::Contains("train.pct_start"));
  CHECK_THROWS_WITH(fails(quiet_options().plateau_patience(-1))(), Catch::Contains("train.plateau_patience"));
  CHECK_FALSE(fs::exists(dir));
}
