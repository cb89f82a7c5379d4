// Crash safety as a user meets it: Ctrl-C and SIGTERM save an exactly resumable checkpoint; SIGKILL at any
// moment leaves a loadable one and --resume ends where an uninterrupted run ends; a full disk is an error that
// keeps the previous checkpoint.
#include "models/mlp.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"
#include "training/trainer.h"

#include <catch2/catch.hpp>

#include <unistd.h>
#include <chrono>
#include <csignal>
#include <fstream>
#include <thread>

using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {
bool same_weights(const std::string& a, const std::string& b) {
  auto ta = zoo::training::read_tensors(a), tb = zoo::training::read_tensors(b);
  if (ta.size() != tb.size()) return false;
  for (const auto& [k, v] : ta)
    if (!tb.count(k) || !torch::equal(v, tb[k])) return false;
  return true;
}
std::string zoo_cmd(const std::string& args) { return std::string(ZOO_BIN) + " " + args; }

/// Starts `zoo ARGS` writing to RUN, waits until training has begun (the epoch-0 checkpoint exists) plus
/// `delay` seconds, then sends `signal`; returns the process's result. Independent of machine load.
zoo::test::CommandResult signal_during_training(const std::string& args, const std::string& run,
                                                const std::string& signal, double delay) {
  TempDir dir;
  const auto script = dir.str("signal.sh");
  std::ofstream(script) << zoo_cmd(args) << " &\npid=$!\n"
                        << "for i in $(seq 600); do [ -f '" << run << "/state.json' ] && break; sleep 0.05; done\n"
                        << "sleep " << delay << "\nkill -" << signal << " $pid\nwait $pid\n";
  return zoo::test::run_command("bash " + script);
}
}  // namespace

TEST_CASE("Reliability: SIGINT mid-epoch saves a checkpoint, --resume ends bit-identical to an uninterrupted run",
          "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string args = "train mlp --epochs 4 --threads 1 --seed 2 --no-progress --out ";
  REQUIRE(run_zoo(args + tmp.str("straight")).code == 0);
  auto r = signal_during_training(args + tmp.str("run"), tmp.str("run"), "INT", 0.3);
  INFO(r.out << r.err);
  REQUIRE(r.code == 130);  // 128 + SIGINT
  CHECK(r.err.find("stopped at epoch") != std::string::npos);
  CHECK(r.err.find("checkpoint saved in " + tmp.str("run")) != std::string::npos);
  CHECK(r.err.find("continue with --resume") != std::string::npos);
  auto state = zoo::training::read_json_file(tmp.str("run/state.json"));
  CHECK(state["epoch_step"].get<int64_t>() > 0);  // stopped inside an epoch, not at its end
  auto resumed = run_zoo("train --resume " + tmp.str("run") + " --no-progress");
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.out.find("and step") != std::string::npos);
  CHECK(same_weights(tmp.str("straight/model.pt"), tmp.str("run/model.pt")));
  // the interrupted epoch's training metrics come out as if it had not been interrupted
  auto log_a = zoo::test::read_text(tmp.path() / "straight" / "metrics.jsonl");
  auto log_b = zoo::test::read_text(tmp.path() / "run" / "metrics.jsonl");
  REQUIRE(zoo::test::count_lines(log_b) == 4);
  std::istringstream a(log_a), b(log_b);
  for (std::string la, lb; std::getline(a, la) && std::getline(b, lb);) {
    auto ja = json::parse(la), jb = json::parse(lb);
    CHECK(ja["train"]["loss"].get<double>() == Approx(jb["train"]["loss"].get<double>()).epsilon(1e-12));
    CHECK(ja["train"]["accuracy"].get<double>() == Approx(jb["train"]["accuracy"].get<double>()).epsilon(1e-12));
    CHECK(ja["val"] == jb["val"]);
  }
}

TEST_CASE("Reliability: SIGTERM stops cleanly with a checkpoint too", "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto r = signal_during_training("train mlp --epochs 4 --threads 1 --no-progress --out " + tmp.str("run"),
                                  tmp.str("run"), "TERM", 0.3);
  INFO(r.err);
  CHECK(r.code == 143);  // 128 + SIGTERM
  CHECK(r.err.find("checkpoint saved") != std::string::npos);
  CHECK(run_zoo("eval " + tmp.str("run") + " --json").code == 0);
}

TEST_CASE(
    "Reliability: SIGKILL at many moments always leaves a loadable checkpoint, resume ends where a clean run ends",
    "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string args = "--epochs 3 --limit 40000 --threads 1 --seed 9 --no-progress";
  REQUIRE(run_zoo("train mlp " + args + " --out " + tmp.str("straight")).code == 0);
  const std::string run = tmp.str("run");
  // Kill times cover start-up (data loading), training steps, evaluation and checkpoint writing.
  const std::vector<double> kills{0.9, 0.25, 1.1, 0.6, 1.4, 0.8, 0.45, 1.2};
  int killed = 0;
  for (size_t i = 0; i < kills.size(); ++i) {
    const bool exists = fs::exists(fs::path(run) / "config.json");
    const std::string cmd = exists ? "train --resume " + run + " --no-progress" : "train mlp " + args + " --out " + run;
    auto r = zoo::test::run_command("timeout -s KILL " + std::to_string(kills[i]) + " " + zoo_cmd(cmd));
    if (r.code == 0) break;  // finished before the kill
    ++killed;
    if (!fs::exists(fs::path(run) / "config.json")) continue;  // killed before the run existed: start it again
    INFO("after kill " << i << " at " << kills[i] << " s");
    auto info = run_zoo("info " + run + " --json");
    CHECK(info.code == 0);
    CHECK(run_zoo("eval " + run + " --json --limit 100").code == 0);  // model.pt loads
  }
  CHECK(killed >= 4);
  auto last = run_zoo(fs::exists(fs::path(run) / "config.json") ? "train --resume " + run + " --no-progress"
                                                                : "train mlp " + args + " --out " + run);
  INFO(last.out << last.err);
  if (last.code != 0) CHECK(last.err.find("has finished") != std::string::npos);
  CHECK(zoo::training::read_json_file(run + "/state.json")["epoch"] == 3);
  CHECK(same_weights(tmp.str("straight/model.pt"), run + "/model.pt"));
}

TEST_CASE("Reliability: a full disk (file-size limit) is a clear error and the previous checkpoint stays",
          "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  REQUIRE(run_zoo("train mlp --epochs 1 --limit 1000 --no-progress --out " + run).code == 0);
  const auto before = zoo::test::read_text(fs::path(run) / "model.pt");
  REQUIRE(before.size() > 300 * 1024);
  // ulimit -f 300: files may not grow past 300 KiB, so the next model.pt (about 940 KiB) cannot be written.
  auto r = zoo::test::run_command("bash -c 'ulimit -f 300; " +
                                  zoo_cmd("train --resume " + run + " --epochs 2 --no-progress") + "'");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("cannot write") != std::string::npos);
  CHECK(r.err.find("the previous checkpoint in " + run + " is intact") != std::string::npos);
  CHECK(zoo::test::count_lines(r.err) == 1);
  CHECK(zoo::training::read_json_file(run + "/state.json")["epoch"] == 1);
  CHECK(zoo::test::read_text(fs::path(run) / "model.pt") == before);
  CHECK(!fs::exists(fs::path(run) / ".staging"));
  auto again = run_zoo("train --resume " + run + " --epochs 2 --no-progress");
  CHECK(again.code == 0);
  CHECK(zoo::training::read_json_file(run + "/state.json")["epoch"] == 2);
}

TEST_CASE("Reliability: a stop requested in-process ends at the next step or right after the epoch's checkpoint",
          "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run(
      "mlp", 1000, zoo::training::TrainOptions().epochs(3).batch_size(100).progress(false).threads(1));
  {  // requested at the end of epoch 1 (from an epoch hook): stops after epoch 1's checkpoint, not in epoch 2
    auto run = zoo::training::Run::create(config, tmp.str("end"));
    run->trainer().add_epoch_hook([](const json&) { zoo::training::request_stop(0); });
    CHECK_THROWS_WITH(run->fit(), Catch::Contains("stopped after epoch 1"));
    zoo::training::clear_stop_request();
    auto state = zoo::training::read_json_file(tmp.str("end/state.json"));
    CHECK(state["epoch"] == 1);
    CHECK(state["epoch_step"] == 0);
  }
  {  // requested during step 4 of epoch 1: stops after that step with a mid-epoch checkpoint
    auto run = zoo::training::Run::create(config, tmp.str("mid"));
    int steps = 0;
    run->trainer().add_step_hook([&](torch::nn::Module&) {
      if (++steps == 4) zoo::training::request_stop(0);
    });
    CHECK_THROWS_AS(run->fit(), zoo::training::Interrupted);
    zoo::training::clear_stop_request();
    auto state = zoo::training::read_json_file(tmp.str("mid/state.json"));
    CHECK(state["epoch"] == 0);
    CHECK(state["epoch_step"] == 4);
    CHECK(state["step"] == 4);
    CHECK(state["partial"]["items"] == 400.0);
  }
  // both resume to the end
  for (const char* dir : {"end", "mid"}) {
    zoo::training::Run::resume(tmp.str(dir))->fit();
    CHECK(zoo::training::read_json_file(tmp.str(dir) + "/state.json")["epoch"] == 3);
  }
}

TEST_CASE("Reliability: a read-only output directory is a clear error, and the checkpoint in it stays",
          "[reliability]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  REQUIRE(run_zoo("train mlp --limit 200 --epochs 1 --no-progress --out " + run).code == 0);
  const auto before = zoo::test::read_text(fs::path(run) / "model.pt");
  // Root ignores permissions: then the commands run as 'nobody' (setpriv), to whom the directories are read-only.
  const std::string as_user = geteuid() == 0 ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
  fs::permissions(tmp.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
  for (const auto& entry : fs::recursive_directory_iterator(run))
    fs::permissions(entry.path(), fs::perms::others_read | fs::perms::group_read, fs::perm_options::add);
  const auto read_only = fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read | fs::perms::group_exec |
                         fs::perms::others_read | fs::perms::others_exec;
  fs::permissions(run, read_only);
  fs::permissions(tmp.path(), read_only);
  auto resumed = zoo::test::run_command(as_user + ZOO_BIN + " train --resume " + run + " --epochs 2 --no-progress");
  auto created =
      zoo::test::run_command(as_user + ZOO_BIN + " train mlp --limit 200 --no-progress --out " + tmp.str("new"));
  fs::permissions(tmp.path(), fs::perms::owner_all);
  fs::permissions(run, fs::perms::owner_all);
  CHECK(resumed.code == 1);
  CHECK(zoo::test::count_lines(resumed.err) == 1);
  CHECK(resumed.err.find("cannot write " + run) != std::string::npos);
  CHECK(resumed.err.find("Permission denied") != std::string::npos);
  CHECK(created.code == 1);
  CHECK(created.err.find("cannot create run directory " + tmp.str("new") + ": Permission denied") != std::string::npos);
  CHECK(zoo::test::read_text(fs::path(run) / "model.pt") == before);
  CHECK(zoo::training::read_json_file(run + "/state.json")["epoch"] == 1);
}

namespace {
/// Records the global step and the epoch's position of each periodic checkpoint.
struct CheckpointRecorder : zoo::training::Callback {
  void on_checkpoint(zoo::training::Trainer& t) override {
    seen.emplace_back(t.state().step, t.state().epoch_step);
    items.push_back(t.state().partial.value("items", 0.0));
  }
  std::vector<std::pair<int64_t, int64_t>> seen;
  std::vector<double> items;
};

/// Makes every step take at least `pause` (a test of checkpoints by the clock cannot depend on the machine's speed).
struct SlowSteps : zoo::training::Callback {
  explicit SlowSteps(std::chrono::milliseconds pause) : pause(pause) {}
  void on_batch_end(zoo::training::Trainer&, const zoo::training::StepInfo&) override {
    std::this_thread::sleep_for(pause);
  }
  std::chrono::milliseconds pause;
};
}  // namespace

TEST_CASE("Periodic checkpoints: every N steps in the middle of epochs, none at an epoch's end, and by the clock",
          "[reliability][checkpoint]") {
  auto x = torch::randn({80, 1, 28, 28});
  auto data = std::make_shared<zoo::datasets::TensorDataset>(x, torch::randint(0, 10, {80}, torch::kInt64), "eighty");
  auto trainer_with = [&](zoo::training::TrainOptions options) {
    return std::make_unique<zoo::training::Trainer>(
        torch::nn::AnyModule(zoo::models::MLP()), std::make_shared<zoo::training::ClassificationObjective>(),
        zoo::datasets::Splits{data, data}, options.epochs(2).batch_size(4).progress(false).threads(1));
  };
  // 20 steps an epoch, every 7: global steps 7 and 14 (epoch 1), 21 = epoch 2's first step, 28, 35; not 20 or 40
  // (the epoch-end checkpoint covers those).
  auto t = trainer_with(zoo::training::TrainOptions().checkpoint_every(7).checkpoint_minutes(0));
  auto recorder = std::make_shared<CheckpointRecorder>();
  t->add_callback(recorder);
  t->fit();
  CHECK(recorder->seen == std::vector<std::pair<int64_t, int64_t>>{{7, 7}, {14, 14}, {21, 1}, {28, 8}, {35, 15}});
  CHECK(recorder->items == std::vector<double>{28, 56, 4, 32, 60});  // the epoch's sums so far, 4 items a step
  CHECK(t->state().epoch_step == 0);  // the live state is the loop's again after each checkpoint
  // By the clock: a hundredth of a second between checkpoints, and steps of at least 12 ms, give one after every
  // step but an epoch's last (on a fast machine the 40 steps alone took under 10 ms: none, and a flaky test).
  auto clock = trainer_with(zoo::training::TrainOptions().checkpoint_minutes(0.01 / 60));
  auto timed = std::make_shared<CheckpointRecorder>();
  clock->add_callback(std::make_shared<SlowSteps>(std::chrono::milliseconds(12)));
  clock->add_callback(timed);
  clock->fit();
  REQUIRE(timed->seen.size() == 38);
  CHECK(timed->seen.front() == std::pair<int64_t, int64_t>{1, 1});
  CHECK(timed->seen[19] == std::pair<int64_t, int64_t>{21, 1});  // epoch 2's first step
  // The default: every 2 minutes, so a short run has none.
  auto plain = trainer_with(zoo::training::TrainOptions());
  auto none = std::make_shared<CheckpointRecorder>();
  plain->add_callback(none);
  plain->fit();
  CHECK(none->seen.empty());
}

TEST_CASE("Periodic checkpoints: SIGKILL between them loses at most N steps, resume ends bit-identical",
          "[reliability][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string args = "--epochs 2 --limit 30000 --threads 1 --seed 4 --no-progress";
  // The reference trains without periodic checkpoints: saving them must not change training either.
  REQUIRE(run_zoo("train mlp " + args + " --out " + tmp.str("straight")).code == 0);
  const std::string run = tmp.str("run");
  // Killed once a periodic checkpoint exists inside epoch 1, then again at once in the resumed run.
  TempDir dir;
  const auto script = dir.str("kill.sh");
  std::ofstream(script) << zoo_cmd("train mlp " + args + " --checkpoint-every 25 --out " + run) << " &\npid=$!\n"
                        << "for i in $(seq 2000); do grep -q '\"epoch_step\": *[1-9]' '" << run
                        << "/state.json' 2>/dev/null && break; sleep 0.01; done\n"
                        << "sleep 0.03\nkill -KILL $pid\nwait $pid\n";
  auto r = zoo::test::run_command("bash " + script);
  INFO(r.out << r.err);
  REQUIRE(r.code == 128 + SIGKILL);
  // The state a resume reads: a kill between a checkpoint's commit point and the end of its renames leaves the new
  // files in .commit, which the resume finishes moving (training/checkpoint.h), so run/state.json may still be the old
  // one.
  const auto state = zoo::training::read_json_file(zoo::training::checkpoint_file(run, "state.json"));
  INFO(state.dump());
  const int64_t at = state["epoch_step"].get<int64_t>();
  CHECK(state["epoch"] == 0);  // inside epoch 1
  CHECK(at > 0);
  CHECK(at % 25 == 0);  // a periodic checkpoint, not an epoch end or a signal's
  auto resumed = run_zoo("train --resume " + run + " --no-progress");
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.out.find("and step " + std::to_string(at)) != std::string::npos);
  CHECK(same_weights(tmp.str("straight/model.pt"), run + "/model.pt"));
  const auto a = zoo::test::read_text(tmp.path() / "straight" / "metrics.jsonl");
  const auto b = zoo::test::read_text(fs::path(run) / "metrics.jsonl");
  REQUIRE(zoo::test::count_lines(b) == 2);
  std::istringstream la(a), lb(b);
  for (std::string x, y; std::getline(la, x) && std::getline(lb, y);) {
    auto ja = json::parse(x), jb = json::parse(y);
    CHECK(ja["train"]["loss"].get<double>() == Approx(jb["train"]["loss"].get<double>()).epsilon(1e-12));
    CHECK(ja["val"] == jb["val"]);
  }
}
