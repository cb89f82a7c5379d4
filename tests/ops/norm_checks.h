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

/// A norm's results (y, dx, dw, db: the fields both tests' result structs have) as close to the exact float64 ones
/// as LibTorch's float32 (check_as_close_as; dw and db where the norm is affine).
template <typename Result>
void check_results_as_close_as(const Result& ours, const Result& theirs, const Result& truth, bool affine) {
  check_as_close_as(ours.y, theirs.y, truth.y);
  check_as_close_as(ours.dx, theirs.dx, truth.dx);
  if (affine) {
    check_as_close_as(ours.dw, theirs.dw, truth.dw);
    check_as_close_as(ours.db, theirs.db, truth.db);
  }
}

/// y and dx in channels-last `layout` (not contiguous), as x was; a map of one position is contiguous in both.
template <typename Result>
void check_channels_last(const Result& got, c10::MemoryFormat layout, const std::vector<int64_t>& shape) {
  if (shape[2] * shape[3] <= 1) return;
  CHECK(got.y.is_contiguous(layout));
  CHECK_FALSE(got.y.is_contiguous());
  CHECK(got.dx.is_contiguous(layout));
}

}  // namespace zoo::test
