#include "ops/conv_weight_gradient.h"

#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstring>

namespace zoo::ops::detail {

namespace {

using torch::Tensor;

/// Autocast's rule on the bfloat16 input and weight: the bias rounded to bfloat16, LibTorch's convolution.
Tensor reference(const Tensor& xb, const Tensor& wb, const Tensor& bias, at::IntArrayRef padding) {
  const auto b = bias.numel() > 0 ? c10::optional<Tensor>(bias.to(torch::kBFloat16)) : c10::nullopt;
  return at::convolution(xb, wb, b, {1, 1}, padding, {1, 1}, false, {0, 0}, 1);
}

struct WeightAsForwardFunction : public torch::autograd::Function<WeightAsForwardFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xb, const Tensor& weight,
                        const Tensor& bias, std::vector<int64_t> padding) {
    const auto wb = weight.to(torch::kBFloat16);
    ctx->save_for_backward({xb, weight, bias, wb});
    ctx->saved_data["padding"] = padding;
    return reference(xb, wb, bias, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xb = saved[0], &weight = saved[1], &bias = saved[2], &wb = saved[3];
    const auto padding = ctx->saved_data["padding"].toIntVector();
    if (torch::GradMode::is_enabled())  // under create_graph: through autocast's rule
      return gradients_through(
          ctx, {xb, weight, bias}, [&] { return reference(xb, weight.to(torch::kBFloat16), bias, padding); }, grads[0],
          4);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto gy = grads[0].to(torch::kBFloat16);
    torch::autograd::variable_list out(4);
    if (ctx->needs_input_grad(0))
      out[0] = std::get<0>(at::convolution_backward(gy, xb, wb, c10::nullopt, {1, 1}, padding, {1, 1}, false, {0, 0}, 1,
                                                    {true, false, false}));
    if (ctx->needs_input_grad(1)) out[1] = conv2d_weight_gradient(xb, gy, padding);
    if (bias.numel() > 0 && ctx->needs_input_grad(2)) out[2] = gy.sum({0, 2, 3}, false, torch::kFloat32);
    return out;
  }
};

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
  const auto type = cpu_autocast_type();
  if (!type || *type != torch::kBFloat16 || !torch::GradMode::is_enabled() || torch::jit::tracer::isTracing())
    return false;
  if (!input.defined() || !weight.defined() || input.dim() != 4 || weight.dim() != 4 || !input.device().is_cpu() ||
      !weight.device().is_cpu() || !weight.requires_grad() || weight.scalar_type() != torch::kFloat32)
    return false;
  if (input.scalar_type() != torch::kFloat32 && input.scalar_type() != torch::kBFloat16) return false;
  if (bias.has_value() && bias->defined() &&
      (!bias->device().is_cpu() || bias->scalar_type() != torch::kFloat32 || bias->dim() != 1 ||
       bias->size(0) != weight.size(0)))
    return false;
  // One value stands for both axes, as in torch::conv2d.
  auto all = [](at::IntArrayRef v, auto ok) {
    return (v.size() == 1 || v.size() == 2) && ok(v.front()) && ok(v.back());
  };
  if (groups != 1 || !all(stride, [](int64_t s) { return s == 1; }) || !all(dilation, [](int64_t d) { return d == 1; }))
    return false;
  const int64_t O = weight.size(0), C = weight.size(1), KH = weight.size(2), KW = weight.size(3);
  auto taps = [](int64_t k) { return k >= 3 && k <= 5; };
  auto channels = [](int64_t c) { return c >= 32 && c <= 256; };
  if (input.size(1) != C || !channels(C) || !channels(O) || !taps(KH) || !taps(KW) ||
      (padding.size() != 1 && padding.size() != 2))
    return false;
  const int64_t PH = padding.front(), PW = padding.back();
  if (PH < 0 || PW < 0 || PH >= KH || PW >= KW) return false;
  const int64_t HO = input.size(2) + 2 * PH - KH + 1, WO = input.size(3) + 2 * PW - KW + 1;
  return input.size(0) >= 16 && HO >= 1 && WO >= 1 && HO * WO >= 25 && HO * WO <= 100 && cpu_has_avx512_bf16() &&
         !cpu_has_amx_bf16();
}

Tensor conv2d_weight_as_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                at::IntArrayRef padding) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto xb = input.to(torch::kBFloat16);  // differentiable: a float32 input gets its gradient in float32
  const auto b = bias.defined() ? bias : torch::empty({0}, weight.options());
  return WeightAsForwardFunction::apply(xb, weight, b, std::vector<int64_t>{padding.front(), padding.back()});
}

}  // namespace zoo::ops::detail
