// VAE: one training epoch over the 60,000 Fashion-MNIST training images (MLP 784-400-20, batch 128, Adam),
// through the shared trainer; prints seconds, items/s and the achieved GFLOP/s.
//
//   build/bin/zoo_bench --benchmark_filter=VAE
#include "datasets/mnist.h"
#include "models/vae.h"
#include "training/trainer.h"
#include "training/vae_objective.h"

#include <benchmark/benchmark.h>

#include <filesystem>

namespace {

using namespace zoo;

void VAETrainEpochFashionMnist(benchmark::State& state) {
  const auto dir = datasets::default_fashion_mnist_dir();
  if (!std::filesystem::exists(dir)) {
    state.SkipWithError(("no data in " + dir).c_str());
    return;
  }
  datasets::Splits splits{datasets::load_mnist(dir, datasets::Split::Train),
                          datasets::load_mnist(dir, datasets::Split::Test, 1000)};
  const auto n = static_cast<double>(splits.train->size());
  // Multiply-adds per image in the forward pass, times 2 FLOP, times 3 for forward + backward.
  const double forward_flop = 2.0 * (784 * 400 + 400 * 20 * 2 + 20 * 400 + 400 * 784);
  const double epoch_flop = 3.0 * forward_flop * n;
  double seconds = 0;
  for (auto _ : state) {
    torch::manual_seed(0);
    training::Trainer trainer(torch::nn::AnyModule(models::VAE()), std::make_shared<training::VAEObjective>(false, 1),
                              splits, training::TrainOptions().batch_size(128).progress(false));
    seconds += trainer.fit()["train_time_s"].get<double>();
  }
  seconds /= static_cast<double>(state.iterations());
  state.counters["epoch_s"] = seconds;
  state.counters["items/s"] = n / seconds;
  state.counters["GFLOP/s"] = epoch_flop / seconds / 1e9;
  state.counters["epoch_TFLOP"] = epoch_flop / 1e12;
}
BENCHMARK(VAETrainEpochFashionMnist)->Unit(benchmark::kSecond)->Iterations(2);

}  // namespace
