// Foundation benchmarks: IDX loading of the full Fashion-MNIST training set, the trainer's overhead over a
// bare forward/backward/step loop on the same batches, the loggers' cost, and Adam's step (LibTorch's against zoo's).
//
//   build/bin/zoo_bench --benchmark_filter=Foundation
#include "datasets/mnist.h"
#include "models/mlp.h"
#include "models/registry.h"
#include "training/loggers.h"
#include "training/optim.h"
#include "training/runtime.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>

#include <chrono>
#include <filesystem>

namespace {

using namespace zoo;

void FoundationLoadFashionMnistTrain(benchmark::State& state) {
  const auto dir = datasets::default_fashion_mnist_dir();
  if (!std::filesystem::exists(dir)) {
    state.SkipWithError(("no data in " + dir).c_str());
    return;
  }
  int64_t items = 0;
  for (auto _ : state) {
    auto train = datasets::load_mnist(dir, datasets::Split::Train);
    items += train->size();
    benchmark::DoNotOptimize(train);
  }
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(items), benchmark::Counter::kIsRate);
}
BENCHMARK(FoundationLoadFashionMnistTrain)->Unit(benchmark::kMillisecond)->Iterations(3);

// One epoch of an MLP on 12,800 synthetic images, batch 128: the bare loop against Trainer::fit.
void FoundationTrainerOverhead(benchmark::State& state) {
  torch::manual_seed(0);
  const int64_t n = 12800, batch = 128;
  auto inputs = torch::rand({n, 1, 28, 28});
  auto targets = torch::randint(0, 10, {n}, torch::kInt64);
  auto data = std::make_shared<datasets::TensorDataset>(inputs, targets, "synthetic");
  datasets::Splits splits{data, std::make_shared<datasets::TensorDataset>(inputs.slice(0, 0, 1000),
                                                                          targets.slice(0, 0, 1000), "synthetic")};
  double bare_s = 0, trainer_s = 0;
  for (auto _ : state) {
    {  // bare loop
      models::MLP model;
      torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
      const auto order = datasets::epoch_order(n, true, 0, 1);
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t lo = 0; lo < n; lo += batch) {
        auto b = data->get(order.slice(0, lo, lo + batch));
        opt.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(model->forward(b.input), b.target);
        loss.backward();
        opt.step();
        benchmark::DoNotOptimize(loss.item<double>());
      }
      bare_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    {  // the trainer (its evaluation pass excluded: measured separately from the epoch time it reports)
      training::Trainer trainer(
          torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(), splits,
          training::TrainOptions().batch_size(batch).progress(false).threads(torch::get_num_threads()));
      auto record = trainer.fit();
      trainer_s += record["train_time_s"].get<double>();
    }
  }
  state.counters["bare_s"] = bare_s / static_cast<double>(state.iterations());
  state.counters["trainer_s"] = trainer_s / static_cast<double>(state.iterations());
  state.counters["overhead_pct"] = 100.0 * (trainer_s - bare_s) / bare_s;
}
BENCHMARK(FoundationTrainerOverhead)->Unit(benchmark::kSecond)->Iterations(5);

// The loggers' cost (--log tensorboard,csv) on the default cnn: one epoch of 6,400 synthetic images, batch 64,
// with and without them, interleaved (these machines' speed drifts by minutes).
void FoundationLoggerOverhead(benchmark::State& state) {
  torch::manual_seed(0);
  const int64_t n = 6400;
  auto inputs = torch::rand({n, 1, 28, 28});
  auto targets = torch::randint(0, 10, {n}, torch::kInt64);
  auto data = std::make_shared<datasets::TensorDataset>(inputs, targets, "synthetic");
  datasets::Splits splits{
      data, std::make_shared<datasets::TensorDataset>(inputs.slice(0, 0, 500), targets.slice(0, 0, 500), "synthetic")};
  const auto dir = std::filesystem::temp_directory_path() / "zoo_bench_loggers";
  double plain_s = 0, logged_s = 0;
  for (auto _ : state) {
    for (const bool logged : {false, true}) {
      std::filesystem::remove_all(dir);
      std::filesystem::create_directories(dir);
      auto [model, options] = models::build_model("cnn");
      training::Trainer trainer(
          model, std::make_shared<training::ClassificationObjective>(), splits,
          training::TrainOptions().batch_size(64).progress(false).threads(torch::get_num_threads()));
      if (logged) {
        auto with_logs = trainer.options();
        training::attach_loggers(trainer, dir.string(), with_logs.log("tensorboard,csv"), nlohmann::json::object());
      }
      const double seconds = trainer.fit()["train_time_s"].get<double>();
      (logged ? logged_s : plain_s) += seconds;
    }
  }
  std::filesystem::remove_all(dir);
  const double iterations = static_cast<double>(state.iterations());
  state.counters["items_per_s_plain"] = static_cast<double>(n) * iterations / plain_s;
  state.counters["items_per_s_logged"] = static_cast<double>(n) * iterations / logged_s;
  state.counters["overhead_pct"] = 100.0 * (logged_s - plain_s) / plain_s;
}
BENCHMARK(FoundationLoggerOverhead)->Unit(benchmark::kSecond)->Iterations(5);

// One Adam step over a model's parameters (arg: 0 cnn, 1 moe, 2 mhc-resnet, 3 elmo): LibTorch's torch::optim::Adam
// against zoo's training::Adam (ops::adam_update, one pass per parameter), on the same gradients, in blocks of 5
// steps alternating between the two. Counters: <model>_{torch,zoo}_ms and the speedup (above 1: zoo faster).
void FoundationAdamStep(benchmark::State& state) {
  const std::string name = std::vector<std::string>{"cnn", "moe", "mhc-resnet", "elmo"}.at(state.range(0));
  torch::manual_seed(0);
  auto make = [&] {
    auto params = models::build_model(name).first.ptr()->parameters();
    for (auto& p : params) p.mutable_grad() = torch::randn_like(p) * 1e-3;
    return params;
  };
  auto theirs_params = make(), ours_params = make();
  torch::optim::Adam theirs(theirs_params, torch::optim::AdamOptions(1e-3));
  training::Adam ours(ours_params, torch::optim::AdamOptions(1e-3));
  double theirs_s = 0, ours_s = 0;
  auto time = [](torch::optim::Optimizer& o) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) o.step();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 5;
  };
  time(theirs), time(ours);  // warm-up: the state's first allocation
  for (auto _ : state) {
    theirs_s += time(theirs);
    ours_s += time(ours);
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters[name + "_torch_ms"] = 1e3 * theirs_s / iterations;
  state.counters[name + "_zoo_ms"] = 1e3 * ours_s / iterations;
  state.counters[name + "_speedup"] = theirs_s / ours_s;
  state.counters["parameters"] = static_cast<double>(models::count_parameters(*models::build_model(name).first.ptr()));
}
BENCHMARK(FoundationAdamStep)->DenseRange(0, 3)->Unit(benchmark::kSecond)->Iterations(10);

}  // namespace

int main(int argc, char** argv) {
  zoo::training::keep_freed_memory();  // every benchmark under the zoo program's malloc policy (training/runtime.h)
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
