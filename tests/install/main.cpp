// Builds a registered zoo model by name and trains it a few steps with the zoo trainer on synthetic data.
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
                                 zoo::training::TrainOptions().epochs(5).progress(false).threads(1));
  auto record = trainer.fit();
  const double accuracy = record["test"]["accuracy"].get<double>();
  std::cout << "consumer: " << zoo::models::count_parameters(*model.ptr()) << " parameters, accuracy " << accuracy
            << "\n";
  return accuracy > 0.7 ? 0 : 1;
}
