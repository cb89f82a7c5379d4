// --precision on the command line: train, resume, eval, predict and their errors, run as a user runs them.
#include "training/precision.h"
#include "ops/conv2d_bf16.h"
#include "tests/cli/check_error.h"
#include "tests/helpers.h"

#include <nlohmann/json.hpp>

#include <catch2/catch.hpp>

using nlohmann::json;
using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;

namespace {
/// zoo as run on a CPU without native bfloat16 (ZOO_CPU_BF16=0 overrides /proc/cpuinfo).
zoo::test::CommandResult without_bf16(const std::string& args) {
  return zoo::test::run_command("ZOO_CPU_BF16=0 " + std::string(ZOO_BIN) + " " + args);
}
size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("CLI: --precision bf16-mixed trains and evaluates, and bad precisions are one line each",
          "[cli][precision]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const std::string small = "train mlp --epochs 1 --limit 1000 --seed 3 --set hidden=[64] ";
  check_error(run_zoo(small + "--precision fp8 --out " + tmp.str("a")),
              "--precision: 'fp8' is unknown; valid precisions: 32, bf16-mixed, bf16, fp16-mixed", 2);
  check_error(run_zoo(small + "--precision fp16-mixed --out " + tmp.str("a")),
              "--precision fp16-mixed is for CUDA devices (float16 with loss scaling); on the CPU use bf16-mixed", 1);
  check_error(without_bf16(small + "--precision bf16-mixed --out " + tmp.str("a")),
              "--precision bf16-mixed: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
              ", so bfloat16 is emulated and slower than float32; use --precision 32, or --force to run it anyway",
              1);
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "a"));  // refused before anything is written
  // lr-find trains too: the same checks, the same --force.
  const std::string find = "lr-find mlp --limit 2000 --set hidden=[64] --steps 20 --out " + tmp.str("lr");
  check_error(run_zoo(find + " --precision fp16-mixed"), "--precision fp16-mixed is for CUDA devices", 1);
  check_error(without_bf16(find + " --precision bf16-mixed"), "--precision bf16-mixed: this CPU has no native bfloat16",
              1);
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "lr.csv"));
  const auto found = without_bf16(find + " --precision bf16-mixed --force");
  INFO(found.out << found.err);
  CHECK(found.code == 0);
  CHECK(std::filesystem::exists(tmp.path() / "lr.csv"));

  // --force accepts an emulated bfloat16 (here ZOO_CPU_BF16=0 pretends the CPU has none).
  const auto run = tmp.str("run");
  auto r = without_bf16(small + "--precision bf16-mixed --force --out " + run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(json::parse(zoo::test::read_text(tmp.path() / "run" / "config.json"))["train"]["precision"] == "bf16-mixed");
  // The run header names a precision other than float32.
  CHECK(zoo::test::first_line(r.out).find(", bf16-mixed | run ") != std::string::npos);

  // eval: the run's precision by default; --precision 32 evaluates the same weights in float32.
  auto mixed = run_zoo("eval " + run + " --json");
  auto full = run_zoo("eval " + run + " --precision 32 --json");
  REQUIRE(mixed.code == 0);
  REQUIRE(full.code == 0);
  const auto m = json::parse(zoo::test::last_line(mixed.out)), f = json::parse(zoo::test::last_line(full.out));
  CHECK(m["accuracy"].get<double>() == Approx(f["accuracy"].get<double>()).margin(0.01));
  CHECK(m["loss"].get<double>() == Approx(f["loss"].get<double>()).epsilon(0.02));
  CHECK(m["loss"] != f["loss"]);
  check_error(run_zoo("eval " + run + " --precision fp8"), "--precision: 'fp8' is unknown; valid precisions", 2);

  // Resume in float32, recorded in config.json; a run cannot move to bf16 weights.
  auto resumed = run_zoo("train --resume " + run + " --epochs 2 --precision 32");
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(json::parse(zoo::test::read_text(tmp.path() / "run" / "config.json"))["train"]["precision"] == "32");
  CHECK(zoo::test::first_line(resumed.out).find(", precision 32 (was bf16-mixed)") != std::string::npos);
  check_error(run_zoo("train --resume " + run + " --epochs 3 --precision bf16"),
              "--precision bf16 cannot change a run trained in 32 to bf16", 1);
}

TEST_CASE("CLI: --precision bf16 stores bfloat16 weights, read back in float32 with one note", "[cli][precision]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  auto r = run_zoo("train mlp --epochs 1 --limit 1000 --seed 3 --set hidden=[64] --precision bf16 --out " + run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("warning: --precision bf16 trains bfloat16 weights") != std::string::npos);
  auto bf16 = run_zoo("eval " + run + " --json");
  REQUIRE(bf16.code == 0);
  CHECK(bf16.err.empty());  // read in the precision they were saved in: nothing to say
  auto fp32 = run_zoo("eval " + run + " --precision 32 --json");
  INFO(fp32.err);
  REQUIRE(fp32.code == 0);
  CHECK(occurrences(fp32.err, "holds bfloat16 weights; converted to float32, the precision of this model") == 1);
  // The same weights in float32 (exactly the bfloat16 values, widened) classify as they did in bfloat16.
  const double acc32 = json::parse(zoo::test::last_line(fp32.out))["accuracy"].get<double>();
  CHECK(acc32 > 0.3);  // it learned (10 classes: chance is 0.1), if slowly: 8 steps
  CHECK(acc32 == Approx(json::parse(zoo::test::last_line(bf16.out))["accuracy"].get<double>()).margin(0.02));
}

TEST_CASE("CLI: predict --precision, and --version says whether the CPU has bfloat16", "[cli][precision]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  REQUIRE(run_zoo("train cnn --epochs 1 --limit 600 --seed 3 --out " + run).code == 0);
  const auto exported = tmp.str("model.pt");
  REQUIRE(run_zoo("export " + run + " --out " + exported).code == 0);
  const auto top_class = [](const std::string& out) {  // "item 0: top classes 3 (0.4102), 5 (...)" -> "3"
    const auto at = out.find("item 0: top classes ") + 20;
    return out.substr(at, out.find(' ', at) - at);
  };
  auto p32 = run_zoo("predict " + exported + " --shape 2,1,28,28");
  REQUIRE(p32.code == 0);
  for (const char* precision : {"bf16-mixed", "bf16"}) {
    INFO(precision);
    auto p = run_zoo("predict " + exported + " --shape 2,1,28,28 --precision " + precision);
    INFO(p.err);
    REQUIRE(p.code == 0);
    // The same input (--shape draws from seed 0): the same top class.
    CHECK(top_class(p.out) == top_class(p32.out));
  }
  check_error(run_zoo("predict " + exported + " --shape 1,1,28,28 --precision fp16-mixed"),
              "--precision fp16-mixed is for CUDA devices", 1);

  auto v = run_zoo("--version");
  CHECK(v.out.find(zoo::training::cpu_bf16_description() + ")") != std::string::npos);
  const bool says_amx = v.out.find(", AMX)") != std::string::npos;
  CHECK(says_amx == zoo::ops::detail::cpu_has_amx_bf16());
  auto none = without_bf16("--version");
  CHECK(none.out.find("no native bfloat16)") != std::string::npos);
}

TEST_CASE("CLI: a 3-D ConvNet trains in bf16-mixed, its first convolution in float32, without a word on stderr",
          "[cli][precision]") {
  // zoo replaces LibTorch's autocast kernel for conv3d (ops/autocast.cpp), which the dispatcher would announce
  // with a warning ("Overriding a previously registered kernel"): muted, so stderr stays empty.
  TempDir tmp;
  const auto r = zoo::test::run_command("ZOO_CPU_BF16=1 " + std::string(ZOO_BIN) +
                                        " train conv3d --epochs 1 --limit 256 --seed 2 --precision bf16-mixed --out " +
                                        tmp.str("run"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("Overriding") == std::string::npos);
  CHECK(r.err.find("arning") == std::string::npos);
  CHECK(json::parse(zoo::test::read_text(tmp.path() / "run" / "config.json"))["train"]["precision"] == "bf16-mixed");
}
