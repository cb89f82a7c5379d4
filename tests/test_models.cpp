// The baseline models and the registry: shapes, parameter names (Python's), options as data, errors.
#include "models/cnn.h"
#include "models/mlp.h"
#include "models/registry.h"

#include <catch2/catch.hpp>

using namespace zoo::models;

namespace {
std::vector<std::string> parameter_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.key());
  return names;
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("MLP: logits shape and the Python twin's parameter names", "[models]") {
  MLP mlp(MLPOptions().hidden({32, 16}).num_classes(7));
  auto y = mlp->forward(torch::rand({5, 1, 28, 28}));
  CHECK(y.sizes() == torch::IntArrayRef({5, 7}));
  CHECK(parameter_names(*mlp) ==
        std::vector<std::string>{"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"});
  CHECK(count_parameters(*mlp) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 7 + 7);
  std::ostringstream s;
  mlp->pretty_print(s);
  CHECK(s.str() == "zoo::MLP(in_features=784, hidden=[32, 16], num_classes=7, dropout=0)");
  CHECK_THROWS(mlp->forward(torch::rand({5, 100})));
}

TEST_CASE("CNN: logits shape, names, and gradients reach the first layer", "[models]") {
  CNN cnn;
  auto y = cnn->forward(torch::rand({4, 1, 28, 28}));
  CHECK(y.sizes() == torch::IntArrayRef({4, 10}));
  auto names = parameter_names(*cnn);
  CHECK(names.front() == "features.0.weight");
  CHECK(std::find(names.begin(), names.end(), "classifier.3.weight") != names.end());
  y.sum().backward();
  CHECK(cnn->features[0]->as<torch::nn::Conv2d>()->weight.grad().abs().sum().item<double>() > 0);
  // clone() is deep (reset() registers everything)
  auto copy = std::dynamic_pointer_cast<CNNImpl>(cnn->clone());
  REQUIRE(copy);
  torch::NoGradGuard g;
  copy->classifier[0]->as<torch::nn::Linear>()->weight.fill_(0);
  CHECK(cnn->classifier[0]->as<torch::nn::Linear>()->weight.abs().sum().item<double>() > 0);
}

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

TEST_CASE("Registry: unknown names, unknown options, wrong types and bad values are clear errors", "[registry][errors]") {
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
