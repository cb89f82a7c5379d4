// Products x W^T with few rows and a weight used many times: the recurrent products of an LSTM at inference.
//
// OpenBLAS packs both operands into its own layout on every call; for h [8 x 128] times a [128 x 1024] state
// weight that packing of the weight (512 KB) costs as much as the product, and an LSTM repeats it at every
// step. PackedWeight packs the weight once (16-column panels, [ceil(N/16), K, 16]) and multiplies with an AVX2
// + FMA kernel that keeps a 4 x 16 block of the output in registers. No Debian library offers this: OpenBLAS
// has no packing API, and libxsmm 1.17's static library replaces the process's sgemm (LibTorch's addmm became
// 30x slower with it linked).
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

class PackedWeight {
 public:
  PackedWeight() = default;
  /// weight: [N, K] float32 on the CPU (any strides); packed now, later changes to it are not seen.
  explicit PackedWeight(const torch::Tensor& weight);
  /// Whether the kernel runs here (an x86-64 CPU with AVX2 and FMA, checked at run time) for x: float32 on the
  /// CPU. Callers fall back to torch::addmm otherwise.
  static bool usable(const torch::Tensor& x);
  bool defined() const { return packed_.defined(); }
  /// add + x W^T for x [M, K] and add [M, N] (undefined: none); both may be strided views with unit column
  /// stride. Returns a new contiguous [M, N] tensor. Not differentiable (inference only).
  torch::Tensor addmm(const torch::Tensor& add, const torch::Tensor& x) const;

 private:
  torch::Tensor packed_;  ///< [ceil(N / 16), K, 16], zero columns past N
  int64_t n_ = 0, k_ = 0;
};

}  // namespace zoo::ops
