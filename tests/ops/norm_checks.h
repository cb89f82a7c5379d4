// Checks shared by the tests of zoo's normalisation kernels (ops/batch_norm.h, ops/group_norm.h).
#pragma once

#include "helpers.h"

#include <torch/torch.h>

#include <catch2/catch.hpp>

#include <vector>

namespace zoo::test {

/// randn(shape) * 3 plus `offset` times the channel's index: channel means in the hundreds, which a norm's sums in
/// float32 must survive.
inline torch::Tensor offset_channels(const std::vector<int64_t>& shape, double offset) {
  std::vector<int64_t> view(shape.size(), 1);
  view[1] = shape[1];
  return torch::randn(shape) * 3 + torch::arange(shape[1], torch::kFloat32).mul(offset).view(view);
}

/// `ours` at least as close to the exact `truth` as LibTorch's float32 `theirs` (within 3x, plus 1e-6), and at most
/// 1e-4 off (relative to truth's largest magnitude).
inline void check_as_close_as(const torch::Tensor& ours, const torch::Tensor& theirs, const torch::Tensor& truth) {
  const double e = max_rel(ours, truth), e_lib = max_rel(theirs, truth);
  INFO("error " << e << ", LibTorch's float32 " << e_lib);
  CHECK(e <= 3 * e_lib + 1e-6);
  CHECK(e < 1e-4);
}

}  // namespace zoo::test
