// The `zoo` command line, run as a user runs it: train, eval --json, list, info, resume, and every error path
// (non-zero exit, one clear line on stderr).
#include "models/registry.h"
#include "tests/allocator.h"
#include "tests/cli/check_error.h"
#include "tests/helpers.h"
#include "training/runtime.h"

#include <torch/version.h>

#include <fmt/format.h>

#include <set>

#include <catch2/catch.hpp>

#include <dlfcn.h>

using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;

using zoo::test::check_error;

TEST_CASE("CLI: list prints every registered model, name first", "[cli]") {
  auto r = run_zoo("list");
  REQUIRE(r.code == 0);
  const auto names = zoo::models::ModelRegistry::instance().names();  // the test binary registers one more
  CHECK(zoo::test::count_lines(r.out) == names.size() - 1);
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    const auto name = line.substr(0, line.find(' '));
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
    CHECK(line.find_first_not_of(' ', name.size()) != std::string::npos);  // a description follows
  }
  for (const char* name : {"cnn", "mlp", "vae"}) CHECK(r.out.find(std::string(name) + " ") != std::string::npos);
  auto d = run_zoo("list --datasets");
  CHECK(d.out.find("fashion-mnist") != std::string::npos);
  // One model's options: dotted names of nested options, defaults as JSON, the doc and the choices.
  auto o = run_zoo("list ode-resnet");
  REQUIRE(o.code == 0);
  CHECK_THAT(o.out, Catch::Matches(R"((.|\n)*\n  solver\.method +"rk4" +euler, midpoint, rk4 \(fixed steps\) or )"
                                   R"(dopri5 \(adaptive\)\n(.|\n)*)"));
  CHECK_THAT(run_zoo("list unet").out, Catch::Contains("transpose (2x2 transposed conv) or bilinear (+ 3x3 conv)\n"));
  CHECK_THAT(run_zoo("list moe").out, Catch::Contains("softmax (dense), topk or noisy-topk\n") &&
                                          Catch::Contains("balancing loss: none, switch or cv\n"));
  CHECK(o.out.find("  moe.experts") == std::string::npos);
  CHECK_THAT(run_zoo("list moe").out, Catch::Matches(R"((.|\n)*\n  moe\.balance_coef +0\.1 (.|\n)*)"));
  auto bad = run_zoo("list resnet9000");
  CHECK(bad.code != 0);
  CHECK_THAT(bad.err, Catch::Contains("unknown model 'resnet9000'; valid models:"));
}

TEST_CASE("CLI: --version names LibTorch and the allocator that serves malloc", "[cli]") {
  // zoo links no allocator of its own (README, "Speed"): glibc's, or ASan's runtime in a sanitizer build.
  CHECK(zoo::test::is_own_allocator(zoo::training::allocator()));
  const auto r = run_zoo("--version");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.rfind("zoo 0.", 0) == 0);
  CHECK(r.out.find("(LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + ".") != std::string::npos);
  CHECK(r.out.find(", " + zoo::test::own_allocator()) != std::string::npos);
  CHECK_THAT(r.out, Catch::Matches(R"(.* [0-9]+ cores, (native bfloat16(, AMX)?|no native bfloat16)\)\n)"));
  // Another malloc put in front (LD_PRELOAD) is the one reported, with its version.
  std::string why;
  if (const auto jemalloc = zoo::test::preloadable_jemalloc(why); !jemalloc.empty()) {
    const auto preloaded = zoo::test::run_command("LD_PRELOAD=" + jemalloc + " " + ZOO_BIN + " --version");
    REQUIRE(preloaded.code == 0);
    CHECK(preloaded.out.find(", jemalloc 5.") != std::string::npos);
  } else {
    WARN(why);
  }
}

TEST_CASE("CLI: zoo --version names OpenBLAS's kernels, and says how to get newer ones where it fell back to old ones",
          "[cli]") {
  // Where OpenBLAS serves LibTorch (Debian's LibTorch through libblas.so.3), its version and the kernels it picked,
  // as OpenBLAS itself reports them in this process (the test binary loads the same library).
  using Text = char* (*)();
  const auto corename = reinterpret_cast<Text>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const auto blas = zoo::training::blas();
  if (!corename) {
    CHECK(blas.empty());
    WARN("OpenBLAS is not loaded here: zoo --version names no BLAS");
  } else {
    CHECK(blas.rfind("OpenBLAS 0.", 0) == 0);
    CHECK_THAT(blas, Catch::Contains(std::string(", ") + corename() + " kernels"));
    const auto r = run_zoo("--version");
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains(", " + blas + ", "));
  }
  // The hint: only for a core without AVX on a CPU that has AVX2 or AVX-512.
  using zoo::training::blas_hint;
  CHECK(blas_hint("Prescott", true, true) == "set OPENBLAS_CORETYPE=SkylakeX for faster float32 products");
  CHECK(blas_hint("Nehalem", true, false) == "set OPENBLAS_CORETYPE=Haswell for faster float32 products");
  CHECK(blas_hint("Prescott", false, false).empty());  // an old CPU: its kernels are right
  CHECK(blas_hint("SkylakeX", true, true).empty());
  CHECK(blas_hint("Haswell", true, true).empty());  // chosen by the user: left alone
  CHECK(blas_hint("Zen", true, false).empty());
}

TEST_CASE("CLI: zoo keeps freed memory in glibc's heap unless the environment tunes malloc or says not to", "[cli]") {
  if (zoo::test::kAddressSanitizer) {
    WARN("skipped: under AddressSanitizer its runtime serves malloc, which zoo leaves alone");
    return;
  }
  auto version = [](const std::string& env) {
    const auto r = zoo::test::run_command(env + " " + ZOO_BIN + " --version");
    REQUIRE(r.code == 0);
    return r.out;
  };
  CHECK_THAT(version(""), Catch::Contains(", glibc malloc, freed memory kept, "));
  // The user's own settings win, and ZOO_KEEP_FREED_MEMORY=0 leaves glibc's defaults.
  for (const std::string env : {"ZOO_KEEP_FREED_MEMORY=0", "ZOO_KEEP_FREED_MEMORY=off", "MALLOC_TRIM_THRESHOLD_=131072",
                                "MALLOC_MMAP_MAX_=0", "GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072"}) {
    INFO(env);
    const auto out = version(env);
    CHECK_THAT(out, Catch::Contains(", glibc malloc, "));
    CHECK_THAT(out, !Catch::Contains("kept"));
  }
  CHECK_THAT(version("ZOO_KEEP_FREED_MEMORY=1"), Catch::Contains("freed memory kept"));
  CHECK_THAT(version("GLIBC_TUNABLES=glibc.cpu.x86_shstk=off"), Catch::Contains("freed memory kept"));
}

TEST_CASE("CLI: train one epoch, eval --json, info --json, resume", "[cli][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  auto r = run_zoo(
      "train mlp --epochs 1 --limit 2000 --threads 2 --seed 5 --schedule constant --set hidden=[64] --out " + run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("run saved to " + run) != std::string::npos);
  CHECK(r.out.find("  val accuracy ") != std::string::npos);  // the epoch line: validation only
  CHECK(r.out.find("  test ") == std::string::npos);
  CHECK_THAT(r.out, Catch::Matches(R"((.|\n)*\ntest accuracy 0\.[0-9]{4} .* \(best epoch 1 of 1, val accuracy )"
                                   R"(0\.[0-9]{4}\)\nrun saved to (.|\n)*)"));
  for (const char* f :
       {"config.json", "model.pt", "best.pt", "optimizer.pt", "state.json", "metrics.jsonl", "test.json"})
    CHECK(std::filesystem::exists(tmp.path() / "run" / f));

  auto e = run_zoo("eval " + run + " --json");
  REQUIRE(e.code == 0);
  auto metrics = json::parse(zoo::test::last_line(e.out));
  CHECK(metrics["accuracy"].get<double>() > 0.6);
  CHECK(metrics["items"] == 2000);
  auto state = json::parse(zoo::test::read_text(tmp.path() / "run" / "state.json"));
  CHECK(metrics["accuracy"].get<double>() == Approx(state["final"]["test"]["accuracy"].get<double>()));
  auto last = run_zoo("eval " + run + " --checkpoint last --json");
  REQUIRE(last.code == 0);
  CHECK(json::parse(zoo::test::last_line(last.out)) == metrics);  // one epoch: the best is the last
  CHECK_THAT(run_zoo("eval " + run).out, Catch::Contains("mlp (best checkpoint) on fashion-mnist test: accuracy"));
  check_error(run_zoo("eval " + run + " --checkpoint epoch-1"),
              "holds the checkpoints best, last, not 'epoch-1' (epoch-N exists for the --save-top-k best epochs); "
              "choose one of them with --checkpoint");
  check_error(run_zoo("eval " + run + " --checkpoint newest"), "'newest' is not a checkpoint name", 2);

  auto info = run_zoo("info " + run + " --json");
  REQUIRE(info.code == 0);
  auto i = json::parse(zoo::test::last_line(info.out));
  CHECK(i["parameters"] == 784 * 64 + 64 + 64 * 10 + 10);
  CHECK(i["config"]["options"]["hidden"] == json::array({64}));
  CHECK(i["config"]["train"]["seed"] == 5);
  CHECK(i["config"]["train"]["schedule"] == "constant");
  CHECK(i["config"]["train"]["epochs"] == 1);
  CHECK(i["config"]["versions"]["torch"].get<std::string>().size() > 0);
  CHECK(zoo::test::is_own_allocator(i["config"]["versions"]["allocator"]));  // zoo's, "freed memory kept" included
  CHECK(i["best"]["metric"] == "val.accuracy");
  CHECK(i["best"]["epoch"] == 1);
  CHECK(i["data"] == json({{"train", 1800}, {"val", 200}, {"test", 2000}}));
  CHECK(i["final"]["test"]["accuracy"] == metrics["accuracy"]);
  const auto text = run_zoo("info " + run).out;
  CHECK(text.find("parameters  50890") != std::string::npos);
  CHECK(text.find("splits      train 1800, validation 200, test 2000\n") != std::string::npos);
  CHECK(text.find("final test  accuracy ") != std::string::npos);
  // Without its data (a run copied elsewhere) info still shows the run and says why the sizes are missing.
  auto moved = json::parse(zoo::test::read_text(tmp.path() / "run" / "config.json"));
  moved["data"]["data_dir"] = tmp.str("gone");
  zoo::test::write_text(tmp.path() / "run" / "config.json", moved.dump(2));
  const auto no_data = run_zoo("info " + run);
  CHECK(no_data.code == 0);
  CHECK(no_data.out.find("splits      unknown: ") != std::string::npos);
  CHECK(no_data.out.find("final test  accuracy ") != std::string::npos);
  moved["data"]["data_dir"] = "";  // back to the default, for the resume below
  zoo::test::write_text(tmp.path() / "run" / "config.json", moved.dump(2));

  auto resumed = run_zoo("train --resume " + run + " --epochs 2 --no-progress");
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.out.find("after epoch 1 of 2") != std::string::npos);
  CHECK(json::parse(zoo::test::read_text(tmp.path() / "run" / "state.json"))["epoch"] == 2);
  check_error(run_zoo("train --resume " + run + " --lr 0.5"), "--lr cannot change a run being resumed");
  check_error(run_zoo("train --resume " + run + " --epochs 1"), "has already trained 2 epochs");
  check_error(run_zoo("train cnn --resume " + run), "is a run of model 'mlp', not 'cnn'");
  check_error(run_zoo("train mlp --limit 100 --out " + run), "already holds a run");
  check_error(run_zoo("train --resume " + run + " --epochs 2 --restart-schedule"),
              "a schedule restart needs epochs beyond the 2 planned");
}

TEST_CASE("CLI: --save-top-k and --ema checkpoints, listed by info and picked by --checkpoint", "[cli][selection]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  auto r = run_zoo(
      "train mlp --epochs 3 --limit 500 --threads 2 --seed 2 --lr 0.003 --set hidden=[32] --save-top-k 2 "
      "--monitor val.loss --ema 0.9 --no-progress --out " +
      run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("  ema val accuracy ") != std::string::npos);  // the epoch line
  CHECK(r.out.find("\nema weights: test accuracy 0.") != std::string::npos);
  const auto state = json::parse(zoo::test::read_text(tmp.path() / "run" / "state.json"));
  REQUIRE(state["top_k"].size() == 2);
  const auto best = state["top_k"][0]["epoch"].get<int64_t>(), second = state["top_k"][1]["epoch"].get<int64_t>();
  auto info = json::parse(zoo::test::last_line(run_zoo("info " + run + " --json").out));
  std::vector<std::string> held{"best", "last", "ema", fmt::format("epoch-{}", std::min(best, second)),
                                fmt::format("epoch-{}", std::max(best, second))};
  CHECK(info["checkpoints"].get<std::vector<std::string>>() == held);
  CHECK(run_zoo("info " + run).out.find("checkpoints best, last, ema, epoch-") != std::string::npos);
  auto eval = [&](const std::string& checkpoint) {
    auto e = run_zoo("eval " + run + " --json --checkpoint " + checkpoint);
    INFO(e.err);
    REQUIRE(e.code == 0);
    return json::parse(zoo::test::last_line(e.out));
  };
  CHECK(eval("ema")["accuracy"] == state["final"]["ema"]["test"]["accuracy"]);
  CHECK(eval(fmt::format("epoch-{}", best)) == eval("best"));
  CHECK(eval("best")["accuracy"] == state["final"]["test"]["accuracy"]);
}

TEST_CASE("CLI: zoo plot of runs, eval --per-class and --confusion, lr-find", "[cli][loggers]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto a = tmp.str("a"), b = tmp.str("b");
  for (const auto& [dir, seed] : {std::pair{a, 1}, std::pair{b, 2}}) {
    auto r = run_zoo("train mlp --epochs 2 --limit 1000 --threads 2 --no-progress --log csv --seed " +
                     std::to_string(seed) + " --out " + dir);
    INFO(r.err);
    REQUIRE(r.code == 0);
  }
  auto plot = run_zoo("plot " + a + " " + b + " --out " + tmp.str("curves.png"));
  INFO(plot.err);
  REQUIRE(plot.code == 0);
  CHECK_THAT(plot.out, Catch::Contains("wrote " + tmp.str("curves.png") + " (loss, accuracy for 2 run(s))"));
  CHECK(std::filesystem::file_size(tmp.path() / "curves.png") > 5000);
  const auto script = zoo::test::read_text(tmp.path() / "curves.gp");
  CHECK_THAT(script, Catch::Contains("'a validation'") && Catch::Contains("'b train'"));
  auto steps = run_zoo("plot " + a + " --x step --metric loss --out " + tmp.str("steps.png"));
  REQUIRE(steps.code == 0);
  CHECK_THAT(zoo::test::read_text(tmp.path() / "steps.gp"), Catch::Contains("'train (per step)'"));
  check_error(run_zoo("plot " + a + " --metric miou --out " + tmp.str("x.png")),
              "no run here has the metric 'miou'; they have: accuracy, loss");
  check_error(run_zoo("plot " + tmp.str() + " --out " + tmp.str("x.png")), "is not a zoo run directory");

  auto per_class = run_zoo("eval " + a + " --per-class");
  REQUIRE(per_class.code == 0);
  CHECK_THAT(per_class.out, Catch::Contains("precision  recall") && Catch::Contains("\nAnkle boot ") &&
                                Catch::Contains("\nT-shirt/top "));
  auto j = json::parse(zoo::test::last_line(run_zoo("eval " + a + " --per-class --json").out));
  REQUIRE(j["confusion"].size() == 10);
  int64_t total = 0, right = 0;
  for (size_t i = 0; i < 10; ++i)
    for (size_t k = 0; k < 10; ++k) {
      total += j["confusion"][i][k].get<int64_t>();
      if (i == k) right += j["confusion"][i][k].get<int64_t>();
    }
  CHECK(total == 1000);
  CHECK(static_cast<double>(right) / 1000 == Approx(j["accuracy"].get<double>()));
  CHECK(j["per_class"]["class"][9] == "Ankle boot");
  CHECK_FALSE(json::parse(zoo::test::last_line(run_zoo("eval " + a + " --json").out)).contains("confusion"));
  REQUIRE(run_zoo("eval " + a + " --confusion " + tmp.str("confusion.png")).code == 0);
  CHECK(std::filesystem::file_size(tmp.path() / "confusion.png") > 5000);

  // In a directory of its own: lr-find writes its CSV and plot there, and no run.
  std::filesystem::create_directories(tmp.path() / "find");
  auto lr = zoo::test::run_command("cd " + tmp.str("find") + " && " + ZOO_BIN +
                                   " lr-find mlp --limit 1000 --steps 40 --start-lr 1e-5 --end-lr 10");
  INFO(lr.out << lr.err);
  REQUIRE(lr.code == 0);
  CHECK_THAT(lr.out, Catch::Contains("suggested learning rate: "));
  std::set<std::string> written;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path() / "find"))
    written.insert(e.path().filename().string());
  CHECK(written == std::set<std::string>{"lr_find.csv", "lr_find.gp", "lr_find.png"});
  CHECK(zoo::test::count_lines(zoo::test::read_text(tmp.path() / "find" / "lr_find.csv")) >= 21);
  check_error(run_zoo("lr-find mlp --limit 500 --optimizer sgd --momentum 0 --start-lr 1e6 --end-lr 1e9 --out " +
                      tmp.str("lr2")),
              "lr-find has nothing to suggest");
  check_error(run_zoo("lr-find mlp --start-lr 1 --end-lr 0.1"), "--end-lr (0.1) must be above --start-lr (1)");
}

TEST_CASE("CLI: model.pt opens in Python with the C++ module's parameter names", "[cli][python]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  REQUIRE(zoo::test::run_command("/usr/bin/python3 -c 'import torch'").code == 0);  // scripts/setup installs it
  TempDir tmp;
  REQUIRE(run_zoo("train cnn --epochs 1 --limit 200 --no-progress --out " + tmp.str("run")).code == 0);
  auto py = zoo::test::run_command(
      "/usr/bin/python3 -c \"import torch; m = torch.jit.load('" + tmp.str("run/model.pt") +
      "'); print(' '.join(n + ':' + 'x'.join(map(str, p.shape)) for n, p in m.named_parameters()))\"");
  INFO(py.err);
  REQUIRE(py.code == 0);
  auto [model, options] = zoo::models::build_model("cnn");
  std::string expected;
  for (const auto& p : model.ptr()->named_parameters()) {
    std::string shape;
    for (auto d : p.value().sizes()) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    expected += (expected.empty() ? "" : " ") + p.key() + ":" + shape;
  }
  CHECK(zoo::test::last_line(py.out) == expected);
}

TEST_CASE("CLI: bad input gets one clear line and a non-zero exit", "[cli][errors]") {
  TempDir tmp;
  SECTION("unknown model lists the valid ones") {
    auto r = run_zoo("train resnet9000");
    check_error(r, "unknown model 'resnet9000'; valid models: ", 1);
    for (const auto& name : zoo::models::ModelRegistry::instance().names())
      if (name != "test-softmax") CHECK(r.err.find(name) != std::string::npos);
  }
  SECTION("unknown flag") { check_error(run_zoo("train mlp --epoks 3"), "--epoks", 2); }
  SECTION("bad optimizer value lists the choices") { check_error(run_zoo("train mlp --optimizer lbfgs"), "sgd", 2); }
  SECTION("bad schedule value lists the choices") { check_error(run_zoo("train mlp --schedule linear"), "cosine", 2); }
  SECTION("negative or non-numeric values") {
    check_error(run_zoo("train mlp --epochs -1"), "--epochs", 2);
    check_error(run_zoo("train mlp --lr fast"), "--lr", 2);
  }
  SECTION("unknown --set option lists the valid ones") {
    check_error(run_zoo("train mlp --set hiden=3 --out " + tmp.str("r")), "valid options: in_features, hidden");
  }
  SECTION("--set with a wrong type") {
    check_error(run_zoo("train mlp --set hidden=wide --out " + tmp.str("r")), "expects a list of integers");
  }
  SECTION("--set without '='") { check_error(run_zoo("train mlp --set hidden --out " + tmp.str("r")), "key=value"); }
  SECTION("bad --config JSON") {
    std::ofstream(tmp.str("c.json")) << "{\"hidden\": [3,";
    check_error(run_zoo("train mlp --config " + tmp.str("c.json") + " --out " + tmp.str("r")), "is not valid JSON");
  }
  SECTION("missing data names the path and the package") {
    check_error(run_zoo("train mlp --data-dir " + tmp.str("empty") + " --out " + tmp.str("r")),
                "apt-get install dataset-fashion-mnist");
  }
  SECTION("a model that does not fit the data fails before anything is written") {
    auto r = run_zoo("train cnn --set in_channels=3 --out " + tmp.str("r"));
    check_error(r, "the model does not fit the data (fashion-mnist train");
    CHECK(r.err.find("items [1, 28, 28]): CNN expects [N, 3, 28, 28]") != std::string::npos);
    CHECK(!std::filesystem::exists(tmp.path() / "r"));
  }
  SECTION("model selection settings, refused before anything is written") {
    const auto out = " --limit 100 --out " + tmp.str("r");
    check_error(run_zoo("train mlp --monitor val.acc" + out),
                "--monitor val.acc is not a metric this task reports; "
                "valid: val.accuracy, val.loss");
    check_error(run_zoo("train mlp --monitor test.accuracy" + out), "the test split is never used to select");
    check_error(run_zoo("train mlp --val-fraction 1" + out), "--val-fraction: must be below 1", 2);
    check_error(run_zoo("train mlp --val-fraction -0.5" + out), "--val-fraction", 2);
    check_error(run_zoo("train mlp --early-stop 3 --val-fraction 0" + out), "--early-stop needs a metric to watch");
    check_error(run_zoo("train mlp --save-top-k 0" + out), "--save-top-k", 2);
    check_error(run_zoo("train mlp --save-top-k -1" + out), "--save-top-k", 2);
    check_error(run_zoo("train mlp --save-top-k 3 --val-fraction 0" + out), "--save-top-k needs a metric to watch");
    check_error(run_zoo("train mlp --ema 1" + out), "--ema: must be in (0, 1)", 2);
    check_error(run_zoo("train mlp --ema -0.5" + out), "--ema: must be in (0, 1)", 2);
    check_error(run_zoo("train mlp --ema 0" + out), "--ema must be in (0, 1), e.g. 0.999, got 0");
    check_error(run_zoo("train mlp --schedule plateau --val-fraction 0" + out),
                "--schedule plateau needs a metric to watch");
    check_error(run_zoo("train mlp --restart-schedule" + out), "--restart-schedule restarts the schedule of a resumed");
    check_error(run_zoo("train mlp --limit 4" + std::string(" --out ") + tmp.str("r")),
                "--val-fraction 0.1 of 4 training items leaves the validation split empty");
    CHECK(!std::filesystem::exists(tmp.path() / "r"));
  }
  SECTION("eval of a directory that is not a run") {
    check_error(run_zoo("eval " + tmp.str()), "not a zoo run directory");
  }
  SECTION("eval of a missing directory") { check_error(run_zoo("eval " + tmp.str("nope")), "does not exist"); }
  SECTION("no subcommand") {
    auto r = run_zoo("");
    CHECK(r.code != 0);
  }
}

TEST_CASE("CLI: --help on every subcommand", "[cli]") {
  for (const char* sub : {"list", "train", "eval", "info"}) {
    auto r = run_zoo(std::string(sub) + " --help");
    INFO(sub);
    CHECK(r.code == 0);
    CHECK(r.out.find("Usage") != std::string::npos);
  }
  auto train = run_zoo("train --help").out;
  for (const char* flag : {"--epochs", "--batch-size", "--lr", "--optimizer", "--schedule", "--seed", "--threads",
                           "--limit", "--data-dir", "--out", "--set", "--config", "--resume", "--device"})
    CHECK(train.find(flag) != std::string::npos);
}
