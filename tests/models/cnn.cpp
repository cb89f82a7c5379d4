// The CNN: shapes, names, gradients.
#include "models/cnn.h"
#include "helpers.h"
#include "models/mlp.h"
#include "models/registry.h"

#include <catch2/catch.hpp>

using namespace zoo::models;
using zoo::test::parameter_names;

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
