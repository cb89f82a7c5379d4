// ResNet-as-ODE and mHC benchmarks.
//  - MHCBlockOverhead: one residual block of mhc-resnet (BasicBlock, 32 channels, 7x7, batch 128), forward +
//    backward, as a plain residual x + F(x) and wrapped by hc, mhc (fused and unfused Sinkhorn) and mhc-lite.
//    Prints milliseconds per step and the overhead of each variant over hc and over the plain block.
//  - ODESolverCost: the ode-resnet ODE block (32 channels, 6x6, batch 128) with each solver: milliseconds per
//    function evaluation, forward only and forward + backward.
//  - Conv3x3Crossover/T: conv3x3's direct kernel against torch::conv2d (oneDNN) on the ODE field's 3x3
//    convolutions (time channel, 6x6 maps), forward and forward + backward, at T threads (0 = all cores), for a
//    range of batch and width: where the direct kernel wins is where conv3x3_direct sends it (up to 4 M
//    multiply-adds). Counters: <N>x<C>_{fwd,fwdbwd}_ratio = oneDNN time / direct time (above 1: direct faster).
//  - Conv3x3Bf16: conv3x3's bfloat16 kernel (AVX512-BF16) against oneDNN's bfloat16 and the float32 kernels, on
//    the ODE field's maps (6x6) and the ODE-ResNet stem's (13x13, 26x26), 1 thread. Counters: other time / its time.
//  - ConvBf16: zoo's bfloat16 convolution against oneDNN's bfloat16 and float32 at 1-D and 2-D layers of zoo's
//    models, 1 thread. Counters: other time / zoo's.
//  - ModelBf16Kernels/<model>/A: a model's bf16-mixed forward + backward with zoo's bfloat16 convolutions and
//    without them (oneDNN's bfloat16), alternating blocks of 10 steps, 1 thread (A = 1: zoo's only, 2: oneDNN's
//    only, for separate processes). Counters: ms per step, their ratio.
//  - MaxPool2x2/B: ops::max_pool2x2 against torch::max_pool2d at the cnn's poolings (B = 1: bfloat16).
//  - MaxPool2x2x2: ops::max_pool2x2x2 against torch::max_pool3d at the 3-D U-Net's poolings (float32).
//  - BatchNormTraining/B: ops::batch_norm against torch::batch_norm at the cnn's batch norms (B = 1: bfloat16 x).
//  - StreamMix/B: ops::mix_streams against torch::matmul at the mHC ResNet's stream mixing (B = 1: bf16-mixed).
//  - Conv3dFirstLayer/T: ops::conv3d's direct kernel against oneDNN on volume networks' first layers.
//  - ConvWeightGradient/T: a bfloat16 2-D convolution's weight gradient by zoo's dot products (T = 0) or
//    on zoo's AMX tiles (T = 1, channels-last operands as the mHC ResNet's blocks have them; skipped without AMX)
//    (ops/conv_weight_gradient.h) against oneDNN's weight gradient, at the models' layers and around the regions
//    where autocast's conv2d rule uses them, 1 thread. Counters: <N>x<C>x<O>x<H>_ratio = oneDNN time / zoo's time
//    (above 1: zoo's faster), and "applies" (1 where the rule takes the layer that way).
//  - Conv3dWeightGradient: a bfloat16 3-D convolution's weight gradient by zoo's dot products
//    (ops::detail::conv_bf16_weight_gradient) and on AMX tiles (conv3d_weight_gradient_tiles, where the CPU has
//    AMX and O is a multiple of 16) against oneDNN's, at the 3-D models' layers, 1 thread. Counters:
//    <N>x<C>x<O>x<D>k<K>s<S>_ratio = oneDNN time / the dot products' time, _tiles_ratio = oneDNN time / the tiles'
//    time, and "applies" (1 where autocast's conv3d rule takes the layer).
//  - ConvOneChannel: the image networks' first layer (3x3, one input channel) under bf16-mixed, zoo's kernel
//    (ops/conv2d_one_channel.h) against autocast's rule (oneDNN), forward and forward + weight gradient, 1 thread.
//    Counters: <N>x<O>x<H>_{fwd,train}_ratio = oneDNN time / zoo's time, and the times in us.
//
//   build/bin/zoo_bench
//   --benchmark_filter='MHC|ODE|Conv3x3|ConvBf16|ModelBf16|MaxPool|BatchNorm|Conv3d|ConvWeight|ConvOne'
#include "models/mhc.h"
#include "models/ode.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/batch_norm.h"
#include "ops/conv2d_bf16.h"
#include "ops/conv2d_one_channel.h"
#include "ops/conv3d.h"
#include "ops/conv3x3.h"
#include "ops/conv_weight_gradient.h"
#include "ops/max_pool.h"
#include "ops/stream_mix.h"
#include "training/trainer.h"

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>

namespace {

using namespace zoo;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void MHCBlockOverhead(benchmark::State& state) {
  training::apply_threads(0);
  torch::manual_seed(0);
  const int64_t batch = 128, c = 32, n = 4, size = 7;
  std::map<std::string, std::function<void()>> steps;
  auto plain = models::BasicBlock(c);
  const auto x1 = torch::randn({batch, c, size, size});
  steps["residual"] = [=]() mutable { (x1 + plain->forward(x1)).sum().backward(); };
  const auto xn = torch::randn({batch, n, c, size, size});
  for (const auto& [name, variant, fused] : std::vector<std::tuple<std::string, std::string, bool>>{
           {"hc", "hc", true}, {"mhc", "mhc", true}, {"mhc_unfused", "mhc", false}, {"mhc_lite", "mhc-lite", true}}) {
    auto block =
        models::MHC(models::MHCOptions(c).streams(n).variant(variant).fused_sinkhorn(fused), models::BasicBlock(c));
    steps[name] = [=]() mutable { block->forward(xn).sum().backward(); };
  }
  std::map<std::string, double> total;
  int64_t rounds = 0;
  for (auto _ : state) {
    for (auto& [name, step] : steps) {  // interleaved, so drifts in machine speed hit every variant alike
      step();                           // warm-up
      const auto start = Clock::now();
      for (int i = 0; i < 5; ++i) step();
      total[name] += seconds_since(start) / 5;
    }
    ++rounds;
  }
  for (auto& [name, seconds] : total) state.counters[name + "_ms"] = 1e3 * seconds / static_cast<double>(rounds);
  auto pct = [&](const std::string& a, const std::string& b) { return 100.0 * (total[a] / total[b] - 1); };
  state.counters["mhc_over_hc_%"] = pct("mhc", "hc");
  state.counters["mhc_unfused_over_hc_%"] = pct("mhc_unfused", "hc");
  state.counters["mhc_lite_over_hc_%"] = pct("mhc_lite", "hc");
  state.counters["mhc_over_residual_%"] = pct("mhc", "residual");
  state.counters["mhc_lite_over_residual_%"] = pct("mhc_lite", "residual");
  state.counters["hc_over_residual_%"] = pct("hc", "residual");
}
BENCHMARK(MHCBlockOverhead)->Unit(benchmark::kSecond)->Iterations(10);

void ODESolverCost(benchmark::State& state) {
  training::apply_threads(0);
  torch::manual_seed(0);
  models::ODEBlock block(models::ODEBlockOptions(32));
  const auto x = torch::randn({128, 32, 6, 6});
  const std::vector<models::ODESolverOptions> solvers{
      models::ODESolverOptions().method("euler").steps(8), models::ODESolverOptions().method("midpoint").steps(4),
      models::ODESolverOptions().method("rk4").steps(2), models::ODESolverOptions().method("dopri5")};
  std::map<std::string, double> forward_s, backward_s, nfe;
  for (auto _ : state) {
    for (const auto& solver : solvers) {
      block->set_solver(solver);
      {
        torch::NoGradGuard no_grad;
        block->forward(x);  // warm-up
        const auto start = Clock::now();
        block->forward(x);
        forward_s[solver.method()] += seconds_since(start) / static_cast<double>(block->last_solution().nfe);
      }
      const auto start = Clock::now();
      block->forward(x).sum().backward();
      backward_s[solver.method()] += seconds_since(start) / static_cast<double>(block->last_solution().nfe);
      nfe[solver.method()] = static_cast<double>(block->last_solution().nfe);
    }
  }
  const auto iterations = static_cast<double>(state.iterations());
  for (const auto& [method, seconds] : forward_s) {
    state.counters[method + "_fwd_ms/nfe"] = 1e3 * seconds / iterations;
    state.counters[method + "_fwdbwd_ms/nfe"] = 1e3 * backward_s[method] / iterations;
    state.counters[method + "_nfe"] = nfe[method];
  }
}
BENCHMARK(ODESolverCost)->Unit(benchmark::kSecond)->Iterations(5);

// Five forwards without gradients and five forward + backward passes of `forward` (after a warm-up of each): their
// mean seconds are added to time[name + "_fwd_" + tag] and time[name + "_fwdbwd_" + tag].
void time_passes(const std::function<torch::Tensor()>& forward, const std::string& name, const std::string& tag,
                 std::map<std::string, double>& time) {
  {
    torch::NoGradGuard no_grad;
    forward();
    const auto start = Clock::now();
    for (int i = 0; i < 5; ++i) forward();
    time[name + "_fwd_" + tag] += seconds_since(start) / 5;
  }
  forward().sum().backward();
  const auto start = Clock::now();
  for (int i = 0; i < 5; ++i) forward().sum().backward();
  time[name + "_fwdbwd_" + tag] += seconds_since(start) / 5;
}

// Median-free but interleaved: each shape's two kernels alternate, 5 timed calls each per round.
void Conv3x3Crossover(benchmark::State& state) {
  training::apply_threads(state.range(0));
  torch::manual_seed(0);
  struct Shape {
    int64_t n, c;
  };
  const std::vector<Shape> shapes{{8, 8}, {32, 8}, {8, 16}, {8, 32}, {16, 32}, {32, 32}, {64, 32}, {64, 64}};
  std::map<std::string, double> time;
  for (auto _ : state) {
    for (const auto& s : shapes) {
      const auto x = torch::randn({s.n, s.c, 6, 6}, torch::requires_grad());
      const auto w = torch::randn({s.c, s.c + 1, 3, 3}, torch::requires_grad());
      const auto b = torch::randn({s.c}, torch::requires_grad());
      const auto name = std::to_string(s.n) + "x" + std::to_string(s.c);
      for (const auto& [kernel, tag] :
           {std::pair{ops::Conv3x3Kernel::direct, "direct"}, std::pair{ops::Conv3x3Kernel::reference, "onednn"}}) {
        time_passes([&] { return ops::conv3x3(x, w, b, 0.5, kernel); }, name, tag, time);
      }
    }
  }
  for (const auto& s : shapes) {
    const auto name = std::to_string(s.n) + "x" + std::to_string(s.c);
    state.counters[name + "_fwd_ratio"] = time[name + "_fwd_onednn"] / time[name + "_fwd_direct"];
    state.counters[name + "_fwdbwd_ratio"] = time[name + "_fwdbwd_onednn"] / time[name + "_fwdbwd_direct"];
    state.counters[name + "_fwdbwd_direct_us"] =
        1e6 * time[name + "_fwdbwd_direct"] / static_cast<double>(state.iterations());
  }
}
BENCHMARK(Conv3x3Crossover)->Arg(1)->Arg(0)->Unit(benchmark::kSecond)->Iterations(5);

// bfloat16 (what the ODE field's convolutions get under bf16-mixed): conv3x3's bfloat16 direct kernel against
// LibTorch's bfloat16 convolution (oneDNN, through conv3x3's reference under autocast) and the float32 direct kernel
// on float32 input, at 1 thread, interleaved. Counters: <N>x<C>x<S>_{fwd,fwdbwd}_{onednn,f32} = that time / the
// bfloat16 kernel's (above 1: the bfloat16 kernel faster), <...>_fwdbwd_us its time.
void Conv3x3Bf16(benchmark::State& state) {
  training::apply_threads(1);
  if (!ops::conv3x3_direct_available(torch::zeros({1, 1, 1, 1}, torch::kBFloat16),
                                     torch::zeros({1, 1, 3, 3}, torch::kBFloat16))) {
    state.SkipWithError("this CPU has no AVX512-BF16: conv3x3 has no bfloat16 kernel here");
    return;
  }
  torch::manual_seed(0);
  struct Shape {
    int64_t n, c, size;
  };
  const std::vector<Shape> shapes{{8, 8, 6}, {64, 32, 6}, {64, 32, 13}, {64, 32, 26}, {16, 64, 28}};
  std::map<std::string, double> time;
  for (auto _ : state) {
    for (const auto& s : shapes) {
      const auto name = fmt::format("{}x{}x{}", s.n, s.c, s.size);
      const auto x32 = torch::randn({s.n, s.c, s.size, s.size}, torch::requires_grad());
      const auto x16 = x32.detach().to(torch::kBFloat16).requires_grad_();
      const auto w = (torch::randn({s.c, s.c + 1, 3, 3}) * 0.1).requires_grad_();
      const auto b = torch::randn({s.c}, torch::requires_grad());
      for (const auto& [tag, x, kernel] : {std::tuple{"bf16", x16, ops::Conv3x3Kernel::direct},
                                           std::tuple{"onednn", x16, ops::Conv3x3Kernel::reference},
                                           std::tuple{"f32", x32, ops::Conv3x3Kernel::automatic}}) {
        const auto forward = [&, x = x, kernel = kernel] {
          ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16, x.scalar_type() == torch::kBFloat16);
          return ops::conv3x3(x, w, b, 0.5, kernel);
        };
        time_passes(forward, name, tag, time);
      }
    }
  }
  for (const auto& s : shapes) {
    const auto name = fmt::format("{}x{}x{}", s.n, s.c, s.size);
    for (const char* pass : {"_fwd", "_fwdbwd"})
      for (const char* other : {"onednn", "f32"})
        state.counters[name + pass + "_" + other] = time[name + pass + "_" + other] / time[name + pass + "_bf16"];
    state.counters[name + "_fwdbwd_us"] = 1e6 * time[name + "_fwdbwd_bf16"] / static_cast<double>(state.iterations());
  }
}
BENCHMARK(Conv3x3Bf16)->Unit(benchmark::kSecond)->Iterations(5);

// zoo's bfloat16 convolution (ops/conv2d_bf16.h, which autocast's conv1d rule runs: ops/autocast.cpp) against
// oneDNN's bfloat16 (under autocast) and float32, at the layers of zoo's models, 1 thread, interleaved: where it wins
// is where the rule sends convolutions. Counters: <layer>_{fwd,fwdbwd}_{onednn,f32} = that time / zoo's (above 1:
// zoo's faster).
void ConvBf16(benchmark::State& state) {
  training::apply_threads(1);
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: zoo has no bfloat16 convolution here");
    return;
  }
  torch::manual_seed(0);
  struct Layer {
    std::string name;
    int64_t n, c, h, w, o, kernel, stride, padding;
    bool input_gradient;
  };
  const std::vector<Layer> layers{
      {"conv1d_1to16", 64, 1, 1, 256, 16, 3, 1, 1, false},  {"conv1d_16to32", 64, 16, 1, 256, 32, 3, 2, 1, true},
      {"conv1d_32to64", 64, 32, 1, 128, 64, 3, 2, 1, true}, {"cnn_1to32", 64, 1, 28, 28, 32, 3, 1, 1, false},
      {"cnn_32to64", 64, 32, 14, 14, 64, 3, 1, 1, true},    {"ode_stem1", 64, 1, 28, 28, 32, 3, 1, 0, false},
      {"ode_stem2", 64, 32, 26, 26, 32, 4, 2, 1, true},     {"ode_stem3", 64, 32, 13, 13, 32, 4, 2, 1, true},
      {"mhc_32x28", 64, 32, 28, 28, 32, 3, 1, 1, true},     {"vae_32to64", 64, 32, 14, 14, 64, 4, 2, 1, true},
      {"unet_64x64", 4, 64, 64, 64, 64, 3, 1, 1, true},     {"resnet_64x7", 64, 64, 7, 7, 64, 3, 1, 1, true},
      {"mhc_32x14", 64, 32, 14, 14, 32, 3, 1, 1, true},     {"mhc_32x7", 64, 32, 7, 7, 32, 3, 1, 1, true}};
  std::map<std::string, double> time;
  for (auto _ : state) {
    for (const auto& l : layers) {
      const bool one_d = l.h == 1;
      const auto x32 =
          torch::randn(one_d ? std::vector<int64_t>{l.n, l.c, l.w} : std::vector<int64_t>{l.n, l.c, l.h, l.w});
      const auto x16 = x32.to(torch::kBFloat16).requires_grad_(l.input_gradient);
      x32.requires_grad_(l.input_gradient);
      const auto w = (torch::randn(one_d ? std::vector<int64_t>{l.o, l.c, l.kernel}
                                         : std::vector<int64_t>{l.o, l.c, l.kernel, l.kernel}) *
                      0.1)
                         .requires_grad_();
      const auto b = torch::randn({l.o}, torch::requires_grad());
      for (const char* tag : {"zoo", "onednn", "f32"}) {
        const std::string which = tag;
        const auto forward = [&, which] {
          const auto& x = which == "f32" ? x32 : x16;
          ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16, which != "f32");
          if (which == "zoo") {
            const auto y =
                ops::detail::conv2d_bf16(one_d ? x.unsqueeze(2) : x, one_d ? w.unsqueeze(2) : w, b,
                                         {one_d ? 1 : l.stride, l.stride}, {one_d ? 0 : l.padding, l.padding});
            return one_d ? y.squeeze(2) : y;
          }
          ops::detail::WithoutBf16Kernel library;  // oneDNN's bfloat16 (else a 1-D one runs zoo's kernel too)
          return one_d ? torch::conv1d(x, w, b, l.stride, l.padding) : torch::conv2d(x, w, b, l.stride, l.padding);
        };
        // A dense gradient, as in a network (sum()'s is an expanded scalar, which the kernels take slowly).
        const auto grad = torch::randn_like(forward());
        {
          torch::NoGradGuard no_grad;
          forward();
          const auto start = Clock::now();
          for (int i = 0; i < 5; ++i) forward();
          time[l.name + "_fwd_" + which] += seconds_since(start) / 5;
        }
        forward().backward(grad);
        const auto start = Clock::now();
        for (int i = 0; i < 5; ++i) forward().backward(grad);
        time[l.name + "_fwdbwd_" + which] += seconds_since(start) / 5;
      }
    }
  }
  for (const auto& l : layers)
    for (const char* pass : {"_fwd", "_fwdbwd"})
      for (const char* other : {"onednn", "f32"})
        state.counters[l.name + pass + "_" + other] = time[l.name + pass + "_" + other] / time[l.name + pass + "_zoo"];
}
BENCHMARK(ConvBf16)->Unit(benchmark::kSecond)->Iterations(5);

// A model's bf16-mixed forward + backward with zoo's bfloat16 convolutions (ops/conv2d_bf16.h: conv3x3's field,
// autocast's conv1d rule) and without them (WithoutBf16Kernel: oneDNN's bfloat16, as on a CPU without
// AVX512-BF16; on a CPU with AMX, the routing zoo takes there by default: docs/precision.md), alternating blocks of 10
// steps in one process at 1 thread, so that the VM's drifts hit both alike (alternating every step made both arms
// slower alike: each switch pays for the other path's memory and caches). Counters: ms per step of each and their ratio
// (above 1: zoo's kernels faster). Arg 1 runs only the kernels, arg 2 only oneDNN: run them in alternating processes
// (--benchmark_filter=ModelBf16Kernels/ode_resnet/1, then /2) to compare without sharing a process.
void time_bf16_kernels(benchmark::State& state, torch::nn::AnyModule model, const torch::Tensor& x, int64_t classes) {
  training::apply_threads(1);
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: zoo has no bfloat16 convolutions here");
    return;
  }
  const auto target = torch::randint(0, classes, {x.size(0)});
  auto parameters = model.ptr()->parameters();
  auto step = [&] {
    for (auto& p : parameters) p.mutable_grad() = torch::Tensor();
    torch::Tensor loss;
    {
      ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
      loss = torch::nn::functional::cross_entropy(ops::float32(model.forward(x)), target);
    }
    loss.backward();
  };
  double with = 0, without = 0;
  for (auto _ : state) {
    for (int i = 0; i < 2; ++i) {
      for (const bool kernel : {i % 2 == 0, i % 2 != 0}) {  // which goes first alternates too
        if ((kernel && state.range(0) == 2) || (!kernel && state.range(0) == 1)) continue;
        std::optional<ops::detail::WithoutBf16Kernel> library;
        std::optional<ops::detail::AmxOverride> zoo_kernels;  // also where the CPU has AMX, whose rule is oneDNN
        if (kernel)
          zoo_kernels.emplace(false);
        else
          library.emplace();
        step();  // the first step after a switch pays for the other path's memory and caches: not timed
        const auto start = Clock::now();
        for (int j = 0; j < 10; ++j) step();
        (kernel ? with : without) += seconds_since(start);
      }
    }
  }
  const double steps = 20.0 * static_cast<double>(state.iterations());  // 2 blocks of 10 steps per arm
  if (state.range(0) != 2) state.counters["with_kernel_ms"] = 1e3 * with / steps;
  if (state.range(0) != 1) state.counters["without_kernel_ms"] = 1e3 * without / steps;
  if (state.range(0) == 0) state.counters["speedup"] = without / with;
}

// A registered model with its default options, on a batch of 64 random inputs of its dataset's shape: the
// ODE-ResNet (its field's conv3x3) and the 1-D ConvNet (its three layers).
void ModelBf16Kernels(benchmark::State& state, const std::string& name) {
  torch::manual_seed(0);
  const auto& entry = models::ModelRegistry::instance().at(name);
  const auto model = entry.build(entry.complete_options(nlohmann::json::object()));
  const auto x = name == "conv1d" ? torch::randn({64, 1, 256}) : torch::randn({64, 1, 28, 28});
  time_bf16_kernels(state, model, x, name == "conv1d" ? 4 : 10);
}
// (A capture's name is a C++ token: ode_resnet.)
BENCHMARK_CAPTURE(ModelBf16Kernels, ode_resnet, "ode-resnet")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kSecond)
    ->Iterations(3);
BENCHMARK_CAPTURE(ModelBf16Kernels, conv1d, "conv1d")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kSecond)->Iterations(3);

// A zoo layer (fast = true) against LibTorch's (fast = false) at each shape, forward + backward, interleaved: 5
// timed calls of each per round, 1 thread; counters per shape ("<channels>x<size>"): zoo_ms, torch_ms, speedup.
void time_against_torch(benchmark::State& state, const std::function<torch::Tensor(const torch::Tensor&, bool)>& layer,
                        const std::vector<std::vector<int64_t>>& shapes, torch::ScalarType type) {
  training::apply_threads(1);
  torch::manual_seed(0);
  std::map<std::string, double> time;
  const auto label = [](const std::vector<int64_t>& shape) {
    return std::to_string(shape[1]) + "x" + std::to_string(shape[2]);
  };
  std::vector<torch::Tensor> inputs, grads;
  for (const auto& shape : shapes) {
    inputs.push_back(torch::relu(torch::randn(shape)).to(type).requires_grad_(true));
    // A dense gradient, as in a network (sum()'s is an expanded scalar, which LibTorch's kernels take slowly).
    grads.push_back(torch::randn_like(layer(inputs.back(), false)));
  }
  const auto step = [&](size_t s, bool fast) {
    layer(inputs[s], fast).backward(grads[s]);
    inputs[s].mutable_grad() = torch::Tensor();  // so the next backward stores its gradient instead of adding it
  };
  // Two untimed rounds first: the process's heap grows to its peak in the first steps (page faults, docs/speed.md).
  for (int round = 0; round < 2; ++round)
    for (size_t s = 0; s < shapes.size(); ++s)
      for (const bool fast : {true, false}) step(s, fast);
  for (auto _ : state) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      for (const bool fast : {true, false}) {
        const auto start = Clock::now();
        for (int i = 0; i < 5; ++i) step(s, fast);
        time[label(shapes[s]) + (fast ? "_zoo" : "_torch")] += seconds_since(start) / 5;
      }
    }
  }
  for (const auto& shape : shapes) {
    const auto name = label(shape);
    state.counters[name + "_zoo_ms"] = 1e3 * time[name + "_zoo"] / static_cast<double>(state.iterations());
    state.counters[name + "_torch_ms"] = 1e3 * time[name + "_torch"] / static_cast<double>(state.iterations());
    state.counters[name + "_speedup"] = time[name + "_torch"] / time[name + "_zoo"];
  }
}

// ops::max_pool2x2 against torch::max_pool2d at the cnn's two poolings (batch 64), float32 and bfloat16 (arg 1).
void MaxPool2x2(benchmark::State& state) {
  time_against_torch(state, ops::max_pool2x2, {{64, 32, 28, 28}, {64, 64, 14, 14}},
                     state.range(0) ? torch::kBFloat16 : torch::kFloat32);
}
BENCHMARK(MaxPool2x2)->Arg(0)->Arg(1)->Unit(benchmark::kSecond)->Iterations(5);

// ops::max_pool2x2x2 against torch::max_pool3d at the 3-D U-Net's two poolings (batch 2), float32.
void MaxPool2x2x2(benchmark::State& state) {
  time_against_torch(state, ops::max_pool2x2x2, {{2, 16, 24, 24, 24}, {2, 32, 12, 12, 12}}, torch::kFloat32);
}
BENCHMARK(MaxPool2x2x2)->Unit(benchmark::kSecond)->Iterations(5);

// ops::batch_norm against torch::batch_norm in training mode at the cnn's two batch norms (batch 64): x float32, or
// bfloat16 with float32 weight, bias and running statistics (arg 1: what autocast hands it under bf16-mixed).
void BatchNormTraining(benchmark::State& state) {
  const auto layer = [](const torch::Tensor& x, bool fast) {
    const int64_t C = x.size(1);
    const auto weight = torch::ones({C}, torch::requires_grad()), bias = torch::zeros({C}, torch::requires_grad());
    return ops::batch_norm(x, weight, bias, torch::zeros({C}), torch::ones({C}), true, 0.1, 1e-5, fast);
  };
  time_against_torch(state, layer, {{64, 32, 28, 28}, {64, 64, 14, 14}},
                     state.range(0) ? torch::kBFloat16 : torch::kFloat32);
}
BENCHMARK(BatchNormTraining)->Arg(0)->Arg(1)->Unit(benchmark::kSecond)->Iterations(5);

// ops::mix_streams against torch::matmul at the mHC ResNet's stream mixing: 64 items of 4 streams of 32 x 7 x 7 (and
// of 14 x 14 maps), H [64, 4, 4] float32; forward + backward of both operands. Arg 1: bfloat16 streams under
// autocast (bf16-mixed: torch::matmul casts H and runs oneDNN's bfloat16 product; the kernel reads H as it is).
void StreamMix(benchmark::State& state) {
  const bool bf16 = state.range(0) != 0;
  const auto h = torch::full({64, 4, 4}, 0.25, torch::requires_grad());
  const auto layer = [&](const torch::Tensor& x, bool fast) {
    ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16, bf16);
    return ops::mix_streams(h, x, fast);
  };
  time_against_torch(state, layer, {{64, 4, 32 * 49}, {64, 4, 32 * 196}}, bf16 ? torch::kBFloat16 : torch::kFloat32);
}
BENCHMARK(StreamMix)->Arg(0)->Arg(1)->Unit(benchmark::kSecond)->Iterations(5);

// ops::conv3d's direct kernel against torch::conv3d (oneDNN) on first layers of volume networks (one input channel,
// 3x3x3, padding 1): the conv3d model's (64 x 16^3 -> 8), conv4d's frames (64 x 6 frames of 8^3 -> 8), the 3-D
// U-Net's (2 x 24^3 -> 16) and neighbours in output channels, forward alone and forward + weight and bias gradients,
// interleaved, at T threads (0 = all cores). Counters: <shape>_{fwd,train}_ratio = oneDNN time / direct time
// (above 1: direct faster), where conv3d_direct picks the direct kernel for O % 16 in 1 .. 8.
void Conv3dFirstLayer(benchmark::State& state) {
  training::apply_threads(state.range(0));
  torch::manual_seed(0);
  struct Shape {
    int64_t n, size, out;
  };
  const std::vector<Shape> shapes{{64, 16, 8}, {384, 8, 8}, {2, 24, 8}, {2, 24, 16}, {8, 24, 12}, {8, 24, 24}};
  const auto label = [](const Shape& s) { return fmt::format("{}x{}^3_to_{}", s.n, s.size, s.out); };
  const auto run_round = [&](std::map<std::string, double>& time) {
    for (const auto& s : shapes) {
      const auto x = torch::randn({s.n, 1, s.size, s.size, s.size});
      const auto w = torch::randn({s.out, 1, 3, 3, 3}, torch::requires_grad());
      const auto b = torch::randn({s.out}, torch::requires_grad());
      for (const auto& [kernel, tag] :
           {std::pair{ops::Conv3dKernel::direct, "direct"}, std::pair{ops::Conv3dKernel::reference, "onednn"}}) {
        auto forward = [&] { return ops::conv3d(x, w, b, 1, 1, 1, 1, kernel); };
        {
          torch::NoGradGuard no_grad;
          forward();
          const auto start = Clock::now();
          for (int i = 0; i < 5; ++i) forward();
          time[label(s) + "_fwd_" + tag] += seconds_since(start) / 5;
        }
        forward().sum().backward();
        const auto start = Clock::now();
        for (int i = 0; i < 5; ++i) forward().sum().backward();
        time[label(s) + "_train_" + tag] += seconds_since(start) / 5;
      }
    }
  };
  // An untimed round first: the process's first large allocations grow its heap page by page (a first round read
  // 15 ms for a 1.4 ms forward).
  std::map<std::string, double> warm_up, time;
  run_round(warm_up);
  for (auto _ : state) run_round(time);
  const auto per_round = [&](const std::string& key) { return time[key] / static_cast<double>(state.iterations()); };
  for (const auto& s : shapes) {
    const auto name = label(s);
    state.counters[name + "_fwd_ratio"] = time[name + "_fwd_onednn"] / time[name + "_fwd_direct"];
    state.counters[name + "_train_ratio"] = time[name + "_train_onednn"] / time[name + "_train_direct"];
    state.counters[name + "_train_direct_ms"] = 1e3 * per_round(name + "_train_direct");
    state.counters[name + "_train_onednn_ms"] = 1e3 * per_round(name + "_train_onednn");
  }
}
BENCHMARK(Conv3dFirstLayer)->Arg(1)->Arg(0)->Unit(benchmark::kSecond)->Iterations(3);

// ConvWeightGradient: the weight gradient of a bfloat16 3x3 convolution (padding 1) both ways, interleaved per
// layer: oneDNN's (at::convolution_backward, weight only) and zoo's (the dot products of conv_bf16_weight_gradient,
// or the AMX tiles), each in float32 as autocast's weight gradient is. Counters: <N>x<C>x<O>x<H>_ratio = oneDNN time /
// zoo's time (above 1: zoo's faster), <...>_f32_ratio = float32's (oneDNN's on float32 operands) time / zoo's,
// "applies" (1 where autocast's conv2d rule takes the layer) and oneDNN's time in us.
void ConvWeightGradient(benchmark::State& state) {
  training::apply_threads(1);
  const bool tiles = state.range(0) == 1;
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: autocast's conv2d rule runs oneDNN's weight gradient here");
    return;
  }
  if (tiles && !ops::detail::amx_tiles_present()) {
    state.SkipWithError("this CPU has no AMX: zoo's tile kernel does not run here");
    return;
  }
  const auto layout = tiles ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  struct Layer {
    int64_t n, c, o, h;
  };
  // The mHC ResNet's blocks (64x32x32x7) and stem (64x32x32x14), the cnn's second layer, ResNet-18's (batch 32) and
  // the U-Net's bottom (batch 4) layers, then the region's edges: batch, channels and map size.
  const std::vector<Layer> layers{{64, 32, 32, 7},   {64, 32, 32, 14},  {64, 32, 64, 14}, {32, 128, 128, 14},
                                  {32, 256, 256, 7}, {32, 512, 512, 4}, {4, 256, 512, 8}, {4, 512, 512, 8},
                                  {16, 32, 32, 7},   {8, 256, 256, 7},  {64, 64, 64, 7},  {64, 32, 32, 4},
                                  {32, 256, 256, 4}, {64, 32, 32, 10}};
  torch::manual_seed(0);
  const auto bf16 = torch::kBFloat16;
  const auto run_round = [&](std::map<std::string, double>& us, bool timed) {
    for (const auto& l : layers) {
      const auto x = torch::randn({l.n, l.c, l.h, l.h}).to(bf16).contiguous(layout),
                 w = torch::randn({l.o, l.c, 3, 3}).to(bf16);
      const auto gy = torch::randn({l.n, l.o, l.h, l.h}).to(bf16).contiguous(layout);
      const auto name = fmt::format("{}x{}x{}x{}", l.n, l.c, l.o, l.h);
      const int reps =
          timed ? std::max<int>(2, static_cast<int>(2e8 / static_cast<double>(l.n * l.c * l.o * l.h * l.h * 9))) : 1;
      // float32's weight gradient (oneDNN's, float32 operands): what bfloat16 has to beat.
      const auto x32 = x.to(torch::kFloat32), gy32 = gy.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
      const auto start32 = Clock::now();
      for (int i = 0; i < reps; ++i)
        at::convolution_backward(gy32, x32, w32, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1,
                                 {false, true, false});
      us[name + "_f32"] += 1e6 * seconds_since(start32) / reps;
      for (const bool own : {false, true}) {
        const auto start = Clock::now();
        for (int i = 0; i < reps; ++i) {
          if (own && tiles)
            ops::detail::conv2d_weight_gradient_tiles(x, gy, 3, 3, {1, 1});
          else if (own)
            ops::detail::conv_bf16_weight_gradient(x, gy, {3, 3}, {1, 1}, {1, 1});
          else
            std::get<1>(at::convolution_backward(gy, x, w, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1,
                                                 {false, true, false}))
                .to(torch::kFloat32);
        }
        us[name + (own ? "_zoo" : "_onednn")] += 1e6 * seconds_since(start) / reps;
      }
    }
  };
  std::map<std::string, double> warm_up, us;  // an untimed round first: the process's first large allocations
  run_round(warm_up, false);
  for (auto _ : state) run_round(us, true);
  ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
  for (const auto& l : layers) {
    const auto name = fmt::format("{}x{}x{}x{}", l.n, l.c, l.o, l.h);
    state.counters[name + "_ratio"] = us[name + "_onednn"] / us[name + "_zoo"];
    state.counters[name + "_onednn_us"] = us[name + "_onednn"] / static_cast<double>(state.iterations());
    state.counters[name + "_f32_ratio"] = us[name + "_f32"] / us[name + "_zoo"];
    const auto w = torch::zeros({l.o, l.c, 3, 3}, torch::requires_grad());
    const auto x = torch::zeros({l.n, l.c, l.h, l.h});
    state.counters[name + "_applies"] =
        tiles ? ops::detail::conv2d_weight_tiles_applies(x, w, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, 1)
              : ops::detail::conv_weight_gradient_applies(x, w, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, 1);
  }
}
BENCHMARK(ConvWeightGradient)->Arg(0)->Arg(1)->Unit(benchmark::kSecond)->Iterations(3);

// Conv3dWeightGradient: the weight gradient of a bfloat16 3-D convolution both ways, interleaved per layer:
// oneDNN's (at::convolution_backward, weight only, cast to float32 as autocast's weight gradient is) and zoo's
// (ops::detail::conv_bf16_weight_gradient), at the 3-D models' layers: the conv3d model's second and third,
// conv4d's second (its time taps: 192 and 128 frames), the 3-D U-Net's and DeconvNet's (batch 2, 24^3). Counters:
// <N>x<C>x<O>x<D>[k<K>s<S>]_ratio = oneDNN time / zoo's time (above 1: zoo's faster), "applies" (1 where autocast's
// conv3d rule takes the layer) and oneDNN's time in us.
void Conv3dWeightGradient(benchmark::State& state) {
  training::apply_threads(1);
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: autocast's conv3d rule runs oneDNN's weight gradient here");
    return;
  }
  struct Layer {
    int64_t n, c, o, d, k, s;
    std::string name() const { return fmt::format("{}x{}x{}x{}k{}s{}", n, c, o, d, k, s); }
  };
  const std::vector<Layer> layers{{64, 8, 16, 16, 3, 2},  {64, 16, 32, 8, 3, 2}, {192, 8, 16, 8, 3, 2},
                                  {128, 8, 16, 8, 3, 2},  {2, 16, 16, 24, 3, 1}, {2, 32, 16, 24, 3, 1},
                                  {2, 32, 32, 12, 3, 1},  {2, 64, 32, 12, 3, 1}, {2, 64, 64, 6, 3, 1},
                                  {2, 16, 32, 24, 2, 2},  {2, 32, 64, 12, 2, 2}, {2, 16, 32, 12, 3, 1},
                                  {32, 64, 128, 8, 3, 2}, {8, 128, 128, 8, 3, 2}};
  torch::manual_seed(0);
  const auto bf16 = torch::kBFloat16;
  const auto run_round = [&](std::map<std::string, double>& us, bool timed) {
    for (const auto& l : layers) {
      const int64_t p = l.k == 3 ? 1 : 0, od = (l.d + 2 * p - l.k) / l.s + 1;
      const auto x = torch::randn({l.n, l.c, l.d, l.d, l.d}).to(bf16);
      const auto w = torch::randn({l.o, l.c, l.k, l.k, l.k}).to(bf16);
      const auto gy = torch::randn({l.n, l.o, od, od, od}).to(bf16);
      const double macs = static_cast<double>(l.n * l.c * l.o * od * od * od * l.k * l.k * l.k);
      const int reps = timed ? std::max<int>(2, static_cast<int>(2e8 / macs)) : 1;
      const bool tiles = ops::detail::amx_tiles_present() && l.o % 16 == 0;
      for (const int way : {0, 1, 2}) {  // oneDNN, dot products, tiles
        if (way == 2 && !tiles) continue;
        const auto start = Clock::now();
        for (int i = 0; i < reps; ++i) {
          if (way == 1)
            ops::detail::conv_bf16_weight_gradient(x, gy, {l.k, l.k, l.k}, {l.s, l.s, l.s}, {p, p, p});
          else if (way == 2)
            ops::detail::conv3d_weight_gradient_tiles(x, gy, {l.k, l.k, l.k}, {l.s, l.s, l.s}, {p, p, p});
          else
            std::get<1>(at::convolution_backward(gy, x, w, c10::nullopt, {l.s, l.s, l.s}, {p, p, p}, {1, 1, 1}, false,
                                                 {0, 0, 0}, 1, {false, true, false}))
                .to(torch::kFloat32);
        }
        us[l.name() + std::array<const char*, 3>{"_onednn", "_zoo", "_tiles"}[static_cast<size_t>(way)]] +=
            1e6 * seconds_since(start) / reps;
      }
    }
  };
  std::map<std::string, double> warm_up, us;  // an untimed round first: the process's first large allocations
  run_round(warm_up, false);
  for (auto _ : state) run_round(us, true);
  ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
  for (const auto& l : layers) {
    const int64_t p = l.k == 3 ? 1 : 0;
    state.counters[l.name() + "_ratio"] = us[l.name() + "_onednn"] / us[l.name() + "_zoo"];
    if (us.count(l.name() + "_tiles"))
      state.counters[l.name() + "_tiles_ratio"] = us[l.name() + "_onednn"] / us[l.name() + "_tiles"];
    state.counters[l.name() + "_onednn_us"] = us[l.name() + "_onednn"] / static_cast<double>(state.iterations());
    const auto w = torch::zeros({l.o, l.c, l.k, l.k, l.k}, torch::requires_grad());
    state.counters[l.name() + "_applies"] = ops::detail::conv3d_weight_gradient_applies(
        torch::zeros({l.n, l.c, l.d, l.d, l.d}), w, c10::nullopt, {l.s, l.s, l.s}, {p, p, p}, {1, 1, 1}, 1);
  }
}
BENCHMARK(Conv3dWeightGradient)->Unit(benchmark::kSecond)->Iterations(3);

// ConvOneChannel: the first layers of the cnn, the MoE, the mHC ResNet and the ODE-ResNet (64 x 28x28 -> 32) and of
// the U-Net and DeconvNet (4 x 64x64 -> 64), forward and forward + weight and bias gradients under CPU autocast,
// zoo's kernel and autocast's rule (WithoutBf16Kernel), interleaved.
void ConvOneChannel(benchmark::State& state) {
  training::apply_threads(1);
  if (!ops::detail::cpu_has_avx512_bf16()) {
    state.SkipWithError("this CPU has no AVX512-BF16: autocast's first layers run oneDNN here");
    return;
  }
  struct Layer {
    int64_t n, o, h;
  };
  const std::vector<Layer> layers{{64, 32, 28}, {4, 64, 64}};
  torch::manual_seed(0);
  const auto run_round = [&](std::map<std::string, double>& us) {
    for (const auto& l : layers) {
      const auto x = torch::randn({l.n, 1, l.h, l.h});
      const auto w = (torch::randn({l.o, 1, 3, 3}) * 0.3).requires_grad_();
      const auto b = torch::zeros({l.o}, torch::requires_grad());
      const auto go = torch::randn({l.n, l.o, l.h, l.h}).to(torch::kBFloat16);
      const auto name = fmt::format("{}x{}x{}", l.n, l.o, l.h);
      for (const bool zoo_kernel : {true, false}) {
        const auto arm = zoo_kernel ? "_zoo" : "_onednn";
        std::optional<ops::detail::WithoutBf16Kernel> onednn;
        if (!zoo_kernel) onednn.emplace();
        auto start = Clock::now();
        {
          // A scope of its own: autocast caches the weight's cast made without grad mode for the scope's life.
          ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
          torch::NoGradGuard inference;
          for (int i = 0; i < 20; ++i) torch::conv2d(x, w, b, 1, 1);
        }
        us[name + "_fwd" + arm] += 1e6 * seconds_since(start) / 20;
        start = Clock::now();
        for (int i = 0; i < 20; ++i) {
          ops::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
          torch::autograd::grad({torch::conv2d(x, w, b, 1, 1)}, {w, b}, {go});
        }
        us[name + "_train" + arm] += 1e6 * seconds_since(start) / 20;
      }
    }
  };
  std::map<std::string, double> warm_up, us;  // an untimed round first
  run_round(warm_up);
  for (auto _ : state) run_round(us);
  const auto rounds = static_cast<double>(state.iterations());
  for (const auto& l : layers) {
    const auto name = fmt::format("{}x{}x{}", l.n, l.o, l.h);
    for (const char* pass : {"_fwd", "_train"}) {
      state.counters[name + pass + "_ratio"] = us[name + pass + "_onednn"] / us[name + pass + "_zoo"];
      state.counters[name + pass + "_zoo_us"] = us[name + pass + "_zoo"] / rounds;
      state.counters[name + pass + "_onednn_us"] = us[name + pass + "_onednn"] / rounds;
    }
  }
}
BENCHMARK(ConvOneChannel)->Unit(benchmark::kSecond)->Iterations(5);

}  // namespace
