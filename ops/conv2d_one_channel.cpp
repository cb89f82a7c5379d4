#include "ops/conv2d_one_channel.h"

#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace zoo::ops::detail {

using torch::Tensor;

// In a namespace of their own: the unity build may compile this file together with the other kernels.
namespace one_channel_kernels {
namespace {

/// What autocast runs: LibTorch's convolution on the bfloat16 input and the bfloat16-rounded weight and bias.
Tensor reference(const Tensor& xb, const Tensor& weight, const Tensor& bias, int64_t pad) {
  const auto b = bias.numel() > 0 ? c10::optional<Tensor>(bias.to(torch::kBFloat16)) : c10::nullopt;
  return at::convolution(xb, weight.to(torch::kBFloat16), b, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1);
}

/// The same on float32 copies of those bfloat16 values, handed on in bfloat16: LibTorch 1.13's bfloat16 convolution
/// fails in double backward at one input channel ("expected input[N, O, H, W] to have 1 channels"; Python's
/// torch.autocast alike), its float32 one does not.
Tensor twice_reference(const Tensor& xb, const Tensor& weight, const Tensor& bias, int64_t pad) {
  const auto b = bias.numel() > 0 ? c10::optional<Tensor>(bias) : c10::nullopt;
  return at::convolution(xb.to(torch::kFloat32), weight.to(torch::kBFloat16).to(torch::kFloat32), b, {1, 1}, {pad, pad},
                         {1, 1}, false, {0, 0}, 1)
      .to(torch::kBFloat16);
}

#ifdef ZOO_X86_KERNELS

// GCC 12's AVX-512 headers pass _mm512_undefined_*() as the unused source of masked builtins, which
// -Wuninitialized reports once they are inlined (a known false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

using bf16 = c10::BFloat16;

constexpr int kTaps = 9, kRows = 10;  // the 9 taps' shifted copies and a row of ones (the bias's gradient)
constexpr int kPairs = 5;             // taps in pairs, the ninth with a zero

/// One image's buffers for an input [H x W] zero-padded by `pad` (0 or 1) on every side, the output [Ho x Wo] =
/// [(H + 2 pad - 2) x (W + 2 pad - 2)]: the padded image, the rows [kRows][Pp] (cols[3 i + j][h Wo + w] =
/// padded[h + i][w + j], zeros past the P = Ho Wo pixels; row 9 ones) and, for the forward, the taps in pairs
/// [kPairs][Pp] (32-bit words: tap 2k in the low half, 2k + 1 in the high one).
struct Workspace {
  Workspace(int64_t H, int64_t W, int64_t pad)
      : H(H),
        W(W),
        pad(pad),
        Ho(H + 2 * pad - 2),
        Wo(W + 2 * pad - 2),
        P(Ho * Wo),
        Pp(round_up(P, 32)),
        padded(static_cast<size_t>((H + 2 * pad) * (W + 2 * pad))),
        cols(static_cast<size_t>(kRows * Pp)),
        pairs(static_cast<size_t>(kPairs * Pp)) {
    std::fill(cols.begin() + 9 * Pp, cols.begin() + 9 * Pp + P, bf16(1.0f));
  }
  int64_t H, W, pad, Ho, Wo, P, Pp;
  std::vector<bf16> padded, cols;
  std::vector<uint32_t> pairs;

  /// cols' first 9 rows from image x [H x W].
  void shifted_copies(const bf16* x) {
    const int64_t WP = W + 2 * pad;
    for (int64_t h = 0; h < H; ++h) std::memcpy(&padded[(h + pad) * WP + pad], x + h * W, sizeof(bf16) * W);
    for (int t = 0; t < kTaps; ++t) {
      bf16* row = &cols[t * Pp];
      for (int64_t h = 0; h < Ho; ++h) std::memcpy(row + h * Wo, &padded[(h + t / 3) * WP + t % 3], sizeof(bf16) * Wo);
    }
  }
};

/// pairs[k][p] = cols[2k][p] | cols[2k + 1][p] << 16 (the ninth tap with a zero).
ZOO_AVX512_BF16 void pair_taps(Workspace& ws) {
  const int64_t Pp = ws.Pp;
  for (int k = 0; k < kPairs; ++k) {
    const bf16* a = &ws.cols[2 * k * Pp];
    const bf16* b = 2 * k + 1 < kTaps ? &ws.cols[(2 * k + 1) * Pp] : nullptr;
    uint32_t* out = &ws.pairs[k * Pp];
    for (int64_t p = 0; p < Pp; p += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + p)));
      const __m512i hi =
          b ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p))), 16)
            : _mm512_setzero_si512();
      _mm512_storeu_si512(out + p, _mm512_or_si512(lo, hi));
    }
  }
}

/// Output channels [o0, o0 + OB) of one image: y [O][P], 16 pixels at a time, 5 dot products each.
template <int OB>
ZOO_AVX512_BF16 void forward_outputs(const Workspace& ws, const uint32_t* wpairs, const float* bias, bf16* y,
                                     int64_t o0) {
  const int64_t P = ws.P, Pp = ws.Pp;
  __m512i w[OB][kPairs];
#pragma GCC unroll 16
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 16
    for (int k = 0; k < kPairs; ++k) w[ob][k] = _mm512_set1_epi32(static_cast<int>(wpairs[(o0 + ob) * kPairs + k]));
  for (int64_t p = 0; p < P; p += 16) {
    __m512i a[kPairs];
#pragma GCC unroll 16
    for (int k = 0; k < kPairs; ++k) a[k] = _mm512_loadu_si512(&ws.pairs[k * Pp + p]);
    const __mmask16 m = first16(P - p);
#pragma GCC unroll 16
    for (int ob = 0; ob < OB; ++ob) {
      __m512 acc = _mm512_set1_ps(bias ? bias[o0 + ob] : 0.0f);
#pragma GCC unroll 16
      for (int k = 0; k < kPairs; ++k)
        acc = _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a[k]), reinterpret_cast<__m512bh>(w[ob][k]));
      _mm256_mask_storeu_epi16(y + (o0 + ob) * P + p, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc)));
    }
  }
}

/// y [N, O, Ho, Wo] from xb [N, 1, H, W] padded by `pad`, one image per task.
ZOO_AVX512_BF16 void forward(const bf16* xb, const float* weight, const float* bias, bf16* y, int64_t N, int64_t O,
                             int64_t H, int64_t W, int64_t pad) {
  // The weight's taps rounded to bfloat16, in pairs per output channel.
  std::vector<uint32_t> wpairs(static_cast<size_t>(O * kPairs));
  for (int64_t o = 0; o < O; ++o)
    for (int k = 0; k < kPairs; ++k) {
      const uint32_t lo = bf16(weight[o * kTaps + 2 * k]).x;
      const uint32_t hi = 2 * k + 1 < kTaps ? bf16(weight[o * kTaps + 2 * k + 1]).x : 0;
      wpairs[static_cast<size_t>(o * kPairs + k)] = lo | hi << 16;
    }
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(H, W, pad);
    for (int64_t n = begin; n < end; ++n) {
      ws.shifted_copies(xb + n * H * W);
      pair_taps(ws);
      bf16* yn = y + n * O * ws.P;
      int64_t o = 0;
      for (; o + 4 <= O; o += 4) forward_outputs<4>(ws, wpairs.data(), bias, yn, o);
      for (; o < O; ++o) forward_outputs<1>(ws, wpairs.data(), bias, yn, o);
    }
  });
}

/// sums[o][r] (16 float32 lanes each) += dot products of dy's rows [O][P] and cols' rows r, OB channels from o0,
/// over pairs of neighbouring pixels.
template <int OB>
ZOO_AVX512_BF16 void weight_sums(const Workspace& ws, const bf16* gy, float* sums, int64_t o0) {
  const int64_t P = ws.P, Pp = ws.Pp;
  __m512 s[OB][kRows];
#pragma GCC unroll 16
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) s[ob][r] = _mm512_loadu_ps(sums + ((o0 + ob) * kRows + r) * 16);
  for (int64_t p = 0; p < P; p += 32) {
    const __mmask32 m = first32(P - p);
    __m512i g[OB];
#pragma GCC unroll 16
    for (int ob = 0; ob < OB; ++ob) g[ob] = _mm512_maskz_loadu_epi16(m, gy + (o0 + ob) * P + p);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512i c = _mm512_loadu_si512(&ws.cols[r * Pp + p]);
#pragma GCC unroll 16
      for (int ob = 0; ob < OB; ++ob)
        s[ob][r] = _mm512_dpbf16_ps(s[ob][r], reinterpret_cast<__m512bh>(g[ob]), reinterpret_cast<__m512bh>(c));
    }
  }
#pragma GCC unroll 16
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(sums + ((o0 + ob) * kRows + r) * 16, s[ob][r]);
}

/// dW [O, 9] (float32) and db [O] (or nullptr) from dy [N, O, Ho, Wo] and xb [N, 1, H, W] padded by `pad`. The images
/// are cut into a fixed number of chunks whatever the thread count, each summed on its own, and the chunks added in
/// order in double.
ZOO_AVX512_BF16 void weight_gradient(const bf16* xb, const bf16* gy, float* dw, float* db, int64_t N, int64_t O,
                                     int64_t H, int64_t W, int64_t pad) {
  const int64_t chunks = std::min<int64_t>(N, 8), per_chunk = O * kRows * 16;
  std::vector<float> sums(static_cast<size_t>(chunks * per_chunk), 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(H, W, pad);
    for (int64_t c = begin; c < end; ++c) {
      float* s = &sums[static_cast<size_t>(c * per_chunk)];
      for (int64_t n = c * N / chunks; n < (c + 1) * N / chunks; ++n) {
        ws.shifted_copies(xb + n * H * W);
        const bf16* gn = gy + n * O * ws.P;
        int64_t o = 0;
        for (; o + 2 <= O; o += 2) weight_sums<2>(ws, gn, s, o);
        for (; o < O; ++o) weight_sums<1>(ws, gn, s, o);
      }
    }
  });
  for (int64_t o = 0; o < O; ++o)
    for (int r = 0; r < kRows; ++r) {
      double total = 0;
      for (int64_t c = 0; c < chunks; ++c)
        for (int lane = 0; lane < 16; ++lane)
          total += sums[static_cast<size_t>(c * per_chunk + (o * kRows + r) * 16 + lane)];
      if (r < kTaps)
        dw[o * kTaps + r] = static_cast<float>(total);
      else if (db)
        db[o] = static_cast<float>(total);
    }
}

struct ConvOneChannelFunction : public torch::autograd::Function<ConvOneChannelFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xb, const Tensor& weight,
                        const Tensor& bias, int64_t pad) {
    const int64_t N = xb.size(0), H = xb.size(2), W = xb.size(3), O = weight.size(0);
    auto y = torch::empty({N, O, H + 2 * pad - 2, W + 2 * pad - 2}, xb.options());
    one_channel_kernels::forward(xb.data_ptr<bf16>(), weight.data_ptr<float>(),
                                 bias.numel() > 0 ? bias.data_ptr<float>() : nullptr, y.data_ptr<bf16>(), N, O, H, W,
                                 pad);
    ctx->save_for_backward({xb, weight, bias});
    ctx->saved_data["pad"] = pad;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xb = saved[0], &weight = saved[1], &bias = saved[2];
    const int64_t pad = ctx->saved_data["pad"].toInt();
    if (torch::GradMode::is_enabled())  // under create_graph: through LibTorch's convolution, in float32
      return gradients_through(
          ctx, {xb, weight, bias}, [&] { return twice_reference(xb, weight, bias, pad); }, grads[0], 4);
    TORCH_CHECK(!ctx->needs_input_grad(0), "conv2d_one_channel computes no input gradient");
    const int64_t N = xb.size(0), H = xb.size(2), W = xb.size(3), O = weight.size(0);
    const auto gy = grads[0].to(torch::kBFloat16).contiguous();
    torch::autograd::variable_list out(4);
    const bool want_bias = bias.numel() > 0 && ctx->needs_input_grad(2);
    if (!ctx->needs_input_grad(1) && !want_bias) return out;
    auto dw = torch::empty_like(weight, at::MemoryFormat::Contiguous);
    auto db = want_bias ? torch::empty_like(bias) : Tensor();
    weight_gradient(xb.data_ptr<bf16>(), gy.data_ptr<bf16>(), dw.data_ptr<float>(),
                    want_bias ? db.data_ptr<float>() : nullptr, N, O, H, W, pad);
    if (ctx->needs_input_grad(1)) out[1] = dw;
    out[2] = db;
    return out;
  }
};

#pragma GCC diagnostic pop

#endif  // ZOO_X86_KERNELS

}  // namespace
}  // namespace one_channel_kernels

bool conv2d_one_channel_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                int64_t groups) {
  const auto type = cpu_autocast_type();
  if (!type || *type != torch::kBFloat16 || torch::jit::tracer::isTracing()) return false;
  if (!input.defined() || !weight.defined() || input.dim() != 4 || weight.dim() != 4 || !input.device().is_cpu() ||
      !weight.device().is_cpu() || weight.scalar_type() != torch::kFloat32)
    return false;
  if ((input.scalar_type() != torch::kFloat32 && input.scalar_type() != torch::kBFloat16) ||
      (torch::GradMode::is_enabled() && input.requires_grad()))
    return false;
  if (bias.has_value() && bias->defined() &&
      (!bias->device().is_cpu() || bias->scalar_type() != torch::kFloat32 || bias->dim() != 1 ||
       bias->size(0) != weight.size(0)))
    return false;
  // One value stands for both axes, as in torch::conv2d.
  auto all = [](at::IntArrayRef v, int64_t value) {
    return (v.size() == 1 || v.size() == 2) && v.front() == value && v.back() == value;
  };
  if (groups != 1 || !all(stride, 1) || !(all(padding, 1) || all(padding, 0)) || !all(dilation, 1)) return false;
  if (input.size(1) != 1 || weight.size(1) != 1 || weight.size(2) != 3 || weight.size(3) != 3 || weight.size(0) < 1)
    return false;
  const int64_t low = padding.front() == 1 ? 1 : 3;  // the smallest map with an output pixel
  return input.size(0) >= 1 && input.size(2) >= low && input.size(3) >= low && input.size(2) * input.size(3) <= 4096 &&
         cpu_has_avx512_bf16();
}

Tensor conv2d_one_channel(const Tensor& input, const Tensor& weight, const Tensor& bias, int64_t padding) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "zoo's one-channel bfloat16 convolution needs a CPU with AVX512-BF16");
  TORCH_CHECK(input.dim() == 4 && input.size(1) == 1 && weight.dim() == 4 && weight.size(1) == 1 &&
                  weight.size(2) == 3 && weight.size(3) == 3 &&
                  (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0))),
              "zoo's one-channel convolution takes x [N, 1, H, W], weight [O, 1, 3, 3] and bias [O] or none; got x ",
              input.sizes(), ", weight ", weight.sizes());
  TORCH_CHECK((padding == 0 || padding == 1) && input.size(2) + 2 * padding >= 3 && input.size(3) + 2 * padding >= 3,
              "zoo's one-channel convolution pads by 0 or 1 and needs a map of at least one output pixel; got padding ",
              padding, " for x ", input.sizes());
  TORCH_CHECK(weight.scalar_type() == torch::kFloat32 && (!bias.defined() || bias.scalar_type() == torch::kFloat32),
              "zoo's one-channel convolution reads a float32 weight and bias (autocast's master weights)");
  TORCH_CHECK(!(torch::GradMode::is_enabled() && input.requires_grad()),
              "zoo's one-channel convolution computes no input gradient (an image network's first layer)");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto xb = input.to(torch::kBFloat16).contiguous();
  const auto b = bias.defined() ? bias.contiguous() : torch::empty({0}, weight.options());
#ifdef ZOO_X86_KERNELS
  if (xb.numel() == 0 || weight.size(0) == 0) return one_channel_kernels::reference(xb, weight, b, padding);
  return one_channel_kernels::ConvOneChannelFunction::apply(xb, weight.contiguous(), b, padding);
#else
  return one_channel_kernels::reference(xb, weight, b, padding);
#endif
}

}  // namespace zoo::ops::detail
