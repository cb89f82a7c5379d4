// ELMo benchmark: training tokens/s (forward + backward of the biLM loss + Adam step) and inference tokens/s
// (all layers, no gradient) of the default model, on batches of 32 windows of 20 tokens (the defaults of
// `zoo train elmo`), with the thread count of `zoo train` (all cores).
//
//   build/bin/zoo_bench --benchmark_filter=Elmo
#include "datasets/text.h"
#include "models/elmo.h"
#include "models/registry.h"
#include "training/lm_objective.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>

#include <chrono>

namespace {

using namespace zoo;
using Clock = std::chrono::steady_clock;

datasets::Batch random_batch(const models::ElmoOptions& o, int64_t n, int64_t T) {
  // Words of 3-9 random lowercase letters, as character ids, and random targets.
  auto chars = torch::zeros({n, T, o.max_word_length()}, torch::kInt64);
  auto lengths = torch::randint(3, 10, {n, T}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < T; ++t) {
      const auto len = lengths[i][t].item<int64_t>();
      chars[i][t][0] = datasets::CharIds::kBeginWord;
      chars[i][t].slice(0, 1, len + 1) = torch::randint('a' + 1, 'z' + 2, {len}, torch::kInt64);
      chars[i][t][len + 1] = datasets::CharIds::kEndWord;
    }
  return {chars, torch::randint(0, o.vocab_size(), {n, 2, T}, torch::kInt64)};
}

void ElmoTokensPerSecond(benchmark::State& state) {
  const auto threads = training::apply_threads(0);
  torch::manual_seed(0);
  const models::ElmoOptions options;
  torch::nn::AnyModule model{models::Elmo(options)};
  training::BidirectionalLMObjective objective;
  torch::optim::Adam adam(model.ptr()->parameters(), torch::optim::AdamOptions(2e-3));
  const int64_t n = 32, T = 20;
  const auto batch = random_batch(options, n, T);
  double train_s = 0, infer_s = 0;
  int64_t rounds = 0;
  for (auto _ : state) {
    model.ptr()->train();
    auto start = Clock::now();
    training::Terms terms;
    auto loss = objective.loss(model, batch, terms);
    adam.zero_grad();
    loss.backward();
    adam.step();
    train_s += std::chrono::duration<double>(Clock::now() - start).count();
    model.ptr()->eval();
    torch::NoGradGuard no_grad;
    start = Clock::now();
    benchmark::DoNotOptimize(model.get<models::Elmo>()->forward(batch.input));
    infer_s += std::chrono::duration<double>(Clock::now() - start).count();
    ++rounds;
  }
  const double tokens = static_cast<double>(n * T * rounds);
  state.counters["train_tokens_per_s"] = tokens / train_s;
  state.counters["infer_tokens_per_s"] = tokens / infer_s;
  state.counters["threads"] = static_cast<double>(threads);
  state.counters["parameters"] = static_cast<double>(models::count_parameters(*model.ptr()));
}
BENCHMARK(ElmoTokensPerSecond)->Unit(benchmark::kMillisecond)->Iterations(10);

}  // namespace
