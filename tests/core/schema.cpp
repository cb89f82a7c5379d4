// core/schema.h: one declaration of settings gives JSON in and out, defaults, checks, nesting, aliases.
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
  CHECK(names == std::vector<std::string>{"epochs", "threads", "precision", "progress"});
  CHECK(run.find("data.name")->cli_flag == "--dataset");
  CHECK(run.find("prior.kind")->cli_flag == "--prior");
  CHECK(run.find("prior.include_all")->cli_flag == "--prior-all-params");
  // Adding a setting to TrainOptions without declaring it would leave JSON without it: every field round-trips.
  const auto o = training::TrainOptions().epochs(7).lr(0.25).schedule("step").shuffle(false).threads(3);
  const auto back = training::train_options_from_json(training::to_json(o));
  CHECK(training::to_json(back) == training::to_json(o));
  CHECK(training::to_json(o).size() == training::train_schema().settings().size());
}
