// Hostile input and concurrent use, round 2 (issue #30): one writer per run directory, readers during a write,
// JSON nested to exhaust the stack, files that are not files, damaged state.json and metrics.jsonl, absurd
// thread counts, and directories that are not runs.
#include "datasets/images.h"
#include "tests/cli/check_error.h"
#include "tests/helpers.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

using nlohmann::json;
using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string kSmall = "train mlp --limit 600 --set hidden=[16] --threads 1 --no-progress ";

/// `zoo ARGS` started in the background; its exit status when waited for.
struct Background {
  pid_t pid = -1;
  explicit Background(const std::string& args) {
    pid = fork();
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", ("exec " + std::string(ZOO_BIN) + " " + args + " >/dev/null 2>&1").c_str(), nullptr);
      _exit(127);
    }
  }
  int wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~Background() {
    if (pid > 0) wait();
  }
};

/// Waits up to 60 s for `path` to exist.
bool appears(const fs::path& path) {
  for (int i = 0; i < 600 && !fs::exists(path); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return fs::exists(path);
}

std::string nested(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

}  // namespace

TEST_CASE("Hostile: two writers never share a run directory, readers go on during a write", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  Background first("train mlp --epochs 1000 --limit 3000 --threads 1 --no-progress --out " + run);
  REQUIRE(appears(tmp.path() / "run" / "state.json"));  // its first checkpoint (epoch 0) is there
  const std::string busy = run + " is being written by process " + std::to_string(first.pid);
  check_error(run_zoo(kSmall + "--out " + run), busy, 1);
  check_error(run_zoo("train --resume " + run + " --epochs 50"), busy, 1);
  // Readers: eval and info while the writer commits checkpoints, every time a whole answer.
  for (int i = 0; i < 5; ++i) {
    const auto e = run_zoo("eval " + run + " --limit 200 --threads 1 --json");
    INFO(e.err);
    CHECK(e.code == 0);
    CHECK(run_zoo("info " + run).code == 0);
  }
  kill(first.pid, SIGTERM);  // it saves a checkpoint and stops
  CHECK(first.wait() == 143);
  // The lock went with the process: a resume may write again.
  const auto resumed = run_zoo("train --resume " + run + " --epochs 1");
  CHECK(resumed.err.find("is being written") == std::string::npos);
}

TEST_CASE("Hostile: a killed writer leaves no lock behind", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  Background first("train mlp --epochs 1000 --limit 3000 --threads 1 --no-progress --out " + run);
  REQUIRE(appears(tmp.path() / "run" / "state.json"));
  kill(first.pid, SIGKILL);
  first.wait();
  const auto r = run_zoo("train --resume " + run + " --epochs 1 --no-progress");
  INFO(r.err);
  CHECK(r.err.find("is being written") == std::string::npos);
}

TEST_CASE("Hostile: --out of a directory that holds no run, or of a file, is refused untouched", "[cli][hostile]") {
  TempDir tmp;
  fs::create_directories(tmp.path() / "photos");
  zoo::test::write_text(tmp.path() / "photos" / "cat.jpg", "not a run");
  check_error(run_zoo(kSmall + "--out " + tmp.str("photos")),
              tmp.str("photos") + " is not empty and holds no zoo run (no config.json); choose another --out", 1);
  CHECK(std::distance(fs::directory_iterator(tmp.path() / "photos"), fs::directory_iterator()) == 1);
  check_error(run_zoo(kSmall + "--out /"), "/ is not empty and holds no zoo run", 1);
  check_error(run_zoo(kSmall + "--out " + tmp.str("photos/cat.jpg")), "is a file, not a run directory", 1);
  // A run refused before it starts (a model that does not fit its data) leaves no directory behind.
  check_error(run_zoo(kSmall + "--set in_features=3 --out " + tmp.str("new")), "", 1);
  CHECK_FALSE(fs::exists(tmp.path() / "new"));
}

TEST_CASE("Hostile: JSON nested to exhaust the stack is one line, wherever it comes in", "[cli][hostile]") {
  TempDir tmp;
  zoo::test::write_text(tmp.path() / "deep.json", nested(100000));
  check_error(run_zoo(kSmall + "--config " + tmp.str("deep.json") + " --out " + tmp.str("a")),
              tmp.str("deep.json") + " is nested more than 256 levels deep", 1);
  check_error(run_zoo(kSmall + "--set hidden=" + nested(5000) + " --out " + tmp.str("a")),
              "nested more than 256 levels deep", -1);
  check_error(run_zoo(kSmall + "--data-option x=" + nested(5000) + " --out " + tmp.str("a")),
              "nested more than 256 levels deep", -1);
  // The same inside a run's files.
  REQUIRE(zoo::test::have_fashion_mnist());
  const auto run = tmp.str("run");
  REQUIRE(run_zoo(kSmall + "--epochs 1 --out " + run).code == 0);
  zoo::test::write_text(tmp.path() / "run" / "config.json", "{\"a\": " + nested(100000) + "}");
  check_error(run_zoo("eval " + run), "config.json is nested more than 256 levels deep", 1);
  check_error(run_zoo("info " + run), "config.json is nested more than 256 levels deep", 1);
  check_error(run_zoo("train --resume " + run), "config.json is nested more than 256 levels deep", 1);
  CHECK_FALSE(fs::exists(tmp.path() / "a"));
}

TEST_CASE("Hostile: --config of a FIFO, a device or a huge file is refused at once", "[cli][hostile]") {
  TempDir tmp;
  REQUIRE(mkfifo(tmp.str("fifo").c_str(), 0600) == 0);
  check_error(run_zoo(kSmall + "--config " + tmp.str("fifo") + " --out " + tmp.str("a")),
              tmp.str("fifo") + " is not a regular file", 1);
  check_error(run_zoo(kSmall + "--config /dev/zero --out " + tmp.str("a")), "/dev/zero is not a regular file", 1);
  {
    std::ofstream big(tmp.path() / "big.json");
    big.seekp((std::streamoff{65} << 20));  // a sparse 65 MB file
    big.put(' ');
  }
  check_error(run_zoo(kSmall + "--config " + tmp.str("big.json") + " --out " + tmp.str("a")),
              "big.json is 65 MB: larger than any JSON file zoo reads (at most 64 MB)", 1);
}

TEST_CASE("Hostile: damaged state.json values are named with their key, bad metrics.jsonl lines are repaired",
          "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  REQUIRE(run_zoo(kSmall + "--epochs 1 --out " + run).code == 0);
  const auto state_path = tmp.path() / "run" / "state.json";
  const json state = json::parse(zoo::test::read_text(state_path));
  auto damaged = [&](const std::string& key, const json& value, const std::string& expected) {
    json s = state;
    s[key] = value;
    zoo::test::write_text(state_path, s.dump());
    check_error(run_zoo("train --resume " + run + " --epochs 2"), expected, 1);
  };
  damaged("epoch", -5, "state.json is damaged (\"epoch\" is -5: expected a whole number from 0 to");
  damaged("epoch_step", -3, "state.json is damaged (\"epoch_step\" is -3: expected a whole number from 0 to");
  damaged("epoch_step", 100000, "(\"epoch_step\" is 100000: expected a whole number from 0 to");
  damaged("step", "x", "state.json is damaged (\"step\" is \"x\": expected a whole number");
  damaged("step", 2.5, "state.json is damaged (\"step\" is 2.5: expected a whole number");
  damaged("best_epoch", 7, "(\"best_epoch\" is 7: expected a whole number from 0 to 1)");
  damaged("best", "high", "(\"best\" is \"high\": expected a number)");
  damaged("last", json::array(), "(\"last\" is []: expected an object)");
  zoo::test::write_text(state_path, "[1, 2]");
  check_error(run_zoo("train --resume " + run + " --epochs 2"), "state.json is damaged (not a JSON object)", 1);

  // metrics.jsonl: lines that are no epoch records are dropped on resume, which goes on.
  zoo::test::write_text(state_path, state.dump());
  const auto log = tmp.path() / "run" / "metrics.jsonl";
  zoo::test::write_text(log, zoo::test::read_text(log) + "[1,2]\n{\"epoch\":\"x\"}\n" + nested(3000) + "\n");
  const auto r = run_zoo("train --resume " + run + " --epochs 2 --threads 1");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto text = zoo::test::read_text(log);
  CHECK(zoo::test::count_lines(text) == 2);
  CHECK(text.find("[1,2]") == std::string::npos);
  CHECK(run_zoo("plot " + run + " --out " + tmp.str("c.png")).code == 0);  // reads the repaired log
}

TEST_CASE("Hostile: --threads far above the cores is bounded with a warning", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  check_error(run_zoo(kSmall + "--threads 1000000000 --out " + tmp.str("a")), "--threads: must be <= 1024", 2);
  const auto r =
      run_zoo("train mlp --limit 600 --set hidden=[16] --epochs 1 --no-progress --threads 1000 --out " + tmp.str("b"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("warning: --threads 1000 is more than the") != std::string::npos);
  CHECK(r.err.find("; using ") != std::string::npos);
  CHECK(r.out.find("| 1000 threads") == std::string::npos);
}

TEST_CASE("Memory: every epoch record holds the resident memory, which does not grow from epoch 2 to epoch 10",
          "[cli][hostile][memory]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto r = run_zoo("train mlp --limit 3000 --epochs 10 --set hidden=[128] --threads 1 --no-progress --out " +
                         tmp.str("run"));
  REQUIRE(r.code == 0);
  std::vector<json> records;
  std::istringstream lines(zoo::test::read_text(tmp.path() / "run" / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) records.push_back(json::parse(line));
  REQUIRE(records.size() == 10);
  for (const auto& rec : records) {
    CHECK(rec["rss_mb"].get<double>() > 50);  // LibTorch alone maps more than this
    CHECK(rec["peak_rss_mb"].get<double>() >= rec["rss_mb"].get<double>());
  }
  // Eight more epochs of the same work: a leak of even 1.6 MB an epoch would show (the data is 9 MB of floats).
  const double growth = records[9]["rss_mb"].get<double>() - records[1]["rss_mb"].get<double>();
  INFO("epoch 2: " << records[1]["rss_mb"] << " MB, epoch 10: " << records[9]["rss_mb"] << " MB");
  CHECK(growth < 12.0);
}

TEST_CASE("Hostile: a model too large for memory is one line, and no run directory is left", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // 784 x 4294967296 float32 weights: 13,469 GB.
  check_error(run_zoo("train mlp --limit 10 --set hidden=[4294967296] --out " + tmp.str("huge")),
              "out of memory: one tensor of 13469.0 GB did not fit; make the model or the batch smaller", 1);
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "huge"));
}

TEST_CASE("Hostile: the first SIGTERM or SIGINT stops any command at once, with 128 + signal", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  // zoo bench at 1,000 rounds runs for many minutes; stopped 2 s in, it ends at once.
  for (const auto& [name, number] : {std::pair<std::string, int>{"TERM", SIGTERM}, {"INT", SIGINT}}) {
    const auto start = std::chrono::steady_clock::now();
    const auto r = zoo::test::run_command("timeout --preserve-status -s " + name + " 2 " + std::string(ZOO_BIN) +
                                          " bench mlp --no-python --repeat 1000 --threads 1");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(name << ": " << r.err);
    CHECK(r.code == 128 + number);
    CHECK(seconds < 10);
    CHECK(r.err.find("zoo: stopped by a signal") != std::string::npos);
  }
}

TEST_CASE("Hostile: on a full disk (file-size limit) every output is one line and no partial file", "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("vae");
  REQUIRE(run_zoo("train vae --limit 300 --epochs 1 --threads 1 --no-progress --out " + run).code == 0);
  // ulimit -f 8: no file may grow past 8 KiB (zoo ignores SIGXFSZ, so a write fails with "File too large").
  const auto limited = [](const std::string& args) {
    return zoo::test::run_command("bash -c 'ulimit -f 8; exec " + std::string(ZOO_BIN) + " " + args + "'");
  };
  std::vector<std::pair<std::string, std::string>> cases = {
      {"sample " + run + " --out " + tmp.str("s.png"), tmp.str("s.png")},
      {"reconstruct " + run + " --out " + tmp.str("r.png"), tmp.str("r.png")},
      {"export " + run + " --out " + tmp.str("e.pt"), tmp.str("e.pt")},
      {"export " + run + " --format safetensors --out " + tmp.str("m.safetensors"), tmp.str("m.safetensors")}};
  if (zoo::test::run_command("command -v gnuplot").code == 0)  // gnuplot draws; zoo checks the picture is whole
    cases.push_back({"plot " + run + " --out " + tmp.str("p.png"), tmp.str("p.png")});
  for (const auto& [args, out] : cases) {
    const auto r = limited(args);
    INFO(args << "\n" << r.out << r.err);
    CHECK(r.code == 1);
    CHECK(zoo::test::count_lines(r.err) == 1);
    CHECK(r.err.find("cannot write " + out) != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    CHECK_FALSE(fs::exists(out + ".tmp"));
  }
  // Without the limit the same commands write whole files.
  CHECK(run_zoo("sample " + run + " --out " + tmp.str("s.png")).code == 0);
  // An import whose first checkpoint cannot be written does not claim a previous one.
  REQUIRE(run_zoo("export " + run + " --format safetensors --out " + tmp.str("m.safetensors")).code == 0);
  const auto r = limited("import " + tmp.str("m.safetensors") + " --out " + tmp.str("imported"));
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK(zoo::test::count_lines(r.err) == 1);
  CHECK(r.err.find("no checkpoint was saved in " + tmp.str("imported")) != std::string::npos);
  CHECK(r.err.find("intact") == std::string::npos);
  CHECK(zoo::datasets::is_whole_png(tmp.str("s.png")));
}

TEST_CASE("Hostile: a damaged or replaced optimizer.pt is one line and is never read as other state",
          "[cli][hostile]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  REQUIRE(run_zoo(kSmall + "--epochs 1 --out " + run).code == 0);
  const fs::path optimizer = fs::path(run) / "optimizer.pt";
  const std::string original = zoo::test::read_text(optimizer);
  std::string flipped = original;
  flipped[flipped.size() / 2] = static_cast<char>(flipped[flipped.size() / 2] ^ 0xff);  // inside a tensor's bytes
  const std::vector<std::pair<std::string, std::string>> cases = {
      {flipped, "optimizer.pt is not a TorchScript archive, or is damaged"},  // it once resumed with the damage
      {zoo::test::read_text(fs::path(run) / "model.pt"), "optimizer.pt holds no optimizer state"},  // 3 lines once
      {"garbage", "optimizer.pt is not a TorchScript archive, or is damaged"}};
  for (const auto& [bytes, message] : cases) {
    zoo::test::write_text(optimizer, bytes);
    const auto r = run_zoo("train --resume " + run + " --epochs 2 --no-progress");
    INFO(r.err);
    CHECK(r.code == 1);
    CHECK(zoo::test::count_lines(r.err) == 1);
    CHECK(r.err.find(message) != std::string::npos);
  }
  zoo::test::write_text(optimizer, original);
  CHECK(run_zoo("train --resume " + run + " --epochs 2 --no-progress").code == 0);
}
