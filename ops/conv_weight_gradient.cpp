#include "ops/conv_weight_gradient.h"

#include "ops/autocast.h"
#include "ops/channels_last.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
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

/// A bfloat16 convolution (autocast's result) whose weight gradient is zoo's: AMX tiles where `tiles` says so, else the
/// dot products of conv_bf16_weight_gradient (2-D or 3-D); the forward and the input gradient are oneDNN's.
struct ConvOwnWeightGradientFunction : public torch::autograd::Function<ConvOwnWeightGradientFunction> {
  /// wb: the weight in bfloat16 (autocast's cached cast of it: a model's weight is cast once a forward).
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xb, const Tensor& weight,
                        const Tensor& bias, const Tensor& wb, std::vector<int64_t> stride, std::vector<int64_t> padding,
                        bool tiles) {
    ctx->save_for_backward({xb, weight, bias, wb});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["tiles"] = tiles;
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
          grads[0], 7);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto gy = grads[0].to(torch::kBFloat16);
    const auto dims = static_cast<size_t>(xb.dim() - 2);
    torch::autograd::variable_list out(7);
    if (ctx->needs_input_grad(0))
      out[0] =
          std::get<0>(at::convolution_backward(gy, xb, wb, c10::nullopt, stride, padding, std::vector<int64_t>(dims, 1),
                                               false, std::vector<int64_t>(dims, 0), 1, {true, false, false}));
    const bool tiles = ctx->saved_data["tiles"].toBool(), with_bias = bias.numel() > 0 && ctx->needs_input_grad(2);
    if (dims == 3 && tiles && (ctx->needs_input_grad(1) || with_bias)) {  // the bias's sums come with the tiles'
      auto [dweight, dbias] = conv3d_weight_bias_gradient_tiles(xb, gy, weight.sizes().slice(2), stride, padding);
      out[1] = dweight;
      if (with_bias) out[2] = dbias;
      return out;
    }
    if (ctx->needs_input_grad(1)) {
      out[1] = dims == 2 && tiles ? conv2d_weight_gradient_tiles(xb, gy, weight.size(2), weight.size(3), padding)
                                  : conv_bf16_weight_gradient(xb, gy, weight.sizes().slice(2), stride, padding);
    }
    if (with_bias) {
      std::vector<int64_t> axes{0};
      for (int64_t a = 2; a < gy.dim(); ++a) axes.push_back(a);
      out[2] = gy.sum(axes, false, torch::kFloat32);
    }
    return out;
  }
};

#ifdef ZOO_X86_KERNELS
// conv2d_weight_gradient_tiles: AMX's bfloat16 tile product, C[16 x 16] += A[16 x 32] B[32 x 16] in float32
// (TDPBF16PS; B stored as 16 rows of 16 pairs of consecutive K values), with the weight gradient of a stride-1
// convolution made one such product per tap over a padded grid:
//   q = n P + y Wp + x over the zero-padded maps (Wp = W + 2 pw, P = (H + 2 ph) Wp), so that the input pixel a tap
//   (i, j) reads for the output at q is q + i Wp + j, one offset for the whole batch;
//   A = x^T [C, q] (each channel's padded maps in a row; zeros in the padding), read from column q0 + i Wp + j;
//   B = dy at the output positions of the same grid (zero at the others), as pairs [q / 2][o][2];
//   dW[:, :, i, j]^T [C, O] = sum over q of A[:, q + i Wp + j] B[q, :].
// Positions outside the output (the grid's last rows and columns) multiply zeros: the grid has P / (HO WO) times the
// output's positions (81 / 49 at 7 x 7). Each (tap, block of 32 input and 32 output channels) is one task summing its K
// in a fixed order: the same bits at any thread count.

/// `planes` planes [H, W] (src_stride apart) into their places on the grid (grid_stride apart), [H + 2 ph, W + 2 pw]
/// with zeros around each: each grid row one masked
/// load (the plane's row read from pw values before it, those lanes masked off: never touched) and one masked store,
/// 32 values at a time (AVX-512, which every CPU with AMX has).
ZOO_AVX512_BF16 void grid_planes(const uint16_t* src, uint16_t* grid, int64_t H, int64_t W, int64_t ph, int64_t pw,
                                 int64_t planes, int64_t src_stride, int64_t grid_stride) {
  const int64_t Wp = W + 2 * pw, Hp = H + 2 * ph;
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t plane = 0; plane < planes; ++plane, src += src_stride, grid += grid_stride) {
    uint16_t* g = grid;
    for (int64_t y = 0; y < Hp; ++y, g += Wp) {
      const bool inside = y >= ph && y < ph + H;
      for (int64_t x = 0; x < Wp; x += 32) {
        const auto load = static_cast<__mmask32>(first32(pw + W - x) & ~first32(pw - x));
        const __m512i v = inside ? _mm512_maskz_loadu_epi16(load, src + (y - ph) * W + x - pw) : zero;
        _mm512_mask_storeu_epi16(g + x, first32(Wp - x), v);
      }
    }
  }
}

/// dst [OP][2] = (p0[o], p1[o]) for o < O, zeros for O <= o < OP (OP a multiple of 16), a null row read as zeros.
ZOO_AVX512_BF16 void interleave_pair(const uint16_t* p0, const uint16_t* p1, uint16_t* dst, int64_t O, int64_t OP) {
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t o = 0; o < OP; o += 16) {
    const __mmask16 lanes = first16(O - o);
    const __m256i a = p0 ? _mm256_maskz_loadu_epi16(lanes, p0 + o) : zero;
    const __m256i b = p1 ? _mm256_maskz_loadu_epi16(lanes, p1 + o) : zero;
    const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);  // per 128-bit lane
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * o), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * o + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

/// out[c][o] (CB blocks of 16 rows c, OB blocks of 16 columns o, ld_out floats a row) = sum over `steps` steps of 32
/// K of a[c][k] b[k][o]: a rows of `a_stride` elements (block c + 1 at a + 16 a_stride), b pair rows of 2 O elements
/// (block o + 1 at b + 32, the next step at b + 32 O).
template <int CB, int OB>
ZOO_AMX_BF16 void tile_product(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t O, int64_t steps,
                               float* out, int64_t ld_out, bool add = false) {
  const int64_t sa = a_stride * 2, sb = O * 4, so = ld_out * 4;
  if (add) {  // out += the product
    _tile_loadd(0, out, so);
    if constexpr (OB > 1) _tile_loadd(1, out + 16, so);
    if constexpr (CB > 1) _tile_loadd(2, out + 16 * ld_out, so);
    if constexpr (CB > 1 && OB > 1) _tile_loadd(3, out + 16 * ld_out + 16, so);
  } else {
    _tile_zero(0);
    if constexpr (OB > 1) _tile_zero(1);
    if constexpr (CB > 1) _tile_zero(2);
    if constexpr (CB > 1 && OB > 1) _tile_zero(3);
  }
  for (int64_t k = 0; k < steps; ++k) {
    _tile_loadd(6, b + k * 32 * O, sb);
    if constexpr (OB > 1) _tile_loadd(7, b + k * 32 * O + 32, sb);
    _tile_loadd(4, a + k * 32, sa);
    if constexpr (CB > 1) _tile_loadd(5, a + 16 * a_stride + k * 32, sa);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (OB > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (CB > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (CB > 1 && OB > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, so);
  if constexpr (OB > 1) _tile_stored(1, out + 16, so);
  if constexpr (CB > 1) _tile_stored(2, out + 16 * ld_out, so);
  if constexpr (CB > 1 && OB > 1) _tile_stored(3, out + 16 * ld_out + 16, so);
}

/// tile_product for CB in {1, 2} and OB in {1, 2} known at run time.
ZOO_AMX_BF16 void tile_product(int64_t CB, int64_t OB, const uint16_t* a, int64_t a_stride, const uint16_t* b,
                               int64_t O, int64_t steps, float* out, int64_t ld_out, bool add) {
  if (CB == 2 && OB == 2)
    tile_product<2, 2>(a, a_stride, b, O, steps, out, ld_out, add);
  else if (CB == 2)
    tile_product<2, 1>(a, a_stride, b, O, steps, out, ld_out, add);
  else if (OB == 2)
    tile_product<1, 2>(a, a_stride, b, O, steps, out, ld_out, add);
  else
    tile_product<1, 1>(a, a_stride, b, O, steps, out, ld_out, add);
}

// conv3d_weight_gradient_tiles: a strided 3-D convolution's weight gradient as the stride-1 scheme above, by phases.
// Per axis, with stride s, padding p and kernel k, the tap t reads x_pad[s u + t] for output u: the input's phase
// t mod s at offset t / s. So x is split into its s_d s_h s_w phase grids, each [G_d, G_h, G_w] per item with
// G = (output size) + ceil(k / s) - 1:
//   X_phi[n, c, u] = x[n, c, s u + phi - p]    (zero outside x),
// laid out like the 2-D grid (q = n P + (u_d G_h + u_h) G_w + u_w, P = G_d G_h G_w rounded up to even so that each
// item has whole pairs), and the tap t = s j + phi is the tile product of phase phi's rows read from offset
// (j_d G_h + j_h) G_w + j_w with dy on the grid. A's rows are (phase, channel) pairs, so a block of 16 rows holds two
// phases of 8 channels (the 3-D models' strided layers): a product whose rows make taps of the kernel for one offset
// is computed once for all of them; rows whose tap lies outside the kernel are dropped. The grids and dy's pairs are
// made a chunk of 1-2 items at a time in a thread's buffers and multiplied while they are in its cache (laid out for
// the whole batch first, the products read them from memory at about half the speed: 1.8 against 0.8-1.1 ms for
// conv3d's second layer); the bias's sums are taken from
// dy's rows on the way (one float32 sum per item, added in item order).

/// sum[o] += the n rows [n][O] of bfloat16 values, in float32 (16 lanes at a time, in row order).
ZOO_AVX512_BF16 void add_rows(const uint16_t* rows, int64_t n, int64_t O, float* sum) {
  for (int64_t o = 0; o < O; o += 16) {
    const __mmask16 lanes = first16(O - o);
    __m512 total = _mm512_maskz_loadu_ps(lanes, sum + o);
    for (int64_t r = 0; r < n; ++r) {
      const __m256i v = _mm256_maskz_loadu_epi16(lanes, rows + r * O + o);
      total = _mm512_add_ps(
          total, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(lanes, _mm512_maskz_cvtepu16_epi32(lanes, v), 16)));
    }
    _mm512_mask_storeu_ps(sum + o, lanes, total);
  }
}

/// The geometry of phase_grids: x's [D, H, W], the grid's [Gd, Gh, Gw], strides and paddings (d, h, w).
struct PhaseGeometry {
  int64_t D, H, W, Gd, Gh, Gw, s[3], p[3];
};

/// 32 positions of a phase's grid plane [Gh, Gw] gathered from an input plane [H, W]: lane l takes the value at
/// base + index[l] (index < 128: a window of four vectors) where `valid`, zero elsewhere.
struct PlanePiece {
  alignas(64) int16_t index[32];
  int64_t base;
  uint32_t valid, high;  // high: the lanes whose value lies in the window's upper 64
};

/// The pieces of each (phase h, phase w) plane, in that order, or nothing where a piece's values span more than the
/// 128 of a window (then phase_grids goes row by row).
std::vector<PlanePiece> plane_pieces(const PhaseGeometry& g) {
  const int64_t plane = g.Gh * g.Gw, pieces = (plane + 31) / 32;
  std::vector<PlanePiece> out;
  for (int64_t fh = 0; fh < g.s[1]; ++fh)
    for (int64_t fw = 0; fw < g.s[2]; ++fw)
      for (int64_t piece = 0; piece < pieces; ++piece) {
        PlanePiece pp{};
        int64_t lo = -1, hi = -1, source[32];
        for (int64_t l = 0; l < 32; ++l) {
          const int64_t u = piece * 32 + l, ih = g.s[1] * (u / g.Gw) + fh - g.p[1],
                        iw = g.s[2] * (u % g.Gw) + fw - g.p[2];
          const bool inside = u < plane && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
          source[l] = inside ? ih * g.W + iw : -1;
          if (inside) lo = lo < 0 ? source[l] : std::min(lo, source[l]), hi = std::max(hi, source[l]);
        }
        if (hi - lo >= 128) return {};
        pp.base = std::max<int64_t>(lo, 0);
        for (int64_t l = 0; l < 32; ++l) {
          const int64_t i = source[l] < 0 ? 0 : source[l] - pp.base;
          pp.index[l] = static_cast<int16_t>(i);
          pp.valid |= static_cast<uint32_t>(source[l] >= 0) << l;
          pp.high |= static_cast<uint32_t>(source[l] >= 0 && i >= 64) << l;
        }
        out.push_back(pp);
      }
  return out;
}

/// One item's C channels [D, H, W] into its place on the phase grids: row (phase, c) of a (R elements apart) from
/// position `at`. Each grid plane [Gh, Gw] is gathered 32 positions at a time by two masked two-source permutes of
/// the input plane (`pieces`, plane_pieces), else row by row, element by element.
ZOO_AVX512_BF16 void phase_grids(const uint16_t* x, uint16_t* a, int64_t C, int64_t R, int64_t at,
                                 const PhaseGeometry& g, const std::vector<PlanePiece>& pieces) {
  const int64_t sd = g.s[0], sh = g.s[1], sw = g.s[2], plane = g.Gh * g.Gw, per_plane = (plane + 31) / 32;
  const int64_t input = g.H * g.W;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t fd = 0; fd < sd; ++fd)
      for (int64_t ud = 0; ud < g.Gd; ++ud) {
        const int64_t id = sd * ud + fd - g.p[0];
        const bool inside = id >= 0 && id < g.D;
        const uint16_t* src = inside ? x + (c * g.D + id) * input : nullptr;
        for (int64_t fh = 0; fh < sh; ++fh)
          for (int64_t fw = 0; fw < sw; ++fw) {
            uint16_t* dst = a + (((fd * sh + fh) * sw + fw) * C + c) * R + at + ud * plane;
            if (!inside) {
              std::memset(dst, 0, static_cast<size_t>(plane) * 2);
            } else if (!pieces.empty()) {
              const PlanePiece* pp = pieces.data() + (fh * sw + fw) * per_plane;
              for (int64_t piece = 0; piece < per_plane; ++piece, ++pp) {
                const uint16_t* w = src + pp->base;
                const int64_t left = input - pp->base;
                const __m512i v0 = _mm512_maskz_loadu_epi16(first32(left), w);
                const __m512i v1 = _mm512_maskz_loadu_epi16(first32(left - 32), w + 32);
                const __m512i v2 = _mm512_maskz_loadu_epi16(first32(left - 64), w + 64);
                const __m512i v3 = _mm512_maskz_loadu_epi16(first32(left - 96), w + 96);
                const __m512i index = _mm512_load_si512(pp->index);
                const auto low = static_cast<__mmask32>(pp->valid & ~pp->high), high = static_cast<__mmask32>(pp->high);
                const __m512i v = _mm512_or_si512(_mm512_maskz_permutex2var_epi16(low, v0, index, v1),
                                                  _mm512_maskz_permutex2var_epi16(high, v2, index, v3));
                _mm512_mask_storeu_epi16(dst + piece * 32, first32(plane - piece * 32), v);
              }
            } else {
              for (int64_t uh = 0; uh < g.Gh; ++uh) {
                const int64_t ih = sh * uh + fh - g.p[1];
                for (int64_t uw = 0; uw < g.Gw; ++uw) {
                  const int64_t iw = sw * uw + fw - g.p[2];
                  dst[uh * g.Gw + uw] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? src[ih * g.W + iw] : 0;
                }
              }
            }
          }
      }
}
#endif

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

/// torch's convolution (2-D or 3-D) of input, weight and bias under bf16-mixed through ConvOwnWeightGradientFunction.
Tensor own_weight_gradient(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool tiles = false) {
  // Autocast's cache: the weight cast once for the forward (the cast's own gradient is not used: the node hands the
  // float32 weight its gradient).
  const auto wb = at::autocast::cached_cast(torch::kBFloat16, weight, c10::kCPU);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto xb = input.to(torch::kBFloat16);  // differentiable: a float32 input gets its gradient in float32
  const auto b = bias.defined() ? bias : torch::empty({0}, weight.options());
  const auto dims = static_cast<size_t>(input.dim() - 2);
  return ConvOwnWeightGradientFunction::apply(xb, weight, b, wb.detach(), per_axis(stride, dims),
                                              per_axis(padding, dims), tiles);
}

}  // namespace

Tensor conv2d_weight_gradient_tiles(const Tensor& xb, const Tensor& gy, int64_t KH, int64_t KW,
                                    at::IntArrayRef padding) {
  TORCH_CHECK(xb.dim() == 4 && gy.dim() == 4 && xb.size(0) == gy.size(0) && xb.scalar_type() == torch::kBFloat16 &&
                  gy.scalar_type() == torch::kBFloat16 && padding.size() == 2 && xb.size(1) % 16 == 0 &&
                  gy.size(1) % 16 == 0,
              "conv2d_weight_gradient_tiles takes bfloat16 x [N, C, H, W] and dy [N, O, HO, WO] with C and O multiples "
              "of 16, and two paddings; got x ",
              xb.sizes(), ", dy ", gy.sizes());
  const int64_t N = xb.size(0), C = xb.size(1), H = xb.size(2), W = xb.size(3), O = gy.size(1);
  const int64_t ph = padding[0], pw = padding[1], Wp = W + 2 * pw, P = (H + 2 * ph) * Wp;
  const int64_t HO = H + 2 * ph - KH + 1, WO = Wp - KW + 1;
  TORCH_CHECK(gy.size(2) == HO && gy.size(3) == WO, "conv2d_weight_gradient_tiles: dy ", gy.sizes(), " is not the ", KH,
              " x ", KW, " convolution's output of x ", xb.sizes(), " at padding ", padding);
  TORCH_CHECK(amx_tiles_present(), "conv2d_weight_gradient_tiles needs a CPU with AMX");
  const int64_t K = (N * P + 31) / 32 * 32, margin = (KH - 1) * Wp + KW - 1, R = (K + margin + 31) / 32 * 32;
  const auto bf16 = xb.options().dtype(torch::kBFloat16);
  auto a = torch::empty({C, R}, bf16);         // x^T on the padded grid
  auto b = torch::empty({K / 2, O, 2}, bf16);  // dy at the grid's output positions, in pairs
  auto acc = torch::empty({KH * KW, C, O}, xb.options().dtype(torch::kFloat32));
#ifdef ZOO_X86_KERNELS
  const bool x_last = channels_last_only(xb);
  const auto x_data = x_last || xb.is_contiguous() ? xb : xb.contiguous();
  const auto dy_rows = channels_last_only(gy) ? gy : to_channels_last(gy.contiguous());
  auto* ap = reinterpret_cast<uint16_t*>(a.data_ptr<at::BFloat16>());
  auto* bp = reinterpret_cast<uint16_t*>(b.data_ptr<at::BFloat16>());
  const auto* xp = x_data.data_ptr<at::BFloat16>();
  const auto* gp = reinterpret_cast<const uint16_t*>(dy_rows.data_ptr<at::BFloat16>());
  // Each item's C planes (a channels-last item transposed first), row by row into the grid, zeros around them.
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<at::BFloat16> planes(static_cast<size_t>(x_last ? C * H * W : 0));
    for (int64_t n = n0; n < n1; ++n) {
      const at::BFloat16* item = xp + n * C * H * W;
      if (x_last) {
        transpose(item, planes.data(), H * W, C);
        item = planes.data();
      }
      const auto* src = reinterpret_cast<const uint16_t*>(item);
      grid_planes(src, ap + n * P, H, W, ph, pw, C, H * W, R);
    }
  });
  for (int64_t c = 0; c < C; ++c) std::memset(ap + c * R + N * P, 0, static_cast<size_t>(R - N * P) * 2);
  // Pair row r: positions 2 r and 2 r + 1 of the grid, dy's O channels at each (zeros off the output) interleaved.
  at::parallel_for(0, K / 2, 64, [&](int64_t r0, int64_t r1) {
    int64_t q = 2 * r0, n = q / P, y = q % P / Wp, x = q % Wp;  // then counted along
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* rows[2];
      for (auto& row : rows) {
        row = n < N && y < HO && x < WO ? gp + ((n * HO + y) * WO + x) * O : nullptr;
        if (++x == Wp) {
          x = 0;
          if (++y == H + 2 * ph) y = 0, ++n;
        }
      }
      interleave_pair(rows[0], rows[1], bp + r * 2 * O, O, O);
    }
  });
  auto* out = acc.data_ptr<float>();
  const int64_t c_blocks = (C + 31) / 32, o_blocks = (O + 31) / 32, tasks = KH * KW * c_blocks * o_blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    configure_tiles();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t tap = t / (c_blocks * o_blocks), c0 = t / o_blocks % c_blocks * 32, o0 = t % o_blocks * 32;
      const int64_t offset = tap / KW * Wp + tap % KW;
      const uint16_t* a_tiles = ap + c0 * R + offset;
      const uint16_t* b_tiles = bp + o0 * 2;
      float* o_tiles = out + (tap * C + c0) * O + o0;
      tile_product(C - c0 >= 32 ? 2 : 1, O - o0 >= 32 ? 2 : 1, a_tiles, R, b_tiles, O, K / 32, o_tiles, O, false);
    }
    release_tiles();
  });
#endif
  // [taps, C, O] -> [O, C, KH, KW], rounded to bfloat16 once as oneDNN's is.
  return acc.permute({2, 1, 0}).reshape({O, C, KH, KW}).to(torch::kBFloat16).to(torch::kFloat32);
}

std::pair<Tensor, Tensor> conv3d_weight_bias_gradient_tiles(const Tensor& x, const Tensor& gy, at::IntArrayRef kernel,
                                                            at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 5 && gy.dim() == 5 && x.size(0) == gy.size(0) && x.scalar_type() == torch::kBFloat16 &&
                  gy.scalar_type() == torch::kBFloat16 && kernel.size() == 3 && stride.size() == 3 &&
                  padding.size() == 3,
              "conv3d_weight_gradient_tiles takes bfloat16 x [N, C, D, H, W] and dy [N, O, OD, OH, OW], and three "
              "kernel sizes, strides and paddings; got x ",
              x.sizes(), " ", x.scalar_type(), ", dy ", gy.sizes(), " ", gy.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), O = gy.size(1), OP = (O + 15) / 16 * 16;  // O padded for the tiles
  PhaseGeometry g{x.size(2), x.size(3), x.size(4), 0, 0, 0, {}, {}};
  int64_t G[3], J[3], out[3], S = 1, outputs = 1;
  for (int64_t a = 0; a < 3; ++a) {
    const auto i = static_cast<size_t>(a);
    const int64_t k = kernel[i], st = stride[i], pd = padding[i];
    out[a] = gy.size(a + 2);
    TORCH_CHECK(
        k >= 1 && k <= 7 && st >= 1 && st <= k && pd >= 0 && pd < k && out[a] == (x.size(a + 2) + 2 * pd - k) / st + 1,
        "conv3d_weight_gradient_tiles takes kernels of 1-7 taps per axis, strides up to the kernel and paddings "
        "below it, and dy of the convolution's output size; got x ",
        x.sizes(), ", dy ", gy.sizes(), ", kernel ", kernel, ", stride ", stride, ", padding ", padding);
    J[a] = (k + st - 1) / st;
    G[a] = out[a] + J[a] - 1;
    g.s[a] = st;
    g.p[a] = pd;
    S *= st;
    outputs *= out[a];
  }
  TORCH_CHECK(amx_tiles_present(), "conv3d_weight_gradient_tiles needs a CPU with AMX");
  g.Gd = G[0], g.Gh = G[1], g.Gw = G[2];
  const int64_t KD = kernel[0], KH = kernel[1], KW = kernel[2], taps = KD * KH * KW;
  const auto float32 = x.options().dtype(torch::kFloat32);
  auto acc = torch::zeros({taps, C, O}, float32);
  auto bias = torch::zeros({O}, float32);
  if (N == 0) return {acc.permute({2, 1, 0}).reshape({O, C, KD, KH, KW}), bias};
  // Chunks of `items` items, each chunk's grids (A) and dy (B) made in a thread's buffers and multiplied while they
  // are in its cache; each task's sums carried over the chunks of a slice in memory, the slices' added in order.
  const int64_t grid = G[0] * G[1] * G[2], P = (grid + 1) / 2 * 2, items = std::max<int64_t>(1, 2048 / P);
  const int64_t offsets = J[0] * J[1] * J[2], SC = S * C;
  const int64_t margin = (J[0] - 1) * G[1] * G[2] + (J[1] - 1) * G[2] + J[2] - 1;
  const int64_t steps = (items * P + 31) / 32, R = steps * 32 + (margin + 31) / 32 * 32, rows = (SC + 15) / 16 * 16;
  const int64_t chunks = (N + items - 1) / items, slices = (chunks + 7) / 8;
  auto shift_of = [&](int64_t offset) {
    return (offset / (J[1] * J[2]) * G[1] + offset / J[2] % J[1]) * G[2] + offset % J[2];
  };
  // Tasks: (offset, block of 32 rows, block of 32 output channels), those whose rows hold a tap of the kernel.
  auto tap_of = [&](int64_t offset, int64_t r) -> int64_t {  // the tap row r computes at this offset, or -1
    if (r >= SC) return -1;
    const int64_t phase = r / C, f[3] = {phase / (g.s[1] * g.s[2]), phase / g.s[2] % g.s[1], phase % g.s[2]};
    const int64_t j[3] = {offset / (J[1] * J[2]), offset / J[2] % J[1], offset % J[2]};
    int64_t t[3];
    for (int64_t e = 0; e < 3; ++e) {
      t[e] = g.s[e] * j[e] + f[e];
      if (t[e] >= kernel[static_cast<size_t>(e)]) return -1;
    }
    return (t[0] * KH + t[1]) * KW + t[2];
  };
  const int64_t r_blocks = (rows + 31) / 32, o_blocks = (OP + 31) / 32;
  std::vector<int64_t> tasks;
  for (int64_t offset = 0; offset < offsets; ++offset)
    for (int64_t rb = 0; rb < r_blocks; ++rb) {
      bool any = false;
      for (int64_t r = rb * 32; r < std::min(rows, rb * 32 + 32); ++r) any = any || tap_of(offset, r) >= 0;
      for (int64_t ob = 0; ob < o_blocks && any; ++ob) tasks.push_back((offset * r_blocks + rb) * o_blocks + ob);
    }
  const auto T = static_cast<int64_t>(tasks.size());
  auto sums = torch::empty({slices, T, 32, 32}, float32);
  auto item_bias = torch::zeros({N, O}, float32);
#ifdef ZOO_X86_KERNELS
  const auto xc = x.contiguous(), dy = gy.contiguous();
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
  const auto* gp = dy.data_ptr<at::BFloat16>();
  auto* sp = sums.data_ptr<float>();
  auto* bias_p = item_bias.data_ptr<float>();
  const int64_t volume = g.D * g.H * g.W;
  const auto pieces = plane_pieces(g);
  at::parallel_for(0, slices, 1, [&](int64_t s0, int64_t s1) {
    std::vector<uint16_t> a(static_cast<size_t>(rows * R)), b(static_cast<size_t>(steps * 32 * OP));
    std::vector<at::BFloat16> item(static_cast<size_t>(outputs * O));
    configure_tiles();
    for (int64_t slice = s0; slice < s1; ++slice) {
      float* slice_sums = sp + slice * T * 1024;
      for (int64_t chunk = slice * 8; chunk < std::min(chunks, slice * 8 + 8); ++chunk) {
        const int64_t n0 = chunk * items, n1 = std::min(N, n0 + items), filled = (n1 - n0) * P;
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t at = (n - n0) * P;
          phase_grids(xp + n * C * volume, a.data(), C, R, at, g, pieces);
          if (P > grid)  // the odd grid's last position: zeros (dy is zero there too, but A must hold no NaN)
            for (int64_t r = 0; r < SC; ++r) a[static_cast<size_t>(r * R + at + grid)] = 0;
          // dy's item [O, outputs] to [outputs, O], its sum for the bias, then pairs of grid positions (zeros off
          // the output and in the O padding).
          transpose(gp + n * O * outputs, item.data(), O, outputs);
          const auto* rows_of = reinterpret_cast<const uint16_t*>(item.data());
          add_rows(rows_of, outputs, O, bias_p + n * O);
          int64_t ud = 0, uh = 0, uw = 0;  // the grid position, counted along
          const uint16_t* next = rows_of;  // the next output position's row
          for (int64_t q = 0; q < P; q += 2) {
            const uint16_t* pair[2];
            for (auto& row : pair) {
              const bool output = ud < out[0] && uh < out[1] && uw < out[2];
              row = output ? next : nullptr;
              next += output ? O : 0;
              if (++uw == G[2]) {
                uw = 0;
                if (++uh == G[1]) uh = 0, ++ud;
              }
            }
            interleave_pair(pair[0], pair[1], b.data() + (at + q) * OP, O, OP);
          }
        }
        for (int64_t r = 0; r < rows; ++r) {  // past the chunk's items: zeros
          const int64_t from = r < SC ? filled : 0;
          std::memset(a.data() + r * R + from, 0, static_cast<size_t>(R - from) * 2);
        }
        std::memset(b.data() + filled * OP, 0, static_cast<size_t>((steps * 32 - filled) * OP) * 2);
        for (int64_t t = 0; t < T; ++t) {
          const int64_t task = tasks[static_cast<size_t>(t)], offset = task / (r_blocks * o_blocks);
          const int64_t r0 = task / o_blocks % r_blocks * 32, o0 = task % o_blocks * 32;
          tile_product(rows - r0 >= 32 ? 2 : 1, OP - o0 >= 32 ? 2 : 1, a.data() + r0 * R + shift_of(offset), R,
                       b.data() + o0 * 2, OP, steps, slice_sums + t * 1024, 32, chunk > slice * 8);
        }
      }
    }
    release_tiles();
  });
  // The slices' sums in order, each row to its tap; the items' bias sums in order.
  for (int64_t slice = 1; slice < slices; ++slice) sums[0].add_(sums[slice]);
  const auto* total = sp;
  auto* result = acc.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t task = tasks[static_cast<size_t>(t)], offset = task / (r_blocks * o_blocks);
    const int64_t r0 = task / o_blocks % r_blocks * 32, o0 = task % o_blocks * 32;
    const int64_t width = std::min<int64_t>(32, O - o0);
    for (int64_t r = r0; r < std::min(rows, r0 + 32) && width > 0; ++r) {
      const int64_t tap = tap_of(offset, r);
      if (tap >= 0)
        std::memcpy(result + (tap * C + r % C) * O + o0, total + t * 1024 + (r - r0) * 32,
                    static_cast<size_t>(width) * 4);
    }
  }
  auto* bias_sum = bias.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) bias_sum[o] += bias_p[n * O + o];
#endif
  // [taps, C, O] -> [O, C, KD, KH, KW], in float32 (the 3-D weight gradients are not rounded).
  return {acc.permute({2, 1, 0}).reshape({O, C, KD, KH, KW}), bias};
}

Tensor conv3d_weight_gradient_tiles(const Tensor& x, const Tensor& gy, at::IntArrayRef kernel, at::IntArrayRef stride,
                                    at::IntArrayRef padding) {
  return conv3d_weight_bias_gradient_tiles(x, gy, kernel, stride, padding).first;
}

namespace {
/// Pixels of a 2-D convolution's output map (the operands own_weight_gradient_operands takes).
int64_t output_pixels(const Tensor& input, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding) {
  const auto s = per_axis(stride, 2), p = per_axis(padding, 2);
  return ((input.size(2) + 2 * p[0] - weight.size(2)) / s[0] + 1) *
         ((input.size(3) + 2 * p[1] - weight.size(3)) / s[1] + 1);
}
}  // namespace

bool conv_weight_gradient_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  if (!own_weight_gradient_operands(input, weight, bias, stride, padding, dilation, groups, 2)) return false;
  if (weight.size(0) > 64 || weight.size(1) > 64 || input.size(0) < 16) return false;
  return output_pixels(input, weight, stride, padding) <= 256 && cpu_has_avx512_bf16() && !cpu_has_amx_bf16();
}

bool conv2d_weight_tiles_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  if (!own_weight_gradient_operands(input, weight, bias, stride, padding, dilation, groups, 2)) return false;
  if (stride.front() != 1 || stride.back() != 1 || !cpu_has_amx_bf16() || !amx_tiles_present()) return false;
  const int64_t O = weight.size(0), C = weight.size(1);
  return C % 16 == 0 && O % 16 == 0 && C <= 64 && O <= 64 && output_pixels(input, weight, stride, padding) <= 100;
}

Tensor conv2d_weight_by_tiles(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef padding) {
  return own_weight_gradient(input, weight, bias, {1, 1}, padding, /*tiles=*/true);
}

bool conv3d_weight_tiles_fit(const Tensor& weight, at::IntArrayRef stride) {
  if (!amx_tiles_present() || weight.dim() != 5 || weight.size(0) % 16 != 0) return false;
  const auto s = per_axis(stride, 3);
  for (size_t a = 0; a < 3; ++a)
    if (weight.size(static_cast<int64_t>(a) + 2) > s[a]) return true;
  return false;
}

bool conv3d_weight_gradient_applies(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  if (!own_weight_gradient_operands(input, weight, bias, stride, padding, dilation, groups, 3)) return false;
  for (const int64_t s : per_axis(stride, 3))
    if (s < 2) return false;
  return input.size(1) >= 2 && cpu_has_amx_bf16();
}

Tensor conv2d_own_weight_gradient(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
  return own_weight_gradient(input, weight, bias, stride, padding);
}

Tensor conv3d_own_weight_gradient(const Tensor& input, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
  return own_weight_gradient(input, weight, bias, stride, padding, conv3d_weight_tiles_fit(weight, stride));
}

}  // namespace zoo::ops::detail
