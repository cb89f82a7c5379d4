#include "datasets/synthetic.h"

#include "datasets/options.h"
#include "datasets/random.h"
#include "datasets/registry.h"

#include <cmath>

namespace zoo::datasets {

std::shared_ptr<TensorDataset> make_waveforms(int64_t n, int64_t length, double noise, uint64_t seed) {
  TORCH_CHECK(n > 0 && length >= 16, "waveforms: need n > 0 and length >= 16");
  auto g = seeded_generator(seed);
  auto labels = at::randint(0, 4, {n}, g, torch::kInt64);
  auto cycles = uniform(g, {n, 1}, 2.0, 8.0);
  auto phase = uniform(g, {n, 1}, 0.0, 1.0);
  auto amplitude = uniform(g, {n, 1}, 0.5, 1.0);
  auto t = torch::linspace(0, 1, length).unsqueeze(0);
  auto cycle = cycles * t + phase;          // position in cycles
  auto frac = cycle - torch::floor(cycle);  // in [0, 1)
  auto sine = torch::sin(2 * M_PI * cycle);
  auto square = torch::where(frac < 0.5, torch::ones_like(frac), -torch::ones_like(frac));
  auto saw = 2 * frac - 1;
  auto triangle = 2 * torch::abs(saw) - 1;
  auto all = torch::stack({sine, square, saw, triangle}, 1);  // [n, 4, L]
  auto wave = all.gather(1, labels.view({n, 1, 1}).expand({n, 1, length})) * amplitude.unsqueeze(1);
  wave = wave + noise * at::randn(wave.sizes(), g, torch::kFloat32);
  return std::make_shared<TensorDataset>(wave, labels,
                                         "waveforms (" + std::to_string(n) + " x [1, " + std::to_string(length) + "])");
}

std::shared_ptr<TensorDataset> make_shapes3d(int64_t n, int64_t size, double noise, uint64_t seed) {
  TORCH_CHECK(n > 0 && size >= 8, "shapes3d: need n > 0 and size >= 8");
  auto g = seeded_generator(seed);
  auto labels = at::randint(0, 3, {n}, g, torch::kInt64);
  const double s = static_cast<double>(size);
  auto center = uniform(g, {n, 3, 1, 1, 1}, 0.35 * s, 0.65 * s);
  auto radius = uniform(g, {n, 1, 1, 1}, 0.15 * s, 0.28 * s);
  auto axis = torch::arange(size, torch::kFloat32) + 0.5;
  auto grid = torch::meshgrid({axis, axis, axis}, "ij");
  auto dz = grid[0].unsqueeze(0) - center.select(1, 0), dy = grid[1].unsqueeze(0) - center.select(1, 1),
       dx = grid[2].unsqueeze(0) - center.select(1, 2);
  auto sphere = (dz * dz + dy * dy + dx * dx).sqrt() < radius;
  auto cube = torch::maximum(torch::maximum(dz.abs(), dy.abs()), dx.abs()) < 0.85 * radius;
  auto cylinder = ((dy * dy + dx * dx).sqrt() < 0.9 * radius).logical_and(dz.abs() < 1.2 * radius);
  auto all = torch::stack({sphere, cube, cylinder}, 1).to(torch::kFloat32);  // [n, 3, S, S, S]
  auto volume = all.gather(1, labels.view({n, 1, 1, 1, 1}).expand({n, 1, size, size, size}));
  volume = volume + noise * at::randn(volume.sizes(), g, torch::kFloat32);
  return std::make_shared<TensorDataset>(volume, labels,
                                         "shapes3d (" + std::to_string(n) + " x [1, " + std::to_string(size) + "^3])");
}

std::shared_ptr<TensorDataset> make_motion4d(int64_t n, int64_t frames, int64_t size, double noise, uint64_t seed) {
  TORCH_CHECK(n > 0 && frames >= 3 && size >= 6, "motion4d: need n > 0, frames >= 3, size >= 6");
  auto g = seeded_generator(seed);
  auto labels = at::randint(0, 6, {n}, g, torch::kInt64);
  const double s = static_cast<double>(size);
  const double speed = 0.6 * (s - 3) / static_cast<double>(frames);
  // direction k: axis k / 2, sign + for even k
  auto directions = torch::zeros({6, 3});
  for (int k = 0; k < 6; ++k) directions[k][k / 2] = (k % 2 == 0) ? 1.0 : -1.0;
  auto dir = directions.index_select(0, labels);                                   // [n, 3]
  auto start = uniform(g, {n, 3}, 1.5, s - 1.5) - dir * speed * (frames - 1) / 2;  // centred path
  auto axis = torch::arange(size, torch::kFloat32) + 0.5;
  auto grid = torch::meshgrid({axis, axis, axis}, "ij");
  std::vector<torch::Tensor> video;
  for (int64_t t = 0; t < frames; ++t) {
    auto c = start + dir * speed * static_cast<double>(t);  // [n, 3]
    auto d2 = (grid[0].unsqueeze(0) - c.select(1, 0).view({n, 1, 1, 1})).pow(2) +
              (grid[1].unsqueeze(0) - c.select(1, 1).view({n, 1, 1, 1})).pow(2) +
              (grid[2].unsqueeze(0) - c.select(1, 2).view({n, 1, 1, 1})).pow(2);
    video.push_back(torch::exp(-d2 / 2.0));
  }
  auto x = torch::stack(video, 1).unsqueeze(1);  // [n, 1, T, S, S, S]
  x = x + noise * at::randn(x.sizes(), g, torch::kFloat32);
  return std::make_shared<TensorDataset>(
      x, labels,
      "motion4d (" + std::to_string(n) + " x [1, " + std::to_string(frames) + ", " + std::to_string(size) + "^3])");
}

namespace {

DatasetEntry synthetic(const std::string& name, const std::string& description,
                       std::function<std::shared_ptr<TensorDataset>(const nlohmann::json&, int64_t, uint64_t)> make,
                       std::vector<std::string> keys, int64_t n_train, int64_t n_test) {
  DatasetEntry e;
  e.name = name;
  e.description = description;
  e.default_dir = [] { return std::string("(generated)"); };
  e.load = [=](const DataConfig& c) {
    check_option_names(c.options, keys, name);
    const int64_t train = limited(int_option(c.options, "n_train", n_train), c.limit);
    const int64_t test = limited(int_option(c.options, "n_test", n_test), c.limit);
    const auto seed = static_cast<uint64_t>(int_option(c.options, "seed", 0));
    return Splits{make(c.options, train, 2 * seed + 1), make(c.options, test, 2 * seed + 2)};
  };
  return e;
}

const detail::DatasetRegistrar waveforms{synthetic(
    "waveforms", "1-D: sine/square/sawtooth/triangle waves in noise, [1, 256], 4 classes (generated)",
    [](const nlohmann::json& o, int64_t n, uint64_t seed) {
      return make_waveforms(n, int_option(o, "length", 256), number_option(o, "noise", 0.5), seed);
    },
    {"n_train", "n_test", "seed", "length", "noise"}, 8000, 2000)};
const detail::DatasetRegistrar shapes3d{synthetic(
    "shapes3d", "3-D: sphere/cube/cylinder volumes in noise, [1, 16, 16, 16], 3 classes (generated)",
    [](const nlohmann::json& o, int64_t n, uint64_t seed) {
      return make_shapes3d(n, int_option(o, "size", 16), number_option(o, "noise", 0.5), seed);
    },
    {"n_train", "n_test", "seed", "size", "noise"}, 4000, 1000)};
const detail::DatasetRegistrar motion4d{synthetic(
    "motion4d", "4-D: a blob moving along one of 6 directions, [1, 6, 8, 8, 8], 6 classes (generated)",
    [](const nlohmann::json& o, int64_t n, uint64_t seed) {
      return make_motion4d(n, int_option(o, "frames", 6), int_option(o, "size", 8), number_option(o, "noise", 0.3),
                           seed);
    },
    {"n_train", "n_test", "seed", "frames", "size", "noise"}, 3000, 1000)};

}  // namespace
}  // namespace zoo::datasets
