#include "ops/conv3x3_bf16.h"

#include "ops/conv3x3.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace zoo::ops::detail {

using torch::Tensor;

namespace {
bool& without_bf16_kernel() {
  thread_local bool on = false;
  return on;
}
}  // namespace

WithoutBf16Kernel::WithoutBf16Kernel() : previous_(without_bf16_kernel()) { without_bf16_kernel() = true; }
WithoutBf16Kernel::~WithoutBf16Kernel() { without_bf16_kernel() = previous_; }

bool cpu_has_avx512_bf16() {
#ifdef ZOO_X86_KERNELS
  static const bool ok =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  return ok && !without_bf16_kernel() && cpu_has_avx2_fma();  // cpu_has_avx2_fma is false under ScalarOnly
#else
  return false;
#endif
}

#ifdef ZOO_X86_KERNELS

namespace {

#define ZOO_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

using bf16 = c10::BFloat16;

// Two adjacent bfloat16 (a pair along the dot product's axis) in every 32-bit lane.
ZOO_AVX512_BF16 inline __m512bh pair_everywhere(const bf16* p) {
  int32_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(bits));
}

ZOO_AVX512_BF16 inline __m512bh load_pairs(const bf16* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// Geometry of one direct convolution, as the float32 kernel's (ops/conv3x3.cpp) with channels in pairs: input
// [N, H + 2, W + 2, ldc] channels-last and zero-padded, ldc even (pairs = ldc / 2, the zero channels past K adding
// nothing), output [N, O, H, W]; weight packed into panels of P = 16 V output channels:
// packed[p][tap][pair][j][2] = weight[p P + j][2 pair + 0 or 1][kh][kw].
struct Shape {
  int64_t N, H, W, ldc, O;
};

// Rows x R output pixels (R consecutive ones in each of `Rows` consecutive rows of one image) x one panel,
// acc[i][r][v] holding output channels o0 + 16 v .. + 15 of pixel r of row i. Up to 24 accumulators: a dot product
// waits several cycles for its accumulator, so a block needs many independent chains.
template <int Rows, int R, int V>
ZOO_AVX512_BF16 inline void pixels(const bf16* in, const Shape& s, const bf16* panel, const float* bias, bf16* out,
                                   int64_t n, int64_t h, int64_t w, int64_t o0) {
  constexpr int P = 16 * V;
  __m512 acc[Rows][R][V];
#pragma GCC unroll 2
  for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[i][r][v] = bias ? _mm512_loadu_ps(bias + o0 + 16 * v) : _mm512_setzero_ps();
  const int64_t row = (s.W + 2) * s.ldc, pairs = s.ldc / 2;
  for (int kh = 0; kh < 3; ++kh) {
    for (int kw = 0; kw < 3; ++kw) {
      const bf16* x = in + ((n * (s.H + 2) + h + kh) * (s.W + 2) + w + kw) * s.ldc;
      const bf16* b = panel + (kh * 3 + kw) * pairs * P * 2;
      for (int64_t k = 0; k < pairs; ++k) {
        __m512bh wv[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) wv[v] = load_pairs(b + (k * P + 16 * v) * 2);
#pragma GCC unroll 2
        for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m512bh a = pair_everywhere(x + i * row + r * s.ldc + 2 * k);
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) acc[i][r][v] = _mm512_dpbf16_ps(acc[i][r][v], a, wv[v]);
          }
      }
    }
  }
  const int64_t plane = s.H * s.W, channels = std::min<int64_t>(P, s.O - o0);
#pragma GCC unroll 2
  for (int i = 0; i < Rows; ++i) {
    bf16* o = out + (n * s.O + o0) * plane + (h + i) * s.W + w;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      alignas(32) bf16 lane[P];  // rounded to nearest even, as c10::BFloat16(float)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
        _mm256_store_si256(reinterpret_cast<__m256i*>(lane + 16 * v),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc[i][r][v])));
      for (int64_t j = 0; j < channels; ++j) o[j * plane + r] = lane[j];
    }
  }
}

// One panel across a row (Rows = 1) or two rows (Rows = 2) from (n, h): blocks of 6, 4, 2 and 1 pixels per row.
template <int Rows, int V>
ZOO_AVX512_BF16 void panel_rows(const bf16* in, const Shape& s, const bf16* panel, const float* bias, bf16* out,
                                int64_t n, int64_t h, int64_t o0) {
  int64_t w = 0;
  for (; w + 6 <= s.W; w += 6) pixels<Rows, 6, V>(in, s, panel, bias, out, n, h, w, o0);
  for (; w + 4 <= s.W; w += 4) pixels<Rows, 4, V>(in, s, panel, bias, out, n, h, w, o0);
  for (; w + 2 <= s.W; w += 2) pixels<Rows, 2, V>(in, s, panel, bias, out, n, h, w, o0);
  for (; w < s.W; ++w) pixels<Rows, 1, V>(in, s, panel, bias, out, n, h, w, o0);
}

// Output rows [row_begin, row_end) of the flattened (n, h) range, two rows of an image at a time where it can.
template <int V>
ZOO_AVX512_BF16 void direct_rows(const bf16* in, const Shape& s, const bf16* packed, const float* bias, bf16* out,
                                 int64_t row_begin, int64_t row_end) {
  constexpr int P = 16 * V;
  const int64_t panels = (s.O + P - 1) / P, panel_size = 9 * (s.ldc / 2) * P * 2;
  for (int64_t nh = row_begin; nh < row_end;) {
    const int64_t n = nh / s.H, h = nh % s.H;
    const bool two = h + 1 < s.H && nh + 1 < row_end;
    for (int64_t p = 0; p < panels; ++p) {
      if (two)
        panel_rows<2, V>(in, s, packed + p * panel_size, bias, out, n, h, p * P);
      else
        panel_rows<1, V>(in, s, packed + p * panel_size, bias, out, n, h, p * P);
    }
    nh += two ? 2 : 1;
  }
}

// The weight gradient: dw[(tap, k), o] = the sum over output pixels of in[pixel shifted by tap][k] * grad[pixel][o],
// as dot products over pairs of horizontally adjacent pixels: `in` is x padded in [N, ldk, H + 2, Wq] (NCHW, so a
// pixel pair of one channel is adjacent), `grad` is [N, H, W / 2 rounded up, ldo, 2] (a pixel pair of one output
// channel adjacent; a zero pixel after an odd W). R input channels from k0 x V vectors of output channels from o0;
// even and odd pixel pairs accumulate separately (twice the independent chains).
struct WeightShape {
  int64_t N, H, W2, Wq, ldk, ldo;
};

template <int R, int V>
ZOO_AVX512_BF16 inline void weight_pair(const bf16* x, int64_t channel, const bf16* g, __m512 (&acc)[R][V]) {
  __m512bh gv[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) gv[v] = load_pairs(g + 32 * v);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    const __m512bh a = pair_everywhere(x + r * channel);
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, gv[v]);
  }
}

template <int R, int V>
ZOO_AVX512_BF16 void weight_block(const bf16* in, const WeightShape& s, const bf16* grad, float* dw, int tap,
                                  int64_t k0, int64_t o0) {
  __m512 acc[2][R][V];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q)
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[q][r][v] = _mm512_setzero_ps();
  const int64_t kh = tap / 3, kw = tap % 3, channel = (s.H + 2) * s.Wq;
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t h = 0; h < s.H; ++h) {
      const bf16* x = in + (n * s.ldk + k0) * channel + (h + kh) * s.Wq + kw;
      const bf16* g = grad + ((n * s.H + h) * s.W2 * s.ldo + o0) * 2;
      int64_t p = 0;
      for (; p + 2 <= s.W2; p += 2) {
        weight_pair<R, V>(x + 2 * p, channel, g + p * s.ldo * 2, acc[0]);
        weight_pair<R, V>(x + 2 * p + 2, channel, g + (p + 1) * s.ldo * 2, acc[1]);
      }
      if (p < s.W2) weight_pair<R, V>(x + 2 * p, channel, g + p * s.ldo * 2, acc[0]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
      _mm512_storeu_ps(dw + (tap * s.ldk + k0 + r) * s.ldo + o0 + 16 * v, _mm512_add_ps(acc[0][r][v], acc[1][r][v]));
}

// x [N, C, H, W] bfloat16 (any strides) -> [N, H + 2, W + 2, ldc] channels-last with a zero border: channels
// 0 .. lead - 1 hold `value` inside the image, lead .. lead + C - 1 hold x, the rest 0.
Tensor pad_channels_last(const Tensor& x, int64_t lead, double value, int64_t ldc) {
  const auto xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), plane = H * W;
  auto out = torch::empty({N, H + 2, W + 2, ldc}, x.options());
  const bf16* src = xc.data_ptr<bf16>();
  bf16* dst = out.data_ptr<bf16>();
  const bf16 v(static_cast<float>(value));
  const int64_t row = (W + 2) * ldc;
  at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, (H + 2) * row)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t n = begin; n < end; ++n) {
                       bf16* d = dst + n * (H + 2) * row;
                       std::memset(d, 0, sizeof(bf16) * row);                  // top row
                       std::memset(d + (H + 1) * row, 0, sizeof(bf16) * row);  // bottom row
                       for (int64_t h = 0; h < H; ++h) {
                         bf16* r = d + (h + 1) * row;
                         std::memset(r, 0, sizeof(bf16) * ldc);                  // left border
                         std::memset(r + (W + 1) * ldc, 0, sizeof(bf16) * ldc);  // right border
                         for (int64_t w = 0; w < W; ++w) {
                           bf16* p = r + (w + 1) * ldc;
                           for (int64_t c = 0; c < lead; ++c) p[c] = v;
                           const bf16* s = src + n * C * plane + h * W + w;
                           for (int64_t c = 0; c < C; ++c) p[lead + c] = s[c * plane];
                           for (int64_t c = lead + C; c < ldc; ++c) p[c] = bf16(0.0F);
                         }
                       }
                     }
                   });
  return out;
}

// x [N, C, H, W] bfloat16 -> [N, ldk, H + 2, Wq] with a zero border (and zero columns past W + 1): channels
// 0 .. lead - 1 hold `value` inside the image, then x, then zero channels up to ldk.
Tensor pad_planes(const Tensor& x, int64_t lead, double value, int64_t ldk, int64_t Wq) {
  const auto xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = torch::zeros({N, ldk, H + 2, Wq}, x.options());
  const bf16* src = xc.data_ptr<bf16>();
  bf16* dst = out.data_ptr<bf16>();
  const bf16 v(static_cast<float>(value));
  at::parallel_for(0, N * (lead + C), std::max<int64_t>(1, 65536 / std::max<int64_t>(1, (H + 2) * Wq)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i) {
                       const int64_t n = i / (lead + C), c = i % (lead + C);
                       bf16* d = dst + ((n * ldk + c) * (H + 2) + 1) * Wq + 1;
                       for (int64_t h = 0; h < H; ++h) {
                         if (c < lead)
                           std::fill(d + h * Wq, d + h * Wq + W, v);
                         else
                           std::memcpy(d + h * Wq, src + ((n * C + c - lead) * H + h) * W, sizeof(bf16) * W);
                       }
                     }
                   });
  return out;
}

// go [N, O, H, W] bfloat16 -> [N, H, W2, ldo, 2]: element (n, h, p, o, j) = go[n, o, h, 2 p + j], 0 past W or O.
// A pair is written as one 32-bit word (the lower half first, as the pair sits in memory on x86). With plane_sums
// ([N O] floats) it also sums each (item, channel) plane, the bias gradient's terms, while it reads them.
Tensor pair_pixels(const Tensor& go, int64_t W2, int64_t ldo, float* plane_sums) {
  const auto gc = go.contiguous();
  const int64_t N = go.size(0), O = go.size(1), H = go.size(2), W = go.size(3);
  auto out = torch::empty({N, H, W2, ldo, 2}, go.options());
  const auto* src = reinterpret_cast<const uint16_t*>(gc.data_ptr<bf16>());
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<bf16>());
  at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, H * W2 * ldo * 2)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t n = begin; n < end; ++n) {
                       uint32_t* item = dst + n * H * W2 * ldo;
                       for (int64_t hp = 0; hp < H * W2; ++hp)
                         std::fill(item + hp * ldo + O, item + (hp + 1) * ldo, 0U);
                       for (int64_t o = 0; o < O; ++o) {
                         float sum = 0;
                         for (int64_t h = 0; h < H; ++h) {
                           const uint16_t* s = src + ((n * O + o) * H + h) * W;
                           uint32_t* d = item + h * W2 * ldo + o;
                           for (int64_t p = 0; p < W / 2; ++p)
                             d[p * ldo] = s[2 * p] | (static_cast<uint32_t>(s[2 * p + 1]) << 16);
                           if (W % 2) d[(W / 2) * ldo] = s[W - 1];
                           if (plane_sums)
                             for (int64_t w = 0; w < W; ++w) sum += c10::detail::f32_from_bits(s[w]);
                         }
                         if (plane_sums) plane_sums[n * O + o] = sum;
                       }
                     }
                   });
  return out;
}

// Packs weight [O, K, 3, 3] (float32 or bfloat16) into bfloat16 panels [ceil(O / P), 9, ldk / 2, P, 2] (element
// (p, tap, k / 2, j, k % 2) = weight[p P + j, k, kh, kw]), 0 past O or K. With flip_transpose it packs the weight of
// the input gradient instead: [C, O, 3, 3] with element (c, o, kh, kw) = weight[o, lead + c, 2 - kh, 2 - kw].
Tensor pack(const Tensor& weight, int64_t P, int64_t ldk, bool flip_transpose, int64_t lead) {
  const auto wc = weight.detach().to(torch::kFloat32).contiguous();
  const int64_t O0 = wc.size(0), K0 = wc.size(1);
  const int64_t O = flip_transpose ? K0 - lead : O0, K = flip_transpose ? O0 : K0, panels = (O + P - 1) / P;
  auto packed = torch::zeros({panels, 9, ldk / 2, P, 2}, weight.options().dtype(torch::kBFloat16));
  const float* src = wc.data_ptr<float>();
  bf16* dst = packed.data_ptr<bf16>();
  const int64_t tap_stride = (ldk / 2) * P * 2;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) {
      bf16* d = dst + (((o / P) * 9 * (ldk / 2) + k / 2) * P + o % P) * 2 + k % 2;
      const float* from = src + (flip_transpose ? (k * K0 + lead + o) * 9 + 8 : (o * K0 + k) * 9);
      for (int tap = 0; tap < 9; ++tap) d[tap * tap_stride] = bf16(flip_transpose ? from[-tap] : from[tap]);
    }
  return packed;
}

// out [N, O, H, W] bfloat16 = direct convolution of the padded channels-last `in` with packed panels.
Tensor direct(const Tensor& in, int64_t O, const Tensor& packed, int64_t P, const float* bias) {
  const int64_t N = in.size(0), H = in.size(1) - 2, W = in.size(2) - 2;
  const Shape s{N, H, W, in.size(3), O};
  auto out = torch::empty({N, O, H, W}, in.options());
  const bf16* ip = in.data_ptr<bf16>();
  const bf16* pp = packed.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t work = W * 9 * s.ldc * round_up(O, P);  // multiply-adds per output row
  at::parallel_for(0, N * H, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)), [&](int64_t b, int64_t e) {
    if (P == 16)
      direct_rows<1>(ip, s, pp, bias, op, b, e);
    else
      direct_rows<2>(ip, s, pp, bias, op, b, e);
  });
  return out;
}

// The weight gradient [O, K, 3, 3] in float32 of x [N, K - lead, H, W] (with the lead channels) and go [N, O, H, W];
// with plane_sums, go's plane sums too (pair_pixels).
Tensor weight_gradient(const Tensor& x, int64_t lead, double lead_value, const Tensor& go, int64_t O,
                       float* plane_sums) {
  const int64_t N = x.size(0), K = lead + x.size(1), H = x.size(2), W = x.size(3);
  const int64_t V = O <= 16 ? 1 : 2, ldo = round_up(O, 16 * V), ldk = round_up(K, 6), W2 = (W + 1) / 2;
  const WeightShape s{N, H, W2, 2 * W2 + 2, ldk, ldo};
  const auto in = pad_planes(x, lead, lead_value, ldk, s.Wq);
  const auto g = pair_pixels(go, W2, ldo, plane_sums);
  auto dw = torch::empty({9 * ldk, ldo}, x.options().dtype(torch::kFloat32));  // [(tap, k), o]
  const bf16* ip = in.data_ptr<bf16>();
  const bf16* gp = g.data_ptr<bf16>();
  float* dp = dw.data_ptr<float>();
  const int64_t blocks = ldk / 6, panels = ldo / (16 * V), items = 9 * blocks * panels;
  at::parallel_for(0, items, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * H * W2 * 2 * 6 * 16 * V)),
                   [&](int64_t b, int64_t e) {
                     for (int64_t i = b; i < e; ++i) {
                       const int tap = static_cast<int>(i / (blocks * panels));
                       const int64_t k0 = (i / panels) % blocks * 6, o0 = i % panels * 16 * V;
                       V == 1 ? weight_block<6, 1>(ip, s, gp, dp, tap, k0, o0)
                              : weight_block<6, 2>(ip, s, gp, dp, tap, k0, o0);
                     }
                   });
  return dw.view({9, ldk, ldo}).narrow(1, 0, K).narrow(2, 0, O).permute({2, 1, 0}).reshape({O, K, 3, 3});
}

struct Conv3x3Bf16Function : public torch::autograd::Function<Conv3x3Bf16Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, double lead_value) {
    const int64_t O = weight.size(0), K = weight.size(1), lead = K - x.size(1);
    const int64_t P = O <= 16 ? 16 : 32, ldc = round_up(K, 2);
    std::vector<float> b;  // padded to whole panels
    const bool has_bias = bias.numel() > 0;
    if (has_bias) {
      const auto bc = bias.detach().to(torch::kFloat32).contiguous();
      b.assign(bc.data_ptr<float>(), bc.data_ptr<float>() + O);
      b.resize(static_cast<size_t>(round_up(O, P)), 0.0F);
    }
    auto out = direct(pad_channels_last(x, lead, lead_value, ldc), O, pack(weight, P, ldc, false, 0), P,
                      b.empty() ? nullptr : b.data());
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["lead_value"] = lead_value;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2];
    const double lead_value = ctx->saved_data["lead_value"].toDouble();
    const int64_t O = weight.size(0), C = x.size(1), lead = weight.size(1) - C;
    if (torch::GradMode::is_enabled()) {  // under create_graph: through torch::conv2d's autograd
      return gradients_through(
          ctx, {x, weight, bias},
          [&] { return conv3x3(x, weight, bias.numel() > 0 ? bias : Tensor(), lead_value, Conv3x3Kernel::reference); },
          grads[0], 4);
    }
    const auto go = grads[0].to(torch::kBFloat16);
    torch::autograd::variable_list out(4);
    if (ctx->needs_input_grad(0)) {
      const int64_t P = C <= 16 ? 16 : 32, ldg = round_up(O, 2);
      out[0] = direct(pad_channels_last(go, 0, 0, ldg), C, pack(weight, P, ldg, true, lead), P, nullptr);
    }
    // The bias gradient: each (item, channel) plane summed in float32 while the weight gradient re-lays go out, the
    // planes added in double in item order (the same bits at any thread count); LibTorch's sum without it.
    const bool bias_gradient = bias.numel() > 0 && ctx->needs_input_grad(2);
    std::vector<float> plane_sums;
    if (ctx->needs_input_grad(1)) {
      if (bias_gradient) plane_sums.resize(static_cast<size_t>(x.size(0) * O));
      out[1] = weight_gradient(x, lead, lead_value, go, O, bias_gradient ? plane_sums.data() : nullptr)
                   .to(weight.scalar_type());
    }
    if (bias_gradient && plane_sums.empty()) {
      out[2] = go.sum({0, 2, 3}, /*keepdim=*/false, torch::kFloat32).to(bias.scalar_type());
    } else if (bias_gradient) {
      auto db = torch::empty({O}, weight.options().dtype(torch::kFloat32));
      float* dbp = db.data_ptr<float>();
      for (int64_t o = 0; o < O; ++o) {
        double sum = 0;
        for (int64_t n = 0; n < x.size(0); ++n) sum += plane_sums[static_cast<size_t>(n * O + o)];
        dbp[o] = static_cast<float>(sum);
      }
      out[2] = db.to(bias.scalar_type());
    }
    return out;
  }
};

}  // namespace

#endif  // ZOO_X86_KERNELS

Tensor conv3x3_bf16(const Tensor& x, const Tensor& weight, const Tensor& bias, double lead_value) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "conv3x3's bfloat16 kernel needs a CPU with AVX512-BF16");
#ifdef ZOO_X86_KERNELS
  return Conv3x3Bf16Function::apply(x, weight, bias.defined() ? bias : torch::empty({0}, weight.options()), lead_value);
#else
  return {};
#endif
}

}  // namespace zoo::ops::detail
