// Segmentation speed: training images/s of U-Net and DeconvNet at 64x64, batch 32 (default width 64, and 16 as
// in the experiment), with the GFLOP/s achieved against the machine's own 3x3 convolution throughput.
//
//   build/bin/zoo_bench --benchmark_filter=Segmentation
//
// FLOPs are counted analytically (models::segmentation_macs: convolutions only, x2 for multiply-add, x3 for
// forward + backward); the reference is the best of bare Conv2d(c, c, 3) forward + backward passes at the four
// level shapes of the width-64 U-Net (c = 64 at 64x64 ... 512 at 8x8), batch 32.
#include "models/segmentation.h"
#include "ops/autocast.h"
#include "ops/conv_transpose.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>

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

// ConvTransposeUpsampling: the U-Nets' 2x2 (2x2x2) stride-2 upsampling layers, forward + backward (x, weight, bias),
// LibTorch's transposed convolution (slow_conv_transpose2d/3d, under autocast's rule in bf16-mixed) and zoo's
// product (ops::conv_transpose), interleaved, in float32 and bf16-mixed, at 1 thread: the default 2-D U-Net's three
// (batch 4 at 64x64) and the 3-D U-Net's two (batch 2 at 24^3). Counters: <N>x<C>x<O>x<size>_<precision>_ratio =
// LibTorch's time / zoo's (above 1: zoo's faster), and LibTorch's time in us.
void ConvTransposeUpsampling(benchmark::State& state) {
  training::apply_threads(1);
  struct Layer {
    int64_t dims, n, c, o, size;
    std::string name() const { return fmt::format("{}x{}x{}x{}{}", n, c, o, size, dims == 3 ? "^3" : ""); }
  };
  const std::vector<Layer> layers{
      {2, 4, 512, 256, 8}, {2, 4, 256, 128, 16}, {2, 4, 128, 64, 32}, {3, 2, 64, 32, 6}, {3, 2, 32, 16, 12}};
  torch::manual_seed(0);
  const auto run_round = [&](std::map<std::string, double>& us, int reps) {
    for (const auto& l : layers) {
      std::vector<int64_t> sizes{l.n, l.c}, kernel{l.c, l.o};
      for (int64_t i = 0; i < l.dims; ++i) sizes.push_back(l.size), kernel.push_back(2);
      const auto x = torch::randn(sizes, torch::requires_grad());
      const auto w = torch::randn(kernel, torch::requires_grad()), b = torch::randn({l.o}, torch::requires_grad());
      for (const bool bf16 : {false, true})
        for (const bool ours : {false, true}) {
          const auto start = clock_type::now();
          for (int i = 0; i < reps; ++i) {
            torch::Tensor y;
            {
              ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16, bf16);
              y = ours ? ops::conv_transpose(x, w, b, 2)
                       : (l.dims == 2 ? torch::conv_transpose2d(x, w, b, 2) : torch::conv_transpose3d(x, w, b, 2));
            }
            torch::autograd::grad({y}, {x, w, b}, {torch::ones_like(y)});
          }
          us[fmt::format("{}_{}_{}", l.name(), bf16 ? "bf16" : "32", ours ? "zoo" : "torch")] +=
              1e6 * std::chrono::duration<double>(clock_type::now() - start).count() / std::max(reps, 1);
        }
    }
  };
  std::map<std::string, double> warm_up, us;  // an untimed round first: the process's first large allocations
  run_round(warm_up, 1);
  for (auto _ : state) run_round(us, 3);
  for (const auto& l : layers)
    for (const char* precision : {"32", "bf16"}) {
      const auto key = fmt::format("{}_{}", l.name(), precision);
      state.counters[key + "_ratio"] = us[key + "_torch"] / us[key + "_zoo"];
      state.counters[key + "_torch_us"] = us[key + "_torch"] / static_cast<double>(state.iterations());
    }
}
BENCHMARK(ConvTransposeUpsampling)->Unit(benchmark::kSecond)->Iterations(3);

}  // namespace
