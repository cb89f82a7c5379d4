// Probes with a learned scalar mix (training/probe.h): the mix finds the layer that holds the signal.
#include "training/probe.h"

#include <catch2/catch.hpp>

#include <torch/torch.h>

using namespace zoo;

TEST_CASE("Probe: the learned scalar mix puts its weight on the layer that holds the labels", "[probe][elmo]") {
  torch::manual_seed(1);
  const int64_t n = 600, d = 16;
  // Labels are the sign of one direction of layer 1; layers 0 and 2 are noise of other scales (1000x and 0.01x,
  // as ELMo's layers differ), so only standardisation lets the weights compare layers rather than scales.
  const auto signal = torch::randn({n, d});
  const auto labels = (signal.select(1, 3) > 0).to(torch::kInt64);
  const std::vector<torch::Tensor> layers{torch::randn({n, d}) * 1000, signal, torch::randn({n, d}) * 0.01};
  const auto train = torch::arange(0, 450), test = torch::arange(450, n);
  const auto mix = training::train_probe(layers, labels, 2, train, test);
  REQUIRE(mix.weights.size() == 3);
  CHECK(mix.weights[0] + mix.weights[1] + mix.weights[2] == Approx(1.0).epsilon(1e-6));
  CHECK(mix.weights[1] > 0.6);
  CHECK(mix.weights[1] > 2 * std::max(mix.weights[0], mix.weights[2]));
  CHECK(mix.gamma != Approx(1.0));  // trained
  CHECK(mix.test_accuracy > 0.9);
  const auto noise = training::train_probe(layers, labels, 2, train, test, training::ProbeOptions().layer(0));
  const auto right = training::train_probe(layers, labels, 2, train, test, training::ProbeOptions().layer(1));
  CHECK(noise.weights == std::vector<double>{1, 0, 0});
  CHECK(noise.test_accuracy < 0.65);  // chance is 0.5
  CHECK(right.test_accuracy > 0.9);
  // Deterministic for a seed.
  const auto again = training::train_probe(layers, labels, 2, train, test);
  CHECK(again.weights == mix.weights);
  CHECK_THROWS_WITH(training::train_probe(layers, labels, 2, train, test, training::ProbeOptions().layer(3)),
                    Catch::Contains("layer 3 of 3"));
}
