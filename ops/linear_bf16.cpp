#include "ops/linear_bf16.h"

#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <array>

namespace zoo::ops {

namespace detail {

using torch::Tensor;

// In a namespace of their own: the unity build may compile this file together with conv2d_bf16.cpp, whose kernels
// have names like these.
namespace linear_kernels {
namespace {

#ifdef ZOO_X86_KERNELS

/// What autocast runs: LibTorch's linear on the bfloat16-rounded operands (also the backward under create_graph).
Tensor reference(const Tensor& xb, const Tensor& weight, const Tensor& bias) {
  return torch::nn::functional::linear(xb, weight.to(torch::kBFloat16),
                                       bias.numel() > 0 ? bias.to(torch::kBFloat16) : Tensor());
}

// GCC 12's AVX-512 headers pass _mm512_undefined_*() as the unused source of the masked builtins behind
// _mm512_shuffle_f32x4, _mm512_castps512_ps128 and _mm512_zextsi256_si512, which -Wuninitialized reports once they
// are inlined (a known false positive: the mask selects none of it).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

using bf16 = c10::BFloat16;

/// 32 float32 values from p (the first `left` of them; zeros after) rounded to bfloat16, in their order.
ZOO_AVX512_BF16 inline __m512bh round32(const float* p, int64_t left) {
  const __m512 lo = _mm512_maskz_loadu_ps(first16(left), p);
  const __m512 hi = _mm512_maskz_loadu_ps(first16(left - 16), p + 16);
  return _mm512_cvtne2ps_pbh(hi, lo);
}

/// Index of a 16-bit permutation of two vectors (permutex2var) that interleaves their lower halves: a0 b0 a1 b1 ...
/// a15 b15.
ZOO_AVX512_BF16 inline __m512i interleave_halves() {
  alignas(64) int16_t index[32];
  for (int i = 0; i < 16; ++i) {
    index[2 * i] = static_cast<int16_t>(i);
    index[2 * i + 1] = static_cast<int16_t>(32 + i);
  }
  return _mm512_load_si512(index);
}

/// The sum of the 16 lanes (halves, then quarters, then within 128 bits; a fixed order).
ZOO_AVX512_BF16 inline float lane_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
  __m128 q = _mm512_castps512_ps128(v);
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

/// Accumulators set to zero.
template <int R, int C>
ZOO_AVX512_BF16 inline void zero(__m512 (&acc)[R][C]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
}

// ---- forward: y[t][n] = sum_k x[t][k] w[n][k] + b[n], dot products along k; per block of kOuts outputs the weight's
// rows rounded to bfloat16 once (an L1-sized buffer), then TB rows x NB outputs in registers.
constexpr int kRows = 6, kOuts = 4;

/// Rows [0, rows) of w [.., K] rounded to bfloat16 into wb [rows, Kp] (Kp a multiple of 32; zeros past K).
ZOO_AVX512_BF16 void round_rows(const float* w, int64_t rows, int64_t K, int64_t Kp, bf16* wb) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < Kp; k += 32)
      _mm512_storeu_si512(wb + r * Kp + k, reinterpret_cast<__m512i>(round32(w + r * K + k, K - k)));
}

template <int TB, int NB>
ZOO_AVX512_BF16 void forward_block(const bf16* x, const bf16* wb, const float* bias, bf16* y, int64_t K, int64_t Kp,
                                   int64_t N, int64_t t0, int64_t n0) {
  __m512 acc[TB][NB];
  zero(acc);
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[NB];
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) wv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wb + j * Kp + k));
    const __mmask32 m = first32(K - k);
#pragma GCC unroll 16
    for (int i = 0; i < TB; ++i) {
      const auto xv = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(m, x + (t0 + i) * K + k));
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < TB; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) y[(t0 + i) * N + n0 + j] = bf16(lane_sum(acc[i][j]) + (bias ? bias[n0 + j] : 0.0F));
}

using ForwardBlock = void (*)(const bf16*, const bf16*, const float*, bf16*, int64_t, int64_t, int64_t, int64_t,
                              int64_t);
template <int TB>
constexpr std::array<ForwardBlock, kOuts> forward_blocks() {
  return {forward_block<TB, 1>, forward_block<TB, 2>, forward_block<TB, 3>, forward_block<TB, 4>};
}
constexpr std::array<std::array<ForwardBlock, kOuts>, kRows> kForward{forward_blocks<1>(), forward_blocks<2>(),
                                                                      forward_blocks<3>(), forward_blocks<4>(),
                                                                      forward_blocks<5>(), forward_blocks<6>()};

void forward_rows(const bf16* x, const float* w, const float* bias, bf16* y, int64_t T, int64_t K, int64_t N) {
  const int64_t Kp = (K + 31) / 32 * 32;
  at::parallel_for(0, (N + kOuts - 1) / kOuts, 1, [&](int64_t begin, int64_t end) {
    const auto buffer = torch::empty({kOuts, Kp}, torch::kBFloat16);
    bf16* wb = buffer.data_ptr<bf16>();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * kOuts, nb = std::min<int64_t>(kOuts, N - n0);
      round_rows(w + n0 * K, nb, K, Kp, wb);
      for (int64_t t0 = 0; t0 < T; t0 += kRows)
        kForward[static_cast<size_t>(std::min<int64_t>(kRows, T - t0) - 1)][static_cast<size_t>(nb - 1)](
            x, wb, bias, y, K, Kp, N, t0, n0);
    }
  });
}

// ---- input gradient: gx[t][k] = sum_n gy[t][n] w[n][k], dot products along pairs of outputs (n, n + 1). Per 64
// columns the weight's rows are rounded and paired once (16-bit unpacks, which pair columns in the order of their
// 128-bit lanes; the sums are put back in order when stored), then TB rows x 64 columns in registers.
constexpr int kGradRows = 6, kPairColumns = 64;

/// Rows n and n + 1 of w (w1 null past the last row: zeros) at 32 columns (the first `left`) rounded to bfloat16 and
/// paired: lo holds the pairs (w[n][k], w[n + 1][k]) of columns k = 8 j + 0..3 in 32-bit lanes 4 j + 0..3, hi those
/// of k = 8 j + 4..7.
ZOO_AVX512_BF16 inline void weight_pairs(const float* w0, const float* w1, int64_t left, bf16* lo, bf16* hi) {
  const auto a = reinterpret_cast<__m512i>(round32(w0, left));
  const auto b = w1 ? reinterpret_cast<__m512i>(round32(w1, left)) : _mm512_setzero_si512();
  _mm512_storeu_si512(lo, _mm512_unpacklo_epi16(a, b));
  _mm512_storeu_si512(hi, _mm512_unpackhi_epi16(a, b));
}

/// 32 sums of weight_pairs' order (lo's lanes, hi's lanes) stored as 32 columns in order (the first `left`).
ZOO_AVX512_BF16 inline void store_in_order(bf16* out, __m512 lo, __m512 hi, int64_t left) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  _mm256_mask_storeu_epi16(out, first16(left),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_permutex2var_ps(lo, first, hi))));
  _mm256_mask_storeu_epi16(out + 16, first16(left - 16),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_permutex2var_ps(lo, second, hi))));
}

template <int TB>
ZOO_AVX512_BF16 void input_block(const bf16* gy, const bf16* pairs, bf16* gx, int64_t P, int64_t K, int64_t t0,
                                 int64_t k) {
  constexpr int V = kPairColumns / 16;
  __m512 acc[TB][V];
  zero(acc);
  for (int64_t p = 0; p < P; ++p) {
    __m512bh wv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) wv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(pairs + (p * V + v) * 32));
#pragma GCC unroll 16
    for (int i = 0; i < TB; ++i) {
      const __m512bh g = pair_everywhere(gy + (t0 + i) * 2 * P + 2 * p);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], g, wv[v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < TB; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < V; v += 2)
      store_in_order(gx + (t0 + i) * K + k + 16 * v, acc[i][v], acc[i][v + 1], K - k - 16 * v);
}

using InputBlock = void (*)(const bf16*, const bf16*, bf16*, int64_t, int64_t, int64_t, int64_t);
constexpr std::array<InputBlock, kGradRows> kInput{input_block<1>, input_block<2>, input_block<3>,
                                                   input_block<4>, input_block<5>, input_block<6>};

/// Columns chunk * 64 for chunk in [begin, end); gy: [T, 2P] bfloat16, the outputs padded to pairs with zeros.
ZOO_AVX512_BF16 void input_chunks(const bf16* gy, const float* w, bf16* gx, int64_t T, int64_t K, int64_t N,
                                  int64_t begin, int64_t end) {
  const int64_t P = (N + 1) / 2;
  const auto buffer = torch::empty({P, 2 * kPairColumns}, torch::kBFloat16);  // per pair of outputs: 64 columns
  bf16* pairs = buffer.data_ptr<bf16>();
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t k = chunk * kPairColumns;
    for (int64_t p = 0; p < P; ++p) {
      const float* w0 = w + 2 * p * K + k;
      const float* w1 = 2 * p + 1 < N ? w0 + K : nullptr;
      bf16* out = pairs + p * 2 * kPairColumns;
      for (int64_t half = 0; half < kPairColumns; half += 32)
        weight_pairs(w0 + half, w1 ? w1 + half : nullptr, K - k - half, out + 2 * half, out + 2 * half + 32);
    }
    for (int64_t t0 = 0; t0 < T; t0 += kGradRows)
      kInput[static_cast<size_t>(std::min<int64_t>(kGradRows, T - t0) - 1)](gy, pairs, gx, P, K, t0, k);
  }
}

void input_gradient(const bf16* gy, const float* w, bf16* gx, int64_t T, int64_t K, int64_t N) {
  at::parallel_for(0, (K + kPairColumns - 1) / kPairColumns, 1,
                   [&](int64_t begin, int64_t end) { input_chunks(gy, w, gx, T, K, N, begin, end); });
}

// ---- weight gradient: gw[n][k] = sum_t gy[t][n] x[t][k], dot products along pairs of rows (t, t + 1): x's rows
// interleaved in pairs once, NB outputs x 48 columns in registers, stored in float32.
constexpr int kGradOuts = 8, kColumns = 48;

/// xp[q][k] = the pair (x[2q][k], x[2q + 1][k]) for k < Kp (zeros past K and past the last row).
ZOO_AVX512_BF16 void pair_rows(const bf16* x, bf16* xp, int64_t T, int64_t K, int64_t Kp) {
  const __m512i index = interleave_halves();
  for (int64_t q = 0; 2 * q < T; ++q) {
    const bf16* a = x + 2 * q * K;
    const bf16* b = 2 * q + 1 < T ? a + K : nullptr;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __mmask16 m = first16(K - k);
      const __m256i va = _mm256_maskz_loadu_epi16(m, a + k);
      const __m256i vb = b ? _mm256_maskz_loadu_epi16(m, b + k) : _mm256_setzero_si256();
      _mm512_storeu_si512(xp + (q * Kp + k) * 2,
                          _mm512_permutex2var_epi16(_mm512_zextsi256_si512(va), index, _mm512_zextsi256_si512(vb)));
    }
  }
}

template <int NB>
ZOO_AVX512_BF16 void weight_block(const bf16* xp, const bf16* gp, float* gw, int64_t Q, int64_t K, int64_t Kp,
                                  int64_t n0, int64_t k0) {
  constexpr int V = kColumns / 16;
  __m512 acc[NB][V];
  zero(acc);
  for (int64_t q = 0; q < Q; ++q) {
    __m512bh xv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) xv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xp + (q * Kp + k0 + 16 * v) * 2));
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) {
      const __m512bh g = pair_everywhere(gp + ((n0 + j) * Q + q) * 2);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], g, xv[v]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(gw + (n0 + j) * K + k0 + 16 * v, first16(K - k0 - 16 * v), acc[j][v]);
}

using WeightBlock = void (*)(const bf16*, const bf16*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
constexpr std::array<WeightBlock, kGradOuts> kWeight{weight_block<1>, weight_block<2>, weight_block<3>,
                                                     weight_block<4>, weight_block<5>, weight_block<6>,
                                                     weight_block<7>, weight_block<8>};

/// gp: [N, Q, 2] bfloat16, each output's gradients in pairs of rows (zero past the last row).
void weight_gradient(const bf16* xp, const bf16* gp, float* gw, int64_t Q, int64_t K, int64_t Kp, int64_t N) {
  const int64_t column_blocks = Kp / kColumns, out_blocks = (N + kGradOuts - 1) / kGradOuts;
  at::parallel_for(0, out_blocks * column_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task / column_blocks * kGradOuts, k0 = task % column_blocks * kColumns;
      kWeight[static_cast<size_t>(std::min<int64_t>(kGradOuts, N - n0) - 1)](xp, gp, gw, Q, K, Kp, n0, k0);
    }
  });
}

struct LinearBf16Function : public torch::autograd::Function<LinearBf16Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xb, const Tensor& weight,
                        const Tensor& bias) {
    const int64_t T = xb.size(0), K = xb.size(1), N = weight.size(0);
    auto y = torch::empty({T, N}, xb.options());
    forward_rows(xb.data_ptr<bf16>(), weight.data_ptr<float>(), bias.numel() > 0 ? bias.data_ptr<float>() : nullptr,
                 y.data_ptr<bf16>(), T, K, N);
    ctx->save_for_backward({xb, weight, bias});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xb = saved[0], &weight = saved[1], &bias = saved[2];
    torch::autograd::variable_list out(3);
    if (torch::GradMode::is_enabled())  // under create_graph: through LibTorch's linear
      return gradients_through(
          ctx, {xb, weight, bias}, [&] { return reference(xb, weight, bias); }, grads[0], 3);
    const int64_t T = xb.size(0), K = xb.size(1), N = weight.size(0);
    const auto gy = grads[0].to(torch::kBFloat16).contiguous();
    const bf16* g = gy.data_ptr<bf16>();
    if (ctx->needs_input_grad(0)) {
      auto padded = gy;  // pairs of outputs: an odd last output gets a zero partner
      if (N % 2 == 1) {
        padded = torch::zeros({T, N + 1}, gy.options());
        padded.narrow(1, 0, N).copy_(gy);
      }
      out[0] = torch::empty({T, K}, xb.options());
      input_gradient(padded.data_ptr<bf16>(), weight.data_ptr<float>(), out[0].data_ptr<bf16>(), T, K, N);
    }
    if (ctx->needs_input_grad(1)) {
      const int64_t Q = (T + 1) / 2, Kp = (K + kColumns - 1) / kColumns * kColumns;
      // x's rows in pairs; gy's columns as pairs of rows, gp[n][q] = (gy[2q][n], gy[2q + 1][n]).
      const auto xp = torch::empty({Q, Kp, 2}, gy.options());
      pair_rows(xb.data_ptr<bf16>(), xp.data_ptr<bf16>(), T, K, Kp);
      const auto gp = torch::zeros({N, 2 * Q}, gy.options());
      gp.narrow(1, 0, T).copy_(gy.t());
      out[1] = torch::empty({N, K}, weight.options());
      weight_gradient(xp.data_ptr<bf16>(), gp.data_ptr<bf16>(), out[1].data_ptr<float>(), Q, K, Kp, N);
    }
    if (bias.numel() > 0 && ctx->needs_input_grad(2)) {
      out[2] = torch::empty({N}, bias.options());
      float* db = out[2].data_ptr<float>();
      for (int64_t n = 0; n < N; ++n) {
        double sum = 0;
        for (int64_t t = 0; t < T; ++t) sum += static_cast<float>(g[t * N + n]);
        db[n] = static_cast<float>(sum);
      }
    }
    return out;
  }
};

#pragma GCC diagnostic pop

#endif  // ZOO_X86_KERNELS

}  // namespace
}  // namespace linear_kernels

bool linear_bf16_applies(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const auto type = ops::cpu_autocast_type();
  if (!type || *type != torch::kBFloat16 || torch::jit::tracer::isTracing() || !cpu_has_avx512_bf16()) return false;
  if (!x.defined() || !weight.defined() || x.dim() != 2 || weight.dim() != 2 || !x.device().is_cpu() ||
      !weight.device().is_cpu())
    return false;
  if (x.scalar_type() != torch::kFloat32 && x.scalar_type() != torch::kBFloat16) return false;
  if (weight.scalar_type() != torch::kFloat32 || weight.size(1) != x.size(1) || weight.size(0) < 1 || x.size(1) < 1)
    return false;
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0) || bias.scalar_type() != torch::kFloat32 ||
                         !bias.device().is_cpu()))
    return false;
  return x.size(0) >= 1 && x.size(0) <= kLinearBf16MaxRows;
}

Tensor linear_bf16(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "zoo's bfloat16 linear layer needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1) &&
                  (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0))),
              "zoo's bfloat16 linear layer takes x [T, in], weight [out, in] and bias [out] or none; got x ", x.sizes(),
              ", weight ", weight.sizes(), ", bias ", bias.defined() ? bias.sizes() : c10::IntArrayRef());
  TORCH_CHECK(weight.scalar_type() == torch::kFloat32 && (!bias.defined() || bias.scalar_type() == torch::kFloat32),
              "zoo's bfloat16 linear layer reads a float32 weight and bias (autocast's master weights)");
#ifdef ZOO_X86_KERNELS
  const auto xb = x.to(torch::kBFloat16).contiguous();  // differentiable: a float32 x gets its gradient in float32
  const auto b = bias.defined() ? bias.contiguous() : torch::empty({0}, weight.options());
  if (x.size(0) == 0 || x.size(1) == 0 || weight.size(0) == 0) return linear_kernels::reference(xb, weight, b);
  return linear_kernels::LinearBf16Function::apply(xb, weight.contiguous(), b);
#else
  return {};
#endif
}

}  // namespace detail

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (detail::linear_bf16_applies(x, weight, bias)) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    return detail::linear_bf16(x, weight, bias);
  }
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace zoo::ops
