// The model registry: models by name, options as data (nested, dotted, flat), errors.
#include "models/registry.h"
#include "helpers.h"
#include "models/cnn.h"
#include "models/mlp.h"

#include <catch2/catch.hpp>

using namespace zoo::models;
using zoo::test::error_of;
using zoo::test::parameter_names;

TEST_CASE("Registry: models by name, options as JSON round trip", "[registry]") {
  auto names = ModelRegistry::instance().names();
  CHECK(std::find(names.begin(), names.end(), "mlp") != names.end());
  CHECK(std::find(names.begin(), names.end(), "cnn") != names.end());
  auto [model, options] = build_model("mlp", {{"hidden", {64}}, {"dropout", 0.5}});
  CHECK(options == json({{"in_features", 784}, {"hidden", {64}}, {"num_classes", 10}, {"dropout", 0.5}}));
  CHECK(count_parameters(*model.ptr()) == 784 * 64 + 64 + 64 * 10 + 10);
  CHECK(model.forward(torch::rand({2, 784})).sizes() == torch::IntArrayRef({2, 10}));
  CHECK(ModelRegistry::instance().at("cnn").complete_options(json::object()) ==
        ModelRegistry::instance().at("cnn").default_options());
}

TEST_CASE("Registry: unknown names, unknown options, wrong types and bad values are clear errors",
          "[registry][errors]") {
  auto unknown = error_of([] { build_model("resnet9000"); });
  CHECK(unknown.find("unknown model 'resnet9000'") != std::string::npos);
  for (const auto& name : ModelRegistry::instance().names()) CHECK(unknown.find(name) != std::string::npos);
  auto option = error_of([] { build_model("mlp", {{"hiden", {1}}}); });
  CHECK(option.find("no option 'hiden'") != std::string::npos);
  CHECK(option.find("valid options: in_features, hidden, num_classes, dropout") != std::string::npos);
  auto type = error_of([] { build_model("mlp", {{"hidden", "big"}}); });
  CHECK(type.find("expects a list of integers") != std::string::npos);
  auto narrowing = error_of([] { build_model("cnn", {{"hidden", 2.5}}); });
  CHECK(narrowing.find("expects an integer") != std::string::npos);
  auto value = error_of([] { build_model("mlp", {{"dropout", 1.5}}); });
  CHECK(value.find("dropout must be in [0, 1)") != std::string::npos);
  CHECK(value.find('\n') == std::string::npos);
}

TEST_CASE("Nested model options: nested, dotted and flat (zoo 0.1) keys, merges, checks that build nothing",
          "[registry][settings]") {
  const auto& ode = ModelRegistry::instance().at("ode-resnet");
  const json defaults = ode.default_options();
  CHECK(defaults.at("solver") ==
        json({{"method", "rk4"}, {"steps", 2}, {"rtol", 1e-3}, {"atol", 1e-3}, {"max_steps", 1000}}));
  CHECK_FALSE(defaults.contains("method"));  // written once, under its declared name
  // Three spellings of one setting: nested JSON, a dotted key, and the flat key of zoo 0.1's config.json.
  for (const json& given : {json({{"solver", {{"method", "dopri5"}}}}), json({{"solver.method", "dopri5"}}),
                            json({{"method", "dopri5"}})}) {
    const json complete = ode.complete_options(given);
    CHECK(complete.at("solver").at("method") == "dopri5");
    CHECK(complete.at("solver").at("steps") == 2);
    CHECK_FALSE(complete.contains("method"));
  }
  // A run's nested options with a --set in either spelling: the change wins, the rest stays.
  const json run = ode.complete_options({{"solver", {{"method", "euler"}, {"steps", 4}}}});
  for (const std::string key : {"method", "solver.method"}) {
    const json merged = ode.complete_options(merge_options(ode, run, {{key, "midpoint"}}));
    CHECK(merged.at("solver").at("method") == "midpoint");
    CHECK(merged.at("solver").at("steps") == 4);
  }
  // Unknown nested keys name the dotted path and list the valid options.
  const auto unknown = error_of([&] { ode.complete_options({{"solver", {{"metod", "rk4"}}}}); });
  CHECK(unknown.find("has no option 'solver.metod'") != std::string::npos);
  CHECK(unknown.find("solver.method, solver.steps") != std::string::npos);
  // The declared checks of the child, and a check across settings (k <= experts), name the dotted setting.
  CHECK(error_of([&] {
          ode.complete_options({{"steps", 0}});
        }) == "option 'solver.steps' of model 'ode-resnet': must be >= 1, got 0");
  CHECK(error_of([] {
          ModelRegistry::instance().at("moe").complete_options({{"experts", 2}, {"k", 3}});
        }) == "option 'moe.k' of model 'moe': must be in [1, 2] (the number of experts), got 3");
  CHECK(error_of([] {
          ModelRegistry::instance().at("mhc-resnet").complete_options({{"variant", "mhc-lite"}, {"streams", 7}});
        }).find("option 'mhc.streams' of model 'mhc-resnet': must be <= 6 for mhc-lite") != std::string::npos);
  // A wrapper's default for its child's setting is the wrapper's (moe: balance_coef 0.1; the layer alone: 0.01).
  const auto& settings = ModelRegistry::instance().at("moe").settings;
  const auto coef =
      std::find_if(settings.begin(), settings.end(), [](const auto& s) { return s.name == "moe.balance_coef"; });
  REQUIRE(coef != settings.end());
  CHECK(coef->default_value == 0.1);
  // U-Net and DeconvNet share the encoder's options; old flat keys build the same network as nested ones.
  torch::manual_seed(3);
  auto [flat, flat_options] = build_model("unet", {{"levels", 2}, {"base_channels", 2}});
  torch::manual_seed(3);
  auto [nested, nested_options] = build_model("unet", {{"encoder", {{"levels", 2}, {"base_channels", 2}}}});
  CHECK(flat_options == nested_options);
  CHECK(flat_options.at("encoder").at("levels") == 2);
  CHECK(parameter_names(*flat.ptr()) == parameter_names(*nested.ptr()));
  for (const auto& p : flat.ptr()->named_parameters())
    CHECK(torch::equal(p.value(), nested.ptr()->named_parameters()[p.key()]));
  CHECK(ModelRegistry::instance().at("deconvnet3d").default_options().at("encoder").at("dims") == 3);
  // Checking options builds nothing: a U-Net this wide would need terabytes of weights.
  CHECK_NOTHROW(ModelRegistry::instance().at("unet").complete_options({{"encoder", {{"base_channels", 1 << 24}}}}));
  // ... and draws no random numbers.
  torch::manual_seed(5);
  const auto before = torch::rand({1});
  torch::manual_seed(5);
  ModelRegistry::instance().at("moe").complete_options({{"experts", 4}});
  CHECK(torch::equal(torch::rand({1}), before));
}
