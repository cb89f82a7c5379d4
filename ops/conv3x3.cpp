#include "ops/conv3x3.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstring>

namespace zoo::ops {

using torch::Tensor;

namespace {

torch::Tensor reference(const Tensor& x, const Tensor& weight, const Tensor& bias, double lead_value) {
  const int64_t lead = weight.size(1) - x.size(1);
  auto in = x;
  if (lead > 0) {
    // full_like of a narrow (not torch::full of x's sizes) keeps the batch size free in a trace.
    auto constant = torch::full_like(x.narrow(1, 0, 1), lead_value);
    in = torch::cat({lead == 1 ? constant : constant.repeat({1, lead, 1, 1}), x}, 1);
  }
  // Strides, padding and dilation for both axes: a single 1 means the same to ATen, but torch.onnx copies it as it is
  // into a Conv node that ONNX shape inference then rejects (zoo export --format onnx).
  return torch::conv2d(in, weight, bias, /*stride=*/{1, 1}, /*padding=*/{1, 1}, /*dilation=*/{1, 1});
}

// Conv3x3Kernel::library: the lead channels hold one value everywhere inside the image, so their share of the
// output is lead_value times the convolution of a map of ones with the sum of their weights, the same for every item
// of the batch: out[o, h, w] = sum over the taps inside the image of that sum, one matrix product [O, 9] x [9, H W]
// with a 0/1 matrix of which taps fall inside. (A convolution of the map of ones costs oneDNN a primitive per call:
// 0.3 ms per training step of the ODE-ResNet in float32, 1.2 ms in bf16-mixed.)
torch::Tensor without_lead(const Tensor& x, const Tensor& weight, const Tensor& bias, double lead_value) {
  const int64_t lead = weight.size(1) - x.size(1);
  if (lead == 0) return reference(x, weight, bias, lead_value);
  const std::vector<int64_t> one{1, 1};
  auto y = torch::conv2d(x, weight.narrow(1, lead, x.size(1)), bias, one, one, one);
  const int64_t O = weight.size(0), H = x.size(2), W = x.size(3);
  auto inside = torch::zeros({9, H * W});
  float* m = inside.data_ptr<float>();
  for (int64_t tap = 0; tap < 9; ++tap)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const int64_t r = h + tap / 3 - 1, c = w + tap % 3 - 1;
        m[(tap * H + h) * W + w] = r >= 0 && r < H && c >= 0 && c < W ? 1.0F : 0.0F;
      }
  Tensor lead_map;
  {
    // In the weights' precision also under autocast: oneDNN's bfloat16 product takes longer to set up than a float32
    // one takes to compute at [O, 9] x [9, H W].
    Float32Region weights_precision;
    const auto taps = float32(weight).narrow(1, 0, lead).sum(1).reshape({O, 9});
    lead_map = torch::mm(taps, inside.to(taps.options())).view({1, O, H, W}) * lead_value;
  }
  return y + lead_map.to(y.scalar_type()).contiguous(y.suggest_memory_format());
}

#ifdef ZOO_X86_KERNELS

// Geometry of one direct convolution: input [N, H + 2, W + 2, ldc] channels-last and zero-padded (channels
// 0 .. K-1 used), output [N, O, H, W] (NCHW), weight packed into panels of P = 8 V output channels:
// packed[p][tap * K + k][0 .. P) with tap = 3 kh + kw.
struct Shape {
  int64_t N, H, W, K, ldc, O;
};

// R output pixels (consecutive in a row) x one panel: acc[r][v] holds output channels o0 + 8 v .. + 7. With
// V = 1 the kernel rows kh = 0, 1, 2 accumulate separately (S = 3 sets, summed at the end): an FMA waits 4 cycles
// for its accumulator and 2 issue per cycle, so a block needs 8 or more independent chains to keep both busy.
template <int R, int V, int S>
ZOO_AVX2_FMA inline void pixels(const float* in, const Shape& s, const float* panel, const float* bias, float* out,
                                int64_t n, int64_t h, int64_t w, int64_t o0) {
  constexpr int P = 8 * V;
  __m256 acc[S][R][V];
#pragma GCC unroll 3
  for (int q = 0; q < S; ++q)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
        acc[q][r][v] = q == 0 && bias ? _mm256_loadu_ps(bias + o0 + 8 * v) : _mm256_setzero_ps();
  const int64_t row = s.W + 2;
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    const int q = kh % S;
    for (int kw = 0; kw < 3; ++kw) {
      const float* x = in + ((n * (s.H + 2) + h + kh) * row + w + kw) * s.ldc;
      const float* b = panel + (kh * 3 + kw) * s.K * P;
      for (int64_t k = 0; k < s.K; ++k) {
        __m256 wv[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(b + k * P + 8 * v);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256 a = _mm256_broadcast_ss(x + r * s.ldc + k);
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) acc[q][r][v] = _mm256_fmadd_ps(a, wv[v], acc[q][r][v]);
        }
      }
    }
  }
  const int64_t plane = s.H * s.W, channels = std::min<int64_t>(P, s.O - o0);
  float* o = out + (n * s.O + o0) * plane + h * s.W + w;
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    alignas(32) float lane[P];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      __m256 sum = acc[0][r][v];
#pragma GCC unroll 3
      for (int q = 1; q < S; ++q) sum = _mm256_add_ps(sum, acc[q][r][v]);
      _mm256_store_ps(lane + 8 * v, sum);
    }
    for (int64_t j = 0; j < channels; ++j) o[j * plane + r] = lane[j];
  }
}

// Output rows [row_begin, row_end) of the flattened (n, h) range.
template <int V>
ZOO_AVX2_FMA void direct_rows(const float* in, const Shape& s, const float* packed, const float* bias, float* out,
                              int64_t row_begin, int64_t row_end) {
  constexpr int P = 8 * V;
  const int64_t panels = (s.O + P - 1) / P;
  for (int64_t nh = row_begin; nh < row_end; ++nh) {
    const int64_t n = nh / s.H, h = nh % s.H;
    for (int64_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * 9 * s.K * P;
      int64_t w = 0;
      constexpr int S = V == 1 ? 3 : 1;  // 8 to 12 chains in the 4-pixel block (see pixels)
      for (; w + 4 <= s.W; w += 4) pixels<4, V, S>(in, s, panel, bias, out, n, h, w, p * P);
      for (; w + 2 <= s.W; w += 2) pixels<2, V, 3>(in, s, panel, bias, out, n, h, w, p * P);
      for (; w < s.W; ++w) pixels<1, V, 3>(in, s, panel, bias, out, n, h, w, p * P);
    }
  }
}

// The weight gradient: the sum over all output pixels of in[pixel shifted by tap][k] * grad[pixel][o], with
// grad channels-last and zero-padded like `in` (channel stride ldg, a multiple of 8). R input channels k0 ..
// k0 + R - 1 of one tap x V vectors of output channels from o0, written to dw[(tap K + k) ldg + o]. Even and
// odd pixels of a row accumulate separately (twice the independent chains, see pixels).
template <int R, int V>
ZOO_AVX2_FMA inline void weight_pixel(const float* x, const float* g, __m256 (&acc)[R][V]) {
  __m256 gv[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) gv[v] = _mm256_loadu_ps(g + 8 * v);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 a = _mm256_broadcast_ss(x + r);
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(a, gv[v], acc[r][v]);
  }
}

template <int R, int V>
ZOO_AVX2_FMA void weight_block(const float* in, const Shape& s, const float* grad, int64_t ldg, float* dw, int tap,
                               int64_t k0, int64_t o0) {
  __m256 acc[2][R][V];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[q][r][v] = _mm256_setzero_ps();
  const int64_t row = s.W + 2, kh = tap / 3, kw = tap % 3;
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t h = 0; h < s.H; ++h) {
      const float* x = in + ((n * (s.H + 2) + h + kh) * row + kw) * s.ldc + k0;
      const float* g = grad + ((n * (s.H + 2) + h + 1) * row + 1) * ldg + o0;
      int64_t w = 0;
      for (; w + 2 <= s.W; w += 2) {
        weight_pixel<R, V>(x + w * s.ldc, g + w * ldg, acc[0]);
        weight_pixel<R, V>(x + (w + 1) * s.ldc, g + (w + 1) * ldg, acc[1]);
      }
      if (w < s.W) weight_pixel<R, V>(x + w * s.ldc, g + w * ldg, acc[0]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
      _mm256_storeu_ps(dw + (tap * s.K + k0 + r) * ldg + o0 + 8 * v, _mm256_add_ps(acc[0][r][v], acc[1][r][v]));
}

// x [N, C, H, W] (any strides) -> [N, H + 2, W + 2, ldc] channels-last with a zero border: channels 0 .. lead-1
// hold `value` inside the image, lead .. lead + C - 1 hold x, the rest (up to ldc) 0.
Tensor pad_channels_last(const Tensor& x, int64_t lead, double value, int64_t ldc) {
  const auto xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = torch::empty({N, H + 2, W + 2, ldc}, x.options());
  const float* src = xc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const auto v = static_cast<float>(value);
  const int64_t plane = H * W;
  at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, (H + 2) * (W + 2) * ldc)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t n = begin; n < end; ++n) {
                       float* d = dst + n * (H + 2) * (W + 2) * ldc;
                       std::memset(d, 0, sizeof(float) * (W + 2) * ldc);                            // top row
                       std::memset(d + (H + 1) * (W + 2) * ldc, 0, sizeof(float) * (W + 2) * ldc);  // bottom row
                       for (int64_t h = 0; h < H; ++h) {
                         float* r = d + (h + 1) * (W + 2) * ldc;
                         std::memset(r, 0, sizeof(float) * ldc);
                         std::memset(r + (W + 1) * ldc, 0, sizeof(float) * ldc);
                         for (int64_t w = 0; w < W; ++w) {
                           float* p = r + (w + 1) * ldc;
                           for (int64_t c = 0; c < lead; ++c) p[c] = v;
                           const float* s = src + n * C * plane + h * W + w;
                           for (int64_t c = 0; c < C; ++c) p[lead + c] = s[c * plane];
                           for (int64_t c = lead + C; c < ldc; ++c) p[c] = 0;
                         }
                       }
                     }
                   });
  return out;
}

// Packs weight [O, K, 3, 3] into panels [ceil(O / P), 9 ldk, P] of P output channels: element (p, tap ldk + k, j)
// = weight[p P + j, k, kh, kw] (tap = 3 kh + kw), 0 for p P + j >= O or k >= K. With flip_transpose it packs the
// weight of the input gradient instead, [C, O, 3, 3] with element (c, o, kh, kw) = weight[o, lead + c, 2 - kh,
// 2 - kw] (C = weight.size(1) - lead).
Tensor pack(const Tensor& weight, int64_t P, int64_t ldk, bool flip_transpose, int64_t lead) {
  const auto wc = weight.detach().contiguous();
  const int64_t O0 = wc.size(0), K0 = wc.size(1);
  const int64_t O = flip_transpose ? K0 - lead : O0, K = flip_transpose ? O0 : K0, panels = (O + P - 1) / P;
  auto packed = torch::zeros({panels, 9 * ldk, P}, wc.options());
  const float* src = wc.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k)
      for (int tap = 0; tap < 9; ++tap) {
        const int64_t from = flip_transpose ? (k * K0 + lead + o) * 9 + (8 - tap) : (o * K0 + k) * 9 + tap;
        dst[((o / P) * 9 * ldk + tap * ldk + k) * P + o % P] = src[from];
      }
  return packed;
}

// out [N, O, H, W] = direct convolution of the padded channels-last `in` with packed panels.
Tensor direct(const Tensor& in, int64_t K, int64_t O, const Tensor& packed, int64_t P, const float* bias) {
  const int64_t N = in.size(0), H = in.size(1) - 2, W = in.size(2) - 2;
  const Shape s{N, H, W, K, in.size(3), O};
  auto out = torch::empty({N, O, H, W}, in.options());
  const float* ip = in.data_ptr<float>();
  const float* pp = packed.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t work = W * 9 * K * round_up(O, P);  // multiply-adds per output row
  at::parallel_for(0, N * H, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)), [&](int64_t b, int64_t e) {
    if (P == 8)
      direct_rows<1>(ip, s, pp, bias, op, b, e);
    else
      direct_rows<2>(ip, s, pp, bias, op, b, e);
  });
  return out;
}

struct Conv3x3Function : public torch::autograd::Function<Conv3x3Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, double lead_value) {
    const int64_t O = weight.size(0), K = weight.size(1), lead = K - x.size(1);
    const int64_t P = O <= 8 ? 8 : 16;
    auto in = pad_channels_last(x, lead, lead_value, K);
    std::vector<float> b;  // padded to whole panels
    const bool has_bias = bias.numel() > 0;
    if (has_bias) {
      const auto bc = bias.detach().contiguous();
      b.assign(bc.data_ptr<float>(), bc.data_ptr<float>() + O);
      b.resize(static_cast<size_t>(round_up(O, P)), 0.0f);
    }
    auto out = direct(in, K, O, pack(weight, P, K, false, 0), P, b.empty() ? nullptr : b.data());
    ctx->save_for_backward({in, weight, x, bias});
    ctx->saved_data["lead"] = lead;
    ctx->saved_data["bias"] = has_bias;
    ctx->saved_data["lead_value"] = lead_value;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &in = saved[0], &weight = saved[1];
    const int64_t lead = ctx->saved_data["lead"].toInt();
    const int64_t O = weight.size(0), K = weight.size(1), C = K - lead;
    const int64_t N = in.size(0), H = in.size(1) - 2, W = in.size(2) - 2;
    const auto& go = grads[0];
    if (torch::GradMode::is_enabled()) {  // under create_graph: through torch::conv2d's autograd
      const bool has_bias = ctx->saved_data["bias"].toBool();
      return gradients_through(
          ctx, {saved[2], saved[1], saved[3]},
          [&] {
            return reference(saved[2], saved[1], has_bias ? saved[3] : Tensor(),
                             ctx->saved_data["lead_value"].toDouble());
          },
          go, 4);
    }
    // The gradient, padded and channels-last with a channel stride of whole vectors (the weight kernel loads 8 or
    // 16 output channels at a time; the input kernel reads it as an input of ldg channels, the extra ones 0).
    const int64_t V = O <= 8 ? 1 : 2, ldg = round_up(O, 8 * V);
    const auto g = pad_channels_last(go, 0, 0, ldg);
    torch::autograd::variable_list out(4);
    if (ctx->needs_input_grad(0)) {
      const int64_t P = C <= 8 ? 8 : 16;
      out[0] = direct(g, ldg, C, pack(weight, P, ldg, true, lead), P, nullptr);  // zero rows for g's extra channels
    }
    if (ctx->needs_input_grad(1)) {
      auto dw = torch::empty({9 * K, ldg}, in.options());  // [(tap, k), o]
      const float* ip = in.data_ptr<float>();
      const float* gp = g.data_ptr<float>();
      float* dp = dw.data_ptr<float>();
      const Shape s{N, H, W, K, in.size(3), O};
      const int64_t blocks = (K + 3) / 4, panels = ldg / (8 * V), items = 9 * blocks * panels;
      at::parallel_for(0, items, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * H * W * 4 * 8 * V)),
                       [&](int64_t b, int64_t e) {
                         for (int64_t i = b; i < e; ++i) {
                           const int tap = static_cast<int>(i / (blocks * panels));
                           const int64_t k0 = (i / panels) % blocks * 4, o0 = i % panels * 8 * V;
                           if (k0 + 4 <= K) {
                             V == 1 ? weight_block<4, 1>(ip, s, gp, ldg, dp, tap, k0, o0)
                                    : weight_block<4, 2>(ip, s, gp, ldg, dp, tap, k0, o0);
                           } else {
                             for (int64_t k = k0; k < K; ++k)
                               V == 1 ? weight_block<1, 1>(ip, s, gp, ldg, dp, tap, k, o0)
                                      : weight_block<1, 2>(ip, s, gp, ldg, dp, tap, k, o0);
                           }
                         }
                       });
      auto dweight = torch::empty({O, K, 3, 3}, in.options());
      float* dst = dweight.data_ptr<float>();
      for (int64_t o = 0; o < O; ++o)
        for (int64_t k = 0; k < K; ++k)
          for (int tap = 0; tap < 9; ++tap) dst[(o * K + k) * 9 + tap] = dp[(tap * K + k) * ldg + o];
      out[1] = dweight;
    }
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) out[2] = go.sum({0, 2, 3});
    return out;
  }
};
#endif  // ZOO_X86_KERNELS

}  // namespace

namespace {
// The bfloat16 direct kernel's operands: a bfloat16 x with a bfloat16 weight, or with a float32 one under autocast
// (the master weight of bf16-mixed), on a CPU with AVX512-BF16.
bool bf16_operands(const Tensor& x, const Tensor& weight) {
  return x.scalar_type() == torch::kBFloat16 &&
         (weight.scalar_type() == torch::kBFloat16 ||
          (weight.scalar_type() == torch::kFloat32 && autocast_enabled())) &&
         detail::cpu_has_avx512_bf16();
}
}  // namespace

bool conv3x3_direct_available(const Tensor& x, const Tensor& weight) {
  // Also under autocast, for a float32 input: on the small maps it is chosen for, the direct kernel in float32 beat
  // LibTorch's bfloat16 convolution (ode-euler-32, 32 steps of width 8: bf16-mixed 0.35x of float32's speed through
  // LibTorch, 1.10x with the direct kernel; zoo bench, 2026-12-03).
  if (!cpu_has_avx2_fma() || torch::jit::tracer::isTracing() || !x.device().is_cpu() || !weight.device().is_cpu())
    return false;
  return (x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32) || bf16_operands(x, weight);
}

bool conv3x3_small_problem(int64_t items, int64_t positions, int64_t out_channels, int64_t in_channels) {
  return static_cast<double>(items) * static_cast<double>(positions) * static_cast<double>(out_channels) *
             static_cast<double>(in_channels) * 9 <=
         4e6;
}

namespace {
bool small_problem(const Tensor& x, const Tensor& weight) {
  if (x.dim() != 4 || weight.dim() != 4) return false;
  return conv3x3_small_problem(x.size(0), x.size(2) * x.size(3), weight.size(0), weight.size(1));
}
}  // namespace

bool conv3x3_direct(const Tensor& x, const Tensor& weight) {
  // bfloat16 at every size on AVX512-BF16: faster than oneDNN's bfloat16, whose reorders it skips, on the ODE field's
  // 6x6 maps and as fast up to 26x26 and 28x28. Not where the CPU has AMX: oneDNN's AMX kernels ran the same layers
  // 1.9-5x faster (zoo_bench Conv3x3Bf16, docs/precision.md).
  if (x.scalar_type() == torch::kBFloat16) return conv3x3_direct_available(x, weight) && !detail::cpu_has_amx_bf16();
  return conv3x3_direct_available(x, weight) && small_problem(x, weight);
}

Tensor conv3x3(const Tensor& x, const Tensor& weight, const Tensor& bias, double lead_value, Conv3x3Kernel kernel) {
  TORCH_CHECK(x.dim() == 4, "conv3x3 expects x [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) >= x.size(1),
              "conv3x3 expects a weight [O, lead + ", x.size(1), ", 3, 3] for x ", x.sizes(), ", got ", weight.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)), "conv3x3 expects a bias [",
              weight.size(0), "], got ", bias.sizes());
  // Under autocast a bfloat16 x (a GroupNorm's output: ops/group_norm.h) of a small problem is widened for the float32
  // direct kernel, which beats LibTorch's bfloat16 there as for float32 input (ode-euler-32's bf16-mixed step 2.7x
  // slower through LibTorch) and, in training, the bfloat16 direct kernel too (zoo_bench Conv3x3Bf16: 8 images of 8
  // channels, forward + backward at 0.69-0.72x of float32's speed). The output is float32 then, as for a float32 x. A
  // larger one goes to the bfloat16 direct kernel where the CPU has AVX512-BF16, else to LibTorch.
  if (kernel == Conv3x3Kernel::automatic && x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() &&
      autocast_enabled() && small_problem(x, weight)) {
    const auto wide = x.to(torch::kFloat32);
    if (conv3x3_direct_available(wide, weight)) return conv3x3(wide, weight, bias, lead_value, kernel);
  }
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  bool direct = kernel == Conv3x3Kernel::direct || (kernel == Conv3x3Kernel::automatic && conv3x3_direct(x, weight));
  if (direct && bias.defined() &&
      ((bias.scalar_type() != torch::kFloat32 && (!bf16 || bias.scalar_type() != torch::kBFloat16)) ||
       !bias.device().is_cpu())) {
    TORCH_CHECK(kernel != Conv3x3Kernel::direct, "conv3x3's direct kernel needs a float32 CPU bias, got ",
                bias.scalar_type(), " on ", bias.device());
    direct = false;
  }
  if (!direct) {
    // A trace records the concatenation: torchdiffeq's ConcatConv2d, as exported models have always had it.
    const bool concatenate = kernel == Conv3x3Kernel::reference || torch::jit::tracer::isTracing();
    return concatenate ? reference(x, weight, bias, lead_value) : without_lead(x, weight, bias, lead_value);
  }
  TORCH_CHECK(conv3x3_direct_available(x, weight),
              "conv3x3's direct kernel needs float32 CPU tensors and an x86-64 CPU with AVX2 and FMA (bfloat16 ones "
              "with AVX512-BF16), outside a trace (got ",
              x.scalar_type(), " x and ", weight.scalar_type(), " weight on ", x.device(),
              "); use Conv3x3Kernel::automatic");
#ifdef ZOO_X86_KERNELS
  if (x.numel() == 0) return reference(x, weight, bias, lead_value);
  if (bf16) return detail::conv2d_bf16(x, weight, bias, /*stride=*/{1, 1}, /*padding=*/{1, 1}, lead_value);
  // The autograd function takes tensors only: no bias is an empty one (its flag is saved with it).
  return Conv3x3Function::apply(x, weight, bias.defined() ? bias : torch::empty({0}, x.options()), lead_value);
#else
  return {};
#endif
}

}  // namespace zoo::ops
