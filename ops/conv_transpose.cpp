#include "ops/conv_transpose.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstdint>

namespace zoo::ops {

using torch::Tensor;

namespace {

Tensor reference(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                 torch::IntArrayRef padding, torch::IntArrayRef output_padding, int64_t groups,
                 torch::IntArrayRef dilation) {
  switch (x.dim()) {
    case 3:
      return torch::conv_transpose1d(x, weight, bias, stride, padding, output_padding, groups, dilation);
    case 4:
      return torch::conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation);
    default:
      return torch::conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups, dilation);
  }
}

bool product_type(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16; }

/// The sizes of one call, its spatial axes padded to three at the front: x [N, C, D, H, W], the kernel (= stride)
/// k_d x k_h x k_w, O output channels.
struct Geometry {
  int64_t N, C, O, D, H, W, kd, kh, kw;
  int64_t S() const { return D * H * W; }     // input positions per item
  int64_t K() const { return kd * kh * kw; }  // taps, output positions per input position
};

Geometry geometry(const Tensor& x, const Tensor& weight) {
  const int64_t missing = 5 - x.dim();  // spatial axes x lacks at the front
  auto spatial = [&](const Tensor& t, int64_t axis) { return axis < missing ? 1 : t.size(2 + axis - missing); };
  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.O = weight.size(1);
  g.D = spatial(x, 0), g.H = spatial(x, 1), g.W = spatial(x, 2);
  g.kd = spatial(weight, 0), g.kh = spatial(weight, 1), g.kw = spatial(weight, 2);
  return g;
}

/// Moves elements between the products' rows and the output: Y's row (o, a, b, c) of item n, at
/// y + n * item + ((o K) + (a k_h + b) k_w + c) * row, holds the output's positions (k_d d + a, k_h h + b, k_w w + c)
/// of channel o, D H W of them in order. kToOutput: Y -> out (the forward); else out -> Y (the backward). T is an
/// unsigned integer of the elements' size: the elements are moved, not converted.
template <typename T, bool kToOutput>
void shuffle(T* y, int64_t item, int64_t row, T* out, const Geometry& g) {
  const int64_t K = g.K(), plane = K * g.S(), H2 = g.H * g.kh, W2 = g.W * g.kw;
  at::parallel_for(0, g.N * g.O, std::max<int64_t>(1, kGrain / plane), [&](int64_t begin, int64_t end) {
    for (int64_t no = begin; no < end; ++no) {
      const int64_t n = no / g.O, o = no % g.O;
      T* channel = out + no * plane;
      T* taps = y + n * item + o * K * row;
      for (int64_t d = 0; d < g.D; ++d)
        for (int64_t a = 0; a < g.kd; ++a)
          for (int64_t h = 0; h < g.H; ++h)
            for (int64_t b = 0; b < g.kh; ++b) {
              T* line = channel + ((d * g.kd + a) * H2 + h * g.kh + b) * W2;
              T* src = taps + (a * g.kh + b) * g.kw * row + (d * g.H + h) * g.W;
              if (g.kw == 2) {  // U-Net's: two rows interleaved, a loop the compiler vectorises
                T* src1 = src + row;
                for (int64_t w = 0; w < g.W; ++w) {
                  if (kToOutput) {
                    line[2 * w] = src[w];
                    line[2 * w + 1] = src1[w];
                  } else {
                    src[w] = line[2 * w];
                    src1[w] = line[2 * w + 1];
                  }
                }
              } else {
                for (int64_t w = 0; w < g.W; ++w)
                  for (int64_t c = 0; c < g.kw; ++c) {
                    if (kToOutput)
                      line[w * g.kw + c] = src[c * row + w];
                    else
                      src[c * row + w] = line[w * g.kw + c];
                  }
              }
            }
    }
  });
}

template <bool kToOutput>
void shuffle(const Tensor& y, int64_t item, int64_t row, const Tensor& out, const Geometry& g) {
  switch (out.element_size()) {
    case 2:
      return shuffle<uint16_t, kToOutput>(static_cast<uint16_t*>(y.data_ptr()), item, row,
                                          static_cast<uint16_t*>(out.data_ptr()), g);
    case 4:
      return shuffle<uint32_t, kToOutput>(static_cast<uint32_t*>(y.data_ptr()), item, row,
                                          static_cast<uint32_t*>(out.data_ptr()), g);
    default:
      return shuffle<uint64_t, kToOutput>(static_cast<uint64_t*>(y.data_ptr()), item, row,
                                          static_cast<uint64_t*>(out.data_ptr()), g);
  }
}

/// out = a b, plus `rows` (a [rows, 1] column broadcast, or undefined), in a's type. LibTorch 1.13's bfloat16
/// product is oneDNN's (float32 sums, rounded once) above 16^3 multiply-adds with oneDNN enabled, and on a CPU with
/// AVX-512; otherwise its own loops round every partial sum to bfloat16 (sums of 16 products 0.05 off beyond one
/// rounding). Such products run in float32 here and are rounded once, as oneDNN's.
void product(Tensor out, const Tensor& a, const Tensor& b, const Tensor& rows) {
  const bool widen = a.scalar_type() == torch::kBFloat16 &&
                     (a.size(0) * a.size(1) * b.size(1) <= 16 * 16 * 16 || !detail::cpu_has_avx512_bf16() ||
                      !at::globalContext().userEnabledMkldnn());
  if (widen) {
    Float32Region exact;  // autocast, on in a forward under bf16-mixed, would run these products in bfloat16
    const auto f = [](const Tensor& t) { return t.to(torch::kFloat32); };
    out.copy_(rows.defined() ? at::addmm(f(rows), f(a), f(b)) : at::mm(f(a), f(b)));
  } else if (rows.defined()) {
    at::addmm_out(out, rows, a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

/// The output's sizes: [N, O, k_d D, k_h H, k_w W] with x's number of spatial axes.
std::vector<int64_t> output_sizes(const Tensor& x, const Tensor& weight) {
  std::vector<int64_t> sizes{x.size(0), weight.size(1)};
  for (int64_t i = 2; i < x.dim(); ++i) sizes.push_back(x.size(i) * weight.size(i));
  return sizes;
}

/// x [N, C, *] in the computation's type, weight [C, O, k...] and bias [O] (empty: none) in their own types; the
/// output and x's gradient in x's type, the weight's and the bias's in theirs.
struct ConvTransposeFunction : public torch::autograd::Function<ConvTransposeFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias) {
    const auto g = geometry(x, weight);
    const auto type = x.scalar_type();
    const auto xc = x.contiguous();
    // W^T as [O K, C], a transposed view the matrix product reads as it is.
    const auto wt = weight.to(type).reshape({g.C, g.O * g.K()}).t();
    auto y = torch::empty({g.N, g.O * g.K(), g.S()}, xc.options());
    const auto rows = bias.numel() > 0 ? bias.to(type).repeat_interleave(g.K()).unsqueeze(1) : Tensor();
    for (int64_t n = 0; n < g.N; ++n) {
      auto yn = y[n];
      const auto xn = xc[n].view({g.C, g.S()});
      // The bias as the product's added term: in the float32 sums, rounded once with them (as oneDNN adds it).
      product(yn, wt, xn, rows);
    }
    auto out = torch::empty(output_sizes(x, weight), xc.options());
    if (out.numel() > 0) shuffle<true>(y, g.O * g.K() * g.S(), g.S(), out, g);
    ctx->save_for_backward({xc, weight, bias});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2];
    const auto go = grads[0].to(x.scalar_type()).contiguous();
    if (torch::GradMode::is_enabled())  // under create_graph: through LibTorch's autograd
      return gradients_through(
          ctx, {x, weight, bias},
          [&] {
            const auto type = x.scalar_type();
            return reference(x, weight.to(type), bias.numel() > 0 ? bias.to(type) : Tensor(), weight.sizes().slice(2),
                             0, 0, 1, 1);
          },
          go, 3);
    const auto g = geometry(x, weight);
    const int64_t N = g.N, C = g.C, S = g.S(), OK = g.O * g.K();
    torch::autograd::variable_list out(3);
    if (go.numel() == 0) {
      if (ctx->needs_input_grad(0)) out[0] = torch::zeros_like(x);
      if (ctx->needs_input_grad(1)) out[1] = torch::zeros_like(weight);
      if (ctx->needs_input_grad(2) && bias.numel() > 0) out[2] = torch::zeros_like(bias);
      return out;
    }
    // dY as [O K, N, S]: every item's rows side by side, so that the weight's gradient is one product.
    auto dy = torch::empty({OK, N * S}, go.options());
    shuffle<false>(dy, S, N * S, go, g);
    if (ctx->needs_input_grad(0)) {
      const auto w = weight.to(x.scalar_type()).reshape({C, OK});
      auto dx = torch::empty({N, C, S}, x.options());
      for (int64_t n = 0; n < N; ++n) {
        auto dxn = dx[n];
        product(dxn, w, dy.narrow(1, n * S, S), {});
      }
      out[0] = dx.view(x.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      const auto xs = N == 1 ? x.view({C, S}) : x.view({N, C, S}).transpose(0, 1).reshape({C, N * S});
      auto dw = torch::empty({C, OK}, x.options());
      product(dw, xs, dy.t(), {});
      out[1] = dw.view(weight.sizes()).to(weight.scalar_type());
    }
    if (ctx->needs_input_grad(2) && bias.numel() > 0) {
      std::vector<int64_t> axes{0};
      for (int64_t i = 2; i < go.dim(); ++i) axes.push_back(i);
      const auto sums = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      out[2] = go.sum(axes, false, sums).to(bias.scalar_type());
    }
    return out;
  }
};

}  // namespace

bool conv_transpose_by_product(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                               torch::IntArrayRef padding, torch::IntArrayRef output_padding, int64_t groups,
                               torch::IntArrayRef dilation) {
  if (x.dim() < 3 || x.dim() > 5 || weight.dim() != x.dim() || groups != 1 || torch::jit::tracer::isTracing())
    return false;
  const auto dims = static_cast<size_t>(x.dim() - 2);
  if (!(stride.size() == 1 || stride.size() == dims) || !all_equal(padding, dims, 0) ||
      !all_equal(output_padding, dims, 0) || !all_equal(dilation, dims, 1))
    return false;
  for (size_t i = 0; i < dims; ++i)
    if (weight.size(2 + i) != stride[stride.size() == 1 ? 0 : i]) return false;
  if (!x.device().is_cpu() || !weight.device().is_cpu() || weight.size(0) != x.size(1) ||
      (bias.defined() && (!bias.device().is_cpu() || bias.dim() != 1 || bias.size(0) != weight.size(1))))
    return false;
  if (const auto low = cpu_autocast_type()) {  // autocast casts float32 operands (and takes bfloat16 ones) only
    auto castable = [](const Tensor& t) {
      return t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16;
    };
    return *low == torch::kBFloat16 && castable(x) && castable(weight) && (!bias.defined() || castable(bias));
  }
  return product_type(x.scalar_type()) && weight.scalar_type() == x.scalar_type() &&
         (!bias.defined() || bias.scalar_type() == x.scalar_type());
}

Tensor conv_transpose(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                      torch::IntArrayRef padding, torch::IntArrayRef output_padding, int64_t groups,
                      torch::IntArrayRef dilation) {
  if (!conv_transpose_by_product(x, weight, bias, stride, padding, output_padding, groups, dilation))
    return reference(x, weight, bias, stride, padding, output_padding, groups, dilation);
  // The autograd function takes tensors only: no bias is an empty one. Under bf16-mixed, x in bfloat16 (autocast's
  // cast); the weight and the bias are rounded inside, so that their gradients come back in their own types.
  const auto low = cpu_autocast_type();
  const auto xt = low ? x.to(*low) : x;
  return ConvTransposeFunction::apply(xt, weight, bias.defined() ? bias : torch::empty({0}, x.options()));
}

}  // namespace zoo::ops
