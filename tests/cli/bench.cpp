// `zoo bench`: C++ and Python timed side by side. Checks what the numbers mean, not how fast this machine is:
// the JSON's fields, speedup = Python time / C++ time, FLOPs counted from a trace against a hand count, the
// data-loading share, the Markdown and README outputs, and clear errors for bad cases, a missing interpreter and a
// README without the results block.
#include "tools/cli/bench.h"
#include "allocator.h"
#include "helpers.h"
#include "tools/cli/verdict.h"

#include <algorithm>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using nlohmann::json;
using zoo::test::read_text;
using zoo::test::run_command;
using zoo::test::run_zoo;
using zoo::test::TempDir;

namespace {
bool python_has_torch() { return run_command("/usr/bin/python3 -c 'import torch'").code == 0; }
const std::string kQuick = " --repeat 1 --min-steps 1 --min-time 0 ";
}  // namespace

TEST_CASE("Bench: C++ and Python twins timed side by side, with FLOPs, data loading and speedups", "[bench][cli]") {
  if (!python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  const bool fashion = zoo::test::have_fashion_mnist();
  const std::string cases = fashion ? "mlp sinkhorn moe-layer gated-lstm-cell" : "sinkhorn moe-layer gated-lstm-cell";
  TempDir tmp;
  const auto r =
      run_zoo("bench " + cases + " --repeat 3 --min-steps 1 --min-time 0 --threads 1,2,1 --json --markdown " +
              tmp.str("results.md"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto doc = json::parse(r.out);
  REQUIRE(doc["settings"]["python"] == true);
  // Each side names the malloc it ran with.
  CHECK(zoo::test::is_own_allocator(doc["allocator"]["cpp"]));
  CHECK(doc["allocator"]["python"] == "glibc malloc");
  REQUIRE(doc["calibration"].size() == 2);  // 1,2,1: a repeated thread count is measured once
  for (const auto& c : doc["calibration"]) {
    CHECK(c["conv_gflops"].get<double>() > 0.1);
    CHECK(c["matmul_gflops"].get<double>() > 0.1);
  }
  const size_t n_cases = fashion ? 4 : 3;
  REQUIRE(doc["results"].size() == 2 * n_cases);  // every case at 1 and 2 threads
  for (const auto& res : doc["results"]) {
    INFO(res.dump());
    for (const char* side : {"cpp", "python"})
      for (const char* what : {"train_ms", "infer_ms", "latency_ms"}) CHECK(res[side][what].get<double>() > 0);
    for (const char* what : {"train", "infer", "latency"}) {
      // 3 rounds: the times are the medians of the samples, the speedup the median of the rounds' ratios.
      const auto cpp = res["cpp"]["samples_ms"][what].get<std::vector<double>>();
      const auto py = res["python"]["samples_ms"][what].get<std::vector<double>>();
      REQUIRE(cpp.size() == 3);
      REQUIRE(py.size() == 3);
      auto median3 = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[1];
      };
      CHECK(res["cpp"][std::string(what) + "_ms"].get<double>() == Approx(median3(cpp)).epsilon(1e-12));
      CHECK(res["python"][std::string(what) + "_ms"].get<double>() == Approx(median3(py)).epsilon(1e-12));
      const double expected = median3({py[0] / cpp[0], py[1] / cpp[1], py[2] / cpp[2]});
      CHECK(res["speedup"][what].get<double>() == Approx(expected).epsilon(1e-9));
      const auto rounds = res["speedup_rounds"][what].get<std::vector<double>>();
      REQUIRE(rounds.size() == 3);
      for (size_t k = 0; k < 3; ++k) CHECK(rounds[k] == Approx(py[k] / cpp[k]).epsilon(1e-12));
    }
    const double items = res["batch"].get<double>() / (res["cpp"]["train_ms"].get<double>() / 1e3);
    CHECK(res["cpp"]["train_items_per_s"].get<double>() == Approx(items).epsilon(1e-9));
    const double target = res["target_speedup"].get<double>();
    CHECK(res["meets_target"].get<bool>() ==
          (std::min({res["speedup"]["train"].get<double>(), res["speedup"]["infer"].get<double>(),
                     res["speedup"]["latency"].get<double>()}) >= target));
    // 3 rounds are too few to call a miss parity.
    CHECK(res["verdict"] == (res["meets_target"].get<bool>() ? "met" : "missed"));
    // The per-operation cases carry the issue's 1.3x target; whole models 1.0x.
    CHECK(target == (res["case"] == "mlp" ? 1.0 : 1.3));
  }
  if (fashion) {
    const auto& mlp = doc["results"][0];
    REQUIRE(mlp["case"] == "mlp");
    REQUIRE(mlp["batch"] == 128);
    // 784-256-128-10 on 128 images: 2 * 128 * (784*256 + 256*128 + 128*10) FLOPs, counted from the trace.
    CHECK(mlp["gflop_per_batch"].get<double>() == Approx(2.0 * 128 * (784 * 256 + 256 * 128 + 128 * 10) / 1e9));
    CHECK(mlp["gflops"]["train"].get<double>() ==
          Approx(3 * mlp["gflop_per_batch"].get<double>() / (mlp["cpp"]["train_ms"].get<double>() / 1e3)));
    CHECK(mlp["data"]["dataset"] == "fashion-mnist");
    CHECK(mlp["data"]["fraction_of_step"].get<double>() ==
          Approx(mlp["data"]["batch_ms"].get<double>() / mlp["cpp"]["train_ms"].get<double>()));
    CHECK_FALSE(doc["results"][2].contains("data"));  // layers outside the registry have no dataset
  }
  // Rounds alternate which side goes first.
  CHECK(r.err.find("bench: round 1/3, sinkhorn, 1 thread, C++ first") != std::string::npos);
  CHECK(r.err.find("bench: round 2/3, sinkhorn, 1 thread, Python first") != std::string::npos);
  CHECK(r.err.find("bench: round 3/3, sinkhorn, 2 threads, C++ first") != std::string::npos);
  const auto md = read_text(tmp.path() / "results.md");
  CHECK(md.find("| sinkhorn | 2 | 64 |") != std::string::npos);
  CHECK(md.find("Machine throughput: 1 thread: conv") != std::string::npos);
  CHECK(md.find("(" + zoo::test::own_allocator()) != std::string::npos);
}

TEST_CASE("Bench verdicts: met on the median, parity only for 1.0x, over 5+ rounds, if C++ won a round", "[bench]") {
  using zoo::cli::speedup_verdict;
  const std::vector<double> fast{1.2, 1.1, 1.3, 1.2, 1.25};
  // Medians 0.97 (C++ faster in 2 of 5 rounds) and 0.95 (in 1 of 5): not slower beyond the spread.
  CHECK(speedup_verdict({fast, {0.97, 1.02, 0.95, 1.01, 0.97}, fast}, 1.0) == "parity");
  CHECK(speedup_verdict({{0.95, 0.94, 1.01, 0.9, 0.96}, fast, fast}, 1.0) == "parity");
  // Slower in every round of one measurement: missed, however close.
  CHECK(speedup_verdict({fast, fast, {0.99, 0.98, 0.99, 0.97, 0.999}}, 1.0) == "missed");
  // Too few rounds for the sign test.
  CHECK(speedup_verdict({{0.97, 1.02, 0.95}, {1.1, 1.1, 1.1}, {1.1, 1.1, 1.1}}, 1.0) == "missed");
  // A claimed speedup needs its median: 1.28x with rounds up to 1.5x is a miss.
  CHECK(speedup_verdict({{1.28, 1.5, 1.27, 1.29, 1.2}, fast, fast}, 1.3) == "missed");
  CHECK(speedup_verdict({{1.31, 1.5, 1.27, 1.32, 1.2}, {1.3, 1.3, 1.3, 1.3, 1.3}, {2, 2, 2, 2, 2}}, 1.3) == "met");
  CHECK(speedup_verdict({{1.0, 1.0, 1.0}, {1.0, 1.0, 1.0}, {1.0, 1.0, 1.0}}, 1.0) == "met");  // the target itself
  // Even counts: the median is the mean of the middle two.
  CHECK(zoo::cli::median({1.0, 3.0, 2.0, 10.0}) == 2.5);
}

TEST_CASE("Bench rounds: each case's precisions take turns going first, thread counts and cases keep their order",
          "[bench][cli]") {
  using zoo::cli::bench::round_order;
  using Order = std::vector<size_t>;
  // Two cases x (32, bf16-mixed) x threads (1, 2), laid out [case][precision][threads].
  CHECK(round_order(2, 2, 2, 0) == Order{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(round_order(2, 2, 2, 1) == Order{2, 3, 0, 1, 6, 7, 4, 5});
  CHECK(round_order(2, 2, 2, 2) == round_order(2, 2, 2, 0));
  CHECK(round_order(2, 2, 2, 3) == round_order(2, 2, 2, 1));
  // One precision: the same order in every round; three cases at one thread.
  CHECK(round_order(3, 1, 1, 1) == Order{0, 1, 2});
  CHECK(round_order(1, 2, 1, 1) == Order{1, 0});

  // zoo bench times in that order: its log names each measurement as it starts.
  const auto r = run_zoo(
      "bench sinkhorn --no-python --threads 1 --precision 32,bf16-mixed --repeat 2 --min-steps 1 "
      "--min-time 0");
  REQUIRE(r.code == 0);
  const auto at = [&](const std::string& line) { return r.err.find("bench: " + line + ", 1 thread"); };
  const std::vector<size_t> seen{at("round 1/2, sinkhorn@32"), at("round 1/2, sinkhorn@bf16-mixed"),
                                 at("round 2/2, sinkhorn@bf16-mixed"), at("round 2/2, sinkhorn@32")};
  INFO(r.err);
  CHECK(std::find(seen.begin(), seen.end(), std::string::npos) == seen.end());
  CHECK(std::is_sorted(seen.begin(), seen.end()));
}

TEST_CASE("Bench: C++ only, the README block, and clear errors", "[bench][cli]") {
  TempDir tmp;
  {
    std::ofstream(tmp.path() / "README.md")
        << "# t\n\nThe text may name `<!-- zoo bench: begin -->` and `<!-- zoo bench: end -->` in passing.\n"
           "before\n<!-- zoo bench: begin -->\nold table\n<!-- zoo bench: end -->\nafter\n";
    const auto r =
        run_zoo("bench sinkhorn attention --no-python --threads 1" + kQuick + "--readme " + tmp.str("README.md"));
    INFO(r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("| attention | 1 | 16 |") != std::string::npos);
    const auto readme = read_text(tmp.path() / "README.md");
    CHECK(readme.find("old table") == std::string::npos);
    CHECK(readme.find("| sinkhorn | 1 | 64 |") != std::string::npos);
    CHECK(readme.find("before\n<!-- zoo bench: begin -->\n") != std::string::npos);
    CHECK(readme.find("<!-- zoo bench: end -->\nafter\n") != std::string::npos);
    CHECK(readme.find("name `<!-- zoo bench: begin -->` and `<!-- zoo bench: end -->` in passing") !=
          std::string::npos);
  }
  {
    const auto r = run_zoo("bench no-such-model --no-python");
    CHECK(r.code != 0);
    CHECK(zoo::test::last_line(r.err).find("no benchmark case or model 'no-such-model'; cases: mlp, cnn") !=
          std::string::npos);
  }
  {
    const auto r = run_zoo("bench sinkhorn --threads 1" + kQuick + "--python /nonexistent/python3");
    CHECK(r.code != 0);
    CHECK(zoo::test::last_line(r.err).find("cannot start /nonexistent/python3") != std::string::npos);
  }
  {
    const auto r = run_zoo("bench sinkhorn --threads 1" + kQuick + "--python-dir " + tmp.str("nowhere"));
    CHECK(r.code != 0);
    CHECK(zoo::test::last_line(r.err).find("bench_twins.py is missing") != std::string::npos);
  }
  {
    std::ofstream(tmp.path() / "plain.md") << "# no block\n";
    const auto r = run_zoo("bench sinkhorn --no-python --threads 1" + kQuick + "--readme " + tmp.str("plain.md"));
    CHECK(r.code != 0);
    CHECK(zoo::test::last_line(r.err).find("has no '<!-- zoo bench: begin -->'") != std::string::npos);
    CHECK(read_text(tmp.path() / "plain.md") == "# no block\n");
  }
  std::string why;
  if (const auto jemalloc = zoo::test::preloadable_jemalloc(why); !jemalloc.empty() && python_has_torch()) {
    // Under LD_PRELOAD both sides run with another malloc, and the report says so for each.
    const auto r =
        run_command("LD_PRELOAD=" + jemalloc + " " + ZOO_BIN + " bench sinkhorn --threads 1" + kQuick + "--json");
    REQUIRE(r.code == 0);
    const auto doc = json::parse(r.out);
    CHECK(doc["allocator"]["cpp"].get<std::string>().rfind("jemalloc 5.", 0) == 0);
    CHECK(doc["allocator"]["python"] == "jemalloc");
  }
  {
    const auto r = run_zoo("bench sinkhorn --repeat 0");
    CHECK(r.code == 2);
  }
  {
    const auto r = run_zoo("bench --list");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("gated-lstm-cell") != std::string::npos);
    CHECK(r.out.find("(target 1.3x)") != std::string::npos);
  }
}

TEST_CASE("Bench: every case runs in C++ and in its Python twin (one quick round)", "[bench][cli][slow]") {
  if (!python_has_torch() || !zoo::test::have_fashion_mnist()) {
    WARN("skipped: needs /usr/bin/python3 with torch and the Fashion-MNIST files");
    return;
  }
  // Every model family's training step, inference and latency on both sides: the twins' training-mode paths
  // (the VAE's ELBO, ELMo's language-model loss, the MoE's capacity and balancing loss, segmentation) run here.
  const auto r = run_zoo("bench --threads 1 --repeat 1 --min-steps 1 --min-time 0 --json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto doc = json::parse(r.out);
  const auto listed = run_zoo("bench --list");
  REQUIRE(listed.code == 0);
  REQUIRE(doc["results"].size() == static_cast<size_t>(zoo::test::count_lines(listed.out)));
  for (const auto& res : doc["results"]) {
    INFO(res["case"]);
    for (const char* what : {"train", "infer", "latency"}) {
      CHECK(res["cpp"][std::string(what) + "_ms"].get<double>() > 0);
      CHECK(res["python"][std::string(what) + "_ms"].get<double>() > 0);
    }
  }
}

TEST_CASE("Bench: --precision 32,bf16-mixed measures both, the twins under torch.autocast, and a speed-up table",
          "[bench][cli][precision]") {
  if (!python_has_torch() || !zoo::test::have_fashion_mnist()) {
    WARN("skipped: needs /usr/bin/python3 with torch and the Fashion-MNIST files");
    return;
  }
  const auto r = run_zoo("bench cnn sinkhorn --threads 1 --precision 32,bf16-mixed" + kQuick + "--json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto doc = json::parse(r.out);
  CHECK(doc["settings"]["precisions"] == json::array({"32", "bf16-mixed"}));
  REQUIRE(doc["results"].size() == 4);  // two cases, two precisions, one thread count
  std::vector<std::string> seen;
  for (const auto& res : doc["results"]) {
    seen.push_back(res["case"].get<std::string>() + "@" + res["precision"].get<std::string>());
    CHECK(res["cpp"]["train_ms"].get<double>() > 0);
    CHECK(res["python"]["train_ms"].get<double>() > 0);
  }
  CHECK(seen == std::vector<std::string>{"cnn@32", "cnn@bf16-mixed", "sinkhorn@32", "sinkhorn@bf16-mixed"});
  // bf16-mixed rows carry their speed-up over the float32 row of the same case: each round's paired ratio of the two
  // rows' samples, and their median.
  for (size_t k = 0; k < 4; k += 2) {
    const auto &fp32 = doc["results"][k], &bf16 = doc["results"][k + 1];
    CHECK_FALSE(fp32.contains("over_32"));
    REQUIRE(bf16.contains("over_32"));
    for (const char* side : {"cpp", "python"})
      for (const char* what : {"train", "infer", "latency"}) {
        INFO(bf16["case"] << " " << side << " " << what);
        const auto a = fp32[side]["samples_ms"][what].get<std::vector<double>>(),
                   b = bf16[side]["samples_ms"][what].get<std::vector<double>>();
        REQUIRE(a.size() == 1);
        REQUIRE(b.size() == 1);
        CHECK(bf16["over_32_rounds"][side][what].get<std::vector<double>>() == std::vector<double>{a[0] / b[0]});
        CHECK(bf16["over_32"][side][what].get<double>() == Approx(a[0] / b[0]));
      }
  }
  CHECK(doc["command"].get<std::string>().find("--precision 32,bf16-mixed") != std::string::npos);

  const auto table = run_zoo("bench cnn --no-python --threads 1 --precision 32,bf16-mixed" + kQuick);
  REQUIRE(table.code == 0);
  CHECK(table.out.find("| cnn (bf16-mixed) | 1 | 64 |") != std::string::npos);
  CHECK(table.out.find("bf16-mixed against float32") != std::string::npos);
  CHECK_THAT(table.out, Catch::Matches(R"((.|\n)*\n\| cnn \| 1 \| [0-9.]+x \| [0-9.]+x \|\n(.|\n)*)"));

  // A precision given twice is measured once, as a thread count is: one float32 row for bf16-mixed to pair with.
  const auto twice = run_zoo("bench sinkhorn --no-python --threads 1 --precision 32,bf16-mixed,32 --json" + kQuick);
  REQUIRE(twice.code == 0);
  const auto once = json::parse(twice.out);
  CHECK(once["settings"]["precisions"] == json::array({"32", "bf16-mixed"}));
  CHECK(once["results"].size() == 2);

  const auto bad = run_zoo("bench cnn --no-python --precision bf16" + kQuick);
  CHECK(bad.code == 1);
  CHECK(bad.err.find("zoo bench --precision measures 32 and bf16-mixed, not 'bf16'") != std::string::npos);
}

TEST_CASE("Bench: bf16-mixed over float32 is the median of the rounds' paired ratios, not a ratio of medians",
          "[bench][cli][precision]") {
  // Three rounds, float32 and bf16-mixed back to back in each; the second is a slow spell for both. Paired: 30/20,
  // 60/40, 33/30 -> 1.50, 1.50, 1.10, median 1.50x. The medians' ratio, 33 / 30 = 1.10x, sets the third round's
  // float32 against the third round's bfloat16 by accident of sorting.
  const std::vector<double> fp32{30, 60, 33}, bf16{20, 40, 30};
  const auto r = zoo::cli::paired_ratios(fp32, bf16);
  REQUIRE(r.size() == 3);
  CHECK(r[0] == Approx(1.5));
  CHECK(r[1] == Approx(1.5));
  CHECK(r[2] == Approx(1.1));
  CHECK(zoo::cli::median(r) == Approx(1.5));
  CHECK(zoo::cli::median(fp32) / zoo::cli::median(bf16) == Approx(1.1));
  CHECK(zoo::cli::paired_ratios({10, 20, 30}, {5, 10}).size() == 2);  // only the rounds both sides have
}

TEST_CASE("Bench --profile: each case's training step, its costliest operators by their own time", "[bench][cli]") {
  const auto r = run_zoo("bench attention --no-python --threads 1 --profile 4 --json" + kQuick);
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto doc = json::parse(r.out);
  REQUIRE(doc["profiles"].size() == 1);
  const auto& p = doc["profiles"][0];
  CHECK(p["case"] == "attention (32), 1 thread");
  const double step = p["step_ms"].get<double>();
  CHECK(step > 0);
  REQUIRE(p["operators"].size() == 4);
  double previous = step, sum = 0;
  int aten = 0;
  for (const auto& op : p["operators"]) {
    const double ms = op["ms"].get<double>();
    CHECK(ms > 0);
    CHECK(ms <= previous);  // most costly first, each within the step
    previous = ms;
    sum += ms;
    // Events the profiler names: LibTorch's operators, or the autograd engine's nodes and scopes. Under a loaded
    // machine (ctest -j2) a scope that was preempted can outweigh the attention's cheaper operators, so only the
    // kinds of name are fixed, and at least one of the four is an operator.
    const auto name = op["operator"].get<std::string>();
    INFO(name);
    const bool is_aten = name.rfind("aten::", 0) == 0;
    aten += is_aten;
    CHECK((is_aten || name.find("autograd") != std::string::npos || name.find("Backward") != std::string::npos ||
           name.rfind("detach", 0) == 0));
  }
  CHECK(aten >= 1);
  CHECK(sum <= step * 1.01);  // own times do not count a nested operator twice
  CHECK(doc["command"].get<std::string>().find("--profile 4") != std::string::npos);
  const auto table = run_zoo("bench attention --no-python --threads 1 --profile 2" + kQuick);
  REQUIRE(table.code == 0);
  CHECK(table.out.find("Profile of attention (32), 1 thread:") != std::string::npos);
  CHECK(table.out.find("| all convolutions | ") != std::string::npos);
  const auto bad = run_zoo("bench attention --no-python --profile 0" + kQuick);
  CHECK(bad.code != 0);
  CHECK(bad.err.find("--profile") != std::string::npos);
}
