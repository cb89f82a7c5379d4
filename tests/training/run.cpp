// The run configuration: old config files load, bad settings are named by path and by flag.
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
  // The same keys come back out with the same values (plus the settings added since: callbacks, plugins, the
  // validation split and model selection).
  const json out = training::to_json(config);
  const json old = training::read_json_file(tmp.str("old/config.json"));
  for (const auto& [key, value] : old.items()) {
    if (key == "options") continue;
    if (!value.is_object()) {
      CHECK(out.at(key) == value);
      continue;
    }
    for (const auto& [sub, v] : value.items()) {
      INFO(key << "." << sub);
      CHECK(out.at(key).at(sub) == v);
    }
  }
  CHECK(out["callbacks"] == json::array());
  CHECK(out["plugins"] == json::array());
  // It trained on the whole training split and selected nothing; resumed, it goes on so.
  CHECK(out["data"]["val_fraction"] == 0);
  CHECK(out["train"]["monitor"] == "");
  CHECK(out["train"]["early_stop"] == 0);
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

TEST_CASE("metrics.jsonl: only objects with a whole epoch of at least 1 are epoch records", "[run]") {
  const auto record = training::parse_epoch_record(R"({"epoch": 2, "train": {"loss": 0.5}})");
  REQUIRE(record.has_value());
  CHECK((*record)["train"]["loss"] == 0.5);
  for (const std::string line : {R"({"epoch": 2, "train")", "[1,2]", R"({"epoch":"x"})", R"({"epoch":0})",
                                 R"({"epoch":1.5})", R"({"step":3})", ""})
    CHECK_FALSE(training::parse_epoch_record(line).has_value());
  CHECK_FALSE(training::parse_epoch_record("{\"epoch\":1,\"x\":" + std::string(300, '[') + std::string(300, ']') + "}")
                  .has_value());
}
