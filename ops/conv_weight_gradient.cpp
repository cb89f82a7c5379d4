#include "ops/conv_weight_gradient.h"

#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstring>

namespace zoo::ops::detail {

namespace {

using torch::Tensor;

/// Autocast's rule on the bfloat16 input and weight: the bias rounded to bfloat16, LibTorch's convolution (2-D or
/// 3-D, as x is).
Tensor reference(const Tensor& xb, const Tensor& wb, const Tensor& bias, at::IntArrayRef stride,
                 at::IntArrayRef padding) {
  const auto b = bias.numel() > 0 ? c10::optional<Tensor>(bias.to(torch::kBFloat16)) : c10::nullopt;
  const auto dims = static_cast<size_t>(xb.dim() - 2);
  return at::convolution(xb, wb, b, stride, padding, std::vector<int64_t>(dims, 1), false,
                         std::vector<int64_t>(dims, 0), 1);
}

/// A bfloat16 convolution (autocast's result) whose weight gradient is zoo's: the swapped forward convolution for a
/// 2-D one (stride 1), conv3d_bf16_weight_gradient for a 3-D one; the forward and the input gradient are oneDNN's.
struct OwnWeightGradientFunction : public torch::autograd::Function<OwnWeightGradientFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xb, const Tensor& weight,
                        const Tensor& bias, std::vector<int64_t> stride, std::vector<int64_t> padding) {
    const auto wb = weight.to(torch::kBFloat16);
    ctx->save_for_backward({xb, weight, bias, wb});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    return reference(xb, wb, bias, stride, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xb = saved[0], &weight = saved[1], &bias = saved[2], &wb = saved[3];
    const auto stride = ctx->saved_data["stride"].toIntVector(), padding = ctx->saved_data["padding"].toIntVector();
    if (torch::GradMode::is_enabled())  // under create_graph: through autocast's rule
      return gradients_through(
          ctx, {xb, weight, bias}, [&] { return reference(xb, weight.to(torch::kBFloat16), bias, stride, padding); },
          grads[0], 5);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto gy = grads[0].to(torch::kBFloat16);
    const auto dims = static_cast<size_t>(xb.dim() - 2);
    torch::autograd::variable_list out(5);
    if (ctx->needs_input_grad(0))
      out[0] =
          std::get<0>(at::convolution_backward(gy, xb, wb, c10::nullopt, stride, padding, std::vector<int64_t>(dims, 1),
                                               false, std::vector<int64_t>(dims, 0), 1, {true, false, false}));
    if (ctx->needs_input_grad(1))
      out[1] = dims == 2 ? conv2d_weight_gradient(xb, gy, padding)
                         : conv3d_bf16_weight_gradient(xb, gy, weight.sizes().slice(2), stride, padding);
    if (bias.numel() > 0 && ctx->needs_input_grad(2)) {
      std::vector<int64_t> axes{0};
      for (int64_t a = 2; a < gy.dim(); ++a) axes.push_back(a);
      out[2] = gy.sum(axes, false, torch::kFloat32);
    }
    return out;
  }
};

/// The operands autocast's bfloat16 rule would take: under CPU autocast in bfloat16, grad mode on, outside a trace;
/// CPU tensors, the input float32 or bfloat16 [N, C, ...] (dims axes), the weight float32 [O, C, ...] needing its
/// gradient, the bias float32 [O] or absent; one group, no dilation, strides from 1 to the kernel and paddings below
/// it (one value standing for every axis, as in torch's convolutions).
bool own_weight_gradient_operands(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, int64_t dims) {
  const auto type = cpu_autocast_type();
  if (!type || *type != torch::kBFloat16 || !torch::GradMode::is_enabled() || torch::jit::tracer::isTracing())
    return false;
  if (!input.defined() || !weight.defined() || input.dim() != dims + 2 || weight.dim() != dims + 2 ||
      !input.device().is_cpu() || !weight.device().is_cpu() || !weight.requires_grad() ||
      weight.scalar_type() != torch::kFloat32 || input.size(1) != weight.size(1) || groups != 1)
    return false;
  if (input.scalar_type() != torch::kFloat32 && input.scalar_type() != torch::kBFloat16) return false;
  if (bias.has_value() && bias->defined() &&
      (!bias->device().is_cpu() || bias->scalar_type() != torch::kFloat32 || bias->dim() != 1 ||
       bias->size(0) != weight.size(0)))
    return false;
  auto given = [&](at::IntArrayRef v) { return v.size() == 1 || static_cast<int64_t>(v.size()) == dims; };
  if (!given(stride) || !given(padding) || !given(dilation)) return false;
  const auto d = static_cast<size_t>(dims);
  const auto s = per_axis(stride, d), p = per_axis(padding, d), dl = per_axis(dilation, d);
  for (size_t a = 0; a < d; ++a) {
    const int64_t k = weight.size(static_cast<int64_t>(a) + 2);
    if (k < 1 || k > 7 || dl[a] != 1 || s[a] < 1 || s[a] > k || p[a] < 0 || p[a] >= k ||
        input.size(static_cast<int64_t>(a) + 2) + 2 * p[a] < k)
      return false;
  }
  return true;
}

/// torch's convolution (2-D or 3-D) of input, weight and bias under bf16-mixed through OwnWeightGradientFunction.
Tensor own_weight_gradient(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto xb = input.to(torch::kBFloat16);  // differentiable: a float32 input gets its gradient in float32
  const auto b = bias.defined() ? bias : torch::empty({0}, weight.options());
  const auto dims = static_cast<size_t>(input.dim() - 2);
  return OwnWeightGradientFunction::apply(xb, weight, b, per_axis(stride, dims), per_axis(padding, dims));
}

}  // namespace

Tensor swap_leading_axes(const Tensor& t) {
  const auto c = t.contiguous();
  const int64_t A = c.size(0), B = c.size(1), bytes = c.numel() / std::max<int64_t>(1, A * B) * c.element_size();
  auto sizes = c.sizes().vec();
  std::swap(sizes[0], sizes[1]);
  auto out = torch::empty(sizes, c.options());
  const auto* src = static_cast<const char*>(c.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t a = 0; a < A; ++a) std::memcpy(dst + (b * A + a) * bytes, src + (a * B + b) * bytes, bytes);
  });
  return out;
}

Tensor conv2d_weight_gradient(const Tensor& xb, const Tensor& gy, at::IntArrayRef padding) {
  TORCH_CHECK(xb.dim() == 4 && gy.dim() == 4 && xb.size(0) == gy.size(0) && xb.scalar_type() == torch::kBFloat16 &&
                  gy.scalar_type() == torch::kBFloat16 && padding.size() == 2,
              "conv2d_weight_gradient takes bfloat16 x [N, C, H, W], dy [N, O, HO, WO] and two paddings; got x ",
              xb.sizes(), ", dy ", gy.sizes());
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // [C, O, KH, KW]: the batch is the swapped problem's channel axis, dy's maps its kernel.
  const auto swapped = at::convolution(swap_leading_axes(xb), swap_leading_axes(gy), c10::nullopt, {1, 1}, padding,
                                       {1, 1}, false, {0, 0}, 1);
  auto out = torch::empty({swapped.size(1), swapped.size(0), swapped.size(2), swapped.size(3)},
                          xb.options().dtype(torch::kFloat32));
  out.copy_(swapped.transpose(0, 1));
  return out;
}

bool conv_weight_gradient_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  if (!own_weight_gradient_operands(input, weight, bias, stride, padding, dilation, groups, 2)) return false;
  if (stride.front() != 1 || stride.back() != 1) return false;
  const int64_t O = weight.size(0), C = weight.size(1), KH = weight.size(2), KW = weight.size(3);
  auto taps = [](int64_t k) { return k >= 3 && k <= 5; };
  auto channels = [](int64_t c) { return c >= 32 && c <= 256; };
  if (!channels(C) || !channels(O) || !taps(KH) || !taps(KW)) return false;
  const int64_t HO = input.size(2) + 2 * padding.front() - KH + 1, WO = input.size(3) + 2 * padding.back() - KW + 1;
  return input.size(0) >= 16 && HO * WO >= 25 && HO * WO <= 100 && cpu_has_avx512_bf16() && !cpu_has_amx_bf16();
}

bool conv3d_weight_gradient_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  if (!own_weight_gradient_operands(input, weight, bias, stride, padding, dilation, groups, 3)) return false;
  for (const int64_t s : per_axis(stride, 3))
    if (s < 2) return false;
  return input.size(1) >= 2 && cpu_has_amx_bf16();
}

Tensor conv2d_weight_as_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                at::IntArrayRef padding) {
  return own_weight_gradient(input, weight, bias, {1, 1}, padding);
}

Tensor conv3d_weight_by_pairs(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding) {
  return own_weight_gradient(input, weight, bias, stride, padding);
}

}  // namespace zoo::ops::detail
