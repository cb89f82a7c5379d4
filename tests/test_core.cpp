// core/: settings schemas, the registry template, the callbacks of the loop and the run directory.
#include "helpers.h"

#include "core/registry.h"
#include "core/schema.h"
#include "models/mlp.h"
#include "models/registry.h"
#include "tools/cli/settings.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <limits>

using namespace zoo;
using zoo::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

/// A setting's declared resumability (Setting::resumable() is the builder that declares it).
bool resumable(const SettingInfo& s) { return s.resumable; }

struct Inner {
  TORCH_ARG(std::string, method) = "rk4";
  TORCH_ARG(int64_t, steps) = 2;
};
struct Outer {
  TORCH_ARG(int64_t, width) = 8;
  TORCH_ARG(double, rate) = 0.5;
  TORCH_ARG(bool, flag) = false;
  TORCH_ARG(std::vector<int64_t>, sizes) = std::vector<int64_t>{1, 2};
  TORCH_ARG(Inner, solver) = {};
};

const Schema<Inner>& inner_schema() {
  static const auto s = [] {
    Schema<Inner> s("solver option");
    s.add("method", ZOO_FIELD(Inner, method), "the method").one_of({"euler", "rk4"}, "method");
    s.add("steps", ZOO_FIELD(Inner, steps), "steps").at_least(1);
    return s;
  }();
  return s;
}

const Schema<Outer>& outer_schema() {
  static const auto s = [] {
    Schema<Outer> s("test option");
    s.add("width", ZOO_FIELD(Outer, width), "width").at_least(1).resumable();
    s.add("rate", ZOO_FIELD(Outer, rate), "rate").above(0).at_most(1);
    s.add("flag", ZOO_FIELD(Outer, flag), "a flag");
    s.add("sizes", ZOO_FIELD(Outer, sizes), "sizes");
    s.nest("solver", ZOO_FIELD(Outer, solver), inner_schema());
    return s;
  }();
  return s;
}

}  // namespace

TEST_CASE("Schema: one declaration gives JSON in and out, defaults, checks and nesting", "[core][schema]") {
  const auto& s = outer_schema();
  const json defaults = s.to_json(Outer{});
  CHECK(defaults == json{{"width", 8},
                         {"rate", 0.5},
                         {"flag", false},
                         {"sizes", {1, 2}},
                         {"solver", {{"method", "rk4"}, {"steps", 2}}}});
  CHECK(s.find("solver.steps")->default_value == 2);
  CHECK(resumable(*s.find("width")));
  CHECK_FALSE(resumable(*s.find("rate")));
  CHECK(s.find("solver.method")->choices == std::vector<std::string>{"euler", "rk4"});

  // Nested as an object or dotted; keys not given keep the base's values.
  auto o = s.from_json({{"width", 3}, {"solver", {{"method", "euler"}}}});
  CHECK(o.width() == 3);
  CHECK(o.solver().method() == "euler");
  CHECK(o.solver().steps() == 2);
  CHECK(o.rate() == 0.5);
  CHECK(s.from_json({{"solver.steps", 7}}).solver().steps() == 7);
  CHECK(s.from_json(s.to_json(o)).solver().method() == "euler");  // round trip

  // Unknown keys and wrong types name the key and what is valid.
  CHECK_THROWS_WITH(s.from_json({{"widht", 3}}),
                    "unknown test option 'widht'; valid test options: width, rate, flag, sizes, solver.method, "
                    "solver.steps");
  CHECK_THROWS_WITH(s.from_json({{"solver", {{"stepz", 1}}}}), Catch::Contains("unknown test option 'solver.stepz'"));
  CHECK_THROWS_WITH(s.from_json({{"width", 2.5}}), "width expects an integer, got 2.5");
  CHECK_THROWS_WITH(s.from_json({{"width", "3"}}), "width expects an integer, got \"3\"");
  CHECK_THROWS_WITH(s.from_json({{"flag", 1}}), "flag expects true or false, got 1");
  CHECK_THROWS_WITH(s.from_json({{"sizes", {1, "a"}}}), Catch::Contains("sizes expects a list of integers"));
  CHECK_THROWS_WITH(s.from_json(json::array()), Catch::Contains("must be a JSON object"));
  // An integer beyond int64 is refused, not wrapped.
  CHECK_THROWS_WITH(s.from_json(json::parse(R"({"width": 9223372036854775808})")),
                    Catch::Contains("width expects an integer"));
  CHECK(s.from_json(json::parse(R"({"width": 9223372036854775807})")).width() == std::numeric_limits<int64_t>::max());

  // Checks run without building anything, and name the setting.
  CHECK_NOTHROW(s.validate(Outer{}));
  CHECK_THROWS_WITH(s.validate(Outer().width(0)), "width must be >= 1, got 0");
  CHECK_THROWS_WITH(s.validate(Outer().rate(0)), "rate must be a number > 0, got 0.0");
  CHECK_THROWS_WITH(s.validate(Outer().rate(std::nan(""))), Catch::Contains("rate must be a number > 0"));
  CHECK_THROWS_WITH(s.validate(Outer().rate(2)), "rate must be <= 1, got 2.0");
  CHECK_THROWS_WITH(s.validate(Outer().solver(Inner().method("rk5"))),
                    "solver.method 'rk5' is unknown; valid methods: euler, rk4");
  try {
    s.validate(Outer().solver(Inner().steps(0)));
    FAIL("no error");
  } catch (const SettingError& e) {
    CHECK(e.setting() == "solver.steps");
    CHECK(e.problem() == "must be >= 1, got 0");
  }
}

TEST_CASE("Schema: aliases of old names, checks across settings, normalised JSON for merging", "[core][schema]") {
  Schema<Outer> s("test option");
  s.extend(outer_schema());
  s.alias("steps", "solver.steps");  // a flat key of an earlier format
  s.require("solver.steps", [](const Outer& o) {
    return o.solver().steps() <= o.width()
               ? ""
               : fmt::format("must be <= width ({}), got {}", o.width(), o.solver().steps());
  });
  CHECK_THROWS_AS(s.alias("old", "nothing"), std::logic_error);  // an alias of an undeclared setting
  // Read under either name, written under the declared one only.
  CHECK(s.from_json({{"steps", 5}}).solver().steps() == 5);
  CHECK(s.canonical("steps") == "solver.steps");
  CHECK(s.canonical("width") == "width");
  CHECK_FALSE(s.to_json(s.from_json({{"steps", 5}})).contains("steps"));
  CHECK(s.names() == outer_schema().names());  // aliases are no settings of their own
  // The rule sees the whole struct and names its setting.
  CHECK_NOTHROW(s.validate(s.from_json({{"steps", 8}})));
  CHECK_THROWS_WITH(s.validate(s.from_json({{"steps", 9}})), "solver.steps must be <= width (8), got 9");
  // Nested, a child's rules keep working under the prefix.
  Schema<Inner> inner;
  inner.extend(inner_schema());
  inner.require("steps",
                [](const Inner& o) { return o.method() == "euler" || o.steps() <= 4 ? "" : "rk4: at most 4"; });
  struct Wrapper {
    TORCH_ARG(Inner, solver) = {};
  };
  Schema<Wrapper> w;
  w.nest("solver", ZOO_FIELD(Wrapper, solver), inner);
  CHECK_THROWS_WITH(w.validate(w.from_json({{"solver", {{"steps", 5}}}})), "solver.steps rk4: at most 4");
  CHECK_NOTHROW(w.validate(w.from_json({{"solver.method", "euler"}, {"solver.steps", 5}})));
  // normalize: every spelling nested under its declared name, so a JSON merge lets the later value win.
  json run = s.normalize({{"solver", {{"steps", 2}, {"method", "euler"}}}, {"width", 3}});
  run.merge_patch(s.normalize({{"steps", 4}}));
  CHECK(run == json{{"solver", {{"steps", 4}, {"method", "euler"}}}, {"width", 3}});
  CHECK(s.normalize({{"solver.method", "rk4"}, {"nope", 1}}) == json{{"solver", {{"method", "rk4"}}}, {"nope", 1}});
}
TEST_CASE("Schema: the training, data and prior settings are declared once and nest into the run's", "[core][schema]") {
  const auto& run = training::run_schema();
  // Every TrainOptions setting appears under train., with its flag and resumability.
  for (const auto& t : training::train_schema().settings()) {
    const auto* r = run.find("train." + t.name);
    REQUIRE(r);
    CHECK(r->cli_flag == t.cli_flag);
    CHECK(resumable(*r) == resumable(t));
  }
  std::vector<std::string> names;
  auto zoo_resumable = [](const SettingInfo& t) { return resumable(t); };
  for (const auto& t : training::train_schema().settings())
    if (zoo_resumable(t)) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"epochs", "threads", "progress"});
  CHECK(run.find("data.name")->cli_flag == "--dataset");
  CHECK(run.find("prior.kind")->cli_flag == "--prior");
  CHECK(run.find("prior.include_all")->cli_flag == "--prior-all-params");
  // Adding a setting to TrainOptions without declaring it would leave JSON without it: every field round-trips.
  const auto o = training::TrainOptions().epochs(7).lr(0.25).schedule("step").shuffle(false).threads(3);
  const auto back = training::train_options_from_json(training::to_json(o));
  CHECK(training::to_json(back) == training::to_json(o));
  CHECK(training::to_json(o).size() == training::train_schema().settings().size());
}

TEST_CASE("Run config: a config.json written by zoo 0.1.0 before the schemas still loads and trains on",
          "[core][run]") {
  TempDir tmp;
  fs::create_directories(tmp.str("old"));
  fs::copy_file(std::string(ZOO_SOURCE_DIR) + "/tests/data/config_v0.1.json", tmp.str("old/config.json"));
  const auto config = training::complete_config(training::read_run_config(tmp.str("old")));
  CHECK(config.model == "mlp");
  CHECK(config.options["hidden"] == json{32});
  CHECK(config.data.limit == 200);
  CHECK(config.train.epochs() == 2);
  CHECK(config.train.schedule() == "cosine");
  CHECK(config.train.seed() == 3);
  CHECK(config.prior.kind == "gaussian");
  REQUIRE(config.prior.layers.size() == 1);
  CHECK(config.prior.layers[0].first == "net.0.*");
  CHECK(config.prior.layers[0].second == 0.001);
  CHECK(config.versions["zoo"] == "0.1.0");
  // The same keys come back out (plus the settings added since: callbacks, plugins).
  const json out = training::to_json(config);
  const json old = training::read_json_file(tmp.str("old/config.json"));
  for (const auto& [key, value] : old.items()) {
    INFO(key);
    if (key != "options") CHECK(out.at(key) == value);
  }
  CHECK(out["callbacks"] == json::array());
  CHECK(out["plugins"] == json::array());
  // A config.json with an unknown key, or a wrong type, is refused with the file's name.
  json bad = old;
  bad["train"]["epochz"] = 1;
  CHECK_THROWS_WITH(training::run_config_from_json(bad, "X/config.json"),
                    Catch::Contains("X/config.json is not a zoo run configuration (unknown run setting "
                                    "'train.epochz'"));
  bad = old;
  bad["train"]["epochs"] = "two";
  CHECK_THROWS_WITH(training::run_config_from_json(bad, "X/config.json"),
                    Catch::Contains("train.epochs expects an integer, got \"two\""));
}

TEST_CASE("Run config: a bad setting is named by its path in the library and by its flag on the command line",
          "[core][run]") {
  auto config = zoo::test::small_run("mlp", 100);
  config.train.epochs(0);
  CHECK_THROWS_WITH(training::complete_config(config), "train.epochs must be >= 1, got 0");
  config.train.epochs(1);
  config.data.limit = -1;
  CHECK_THROWS_WITH(training::complete_config(config), "data.limit must be >= 0, got -1");
  CHECK(cli::in_flags("train.epochs must be >= 1, got 0") == "--epochs must be >= 1, got 0");
  CHECK(cli::in_flags("data.limit must be >= 0; data.name 'x'") == "--limit must be >= 0; --dataset 'x'");
  CHECK(cli::in_flags("Try a lower train.lr or train.clip_grad 1.0.") == "Try a lower --lr or --clip-grad 1.0.");
  // Only whole setting paths are replaced.
  CHECK(cli::in_flags("my.train.lr and train.lrx") == "my.train.lr and train.lrx");
}

TEST_CASE("Command line: flag text is parsed by the setting's type, exactly", "[core][cli]") {
  std::string problem;
  CHECK(cli::parse_setting_text("42", json(1), problem) == 42);
  CHECK(problem.empty());
  cli::parse_setting_text("9223372036854775808", json(1), problem);
  CHECK_THAT(problem, Catch::Contains("must be an integer from"));
  problem.clear();
  cli::parse_setting_text("2.5", json(1), problem);
  CHECK(problem == "must be an integer, got '2.5'");
  problem.clear();
  CHECK(cli::parse_setting_text("2.5e-3", json(0.1), problem) == 2.5e-3);
  CHECK(problem.empty());
  cli::parse_setting_text("fast", json(0.1), problem);
  CHECK(problem == "must be a number, got 'fast'");
  problem.clear();
  CHECK(cli::parse_setting_text("[1,2]", json::array(), problem) == json{1, 2});
  CHECK(cli::parse_setting_text("adam", json("x"), problem) == "adam");
}

namespace {
struct Thing {
  static constexpr const char* registry_kind = "thing";
  static constexpr const char* registry_hint = " (see 'things')";
  std::string name;
  int value = 0;
};
}  // namespace

TEST_CASE("Registry: one table per entry type, names sorted, unknown and duplicate names refused", "[core][registry]") {
  auto& things = Registry<Thing>::instance();
  things.add({"b", 2});
  things.add({"a", 1});
  CHECK(&things == &Registry<Thing>::instance());
  CHECK(things.names() == std::vector<std::string>{"a", "b"});
  CHECK(things.at("b").value == 2);
  CHECK_THROWS_WITH(things.at("c"), "unknown thing 'c'; valid things: a, b (see 'things')");
  CHECK_THROWS_WITH(things.add({"a", 3}), "thing 'a' is registered twice");
  CHECK(things.at("a").value == 1);
  // The library's registries are instances of it.
  CHECK_THROWS_WITH(models::ModelRegistry::instance().at("nope"),
                    Catch::StartsWith("unknown model 'nope'; valid models: "));
  CHECK_THROWS_WITH(datasets::DatasetRegistry::instance().at("nope"), Catch::StartsWith("unknown dataset 'nope'"));
  CHECK_THROWS_WITH(training::make_objective("nope"), Catch::StartsWith("unknown task 'nope'; valid tasks: "));
}

namespace {
/// Counts the steps it has seen; its count is resumable state.
class StepCounter : public training::Callback {
 public:
  std::string name() const override { return "test-step-counter"; }
  void on_batch_end(training::Trainer&, const training::StepInfo&) override { ++steps; }
  json state() const override { return {{"steps", steps}}; }
  void load_state(const json& s) override { steps = s.at("steps").get<int64_t>(); }
  int64_t steps = 0;
};
std::shared_ptr<StepCounter> last_counter;
const Registrar<training::CallbackEntry> step_counter{{"test-step-counter", "counts steps (a test)", [] {
                                                         last_counter = std::make_shared<StepCounter>();
                                                         return last_counter;
                                                       }}};

/// Records the order of the loop's calls.
class Recorder : public training::Callback {
 public:
  void on_fit_start(training::Trainer&) override { calls.push_back("fit_start"); }
  void on_epoch_start(training::Trainer&, int64_t e, int64_t, int64_t) override {
    calls.push_back("epoch_start " + std::to_string(e));
  }
  void loss_terms(training::Trainer&, training::Terms& t) override {
    calls.push_back("loss_terms");
    t.emplace_back("zero", torch::zeros({}));
  }
  void log_terms(training::Trainer&, training::Terms&) override { calls.push_back("log_terms"); }
  void after_backward(training::Trainer& t) override {
    // The gradient exists here, before the optimizer step.
    calls.push_back(t.model().ptr()->parameters()[0].grad().defined() ? "after_backward grad" : "after_backward");
  }
  void after_step(training::Trainer&) override { calls.push_back("after_step"); }
  void on_batch_end(training::Trainer&, const training::StepInfo& s) override {
    calls.push_back("batch_end " + std::to_string(s.step) + "/" + std::to_string(s.steps));
  }
  void on_train_end(training::Trainer&) override { calls.push_back("train_end"); }
  void on_evaluation_end(training::Trainer&, json& record) override {
    calls.push_back("evaluation_end");
    record["extra"] = 1;
  }
  void on_epoch_end(training::Trainer&, const json& record) override {
    calls.push_back("epoch_end " + std::to_string(record.value("extra", 0)));
  }
  void on_fit_end(training::Trainer&) override { calls.push_back("fit_end"); }
  std::vector<std::string> calls;
};
}  // namespace

TEST_CASE("Callbacks: called at fixed points of the loop, in order, and a term they add is logged",
          "[core][callbacks]") {
  auto x = torch::randn({8, 1, 28, 28});
  auto data = std::make_shared<datasets::TensorDataset>(x, torch::randint(0, 10, {8}, torch::kInt64), "tiny");
  training::Trainer trainer(torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(),
                            {data, data}, training::TrainOptions().epochs(1).batch_size(4).progress(false).threads(1));
  auto recorder = std::make_shared<Recorder>();
  trainer.add_callback(recorder);
  const auto record = trainer.fit();
  const std::vector<std::string> step = {"loss_terms", "log_terms", "after_backward grad", "after_step"};
  std::vector<std::string> expected = {"fit_start", "epoch_start 1"};
  for (int s = 1; s <= 2; ++s) {
    expected.insert(expected.end(), step.begin(), step.end());
    expected.push_back("batch_end " + std::to_string(s) + "/2");
  }
  expected.insert(expected.end(), {"train_end", "evaluation_end", "epoch_end 1", "fit_end"});
  CHECK(recorder->calls == expected);
  CHECK(record["train"].contains("zero"));
  CHECK(record["extra"] == 1);
}

TEST_CASE("Callbacks: stop_after_epoch ends fit without an error, and a callback's state resumes exactly",
          "[core][callbacks][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config =
      zoo::test::small_run("mlp", 300, training::TrainOptions().epochs(3).batch_size(100).progress(false).threads(1));
  config.callbacks = {"test-step-counter"};
  {  // uninterrupted: 3 epochs of 3 steps
    auto run = training::Run::create(config, tmp.str("whole"));
    run->fit();
    CHECK(last_counter->steps == 9);
    CHECK(training::read_json_file(tmp.str("whole/state.json"))["callbacks"]["test-step-counter"]["steps"] == 9);
    CHECK(training::read_run_config(tmp.str("whole")).callbacks == std::vector<std::string>{"test-step-counter"});
  }
  {  // stopped by a callback after epoch 1, then resumed: the counter goes on from its checkpoint
    auto run = training::Run::create(config, tmp.str("split"));
    run->trainer().add_epoch_hook([&](const json&) { run->trainer().stop_after_epoch("test"); });
    const auto record = run->fit();
    CHECK(record["epoch"] == 1);
    CHECK(last_counter->steps == 3);
    auto resumed = training::Run::resume(tmp.str("split"));
    CHECK(last_counter->steps == 3);  // a new counter, its state loaded
    resumed->fit();
    CHECK(last_counter->steps == 9);
  }
  // The two runs end with the same weights.
  const auto a = training::read_tensors(tmp.str("whole/model.pt")),
             b = training::read_tensors(tmp.str("split/model.pt"));
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) CHECK(torch::equal(t, b.at(name)));
  // An unknown callback name is refused with the registered ones.
  config.callbacks = {"nope"};
  CHECK_THROWS_WITH(training::Run::create(config, tmp.str("bad")),
                    Catch::Contains("unknown callback 'nope'; valid callbacks: "));
}
