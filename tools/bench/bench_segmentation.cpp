// Segmentation speed: training images/s of U-Net and DeconvNet at 64x64, batch 32 (default width 64, and 16 as
// in the experiment), with the GFLOP/s achieved against the machine's own 3x3 convolution throughput.
//
//   build/bin/zoo_bench --benchmark_filter=Segmentation
//
// FLOPs are counted analytically (models::segmentation_macs: convolutions only, x2 for multiply-add, x3 for
// forward + backward); the reference is the best of bare Conv2d(c, c, 3) forward + backward passes at the four
// level shapes of the width-64 U-Net (c = 64 at 64x64 ... 512 at 8x8), batch 32.
#include "models/segmentation.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>

namespace {

using namespace zoo;
using clock_type = std::chrono::steady_clock;

constexpr int64_t kBatch = 32, kSize = 64;

/// GFLOP/s of one Conv2d(c, c, 3, padding 1), forward + backward, on [32, c, s, s].
double conv_gflops(int64_t channels, int64_t size) {
  torch::manual_seed(0);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(channels, channels, 3).padding(1).bias(false));
  auto x = torch::randn({kBatch, channels, size, size}, torch::requires_grad());
  auto step = [&] {
    conv->zero_grad();
    conv(x).sum().backward();
  };
  step();  // warm-up
  const int reps = 4;
  const auto start = clock_type::now();
  for (int i = 0; i < reps; ++i) step();
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count() / reps;
  return 3.0 * 2.0 * 9 * static_cast<double>(channels * channels * size * size * kBatch) / seconds / 1e9;
}

/// The machine's 3x3 convolution throughput: the best of the four U-Net level shapes at width 64
/// (64 channels at 64x64, 128 at 32x32, 256 at 16x16, 512 at 8x8). Measured once.
double conv_reference_gflops() {
  static const double gflops = [] {
    double best = 0;
    for (int64_t level = 0; level < 4; ++level) best = std::max(best, conv_gflops(64 << level, kSize >> level));
    return best;
  }();
  return gflops;
}

void SegmentationConvReference(benchmark::State& state) {
  training::apply_threads(0);
  for (auto _ : state) benchmark::DoNotOptimize(conv_reference_gflops());
  state.counters["GFLOP/s"] = conv_reference_gflops();
}
BENCHMARK(SegmentationConvReference)->Unit(benchmark::kMillisecond)->Iterations(1);

template <typename Model, typename Options>
void train_steps(benchmark::State& state, const std::string& name, Options options, const std::string& upsample) {
  training::apply_threads(0);
  const double reference = conv_reference_gflops();
  torch::manual_seed(0);
  Model model(options);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-3));
  auto x = torch::rand({kBatch, 1, kSize, kSize});
  auto y = torch::randint(0, 11, {kBatch, kSize, kSize}, torch::kInt64);
  auto step = [&] {
    adam.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    adam.step();
  };
  step();  // warm-up: allocations, OpenMP pool
  double seconds = 0;
  for (auto _ : state) {
    const auto start = clock_type::now();
    step();
    seconds += std::chrono::duration<double>(clock_type::now() - start).count();
  }
  seconds /= static_cast<double>(state.iterations());
  const double macs = models::segmentation_macs(name, 2, 1, 11, options.encoder().levels(),
                                                options.encoder().base_channels(), upsample, {kSize, kSize});
  const double gflops = 3.0 * 2.0 * macs * kBatch / seconds / 1e9;
  state.counters["images/s"] = kBatch / seconds;
  state.counters["step_s"] = seconds;
  state.counters["GFLOP/s"] = gflops;
  state.counters["of_conv_ref"] = gflops / reference;
  state.counters["GFLOP/image"] = 3.0 * 2.0 * macs / 1e9;
}

void SegmentationUNetTrain(benchmark::State& state) {
  train_steps<models::UNet>(state, "unet",
                            models::UNetOptions().encoder(models::EncoderOptions().base_channels(state.range(0))),
                            "transpose");
}
BENCHMARK(SegmentationUNetTrain)->Arg(64)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(3);

void SegmentationDeconvNetTrain(benchmark::State& state) {
  train_steps<models::DeconvNet>(
      state, "deconvnet", models::DeconvNetOptions().encoder(models::EncoderOptions().base_channels(state.range(0))),
      "");
}
BENCHMARK(SegmentationDeconvNetTrain)->Arg(64)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
