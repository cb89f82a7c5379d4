// Model selection: the validation split held out of the training items, the monitored metric, the best
// checkpoint, early stopping (exact across a resume) and the test split used once, at the end.
#include "datasets/registry.h"
#include "tests/helpers.h"
#include "tests/training/run_helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <fstream>

using namespace zoo;
using nlohmann::json;
using zoo::test::metrics_log;
using zoo::test::quiet_options;
using zoo::test::same_file_tensors;
using zoo::test::TempDir;

namespace {
/// 50 items whose input and label are their own index, so what a split holds can be read off.
datasets::Splits numbered(int64_t n) {
  auto ids = torch::arange(n, torch::kInt64);
  return {std::make_shared<datasets::TensorDataset>(ids.to(torch::kFloat32).unsqueeze(1), ids, "numbered"),
          std::make_shared<datasets::TensorDataset>(ids.to(torch::kFloat32).unsqueeze(1), ids, "numbered test")};
}

torch::Tensor labels(const datasets::Dataset& d) { return d.get(torch::arange(d.size())).target; }

}  // namespace

TEST_CASE("Validation split: held out of the training items, disjoint from them, the same for the same seed",
          "[selection][data]") {
  auto s = numbered(50);
  datasets::hold_out_validation(s, 0.2, 7);
  REQUIRE(s.val->size() == 10);
  REQUIRE(s.train->size() == 40);
  const auto val = labels(*s.val), train = labels(*s.train);
  // Together exactly the 50 training items, none in both; each part keeps the original order.
  CHECK(torch::equal(std::get<0>(torch::cat({val, train}).sort()), torch::arange(50)));
  CHECK(torch::equal(std::get<0>(val.sort()), val));
  CHECK(torch::equal(std::get<0>(train.sort()), train));
  CHECK(labels(*s.test).size(0) == 50);  // the test split is untouched
  auto again = numbered(50), other = numbered(50);
  datasets::hold_out_validation(again, 0.2, 7);
  datasets::hold_out_validation(other, 0.2, 8);
  CHECK(torch::equal(labels(*again.val), val));
  CHECK_FALSE(torch::equal(labels(*other.val), val));
  // Not the first items, and not the first items of epoch 1's order either: the split is its own draw.
  CHECK_FALSE(torch::equal(val, torch::arange(10)));
  CHECK_FALSE(torch::equal(std::get<0>(datasets::epoch_order(50, true, 7, 1).slice(0, 0, 10).sort()), val));

  auto tiny = numbered(5);
  CHECK_THROWS_WITH(
      datasets::hold_out_validation(tiny, 0.05, 0),
      Catch::Contains("of 5 training items leaves the validation split empty") && Catch::Contains("raise --limit"));
  CHECK_THROWS_WITH(datasets::hold_out_validation(tiny, 0.95, 0), Catch::Contains("leaves the training split empty"));
}

TEST_CASE("Validation split: every dataset gets one from data.val_fraction (0.1 by default, 0 turns it off)",
          "[selection][data]") {
  for (const std::string name : {"scenes", "waveforms"}) {  // generated datasets too
    datasets::DataConfig d;
    d.name = name;
    d.limit = 40;
    const auto s = datasets::load_splits(d, 1);
    INFO(name);
    REQUIRE(s.val);
    CHECK(s.val->size() == 4);
    CHECK(s.train->size() == 36);
    CHECK(s.test->size() == 40);
    const auto val = std::dynamic_pointer_cast<datasets::Subset>(s.val)->indices();
    const auto train = std::dynamic_pointer_cast<datasets::Subset>(s.train)->indices();
    CHECK(torch::isin(val, train).sum().item<int64_t>() == 0);
    d.val_fraction = 0;
    const auto whole = datasets::load_splits(d, 1);
    CHECK_FALSE(whole.val);
    CHECK(whole.train->size() == 40);
  }
  datasets::DataConfig bad;
  bad.val_fraction = 1;
  CHECK_THROWS_WITH(datasets::load_splits(bad), Catch::Contains("val_fraction") && Catch::Contains("below 1"));
  bad.val_fraction = -0.1;
  CHECK_THROWS_WITH(datasets::load_splits(bad), Catch::Contains("val_fraction"));
}

TEST_CASE("Model selection: the best epoch on validation is saved as best.pt and is what the test split sees, once",
          "[selection][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto dir = tmp.str("run");
  auto run = training::Run::create(zoo::test::small_run("mlp", 400, quiet_options().epochs(3).seed(2).lr(3e-3)), dir);
  const json last = run->fit();
  const auto log = metrics_log(dir);
  REQUIRE(log.size() == 3);
  // The best epoch by hand from the log: the first with the highest validation accuracy.
  int64_t best_epoch = 0;
  double best = -1;
  for (const auto& r : log) {
    CHECK(r["val"]["items"] == 40);
    CHECK_FALSE(r.contains("test"));  // no test numbers per epoch
    if (r["val"]["accuracy"].get<double>() > best) {
      best = r["val"]["accuracy"].get<double>();
      best_epoch = r["epoch"].get<int64_t>();
    }
  }
  const json final = run->trainer().state().final;
  CHECK(final["monitor"] == "val.accuracy");
  CHECK(final["epoch"] == best_epoch);
  CHECK(final["value"].get<double>() == best);
  CHECK(final["checkpoint"] == "best");
  CHECK(final["test"]["items"] == 400);
  CHECK(last["test"] == final["test"]);
  CHECK(training::read_json_file(dir + "/test.json") == final);
  CHECK(training::read_json_file(dir + "/state.json")["final"] == final);
  // The test metrics are those of best.pt's weights.
  auto best_run = training::Run::open(dir, {}, "best");
  CHECK(best_run->evaluate()["accuracy"].get<double>() == final["test"]["accuracy"].get<double>());
  CHECK(best_run->evaluate()["loss"].get<double>() == Approx(final["test"]["loss"].get<double>()).epsilon(1e-12));
  CHECK_THROWS_WITH(training::Run::open(dir, {}, "epoch-2"),
                    Catch::Contains("holds the checkpoints best, last, not 'epoch-2'"));
}

TEST_CASE(
    "Early stopping: patience epochs without an improvement above min_delta end the run, the best weights are "
    "tested, a resumed run stops at the same epoch with the same weights",
    "[selection][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // Validation accuracy cannot rise by more than 1, so epoch 1 stays the best and the run stops after epoch 3.
  const auto options = quiet_options().epochs(10).seed(3).early_stop(2).min_delta(1.0);
  const auto straight = tmp.str("straight");
  auto run = training::Run::create(zoo::test::small_run("mlp", 300, options), straight);
  run->fit();
  const auto& st = run->trainer().state();
  CHECK(st.epoch == 3);
  CHECK(st.best_epoch == 1);
  CHECK(st.final["epoch"] == 1);
  CHECK(st.final["checkpoint"] == "best");
  CHECK_THAT(st.final["stopped"].get<std::string>(),
             Catch::Contains("early stopping after epoch 3: val.accuracy has not improved for 2 epochs"));
  CHECK(metrics_log(straight).size() == 3);
  // best.pt holds epoch 1's weights: those of a run that trained one epoch.
  auto one = training::Run::create(zoo::test::small_run("mlp", 300, quiet_options().epochs(1).seed(3)), tmp.str("one"));
  one->fit();
  CHECK(same_file_tensors(straight + "/best.pt", tmp.str("one/model.pt")));
  CHECK_FALSE(same_file_tensors(straight + "/best.pt", straight + "/model.pt"));
  CHECK(training::Run::open(straight, {}, "best")->evaluate()["accuracy"] == st.final["test"]["accuracy"]);

  // Stopped after epoch 2 (its counter, epoch - best_epoch, is in the checkpoint), resumed: it stops after epoch 3
  // as well, with the same weights, the same best.pt and the same log.
  const auto resumed = tmp.str("resumed");
  training::Run::create(
      zoo::test::small_run("mlp", 300, quiet_options().epochs(2).seed(3).early_stop(2).min_delta(1.0)), resumed)
      ->fit();
  auto again = training::Run::resume(resumed, 10);
  again->fit();
  CHECK(again->trainer().state().epoch == 3);
  CHECK(same_file_tensors(straight + "/model.pt", resumed + "/model.pt"));
  CHECK(same_file_tensors(straight + "/best.pt", resumed + "/best.pt"));
  CHECK(again->trainer().state().final["test"] == st.final["test"]);
  CHECK(metrics_log(resumed).size() == 3);
  // A run that stopped early trains no further when resumed with more epochs.
  auto more = training::Run::resume(straight, 12);
  more->fit();
  CHECK(more->trainer().state().epoch == 3);
  CHECK(metrics_log(straight).size() == 3);
}

TEST_CASE("Model selection: --monitor picks another metric and direction, without validation the last is tested",
          "[selection]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto run = training::Run::create(zoo::test::small_run("mlp", 300, quiet_options().epochs(2).monitor("val.loss")),
                                   tmp.str("loss"));
  run->fit();
  const auto log = metrics_log(tmp.str("loss"));
  const int64_t lower = log[1]["val"]["loss"].get<double>() < log[0]["val"]["loss"].get<double>() ? 2 : 1;
  CHECK(run->trainer().state().best_epoch == lower);
  CHECK(run->trainer().state().final["monitor"] == "val.loss");

  auto config = zoo::test::small_run("mlp", 300, quiet_options().epochs(2).eval_test_every_epoch(true));
  config.data.val_fraction = 0;
  auto plain = training::Run::create(config, tmp.str("plain"));
  plain->fit();
  const auto& final = plain->trainer().state().final;
  CHECK(final["checkpoint"] == "last");
  CHECK(final["epoch"] == 2);
  CHECK_FALSE(final.contains("monitor"));
  CHECK(final["test"]["items"] == 300);
  CHECK(metrics_log(tmp.str("plain"))[0].contains("test"));
  CHECK_FALSE(metrics_log(tmp.str("plain"))[0].contains("val"));
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "plain" / "best.pt"));
}

TEST_CASE("Model selection: bad settings are refused before anything is written", "[selection][errors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto dir = tmp.str("run");
  auto fails = [&](training::TrainOptions options, double val_fraction = 0.1, int64_t limit = 100) {
    auto config = zoo::test::small_run("mlp", limit, options);
    config.data.val_fraction = val_fraction;
    return [config, dir] { training::Run::create(config, dir); };
  };
  CHECK_THROWS_WITH(fails(quiet_options().monitor("val.nope"))(), Catch::Contains("train.monitor") &&
                                                                      Catch::Contains("val.nope is not a metric") &&
                                                                      Catch::Contains("valid: val.accuracy, val.loss"));
  CHECK_THROWS_WITH(fails(quiet_options().monitor("test.accuracy"))(), Catch::Contains("never used to select"));
  CHECK_THROWS_WITH(fails(quiet_options().monitor("val.items"))(), Catch::Contains("with a known direction"));
  CHECK_THROWS_WITH(fails(quiet_options().monitor("val.accuracy"), 0)(), Catch::Contains("needs a validation split"));
  CHECK_THROWS_WITH(fails(quiet_options().early_stop(2), 0)(),
                    Catch::Contains("train.early_stop needs a metric to watch"));
  CHECK_THROWS_WITH(fails(quiet_options().min_delta(-1))(), Catch::Contains("min_delta"));
  CHECK_THROWS_WITH(fails(quiet_options(), 0.1, 4)(),
                    Catch::Contains("of 4 training items leaves the validation split empty"));
  CHECK_FALSE(std::filesystem::exists(dir));
}
