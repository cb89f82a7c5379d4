// Mixture-of-Experts benchmark: top-2 of 8 experts (sparse dispatch) against the dense mixture of the same 8
// experts (every expert on every token), same width, forward and forward + backward. The sparse layer's cost
// should scale with k/N = 0.25 (target: at most 0.4 of dense). Also the top-1 and top-4 layers, to show the
// scaling, and the routing alone. LinearBf16: the experts' few-row linear layer under bf16-mixed, zoo's kernel
// (ops/linear_bf16.h) against autocast's rule (LibTorch: casts + oneDNN's bfloat16 products).
//
//   build/bin/zoo_bench --benchmark_filter=MoE
//   build/bin/zoo_bench --benchmark_filter=LinearBf16
#include "models/moe.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/linear_bf16.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>

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

// The moe classifier's experts' first layer ([64, 3136] float32 weight and bias) on 4-96 rows of bfloat16 features,
// forward + backward (all three gradients) under bf16-mixed at 1 thread: zoo's kernel (ops::linear) against
// autocast's rule (ops::linear's fallback on a CPU without AVX512-BF16), interleaved, each call on the next of 8
// experts' weights (6.4 MB: the weights are not all in cache, as in a training step). Counters: <rows>_zoo_us and
// <rows>_libtorch_us per call, <rows>_speedup = libtorch / zoo. kLinearBf16MaxRows is where the speedup ends.
void LinearBf16(benchmark::State& state) {
  training::apply_threads(1);
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: ops::linear runs LibTorch's linear here");
    return;
  }
  torch::manual_seed(0);
  std::vector<torch::Tensor> weights, biases;
  for (int e = 0; e < 8; ++e) {
    weights.push_back((torch::randn({64, 3136}) * 0.02).requires_grad_());
    biases.push_back(torch::zeros({64}, torch::requires_grad()));
  }
  const std::vector<int64_t> rows{4, 8, 16, 32, 64, 96, 128, 192};
  std::map<std::string, double> us;
  size_t next = 0;
  for (auto _ : state) {
    for (const int64_t t : rows) {
      const auto x = torch::randn({t, 3136}).to(torch::kBFloat16).requires_grad_();
      const auto go = torch::randn({t, 64}).to(torch::kBFloat16);
      for (const char* which : {"zoo", "libtorch"}) {
        const bool zoo_kernel = std::string(which) == "zoo";
        const auto start = Clock::now();
        for (int i = 0; i < 20; ++i) {
          const auto& w = weights[next % 8];
          const auto& b = biases[next % 8];
          ++next;
          torch::Tensor y;
          {
            ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
            std::optional<ops::detail::WithoutBf16Kernel> libtorch;
            if (!zoo_kernel) libtorch.emplace();
            y = t <= ops::kLinearBf16MaxRows || !zoo_kernel ? ops::linear(x, w, b) : ops::detail::linear_bf16(x, w, b);
          }
          torch::autograd::grad({y}, {x, w, b}, {go});
        }
        us[std::to_string(t) + "_" + which] +=
            std::chrono::duration<double, std::micro>(Clock::now() - start).count() / 20;
      }
    }
  }
  const auto rounds = static_cast<double>(state.iterations());
  for (const int64_t t : rows) {
    const auto key = std::to_string(t);
    state.counters[key + "_zoo_us"] = us[key + "_zoo"] / rounds;
    state.counters[key + "_libtorch_us"] = us[key + "_libtorch"] / rounds;
    state.counters[key + "_speedup"] = us[key + "_libtorch"] / us[key + "_zoo"];
  }
}
BENCHMARK(LinearBf16)->Unit(benchmark::kSecond)->Iterations(5);

}  // namespace
