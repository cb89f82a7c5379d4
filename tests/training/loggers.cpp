// Loggers: CRC-32C against published vectors, TensorBoard event files read back by an independent Python reader,
// the per-step and per-epoch CSV files against metrics.jsonl, both exact across SIGKILL and resume, --log-errors;
// the LR range test; per-class metrics and the confusion matrix by hand.
#include "training/loggers.h"
#include "datasets/registry.h"
#include "models/registry.h"
#include "tests/helpers.h"
#include "tests/training/run_helpers.h"
#include "training/checkpoint.h"
#include "training/lr_find.h"
#include "training/run.h"
#include "training/tensorboard.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace zoo;
using nlohmann::json;
using zoo::test::metrics_log;
using zoo::test::quiet_options;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> event_files(const std::string& run) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(fs::path(run) / "tb")) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

bool have_protobuf_reader() {
  return training::tensorboard_available() && zoo::test::run_command("command -v protoc").code == 0 &&
         zoo::test::run_command(std::string(zoo::test::kPython) + " -c 'import google.protobuf'").code == 0;
}

/// The Python reader's summary of the event files (it fails on any CRC or framing problem).
json read_events(const std::vector<std::string>& files) {
  std::string command =
      std::string(zoo::test::kPython) + " " + ZOO_SOURCE_DIR + "/tests/python/tfevents.py " + ZOO_SOURCE_DIR;
  for (const auto& f : files) command += " " + f;
  const auto r = zoo::test::run_command(command);
  INFO(r.err);
  REQUIRE(r.code == 0);
  return json::parse(zoo::test::last_line(r.out));
}

int column(const training::CsvTable& t, const std::string& name) {
  for (size_t i = 0; i < t.columns.size(); ++i)
    if (t.columns[i] == name) return static_cast<int>(i);
  return -1;
}

}  // namespace

TEST_CASE("CRC-32C: the published check values, and TFRecord's mask", "[loggers]") {
  const std::string digits = "123456789";
  CHECK(training::crc32c(digits.data(), digits.size()) == 0xE3069283u);  // the CRC catalogue's check value
  const std::string zeros(32, '\0'), ones(32, '\xff');
  CHECK(training::crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);  // RFC 3720, B.4
  CHECK(training::crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  // Continuing a CRC over a second part gives the CRC of the whole.
  CHECK(training::crc32c(digits.data() + 4, 5, training::crc32c(digits.data(), 4)) == 0xE3069283u);
  const uint32_t crc = 0xE3069283u;
  CHECK(training::masked_crc32c(digits.data(), digits.size()) == ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST_CASE("TensorBoard: the event files of a run, read back by an independent reader that checks every CRC",
          "[loggers][python]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  if (!have_protobuf_reader()) {
    WARN("skipped: needs zoo built with libprotobuf, protoc and python3-protobuf (scripts/setup installs them)");
    return;
  }
  TempDir tmp;
  const auto dir = tmp.str("run");
  auto run = training::Run::create(
      zoo::test::small_run("mlp", 300, quiet_options().epochs(2).batch_size(50).log("tensorboard")), dir);
  run->fit();
  const auto files = event_files(dir);
  REQUIRE(files.size() == 1);
  CHECK(fs::path(files[0]).filename().string().rfind("events.out.tfevents.", 0) == 0);
  const json events = read_events(files);
  CHECK(events["file_version"] == json::array({"brain.Event:2"}));
  // 270 training items in batches of 50: 6 steps per epoch, 12 in all; one loss per step, in step order.
  const auto& loss = events["scalars"]["train/loss_step"];
  REQUIRE(loss.size() == 12);
  for (size_t i = 0; i < 12; ++i) CHECK(loss[i][0] == i + 1);
  CHECK(events["scalars"]["lr"].size() == 12);
  CHECK(events["scalars"]["grad_norm"].size() == 12);
  CHECK(events["scalars"]["items_per_s"].size() == 12);
  // Per epoch, at the epoch's last step, the same numbers as metrics.jsonl (stored as float).
  const auto log = metrics_log(dir);
  const auto& val = events["scalars"]["val/accuracy"];
  REQUIRE(val.size() == 2);
  CHECK(val[1][0] == 12);
  CHECK(val[1][1].get<double>() == Approx(log[1]["val"]["accuracy"].get<double>()).epsilon(1e-6));
  CHECK(events["scalars"]["train/loss"][0][1].get<double>() ==
        Approx(log[0]["train"]["loss"].get<double>()).epsilon(1e-6));
  CHECK(events["scalars"].contains("final/test/accuracy"));
  CHECK_THAT(events["texts"]["config"][0].get<std::string>(), Catch::Contains("\"model\": \"mlp\""));
  CHECK(events["session_starts"].empty());

  // Resumed: a second file, whose SessionLog START at the checkpoint's next step tells TensorBoard to drop what
  // an earlier process may have logged after the checkpoint.
  training::Run::resume(dir, 3)->fit();
  const auto both = event_files(dir);
  REQUIRE(both.size() == 2);
  const json second = read_events({both[1]});
  CHECK(second["session_starts"] == json::array({13}));
  CHECK(second["scalars"]["train/loss_step"][0][0] == 13);
}

TEST_CASE("TensorBoard: a VAE's samples and reconstructions as PNG images", "[loggers][python]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  if (!have_protobuf_reader()) {
    WARN("skipped: needs zoo built with libprotobuf, protoc and python3-protobuf (scripts/setup installs them)");
    return;
  }
  TempDir tmp;
  auto config = zoo::test::small_run("vae", 200, quiet_options().epochs(1).batch_size(50).log("tensorboard"));
  auto run = training::Run::create(config, tmp.str("vae"));
  run->fit();
  const json events = read_events(event_files(tmp.str("vae")));
  const auto& samples = events["images"]["pictures/samples"];
  REQUIRE(samples.size() == 1);
  CHECK(samples[0][3] == true);              // PNG bytes
  CHECK(samples[0][1] == 8 * (28 + 2) + 2);  // 8 per row, make_grid's padding of 2
  CHECK(samples[0][2] == 2 * (28 + 2) + 2);  // 16 samples: two rows
  const auto& recon = events["images"]["pictures/reconstructions"];
  REQUIRE(recon.size() == 1);
  CHECK(recon[0][2] == 2 * (28 + 2) + 2);  // the items over their reconstructions
}

TEST_CASE("CSV logs: steps.csv has every step, epochs.csv every epoch, in agreement with metrics.jsonl", "[loggers]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto dir = tmp.str("run");
  auto run = training::Run::create(
      zoo::test::small_run("mlp", 300, quiet_options().epochs(2).batch_size(50).clip_grad(5).log("csv")), dir);
  run->fit();
  const auto steps = training::read_csv(dir + "/steps.csv");
  CHECK(steps.columns ==
        std::vector<std::string>{"step", "epoch", "loss", "accuracy", "lr", "grad_norm", "items_per_s"});
  REQUIRE(steps.rows.size() == 12);
  const auto log = metrics_log(dir);
  // The epoch's training loss is the item-weighted mean of its steps' losses (6 steps: 5 x 50 items, then 20).
  for (int e = 0; e < 2; ++e) {
    double sum = 0, items = 0;
    for (int s = 0; s < 6; ++s) {
      const auto& row = steps.rows[static_cast<size_t>(e * 6 + s)];
      CHECK(row[0] == std::to_string(e * 6 + s + 1));
      CHECK(row[1] == std::to_string(e + 1));
      const double n = s < 5 ? 50 : 20;
      sum += n * std::stod(row[2]);
      items += n;
      CHECK(std::stod(row[5]) > 0);  // the gradient norm before clipping
    }
    CHECK(sum / items == Approx(log[static_cast<size_t>(e)]["train"]["loss"].get<double>()).epsilon(1e-6));
  }
  const auto epochs = training::read_csv(dir + "/epochs.csv");
  REQUIRE(epochs.rows.size() == 2);
  const int val_accuracy = column(epochs, "val.accuracy"), step = column(epochs, "step");
  REQUIRE(val_accuracy >= 0);
  CHECK(std::stod(epochs.rows[1][static_cast<size_t>(val_accuracy)]) ==
        Approx(log[1]["val"]["accuracy"].get<double>()).epsilon(1e-8));
  CHECK(epochs.rows[1][static_cast<size_t>(step)] == "12");
}

TEST_CASE("CSV logs: runs killed (SIGKILL) at many moments and resumed log every step once, as an uninterrupted run",
          "[loggers][reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string args = "--epochs 3 --limit 20000 --threads 1 --seed 4 --no-progress --log csv";
  REQUIRE(zoo::test::run_zoo("train mlp " + args + " --out " + tmp.str("straight")).code == 0);
  const std::string run = tmp.str("run");
  int killed = 0;
  for (const double at : {0.7, 1.0, 0.5, 1.2, 0.9, 1.1}) {
    const bool exists = fs::exists(fs::path(run) / "config.json");
    const std::string cmd = exists ? "train --resume " + run + " --no-progress" : "train mlp " + args + " --out " + run;
    const auto r = zoo::test::run_command("timeout -s KILL " + std::to_string(at) + " " + ZOO_BIN + " " + cmd);
    if (r.code == 0) break;
    ++killed;
  }
  CHECK(killed >= 2);
  if (fs::exists(fs::path(run) / "state.json") &&
      training::read_json_file(run + "/state.json")["epoch"].get<int64_t>() < 3) {
    const auto last = zoo::test::run_zoo("train --resume " + run + " --no-progress");
    INFO(last.out << last.err);
    REQUIRE(last.code == 0);
  } else if (!fs::exists(fs::path(run) / "state.json")) {
    REQUIRE(zoo::test::run_zoo("train mlp " + args + " --out " + run).code == 0);
  }
  // The same steps with the same numbers (resume is bit-exact), each once; only the timing differs.
  const auto a = training::read_csv(tmp.str("straight/steps.csv")), b = training::read_csv(run + "/steps.csv");
  REQUIRE(a.rows.size() == b.rows.size());
  const int timing = column(a, "items_per_s");
  for (size_t i = 0; i < a.rows.size(); ++i) {
    INFO("row " << i);
    for (size_t c = 0; c < a.columns.size(); ++c)
      if (static_cast<int>(c) != timing) CHECK(a.rows[i][c] == b.rows[i][c]);
  }
  const auto ea = training::read_csv(tmp.str("straight/epochs.csv")), eb = training::read_csv(run + "/epochs.csv");
  REQUIRE(eb.rows.size() == 3);
  CHECK(ea.rows[2][static_cast<size_t>(column(ea, "val.loss"))] ==
        eb.rows[2][static_cast<size_t>(column(eb, "val.loss"))]);
}

TEST_CASE("Loggers: --log-errors stop refuses to train without its logger, warn trains on with one line",
          "[loggers][errors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // steps.csv cannot be written: a directory has that name. (Run::create makes the directory first, so the test
  // goes through the CLI on a run stopped before its first epoch: only config.json exists.)
  const auto dir = tmp.str("run");
  fs::create_directories(fs::path(dir) / "steps.csv");
  zoo::test::write_text(fs::path(dir) / "config.json", "{}");  // a run stopped in its first epoch: may be reused
  auto stop = zoo::test::run_zoo("train mlp --limit 200 --epochs 1 --no-progress --log csv --out " + dir);
  CHECK(stop.code == 1);
  CHECK_THAT(stop.err, Catch::Contains("the csv logger cannot start: cannot write " + dir + "/steps.csv") &&
                           Catch::Contains("--log-errors warn"));
  CHECK_FALSE(fs::exists(fs::path(dir) / "metrics.jsonl"));
  auto warn =
      zoo::test::run_zoo("train mlp --limit 200 --epochs 1 --no-progress --log csv --log-errors warn --out " + dir);
  INFO(warn.err);
  CHECK(warn.code == 0);
  CHECK_THAT(warn.err, Catch::Contains("warning: the csv logger cannot start"));
  CHECK(fs::exists(fs::path(dir) / "metrics.jsonl"));
  const auto unknown = zoo::test::run_zoo("train mlp --log wandb --out " + tmp.str("x"));
  CHECK(unknown.code == 2);
  CHECK_THAT(unknown.err, Catch::Contains("unknown logger 'wandb'; valid loggers: csv, tensorboard"));
  CHECK(zoo::test::count_lines(unknown.err) == 1);
}

TEST_CASE("LR range test: exponential rates, a stop on divergence, the steepest descent suggested", "[loggers]") {
  // The steepest descent by hand: central differences over log(lr) (equal steps here), as numpy.gradient:
  // point 1: (1.5 - 2.0) / 2, point 2: (0.6 - 1.95) / 2, point 3: (0.5 - 1.5) / 2, point 4: (3.0 - 0.6) / 2.
  const std::vector<double> lrs{1e-4, 1e-3, 1e-2, 1e-1, 1, 10};
  const std::vector<double> smoothed{2.0, 1.95, 1.5, 0.6, 0.5, 3.0};
  CHECK(training::steepest_descent(lrs, smoothed, 0) == 2);
  CHECK(training::steepest_descent(lrs, smoothed, 3) == 3);
  CHECK(training::steepest_descent(lrs, smoothed, 4) == 4);
  CHECK(training::steepest_descent(lrs, smoothed, 5) == -1);

  REQUIRE(zoo::test::have_fashion_mnist());
  auto config = training::complete_config(zoo::test::small_run("mlp", 2000, quiet_options().batch_size(64)));
  config.data.val_fraction = 0;
  torch::manual_seed(0);
  auto splits = datasets::load_splits(config.data);
  training::Trainer trainer(models::ModelRegistry::instance().at("mlp").build(config.options),
                            training::make_objective("classify"), splits, config.train);
  training::LrFindOptions options;
  options.start_lr = 1e-5;
  options.end_lr = 100;
  options.steps = 60;
  const auto result = training::lr_range_test(trainer, *splits.train, options);
  REQUIRE(result.lrs.size() >= 20);
  CHECK(result.lrs[0] == Approx(1e-5));
  CHECK(result.lrs[1] / result.lrs[0] == Approx(std::pow(1e7, 1.0 / 59)));
  CHECK_THAT(result.stopped, Catch::Contains("passed 4 x its minimum") || Catch::Contains("the loss became"));
  CHECK(result.lrs.size() < 60);  // adam at lr 100 diverges
  CHECK(result.suggestion > 1e-5);
  CHECK(result.suggestion < 1);
  // Diverging at once leaves nothing to suggest: an error that says to start lower.
  training::Trainer again(models::ModelRegistry::instance().at("mlp").build(config.options),
                          training::make_objective("classify"), splits, config.train.optimizer("sgd").momentum(0));
  options.start_lr = 1e6;
  options.end_lr = 1e9;
  CHECK_THROWS_WITH(training::lr_range_test(again, *splits.train, options),
                    Catch::Contains("lr-find has nothing to suggest") && Catch::Contains("start lower"));
}

TEST_CASE("Per-class metrics: the confusion matrix, precision, recall and F1 by hand", "[loggers]") {
  // Logits that are one-hot of the prediction: true 0 0 0 1 1 2, predicted 0 0 1 1 2 2 (class 2 once right).
  struct Identity : torch::nn::Module {
    torch::Tensor forward(const torch::Tensor& x) { return x; }
  };
  torch::nn::AnyModule model(std::make_shared<Identity>());
  const auto predicted = torch::tensor({0, 0, 1, 1, 2, 2}, torch::kInt64);
  const auto truth = torch::tensor({0, 0, 0, 1, 1, 2}, torch::kInt64);
  training::ClassificationObjective objective;
  auto evaluator = objective.evaluator(true);
  evaluator->add(model, {torch::one_hot(predicted, 3).to(torch::kFloat32) * 10, truth});
  const json m = evaluator->result(evaluator->state());
  CHECK(m["confusion"] == json::parse("[[2,1,0],[0,1,1],[0,0,1]]"));
  CHECK(m["accuracy"].get<double>() == Approx(4.0 / 6));
  // precision = TP / predicted, recall = TP / true, F1 = 2 TP / (predicted + true)
  CHECK(m["per_class"]["precision"][0].get<double>() == Approx(1.0));
  CHECK(m["per_class"]["recall"][0].get<double>() == Approx(2.0 / 3));
  CHECK(m["per_class"]["f1"][0].get<double>() == Approx(0.8));
  CHECK(m["per_class"]["precision"][2].get<double>() == Approx(0.5));
  CHECK(m["per_class"]["f1"][1].get<double>() == Approx(0.5));
  CHECK_FALSE(objective.evaluator(false)->result(torch::zeros({3}, torch::kFloat64)).contains("confusion"));
}
