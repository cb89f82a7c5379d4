#pragma once
// Seeded random draws shared by the generated datasets (datasets/synthetic.cpp, datasets/segmentation.cpp):
// every generated dataset draws from its own CPU generator, so the same seed gives the same data on any machine.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace zoo::datasets {

/// A CPU generator seeded `seed` (independent of the global one, so generating data never moves training's stream).
inline at::Generator seeded_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

/// Uniform float32 samples in [lo, hi) of the given shape, drawn from `g`.
inline torch::Tensor uniform(at::Generator& g, std::vector<int64_t> shape, double lo, double hi) {
  return at::rand(shape, g, torch::kFloat32) * (hi - lo) + lo;
}

}  // namespace zoo::datasets
