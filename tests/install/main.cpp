// Builds a registered zoo model by name and trains it with the zoo trainer on synthetic data, with a callback
// of its own (callback_example.h, the one docs/extending.md shows) that ends training early.
#include "callback_example.h"

#include <models/mlp.h>
#include <models/registry.h>
#include <training/trainer.h>

#include <iostream>

int main() {
  auto [model, options] = zoo::models::build_model("mlp", {{"hidden", {32}}});
  auto x = torch::randn({256, 1, 28, 28});
  auto y = (x.flatten(1).sum(1) > 0).to(torch::kInt64);
  auto data = std::make_shared<zoo::datasets::TensorDataset>(x, y, "synthetic");
  zoo::training::Trainer trainer(model, std::make_shared<zoo::training::ClassificationObjective>(), {data, data},
                                 zoo::training::TrainOptions().epochs(20).progress(false).threads(1));
  trainer.add_callback(std::make_shared<StopBelow>(0.3));
  auto record = trainer.fit();
  const double accuracy = record["test"]["accuracy"].get<double>();
  const auto epochs = record["epoch"].get<int64_t>();
  std::cout << "consumer: " << zoo::models::count_parameters(*model.ptr()) << " parameters, " << epochs
            << " epochs (stopped early: train loss " << record["train"]["loss"].get<double>() << " < 0.3), accuracy "
            << accuracy << "\n";
  return accuracy > 0.7 && epochs < 20 && record["train"]["loss"].get<double>() < 0.3 ? 0 : 1;
}
