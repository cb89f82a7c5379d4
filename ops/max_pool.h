// 2x2 max pooling with stride 2: what every CNN stem here does after each convolution block (cnn, moe, mhc-resnet,
// the U-Net encoder), and its 3-D form, 2x2x2 (the 3-D U-Net's encoder).
//
// LibTorch 1.13's CPU kernel for torch::max_pool2d on NCHW tensors, with the int64 indices autograd keeps, spends
// about 25 ns per output: the largest item in a profile of the cnn's bf16-mixed training step on the 2-core VM.
// max_pool2x2 keeps a window position (0..3) per output instead, and a backward that writes each window's gradient
// to that position and zeros to the other three. On x86-64 CPUs with AVX2 both run 8 windows at a time (float32
// and bfloat16; a row's last few windows through zero-padded copies), elsewhere and for double a plain loop per
// channel plane (the tests run both). Same results as torch::max_pool2d(x, 2): floor sizes (an odd last row or column
// is left out), the first maximum of each window in row-major order, NaN propagates (a later NaN wins, as LibTorch's
// `val > max || isnan(val)`).
//
// 2x2x2: LibTorch 1.13's torch::max_pool3d on NCDHW is slower still, about 4 ns per input element (the 3-D U-Net's
// first pooling, [2, 16, 24, 24, 24], 1.8 ms of a 45 ms bf16-mixed training step, 1 thread), and has no bfloat16
// kernel: under autocast it runs in float32 between two casts. max_pool2x2x2 is the same loop over windows of
// four rows (two rows of each of two depth slices), positions 0..7 in (depth, row, column) order, for float32 and
// bfloat16 alike.
//
// With switches (the DeconvNets, Noh et al. 2015): the pooling hands out those window positions (one byte per
// output, where LibTorch keeps an int64 index), and max-unpooling is the pooling's backward loop run forwards (each
// value at its window's maximum, zeros elsewhere), its gradient a gather. LibTorch 1.13 has no bfloat16 CPU kernel
// for 3-D max pooling with indices nor for max-unpooling, so under bf16-mixed the 3-D DeconvNet pooled and unpooled
// in float32 between casts, and its 3-D pooling with indices took 2.2 ms of [2, 16, 24^3] in either precision.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::max_pool2d(x, 2) for x [N, C, H, W] (or [C, H, W]). The loop runs for contiguous float, double and
/// bfloat16 CPU tensors of at least 2 x 2, when not tracing (a trace records torch::max_pool2d, which TorchScript
/// and Python load); otherwise, or with `fast` false, torch::max_pool2d itself. Differentiable, twice too: under
/// create_graph the backward goes through torch::max_pool2d's autograd.
torch::Tensor max_pool2x2(const torch::Tensor& x, bool fast = true);

/// torch::max_pool3d(x, 2) for x [N, C, D, H, W] (or [C, D, H, W]), on the same terms (floor sizes, the first
/// maximum in (depth, row, column) order, NaN propagates; falls back to torch::max_pool3d where the loop does not
/// run; for bfloat16, which LibTorch 1.13's max_pool3d lacks, that pools in float32 and narrows back, exactly).
/// Differentiable, twice too. Not a CPU autocast operation: a bfloat16 input stays bfloat16.
torch::Tensor max_pool2x2x2(const torch::Tensor& x, bool fast = true);

/// Max pooling (2x2 for axes = 2, 2x2x2 for 3) that also says where each maximum was, for max-unpooling (DeconvNet's
/// switches, Noh et al. 2015): {y, switches}, y = max_pool2x2(x) or max_pool2x2x2(x). Where the loop runs the
/// switches are zoo's window positions (uint8, y's shape, 0..3 or 0..7 in (depth,) row, column order); elsewhere,
/// or with `fast` false, LibTorch's int64 indices of torch::max_pool2d/3d_with_indices (3-D bfloat16 pooled in
/// float32 there: LibTorch 1.13 has no such kernel). max_unpool takes either. y is differentiable, the switches not.
std::tuple<torch::Tensor, torch::Tensor> max_pool_with_switches(const torch::Tensor& x, int64_t axes, bool fast = true);

/// torch::max_unpool2d/3d(y, indices, size) for the switches of max_pool_with_switches: each element of y at its
/// window's maximum in maps of spatial size `size` (2 or 3 axes; odd sizes leave the last row, column or slice zero),
/// zeros elsewhere. zoo's loop, in y's type (bfloat16 too), for zoo's switches; LibTorch's max_unpool for LibTorch's
/// indices (bfloat16 widened to float32 there, as LibTorch 1.13 has no such kernel). Differentiable in y, twice too.
torch::Tensor max_unpool(const torch::Tensor& y, const torch::Tensor& switches, at::IntArrayRef size);

/// zoo's switches as LibTorch's indices: each window's maximum as a flat index into its plane (or volume) of spatial
/// size `size`, what torch::max_pool2d/3d_with_indices returns for the same pooling.
torch::Tensor switch_indices(const torch::Tensor& where, at::IntArrayRef size);

}  // namespace zoo::ops
