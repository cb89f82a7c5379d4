// Mixture-of-Experts benchmark: top-2 of 8 experts (sparse dispatch) against the dense mixture of the same 8
// experts (every expert on every token), same width, forward and forward + backward. The sparse layer's cost
// should scale with k/N = 0.25 (target: at most 0.4 of dense). Also the top-1 and top-4 layers, to show the
// scaling, and the routing alone.
//
//   build/bin/zoo_bench --benchmark_filter=MoE
#include "models/moe.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>

#include <chrono>
#include <functional>
#include <map>

namespace {

using namespace zoo;
using Clock = std::chrono::steady_clock;

void MoESparseVsDense(benchmark::State& state) {
  training::apply_threads(0);
  torch::manual_seed(0);
  const int64_t tokens = 4096, width = 256, hidden = 1024, experts = 8;
  const auto x = torch::randn({tokens, width});
  auto layer = [&](const std::string& gate, int64_t k) {
    auto moe = models::MixtureOfExperts(
        models::MixtureOfExpertsOptions(width, width).hidden(hidden).experts(experts).gate(gate).k(k));
    moe->train();
    return moe;
  };
  std::map<std::string, models::MixtureOfExperts> layers{{"dense8", layer("softmax", experts)},
                                                         {"top1", layer("topk", 1)},
                                                         {"top2", layer("topk", 2)},
                                                         {"top4", layer("topk", 4)}};
  std::map<std::string, double> forward_s, step_s;
  double route_s = 0;
  int64_t rounds = 0;
  for (auto _ : state) {
    for (auto& [name, moe] : layers) {  // interleaved, so drifts in machine speed hit every layer alike
      {
        torch::NoGradGuard no_grad;
        moe->forward(x);  // warm-up
        const auto start = Clock::now();
        moe->forward(x);
        forward_s[name] += std::chrono::duration<double>(Clock::now() - start).count();
      }
      const auto start = Clock::now();
      auto loss = moe->forward(x).pow(2).mean();
      if (auto aux = moe->auxiliary_loss(); aux.defined()) loss = loss + aux;
      loss.backward();
      step_s[name] += std::chrono::duration<double>(Clock::now() - start).count();
      moe->zero_grad();
    }
    {
      torch::NoGradGuard no_grad;
      const auto start = Clock::now();
      layers.at("top2")->route(x);
      route_s += std::chrono::duration<double>(Clock::now() - start).count();
    }
    ++rounds;
  }
  const auto r = static_cast<double>(rounds);
  for (const auto& [name, s] : forward_s) state.counters[name + "_fwd_ms"] = 1e3 * s / r;
  for (const auto& [name, s] : step_s) state.counters[name + "_fwd_bwd_ms"] = 1e3 * s / r;
  state.counters["top2_over_dense_fwd"] = forward_s["top2"] / forward_s["dense8"];
  state.counters["top2_over_dense_fwd_bwd"] = step_s["top2"] / step_s["dense8"];
  state.counters["route_top2_ms"] = 1e3 * route_s / r;
}
BENCHMARK(MoESparseVsDense)->Unit(benchmark::kSecond)->Iterations(5);

}  // namespace
