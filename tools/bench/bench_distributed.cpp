// Data-parallel benchmarks (c10d/Gloo on loopback).
//  - DistributedAllReduce: two ranks (threads of this process, each with its own process group) average the
//    gradients of the cnn model (421,738 floats, one 25 MiB bucket): milliseconds per step.
//  - DistributedScaling: `zoo train MODEL` for one epoch of 12,000 Fashion-MNIST images as 1 process with all
//    cores and as --nproc 2 with one thread each (batch 64 per rank, so 2 ranks take half the steps); training
//    items/s of each, read from the runs' metrics.jsonl.
//
//   build/bin/zoo_bench --benchmark_filter=Distributed
#include "models/registry.h"
#include "training/distributed.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace {

using namespace zoo;
namespace fs = std::filesystem;

void DistributedAllReduce(benchmark::State& state) {
  torch::set_num_threads(1);
  const auto port = training::free_loopback_port();
  const int steps = 50;
  double seconds[2] = {0, 0};
  for (auto _ : state) {
    std::vector<std::thread> ranks;
    for (int r = 0; r < 2; ++r) {
      ranks.emplace_back([&, r] {
        training::DistributedOptions o;
        o.rank = r;
        o.world_size = 2;
        o.master_port = port;
        training::ProcessGroup group(o);
        torch::manual_seed(r);
        auto model = models::build_model("cnn").first;
        for (auto& p : model.ptr()->parameters()) p.mutable_grad() = torch::randn_like(p);
        group.average_gradients(*model.ptr());  // warm-up
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < steps; ++i) group.average_gradients(*model.ptr());
        seconds[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      });
    }
    for (auto& t : ranks) t.join();
  }
  state.counters["cnn_grad_allreduce_ms"] = 1e3 * seconds[0] / steps;
  state.counters["floats"] = 421738;
}
BENCHMARK(DistributedAllReduce)->Unit(benchmark::kSecond)->Iterations(1);

double items_per_s(const std::string& run) {
  std::ifstream log(fs::path(run) / "metrics.jsonl");
  std::string line, last;
  while (std::getline(log, line))
    if (!line.empty()) last = line;
  return last.empty() ? 0.0 : nlohmann::json::parse(last).value("items_per_s", 0.0);
}

void DistributedScaling(benchmark::State& state) {
  const fs::path zoo = fs::read_symlink("/proc/self/exe").parent_path() / "zoo";
  const fs::path tmp = fs::temp_directory_path() / ("zoo-bench-dist-" + std::to_string(getpid()));
  for (auto _ : state) {
    for (const std::string model : {"mlp", "cnn"}) {
      fs::remove_all(tmp);
      const std::string common = zoo.string() + " train " + model +
                                 " --limit 12000 --epochs 1 --batch-size 64 --no-progress --schedule constant";
      if (std::system((common + " --out " + (tmp / "one").string() + " > /dev/null").c_str()) != 0)
        state.SkipWithError("single-process run failed");
      if (std::system((common + " --nproc 2 --out " + (tmp / "two").string() + " > /dev/null").c_str()) != 0)
        state.SkipWithError("two-rank run failed");
      const double single = items_per_s((tmp / "one").string()), two = items_per_s((tmp / "two").string());
      state.counters[model + "_1rank_items_s"] = single;
      state.counters[model + "_2ranks_items_s"] = two;
      state.counters[model + "_speedup"] = single > 0 ? two / single : 0;
    }
  }
  fs::remove_all(tmp);
}
BENCHMARK(DistributedScaling)->Unit(benchmark::kSecond)->Iterations(1);

}  // namespace
