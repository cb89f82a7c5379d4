// Automatic mixed precision (autocast) in one place: turning LibTorch's autocast on for a scope, and the parts that
// stay in float32 under it.
//
// Autocast (PyTorch's torch.autocast; in C++ the at::autocast functions) runs the operations that gain from a
// lower precision (convolutions, matrix products, linear layers) in bfloat16 or float16 and the others in float32,
// while parameters and gradients stay float32 ("mixed precision", Micikevicius et al. 2018). It is thread-local:
// it covers what runs on the thread that turned it on. The hand-written kernels of ops/ read float32 through data
// pointers, and some computations lose too much in 8 bits of mantissa (an LSTM's cell state summed over steps,
// Sinkhorn's log-space normalisation, an ODE solver's error control): those run in a Float32Region.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// True while autocast is on in this thread (for the CPU or for CUDA).
bool autocast_enabled();

/// Autocast on for `device_type` (kCPU or kCUDA) with `dtype` (kBFloat16, or kHalf on CUDA) for the lifetime of
/// the object; the previous state comes back after it, and the cache of cast weights is cleared when the
/// outermost scope ends (as torch.autocast does on exit). enabled = false makes it a no-op.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device_type, torch::ScalarType dtype, bool enabled = true);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  c10::DeviceType device_type_;
  bool was_enabled_ = false;
  torch::ScalarType was_dtype_ = torch::kFloat32;
};

/// Autocast off for the lifetime of the object (torch.autocast(enabled=False) in Python): the code in it runs in
/// the precision of its inputs; pass them through float32() first.
class Float32Region {
 public:
  Float32Region();

 private:
  c10::impl::ExcludeDispatchKeyGuard no_autocast_;
};

/// What autocast hands on from an operation it runs in a lower precision (a convolution, a matrix product) when a
/// hand-written kernel computed it in float32 instead: `t` in CPU autocast's type while CPU autocast is on for a
/// float32 CPU `t`; otherwise `t` itself. Differentiable.
torch::Tensor autocast_result(const torch::Tensor& t);

/// CPU autocast's lower-precision type while CPU autocast is on in this thread (outside a Float32Region), else
/// nullopt: the type a hand-written kernel returns where autocast would have run LibTorch's matrix product.
c10::optional<torch::ScalarType> cpu_autocast_type();

/// `t` in float32 when it is a bfloat16 or float16 tensor; otherwise `t` itself (float32, float64 and integer
/// tensors are kept). Differentiable: the gradient flows back in the original precision.
torch::Tensor float32(const torch::Tensor& t);

/// The mean of x over its axes from `start_dim` on (a global average pool for start_dim 2: x [N, C, ...] -> [N, C]),
/// accumulated and returned in float32 (float64 for a float64 x), without a float32 copy of a bfloat16 or float16 x:
/// what float32(x).flatten(start_dim).mean(-1) computes. Differentiable: the gradient comes back in x's type as each
/// mean's gradient / count broadcast over its axes (an expanded view), where LibTorch's mean writes a float32 tensor of
/// x's size, divides it and casts it (0.3 ms of the 1-D ConvNet's 3.3 ms bf16-mixed step).
torch::Tensor float32_mean(const torch::Tensor& x, int64_t start_dim);

/// Whether 2-D maps of these sizes, [N, C, H, W], that CPU autocast hands on in bfloat16 go in channels-last memory: on
/// a CPU with AMX (detail::cpu_has_amx_bf16(), ops/conv2d_bf16.h), C a multiple of 8, and a C -> C 3x3 convolution of
/// them above conv3x3's small problem (ops/conv3x3.h; below it conv3x3's own kernel reads contiguous maps). oneDNN's
/// AMX convolutions compute in channels-last; LibTorch 1.13 reorders a contiguous input into it and copies the output
/// and the input gradient back on every call, and given channels-last maps does neither. Where such maps start:
/// autocast's group_norm rule (the ODE-ResNet's field) and the mHC mixing's H_pre x (mix_streams_map,
/// ops/stream_mix.h); zoo's batch norm, group norm and ReLU keep the layout. The caller checks that autocast is on.
bool amx_channels_last(at::IntArrayRef maps);

}  // namespace zoo::ops
