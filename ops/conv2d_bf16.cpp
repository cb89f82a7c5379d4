#include "ops/conv2d_bf16.h"

#include "ops/norm_planes.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdlib>

#if defined(ZOO_X86_KERNELS) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

namespace {
// -1: no override in this thread; 0 or 1: what AmxOverride says.
int& amx_override() {
  thread_local int value = -1;
  return value;
}

// What the CPU and the OS say (ZOO_CPU_AMX aside), asked once.
bool amx_tiles_granted() {
#if defined(ZOO_X86_KERNELS) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  const bool tiles = ((d >> 22) & 1U) != 0 && ((d >> 24) & 1U) != 0;                         // AMX-BF16, AMX-TILE
  if (!tiles || __get_cpuid(1, &a, &b, &c, &d) == 0 || ((c >> 27) & 1U) == 0) return false;  // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3U << 17)) != (3U << 17)) return false;  // XTILECFG and XTILEDATA enabled by the OS
  // Linux (5.16 on) hands the tile data state to a process that asks for it: oneDNN asks the same way, and where the
  // kernel refuses, oneDNN runs without AMX too.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool amx_bf16_present() {
  if (const char* env = std::getenv("ZOO_CPU_AMX"); env != nullptr && (env[0] == '0' || env[0] == '1'))
    return env[0] == '1';
  return amx_tiles_granted();
}
}  // namespace

bool amx_tiles_present() {
  static const bool granted = amx_tiles_granted();
  return granted && cpu_has_avx512_bf16();
}

bool cpu_has_amx_bf16() {
  static const bool present = amx_bf16_present();
  if (!cpu_has_avx512_bf16()) return false;
  const int forced = amx_override();
  return forced >= 0 ? forced == 1 : present;
}

AmxOverride::AmxOverride(bool has_amx) : previous_(amx_override()) { amx_override() = has_amx ? 1 : 0; }
AmxOverride::~AmxOverride() { amx_override() = previous_; }

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

using bf16 = c10::BFloat16;

ZOO_AVX512_BF16 inline __m512bh load_pairs(const bf16* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// Geometry of one direct convolution, as the float32 kernel's (ops/conv3x3.cpp) with channels in pairs: input
// [N, Hp, Wp, ldc] channels-last and zero-padded, ldc even (pairs = ldc / 2, the zero channels past K adding
// nothing); output pixel (h, w), h < H, w < W, reads input pixel (h sh + y0 + i, w sw + x0 + j) for tap
// (i, j) < (KH, KW) and is written at (h osh + oy, w osw + ox) of out [N, O, OH, OW]; weight packed into panels of
// P = 16 V output channels: packed[p][tap][pair][o][2] = the tap's weight of input channels 2 pair + 0 or 1.
struct Shape {
  int64_t N, H, W;
  int64_t Hp, Wp, ldc;
  int64_t O, OH, OW;
  int64_t sh, sw, KH, KW, y0, x0;
  int64_t osh, osw, oy, ox;
};

// Rows x R output pixels (R consecutive ones in each of `Rows` consecutive rows of one image) x one panel,
// acc[i][r][v] holding output channels o0 + 16 v .. + 15 of pixel r of row i. Up to 24 accumulators: a dot product
// waits several cycles for its accumulator, so a block needs many independent chains (16-24 ran at 490 GFLOP/s on
// one core, 8 at 330).
template <int Rows, int R, int V>
ZOO_AVX512_BF16 inline void pixels(const bf16* in, const Shape& s, const bf16* panel, const float* bias, bf16* out,
                                   int64_t n, int64_t h, int64_t w, int64_t o0) {
  constexpr int P = 16 * V;
  __m512 acc[Rows][R][V];
#pragma GCC unroll 2
  for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[i][r][v] = bias ? _mm512_loadu_ps(bias + o0 + 16 * v) : _mm512_setzero_ps();
  const int64_t row = s.sh * s.Wp * s.ldc, step = s.sw * s.ldc, pairs = s.ldc / 2;
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const bf16* x = in + ((n * s.Hp + h * s.sh + s.y0 + kh) * s.Wp + w * s.sw + s.x0 + kw) * s.ldc;
      const bf16* b = panel + (kh * s.KW + kw) * pairs * P * 2;
      for (int64_t k = 0; k < pairs; ++k) {
        __m512bh wv[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) wv[v] = load_pairs(b + (k * P + 16 * v) * 2);
#pragma GCC unroll 2
        for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 12
          for (int r = 0; r < R; ++r) {
            const __m512bh a = pair_everywhere(x + i * row + r * step + 2 * k);
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) acc[i][r][v] = _mm512_dpbf16_ps(acc[i][r][v], a, wv[v]);
          }
      }
    }
  }
  const int64_t plane = s.OH * s.OW, channels = std::min<int64_t>(P, s.O - o0);
#pragma GCC unroll 2
  for (int i = 0; i < Rows; ++i) {
    bf16* o = out + (n * s.O + o0) * plane + ((h + i) * s.osh + s.oy) * s.OW + w * s.osw + s.ox;
    constexpr int Groups = (R + 7) / 8;    // lane's rows in whole groups of eight (the transposes below read 8)
    alignas(32) bf16 lane[8 * Groups][P];  // rounded to nearest even, as c10::BFloat16(float)
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
        _mm256_store_si256(reinterpret_cast<__m256i*>(lane[r] + 16 * v),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc[i][r][v])));
    if (s.osw > 2 || R == 1) {
      for (int r = 0; r < R; ++r)
        for (int64_t j = 0; j < channels; ++j) o[j * plane + r * s.osw] = lane[r][j];
      continue;
    }
    // The R pixels of a channel are adjacent in the output (osw 1) or every other element (osw 2: a stride-2 input
    // gradient's column phase): eight channels x up to eight pixels at a time through registers, each channel's
    // pixels written at once; with osw 2 widened to 32-bit lanes (each value in the low half) and written through
    // a mask of the even 16-bit lanes, which leaves the other phase's elements as they are.
    for (int r0 = 0; r0 < R; r0 += 8) {
      const int rows = std::min(8, R - r0);
      const auto mask = static_cast<__mmask8>((1U << rows) - 1);
      const auto even = static_cast<__mmask16>(0x5555U & ((1U << (2 * rows)) - 1));
      for (int64_t c = 0; c < channels; c += 8) {
        __m128i t[8];
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r)
          t[r] = r < rows ? _mm_load_si128(reinterpret_cast<const __m128i*>(lane[r0 + r] + c)) : _mm_setzero_si128();
        transpose8x8(t);
        for (int64_t j = 0; j < std::min<int64_t>(8, channels - c); ++j) {
          if (s.osw == 1)
            _mm_mask_storeu_epi16(o + (c + j) * plane + r0, mask, t[j]);
          else
            _mm256_mask_storeu_epi16(o + (c + j) * plane + 2 * r0, even, _mm256_cvtepu16_epi32(t[j]));
        }
      }
    }
  }
}

// One panel across a row (Rows = 1) or two rows (Rows = 2) from (n, h): blocks of 1-6 (or 12) pixels per row.
template <int Rows, int V>
ZOO_AVX512_BF16 void panel_rows(const bf16* in, const Shape& s, const bf16* panel, const float* bias, bf16* out,
                                int64_t n, int64_t h, int64_t o0) {
  int64_t w = 0;
  if (Rows == 1)  // a single row (a 1-D signal, an image's last odd row): twelve pixels keep 12-24 sums in flight
    for (; s.W - w >= 12; w += 12) pixels<1, 12, V>(in, s, panel, bias, out, n, h, w, o0);
  for (; s.W - w >= 6 && s.W - w != 7; w += 6) pixels<Rows, 6, V>(in, s, panel, bias, out, n, h, w, o0);
  switch (s.W - w) {  // the rest in blocks of three or more where it can: few accumulators wait on each other
    case 7:
      pixels<Rows, 4, V>(in, s, panel, bias, out, n, h, w, o0);
      pixels<Rows, 3, V>(in, s, panel, bias, out, n, h, w + 4, o0);
      break;
    case 5:
      pixels<Rows, 5, V>(in, s, panel, bias, out, n, h, w, o0);
      break;
    case 4:
      pixels<Rows, 4, V>(in, s, panel, bias, out, n, h, w, o0);
      break;
    case 3:
      pixels<Rows, 3, V>(in, s, panel, bias, out, n, h, w, o0);
      break;
    case 2:
      pixels<Rows, 2, V>(in, s, panel, bias, out, n, h, w, o0);
      break;
    case 1:
      pixels<Rows, 1, V>(in, s, panel, bias, out, n, h, w, o0);
      break;
    default:
      break;
  }
}

// Output rows [row_begin, row_end) of the flattened (n, h) range, two rows of an image at a time where it can.
template <int V>
ZOO_AVX512_BF16 void direct_rows(const bf16* in, const Shape& s, const bf16* packed, const float* bias, bf16* out,
                                 int64_t row_begin, int64_t row_end) {
  constexpr int P = 16 * V;
  const int64_t panels = (s.O + P - 1) / P, panel_size = s.KH * s.KW * (s.ldc / 2) * P * 2;
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

// The weight gradient: dw[(tap, k), o] = the sum over output pixels of x[the pixel's input for the tap][k] *
// grad[pixel][o], as dot products over pairs of horizontally adjacent output pixels. `in` is x zero-padded and laid
// out by column phase, [N, K, Hp, sw, Wq] with element (n, k, y, q, j) = padded x[n, k, y, j sw + q], so that the
// inputs of a pixel pair (columns w sw + kw and (w + 1) sw + kw) are adjacent; `grad` is
// [N, H, W2, ldo, 2] (a pixel pair of one output channel adjacent; a zero pixel after an odd W). A block is R rows
// of dw (12 with one vector of output channels, 6 with two: 24 accumulators), each (tap, k) at its offset in `in` (so
// a first layer's single channel fills blocks with taps), x V vectors of output channels from o0; even and odd pixel
// pairs accumulate separately (twice the independent chains). A 3-D convolution's (conv_bf16_weight_gradient) is
// the same with a depth axis: `in` [N, K, Dp, Hp, sw, Wq], grad [N, D, H, W2, ldo, 2] (D output planes, plane d
// reading input planes d sd + kd), each row's offset counting its depth tap; a 2-D one has D = 1.
struct WeightShape {
  int64_t N, D, H, W2, sd, sh, sw, Wq, plane, channel, K, ldo;  // plane: elements per padded input plane (Hp sw Wq);
                                                                // channel: per input channel of one item
};

template <int R, int V>
ZOO_AVX512_BF16 inline void weight_pair(const bf16* x, const int64_t* offsets, const bf16* g, __m512 (&acc)[R][V]) {
  __m512bh gv[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) gv[v] = load_pairs(g + 32 * v);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    const __m512bh a = pair_everywhere(x + offsets[r]);
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, gv[v]);
  }
}

template <int R, int V>
ZOO_AVX512_BF16 void weight_block(const bf16* in, const WeightShape& s, const bf16* grad, const int64_t* offsets,
                                  float* dw, int64_t row0, int64_t o0, int64_t n0, int64_t n1) {
  __m512 acc[2][R][V];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q)
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[q][r][v] = _mm512_setzero_ps();
  int64_t off[R];
  for (int r = 0; r < R; ++r) off[r] = offsets[row0 + r];
  for (int64_t nd = n0 * s.D; nd < n1 * s.D; ++nd) {
    const int64_t n = nd / s.D, d = nd % s.D;
    for (int64_t h = 0; h < s.H; ++h) {
      const bf16* x = in + n * s.K * s.channel + d * s.sd * s.plane + h * s.sh * s.sw * s.Wq;
      const bf16* g = grad + ((nd * s.H + h) * s.W2 * s.ldo + o0) * 2;
      int64_t p = 0;
      for (; p + 2 <= s.W2; p += 2) {
        weight_pair<R, V>(x + 2 * p, off, g + p * s.ldo * 2, acc[0]);
        weight_pair<R, V>(x + 2 * p + 2, off, g + (p + 1) * s.ldo * 2, acc[1]);
      }
      if (p < s.W2) weight_pair<R, V>(x + 2 * p, off, g + p * s.ldo * 2, acc[0]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      float* to = dw + (row0 + r) * s.ldo + o0 + 16 * v;
      const __m512 sum = _mm512_add_ps(acc[0][r][v], acc[1][r][v]);
      _mm512_storeu_ps(to, n0 == 0 ? sum : _mm512_add_ps(_mm512_loadu_ps(to), sum));
    }
}

// x [N, C, H, W] (any strides) -> bfloat16 [N, Hp, Wp, ldc] channels-last, the image from row top and column
// left, zero around it: channels 0 .. lead - 1 hold `value` inside the image, lead .. lead + C - 1 hold x, the rest 0.
// Eight channels x eight pixels of the flattened plane at a time go through registers (transpose8x8).
Tensor pad_channels_last(const Tensor& x, int64_t lead, double value, int64_t ldc, int64_t top, int64_t left,
                         int64_t Hp, int64_t Wp) {
  const auto xc = x.to(torch::kBFloat16).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), plane = H * W;
  auto out = torch::empty({N, Hp, Wp, ldc}, xc.options());
  const auto* src = reinterpret_cast<const uint16_t*>(xc.data_ptr<bf16>());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<bf16>());
  const uint16_t v = bf16(static_cast<float>(value)).x;
  std::vector<int64_t> at(static_cast<size_t>(plane));  // where each pixel of the plane goes
  for (int64_t q = 0; q < plane; ++q) at[static_cast<size_t>(q)] = ((top + q / W) * Wp + left + q % W) * ldc;
  const int64_t item = Hp * Wp * ldc, blocks = C / 8 * 8, whole = plane / 8 * 8;
  at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, item)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      uint16_t* d = dst + n * item;
      const uint16_t* s = src + n * C * plane;
      // The border rows and columns, and every pixel's lead and trailing channels.
      for (int64_t y = 0; y < Hp; ++y) {
        uint16_t* r = d + y * Wp * ldc;
        if (y < top || y >= top + H) {
          std::memset(r, 0, sizeof(uint16_t) * Wp * ldc);
          continue;
        }
        std::memset(r, 0, sizeof(uint16_t) * left * ldc);
        std::memset(r + (left + W) * ldc, 0, sizeof(uint16_t) * (Wp - left - W) * ldc);
        for (int64_t w = 0; w < W; ++w) {
          uint16_t* p = r + (left + w) * ldc;
          std::fill(p, p + lead, v);
          std::fill(p + lead + C, p + ldc, uint16_t{0});
        }
      }
      for (int64_t c = 0; c < blocks; c += 8) {
        int64_t q = 0;
        for (; q < whole; q += 8) {
          __m128i r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + (c + i) * plane + q));
          transpose8x8(r);
          for (int j = 0; j < 8; ++j)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(d + at[static_cast<size_t>(q + j)] + lead + c), r[j]);
        }
        for (; q < plane; ++q)
          for (int64_t i = 0; i < 8; ++i) d[at[static_cast<size_t>(q)] + lead + c + i] = s[(c + i) * plane + q];
      }
      for (int64_t c = blocks; c < C; ++c)
        for (int64_t q = 0; q < plane; ++q) d[at[static_cast<size_t>(q)] + lead + c] = s[c * plane + q];
    }
  });
  return out;
}

// One plane of short rows (W <= 32 columns, L <= 32 padded lanes): rows top .. top + H - 1 of d take the rows of s
// permuted, `group` rows at a time (group W <= 32 and group L <= 32: the 7-column rows of a 7x7 map three to a
// permutation): lane t of a group of padded rows takes the group's element idx[t] where `valid` has bit t, else 0.
// The other rows of Hp are zero.
ZOO_AVX512_BF16 void permute_plane(const uint16_t* s, uint16_t* d, const uint16_t* idx, uint32_t valid, int64_t W,
                                   int64_t L, int64_t H, int64_t Hp, int64_t top, int64_t group) {
  const __m512i index = _mm512_loadu_si512(idx);
  std::fill(d, d + top * L, uint16_t{0});
  for (int64_t h = 0; h < H; h += group) {
    const int64_t rows = std::min(group, H - h);
    const __m512i in = _mm512_maskz_loadu_epi16(first32(rows * W), s + h * W);
    _mm512_mask_storeu_epi16(d + (top + h) * L, first32(rows * L), _mm512_maskz_permutexvar_epi16(valid, index, in));
  }
  std::fill(d + (top + H) * L, d + Hp * L, uint16_t{0});
}

// x [N, C, H, W] or [N, C, D, H, W] bfloat16 -> [N, lead + C, Dp, Hp, stride, Wq] by column phase (WeightShape):
// padded x's element (z, y, j stride + q) at (z, y, q, j), the image from plane `front`, row `top` and column `pad`,
// zero elsewhere; the lead channels hold `value` inside the image. A 2-D x has D = Dp = 1 and front = 0. Rows of up
// to 32 columns whose padded phases fit in 32 (the 3-D models' maps) go through one permutation in registers each;
// element-wise copies of such short rows took as long as the weight gradient's dot products.
Tensor pad_planes(const Tensor& x, int64_t lead, double value, int64_t front, int64_t top, int64_t pad, int64_t stride,
                  int64_t Dp, int64_t Hp, int64_t Wq) {
  const auto xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), D = x.dim() == 5 ? x.size(2) : 1, H = x.size(-2), W = x.size(-1);
  const int64_t K = lead + C, L = stride * Wq;  // L: elements per padded row, every phase
  auto out = torch::empty({N, K, Dp, Hp, stride, Wq}, x.options());
  const auto* src = reinterpret_cast<const uint16_t*>(xc.data_ptr<bf16>());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<bf16>());
  const uint16_t v = bf16(static_cast<float>(value)).x;
  // Padded column j stride + q is x's column j stride + q - pad: for phase q, x's columns from[q] + j stride for j
  // in [first[q], end[q]).
  std::vector<int64_t> first(static_cast<size_t>(stride)), end(static_cast<size_t>(stride));
  for (int64_t q = 0; q < stride; ++q) {
    first[static_cast<size_t>(q)] = (pad - q + stride - 1) / stride;
    end[static_cast<size_t>(q)] = std::min(Wq, (W + pad - q + stride - 1) / stride);
  }
  // The permutation of a group of short rows: lane t (row t / L of the group; phase u / Wq and column u % Wq of that
  // row, u = t % L) takes x's column idx[t] of the group's rows where `valid` has bit t, else 0.
  const bool short_rows = W >= 1 && W <= 32 && L <= 32;  // (no rows to permute in an empty width)
  const int64_t group = short_rows ? std::min(32 / W, 32 / L) : 1;
  uint16_t idx[32] = {};
  uint32_t valid = 0;
  for (int64_t t = 0; short_rows && t < group * L; ++t) {
    const int64_t g = t / L, u = t % L, q = u / Wq, j = u % Wq, col = j * stride + q - pad;
    if (j >= first[static_cast<size_t>(q)] && j < end[static_cast<size_t>(q)]) {
      idx[t] = static_cast<uint16_t>(g * W + col);
      valid |= 1U << t;
    }
  }
  at::parallel_for(0, N * K * Dp, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, Hp * L)),
                   [&](int64_t begin, int64_t stop) {
                     for (int64_t i = begin; i < stop; ++i) {
                       const int64_t n = i / (K * Dp), c = i / Dp % K, z = i % Dp - front;
                       if (z < 0 || z >= D) {
                         std::fill(dst + i * Hp * L, dst + (i + 1) * Hp * L, uint16_t{0});
                         continue;
                       }
                       if (c >= lead && short_rows) {
                         permute_plane(src + ((n * C + c - lead) * D + z) * H * W, dst + i * Hp * L, idx, valid, W, L,
                                       H, Hp, top, group);
                         continue;
                       }
                       for (int64_t y = 0; y < Hp; ++y) {
                         uint16_t* d = dst + (i * Hp + y) * L;
                         const int64_t h = y - top;
                         if (h < 0 || h >= H) {
                           std::fill(d, d + L, uint16_t{0});
                           continue;
                         }
                         const uint16_t* s = c < lead ? nullptr : src + (((n * C + c - lead) * D + z) * H + h) * W;
                         std::fill(d, d + L, uint16_t{0});
                         for (int64_t q = 0; q < stride; ++q) {
                           const int64_t j0 = first[static_cast<size_t>(q)], j1 = end[static_cast<size_t>(q)];
                           uint16_t* to = d + q * Wq;
                           if (!s) {
                             std::fill(to + j0, to + j1, v);
                           } else if (stride == 1) {
                             for (int64_t j = j0; j < j1; ++j) to[j] = s[j - pad];
                           } else if (stride == 2) {  // a constant stride, which the compiler vectorises
                             const uint16_t* from = s + q - pad;
                             for (int64_t j = j0; j < j1; ++j) to[j] = from[2 * j];
                           } else {
                             const uint16_t* from = s + q - pad;
                             for (int64_t j = j0; j < j1; ++j) to[j] = from[j * stride];
                           }
                         }
                       }
                     }
                   });
  return out;
}

// rows [count, W] -> [count, W + 1], a zero after each row (W < 32): an odd width made even, so that its pairs are
// whole words.
ZOO_AVX512_BF16 void pad_odd_rows(const uint16_t* s, uint16_t* d, int64_t count, int64_t W) {
  const __mmask32 in = first32(W), out = first32(W + 1);
  for (int64_t r = 0; r < count; ++r)
    _mm512_mask_storeu_epi16(d + r * (W + 1), out, _mm512_maskz_loadu_epi16(in, s + r * W));
}

// go [N, O, H, W] bfloat16 -> [N, H, W2, ldo, 2]: element (n, h, p, o, j) = go[n, o, h, 2 p + j], 0 past W or O.
// A pair is one 32-bit word (the lower half first, as the pair sits in memory on x86). For an even W the words of a
// plane are go's own, in order: four channels x four words at a time go through registers. An odd W below 32 (the
// mHC ResNet's 7x7 blocks) is first padded to W + 1 columns, item by item, and goes the same way; word by word, it had
// taken a third as long as the weight gradient's dot products.
Tensor pair_pixels(const Tensor& go, int64_t W2, int64_t ldo) {
  const auto gc = go.contiguous();
  const int64_t N = go.size(0), O = go.size(1), H = go.size(2), W = go.size(3), words = H * W2;
  auto out = torch::empty({N, H, W2, ldo, 2}, go.options());
  const auto* src = reinterpret_cast<const uint16_t*>(gc.data_ptr<bf16>());
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<bf16>());
  at::parallel_for(
      0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, words * ldo * 2)), [&](int64_t begin, int64_t end) {
        std::vector<uint16_t> even(W % 2 && W < 32 ? static_cast<size_t>(O * H * (W + 1)) : 0);
        for (int64_t n = begin; n < end; ++n) {
          uint32_t* item = dst + n * words * ldo;
          const uint16_t* s = src + n * O * H * W;
          for (int64_t hp = 0; hp < words; ++hp) std::fill(item + hp * ldo + O, item + (hp + 1) * ldo, 0U);
          if (!even.empty()) {
            pad_odd_rows(s, even.data(), O * H, W);
            s = even.data();
          } else if (W % 2) {
            for (int64_t o = 0; o < O; ++o)
              for (int64_t h = 0; h < H; ++h) {
                const uint16_t* r = s + (o * H + h) * W;
                uint32_t* d = item + h * W2 * ldo + o;
                for (int64_t p = 0; p < W / 2; ++p) d[p * ldo] = r[2 * p] | (static_cast<uint32_t>(r[2 * p + 1]) << 16);
                d[(W / 2) * ldo] = r[W - 1];
              }
            continue;
          }
          const auto* sw = reinterpret_cast<const float*>(s);  // words moved as floats, bits unchanged
          auto* dw = reinterpret_cast<float*>(item);
          const int64_t blocks = O / 4 * 4, whole = words / 4 * 4;
          for (int64_t o = 0; o < blocks; o += 4) {
            int64_t q = 0;
            for (; q < whole; q += 4) {
              __m128 r0 = _mm_loadu_ps(sw + o * words + q), r1 = _mm_loadu_ps(sw + (o + 1) * words + q);
              __m128 r2 = _mm_loadu_ps(sw + (o + 2) * words + q), r3 = _mm_loadu_ps(sw + (o + 3) * words + q);
              _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
              _mm_storeu_ps(dw + q * ldo + o, r0);
              _mm_storeu_ps(dw + (q + 1) * ldo + o, r1);
              _mm_storeu_ps(dw + (q + 2) * ldo + o, r2);
              _mm_storeu_ps(dw + (q + 3) * ldo + o, r3);
            }
            for (; q < words; ++q)
              for (int64_t i = 0; i < 4; ++i) dw[q * ldo + o + i] = sw[(o + i) * words + q];
          }
          for (int64_t o = blocks; o < O; ++o)
            for (int64_t q = 0; q < words; ++q) dw[q * ldo + o] = sw[o * words + q];
        }
      });
  return out;
}

// The sum of each (item, channel) plane of go [N, O, H, W] bfloat16 (the norms' plane sums: float32 vectors, their
// lanes added in double; the same bits at any thread count).
std::vector<double> plane_sums(const Tensor& go) {
  const auto gc = go.contiguous();
  const int64_t count = go.size(0) * go.size(1), plane = go.size(2) * go.size(3);
  std::vector<double> sums(static_cast<size_t>(count));
  const bf16* src = gc.data_ptr<bf16>();
  at::parallel_for(0, count, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, plane)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i)
                       sums[static_cast<size_t>(i)] = planes::plane_sum(src + i * plane, plane);
                   });
  return sums;
}

struct Tap {
  int64_t kh, kw;
};

// Packs the taps of weight [O, K, KH, KW] (float32 or bfloat16) into bfloat16 panels [ceil(O / P), taps, ldk / 2, P,
// 2] (element (p, t, k / 2, j, k % 2) = weight[p P + j, k, taps[t]]), 0 past O or K. With transpose it packs the
// weight of the input gradient instead: outputs and inputs swapped, element (c, o, tap) = weight[o, lead + c, tap].
Tensor pack(const Tensor& weight, int64_t P, int64_t ldk, bool transpose, int64_t lead, const std::vector<Tap>& taps) {
  const auto wc = weight.detach().to(torch::kFloat32).contiguous();
  const int64_t O0 = wc.size(0), K0 = wc.size(1), KW = wc.size(3), area = wc.size(2) * KW;
  const int64_t O = transpose ? K0 - lead : O0, K = transpose ? O0 : K0, panels = (O + P - 1) / P;
  const auto T = static_cast<int64_t>(taps.size());
  auto packed = torch::zeros({panels, T, ldk / 2, P, 2}, weight.options().dtype(torch::kBFloat16));
  const float* src = wc.data_ptr<float>();
  bf16* dst = packed.data_ptr<bf16>();
  const int64_t tap_stride = (ldk / 2) * P * 2;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < K; ++c) {
      bf16* d = dst + (((o / P) * T * (ldk / 2) + c / 2) * P + o % P) * 2 + c % 2;
      const float* from = src + (transpose ? c * K0 + lead + o : o * K0 + c) * area;
      for (int64_t t = 0; t < T; ++t) d[t * tap_stride] = bf16(from[taps[t].kh * KW + taps[t].kw]);
    }
  return packed;
}

// Writes into out the pixels of one direct convolution of the padded channels-last `in` with packed panels.
void direct(const Tensor& in, const Shape& s, const Tensor& packed, int64_t P, const float* bias, Tensor& out) {
  const bf16* ip = in.data_ptr<bf16>();
  const bf16* pp = packed.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t work = s.W * s.KH * s.KW * s.ldc * round_up(s.O, P);  // multiply-adds per output row
  at::parallel_for(0, s.N * s.H, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)), [&](int64_t b, int64_t e) {
    if (P == 16)
      direct_rows<1>(ip, s, pp, bias, op, b, e);
    else
      direct_rows<2>(ip, s, pp, bias, op, b, e);
  });
}

// A convolution's geometry: kernel KH x KW, strides and zero paddings per axis.
struct Geometry {
  int64_t KH, KW, sh, sw, ph, pw;
  int64_t out_h(int64_t H) const { return (H + 2 * ph - KH) / sh + 1; }
  int64_t out_w(int64_t W) const { return (W + 2 * pw - KW) / sw + 1; }
};

// The forward: [N, O, Ho, Wo] bfloat16 of x [N, K - lead, H, W] with its lead channels; bias padded to whole panels.
Tensor forward_conv(const Tensor& x, const Tensor& weight, const float* bias, const Geometry& g, double lead_value) {
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), O = weight.size(0), K = weight.size(1);
  const int64_t lead = K - x.size(1), P = O <= 16 ? 16 : 32, ldc = round_up(K, 2), Ho = g.out_h(H), Wo = g.out_w(W);
  std::vector<Tap> taps;
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) taps.push_back({kh, kw});
  const Shape s{N, Ho, Wo, H + 2 * g.ph, W + 2 * g.pw, ldc, O, Ho, Wo, g.sh, g.sw, g.KH, g.KW, 0, 0, 1, 1, 0, 0};
  auto out = torch::empty({N, O, Ho, Wo}, x.options().dtype(torch::kBFloat16));
  direct(pad_channels_last(x, lead, lead_value, ldc, g.ph, g.pw, s.Hp, s.Wp), s, pack(weight, P, ldc, false, 0, taps),
         P, bias, out);
  return out;
}

// The taps of one output phase of the input gradient along one axis (kernel k, stride, pad): input index
// a stride + phase receives from go index (a stride + phase + pad - kh) / stride for kh = first + m stride, m < taps;
// `shift` is the go index the last of them (m = taps - 1, the first read) reads at a = 0.
struct Phase {
  int64_t first, taps, shift;
};

std::vector<Phase> phases(int64_t k, int64_t stride, int64_t pad) {
  std::vector<Phase> out;
  for (int64_t phase = 0; phase < stride; ++phase) {
    const int64_t first = (phase + pad) % stride, taps = (k - first + stride - 1) / stride;
    out.push_back({first, taps, (phase + pad - first) / stride - (taps - 1)});
  }
  return out;
}

// The input gradient [N, C, H, W] bfloat16 from go [N, O, Ho, Wo]: for each output phase (ph, pw) (the input pixels
// (a sh + ph, b sw + pw)) a direct convolution of go with that phase's taps, flipped (the transposed convolution's
// sub-pixel form: no products with inserted zeros). With stride 1, one phase: the flipped, transposed kernel over go
// padded by k - 1 - pad.
Tensor input_gradient(const Tensor& go, const Tensor& weight, int64_t C, int64_t H, int64_t W, const Geometry& g) {
  const int64_t N = go.size(0), O = go.size(1), Ho = go.size(2), Wo = go.size(3);
  const int64_t lead = weight.size(1) - C, P = C <= 16 ? 16 : 32, ldg = round_up(O, 2);
  const auto rows = phases(g.KH, g.sh, g.ph), cols = phases(g.KW, g.sw, g.pw);
  // go padded before it by what the phases read before its first row (column), after it by what they read past it.
  int64_t top = 0, left = 0;
  for (const auto& f : rows) top = std::max(top, -f.shift);
  for (const auto& f : cols) left = std::max(left, -f.shift);
  int64_t Hp = top + Ho, Wp = left + Wo;
  for (int64_t p = 0; p < g.sh; ++p) {
    const auto& f = rows[static_cast<size_t>(p)];
    Hp = std::max(Hp, top + f.shift + (H - p + g.sh - 1) / g.sh - 1 + f.taps);
  }
  for (int64_t p = 0; p < g.sw; ++p) {
    const auto& f = cols[static_cast<size_t>(p)];
    Wp = std::max(Wp, left + f.shift + (W - p + g.sw - 1) / g.sw - 1 + f.taps);
  }
  const auto in = pad_channels_last(go, 0, 0, ldg, top, left, Hp, Wp);
  const auto w32 = weight.detach().to(torch::kFloat32).contiguous();  // once for every phase's pack
  auto dx = torch::empty({N, C, H, W}, go.options().dtype(torch::kBFloat16));
  for (int64_t ph = 0; ph < g.sh; ++ph) {
    for (int64_t pw = 0; pw < g.sw; ++pw) {
      const auto &fh = rows[static_cast<size_t>(ph)], &fw = cols[static_cast<size_t>(pw)];
      const int64_t n_rows = (H - ph + g.sh - 1) / g.sh, n_cols = (W - pw + g.sw - 1) / g.sw;
      if (n_rows <= 0 || n_cols <= 0) continue;
      std::vector<Tap> taps;
      for (int64_t i = 0; i < fh.taps; ++i)
        for (int64_t j = 0; j < fw.taps; ++j)
          taps.push_back({fh.first + (fh.taps - 1 - i) * g.sh, fw.first + (fw.taps - 1 - j) * g.sw});
      const Shape s{N,       n_rows,         n_cols,          Hp,   Wp,   ldg, C, H, W, 1, 1, fh.taps,
                    fw.taps, top + fh.shift, left + fw.shift, g.sh, g.sw, ph,  pw};
      direct(in, s, pack(w32, P, ldg, true, lead, taps), P, nullptr, dx);
    }
  }
  return dx;
}

// Bytes of input and gradient per chunk of items in weight_rows (64 KB to 1 MB ran alike on the 3-D layers of
// zoo_bench's Conv3dWeightGradient; the 2-D layers of ConvBf16, chunked or not, too).
constexpr int64_t kWeightChunkBytes = int64_t{256} << 10;

// The weight gradient in float32 of x [N, K - lead, H, W] (with the lead channels) and go [N, O, Ho, Wo]:
// [O, K, KH, KW]; or of a 3-D convolution, x [N, K, D, H, W] and go [N, O, Do, Ho, Wo]: [O, K, KD, KH, KW]. Kernel,
// stride and padding per axis, depth first (KD = 1, stride and padding 1 and 0 in 2-D).
Tensor weight_gradient(const Tensor& x, int64_t lead, double lead_value, const Tensor& go, std::array<int64_t, 3> k,
                       std::array<int64_t, 3> stride, std::array<int64_t, 3> pad) {
  const bool volume = x.dim() == 5;
  const int64_t N = x.size(0), K = lead + x.size(1), O = go.size(1), V = O <= 16 ? 1 : 2, R = V == 1 ? 12 : 6;
  const int64_t ldo = round_up(O, 16 * V), W2 = (go.size(-1) + 1) / 2;
  const int64_t Dp = volume ? x.size(2) + 2 * pad[0] : 1, Hp = x.size(-2) + 2 * pad[1];
  const int64_t Wq = 2 * W2 + (k[2] - 1) / stride[2], plane = Hp * stride[2] * Wq;
  const WeightShape s{
      N, volume ? go.size(2) : 1, go.size(-2), W2, stride[0], stride[1], stride[2], Wq, plane, Dp * plane, K, ldo};
  const auto in = pad_planes(x, lead, lead_value, pad[0], pad[1], pad[2], stride[2], Dp, Hp, Wq);
  const auto grad = pair_pixels(go.reshape({N, O, s.D * s.H, go.size(-1)}), W2, ldo);
  // dw's rows (tap, k), R to a block; the rows past the last read channel 0 and are dropped.
  const int64_t taps = k[0] * k[1] * k[2], rows = taps * K, padded_rows = round_up(rows, R);
  std::vector<int64_t> offsets(static_cast<size_t>(padded_rows), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t tap = r / K, c = r % K, kd = tap / (k[1] * k[2]), kh = tap / k[2] % k[1], kw = tap % k[2];
    offsets[static_cast<size_t>(r)] = c * s.channel + kd * plane + kh * s.sw * Wq + (kw % s.sw) * Wq + kw / s.sw;
  }
  auto dw = torch::zeros({padded_rows, ldo}, go.options().dtype(torch::kFloat32));  // zeros: an empty batch's gradient
  const bf16* ip = in.data_ptr<bf16>();
  const bf16* gp = grad.data_ptr<bf16>();
  float* dp = dw.data_ptr<float>();
  const int64_t blocks = padded_rows / R, panels = ldo / (16 * V);
  const int64_t work = N * s.D * s.H * W2 * 2 * R * 16 * V;  // multiply-adds per block
  // Items in chunks whose input and gradient fit in a core's L2 cache, each chunk through all of a task's blocks
  // before the next (a block reads R input channels of every item). A fixed order of chunks per block: the same bits
  // at any thread count.
  const int64_t item_bytes = (K * s.channel + s.D * s.H * W2 * ldo * 2) * 2;
  const int64_t chunk = std::max<int64_t>(1, kWeightChunkBytes / item_bytes);
  at::parallel_for(0, blocks * panels, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)),
                   [&](int64_t b, int64_t e) {
                     for (int64_t n0 = 0; n0 < N; n0 += chunk) {
                       const int64_t n1 = std::min(N, n0 + chunk);
                       for (int64_t i = b; i < e; ++i) {
                         const int64_t row0 = i / panels * R, o0 = i % panels * 16 * V;
                         V == 1 ? weight_block<12, 1>(ip, s, gp, offsets.data(), dp, row0, o0, n0, n1)
                                : weight_block<6, 2>(ip, s, gp, offsets.data(), dp, row0, o0, n0, n1);
                       }
                     }
                   });
  auto sizes = go.sizes().vec();  // [O, K, (KD,) KH, KW]
  sizes[0] = O;
  sizes[1] = K;
  for (int64_t a = 2; a < go.dim(); ++a) sizes[static_cast<size_t>(a)] = k[static_cast<size_t>(a + 3 - go.dim())];
  // The rows (tap, k) of O columns into [O, K, taps]: 16 columns at a time, each read as one run and written to 16
  // output rows in order. LibTorch's copy of the permuted view moved one element at a time: with the U-Net's 7.7 M
  // weights' gradients through this kernel (a trial, not the rule's region), `aten::copy_` took 23 ms of its bfloat16
  // step, 3.7 ms this way.
  auto out = torch::empty(sizes, dw.options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, (O + 15) / 16, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, 16 * rows)),
                   [&](int64_t b, int64_t e) {
                     for (int64_t block = b; block < e; ++block) {
                       const int64_t o0 = block * 16, width = std::min<int64_t>(16, O - o0);
                       for (int64_t c = 0; c < K; ++c)
                         for (int64_t tap = 0; tap < taps; ++tap) {
                           const float* from = dp + (tap * K + c) * ldo + o0;
                           float* to = op + (o0 * K + c) * taps + tap;
                           for (int64_t i = 0; i < width; ++i) to[i * K * taps] = from[i];
                         }
                     }
                   });
  return out;
}

// torch::conv2d on x with its lead channels, the weight and bias in x's type: what the kernel computes, recorded.
Tensor reference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Geometry& g, double lead_value) {
  auto in = x;
  const int64_t lead = weight.size(1) - x.size(1);
  if (lead > 0) {
    auto sizes = x.sizes().vec();
    sizes[1] = lead;
    in = torch::cat({torch::full(sizes, lead_value, x.options()), x}, 1);
  }
  const auto type = x.scalar_type();
  return torch::conv2d(in, weight.to(type), bias.numel() > 0 ? bias.to(type) : Tensor(), {g.sh, g.sw}, {g.ph, g.pw});
}

struct Conv2dBf16Function : public torch::autograd::Function<Conv2dBf16Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, double lead_value, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    const Geometry g{weight.size(2), weight.size(3), sh, sw, ph, pw};
    const int64_t O = weight.size(0), P = O <= 16 ? 16 : 32;
    std::vector<float> b;  // padded to whole panels
    if (bias.numel() > 0) {
      const auto bc = bias.detach().to(torch::kFloat32).contiguous();
      b.assign(bc.data_ptr<float>(), bc.data_ptr<float>() + O);
      b.resize(static_cast<size_t>(round_up(O, P)), 0.0F);
    }
    auto out = forward_conv(x, weight, b.empty() ? nullptr : b.data(), g, lead_value);
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["lead_value"] = lead_value;
    ctx->saved_data["geometry"] = std::vector<int64_t>{sh, sw, ph, pw};
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2];
    const double lead_value = ctx->saved_data["lead_value"].toDouble();
    const auto v = ctx->saved_data["geometry"].toIntVector();
    const Geometry g{weight.size(2), weight.size(3), v[0], v[1], v[2], v[3]};
    const int64_t O = weight.size(0), C = x.size(1), lead = weight.size(1) - C;
    torch::autograd::variable_list out(8);  // one per input of forward
    if (torch::GradMode::is_enabled()) {    // under create_graph: through torch::conv2d's autograd
      return gradients_through(
          ctx, {x, weight, bias}, [&] { return reference(x, weight, bias, g, lead_value); }, grads[0], out.size());
    }
    const auto go = grads[0].to(torch::kBFloat16);
    if (ctx->needs_input_grad(0)) out[0] = input_gradient(go, weight, C, x.size(2), x.size(3), g);
    if (ctx->needs_input_grad(1))
      out[1] = weight_gradient(x, lead, lead_value, go, {1, g.KH, g.KW}, {1, g.sh, g.sw}, {0, g.ph, g.pw})
                   .to(weight.scalar_type());
    // The bias gradient: each (item, channel) plane summed (plane_sums), the planes added in double in item order
    // (the same bits at any thread count).
    if (bias.numel() > 0 && ctx->needs_input_grad(2)) {
      const auto sums = plane_sums(go);
      auto db = torch::empty({O}, weight.options().dtype(torch::kFloat32));
      float* dbp = db.data_ptr<float>();
      for (int64_t o = 0; o < O; ++o) {
        double sum = 0;
        for (int64_t n = 0; n < x.size(0); ++n) sum += sums[static_cast<size_t>(n * O + o)];
        dbp[o] = static_cast<float>(sum);
      }
      out[2] = db.to(bias.scalar_type());
    }
    return out;
  }
};

}  // namespace

#endif  // ZOO_X86_KERNELS

bool conv2d_bf16_geometry(const Tensor& x, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding) {
  if (x.dim() != 4 || weight.dim() != 4 || stride.size() != 2 || padding.size() != 2) return false;
  for (size_t d = 0; d < 2; ++d) {
    const int64_t k = weight.size(static_cast<int64_t>(d) + 2), in = x.size(static_cast<int64_t>(d) + 2);
    if (k < 1 || k > 7 || stride[d] < 1 || stride[d] > k || padding[d] < 0 || padding[d] >= k ||
        in + 2 * padding[d] < k)
      return false;
  }
  return weight.size(0) >= 1 && weight.size(1) >= x.size(1) && x.size(1) >= 1;
}

Tensor conv2d_bf16(const Tensor& x, const Tensor& weight, const Tensor& bias, at::IntArrayRef stride,
                   at::IntArrayRef padding, double lead_value) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "zoo's bfloat16 convolution needs a CPU with AVX512-BF16");
  TORCH_CHECK(conv2d_bf16_geometry(x, weight, stride, padding),
              "zoo's bfloat16 convolution takes kernels of 1-7 taps "
              "per axis, strides up to the kernel and paddings below it; got x ",
              x.sizes(), ", weight ", weight.sizes(), ", stride ", stride, ", padding ", padding);
#ifdef ZOO_X86_KERNELS
  const auto xb = x.to(torch::kBFloat16);  // differentiable: a float32 x gets its gradient in float32
  const auto b = bias.defined() ? bias : torch::empty({0}, weight.options());
  if (x.size(0) == 0)
    return reference(xb, weight, b, {weight.size(2), weight.size(3), stride[0], stride[1], padding[0], padding[1]},
                     lead_value);
  return Conv2dBf16Function::apply(xb, weight, b, lead_value, stride[0], stride[1], padding[0], padding[1]);
#else
  return {};
#endif
}

Tensor conv_bf16_weight_gradient(const Tensor& x, const Tensor& go, at::IntArrayRef kernel, at::IntArrayRef stride,
                                 at::IntArrayRef padding) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "zoo's bfloat16 weight gradient needs a CPU with AVX512-BF16");
  const auto dims = static_cast<size_t>(x.dim() - 2);
  TORCH_CHECK((x.dim() == 4 || x.dim() == 5) && go.dim() == x.dim() && x.size(0) == go.size(0) &&
                  x.scalar_type() == torch::kBFloat16 && go.scalar_type() == torch::kBFloat16 &&
                  kernel.size() == dims && stride.size() == dims && padding.size() == dims,
              "conv_bf16_weight_gradient takes bfloat16 x [N, C, H, W] or [N, C, D, H, W], dy [N, O, ...] of as many "
              "axes, and a kernel size, stride and padding per spatial axis; got x ",
              x.sizes(), ", dy ", go.sizes());
  for (size_t i = 0; i < dims; ++i) {
    const auto a = static_cast<int64_t>(i) + 2;
    TORCH_CHECK(kernel[i] >= 1 && kernel[i] <= 7 && stride[i] >= 1 && stride[i] <= kernel[i] && padding[i] >= 0 &&
                    padding[i] < kernel[i] && go.size(a) == (x.size(a) + 2 * padding[i] - kernel[i]) / stride[i] + 1,
                "conv_bf16_weight_gradient takes kernels of 1-7 taps per axis, strides up to the kernel and paddings "
                "below it, and dy of the convolution's output size; got x ",
                x.sizes(), ", dy ", go.sizes(), ", kernel ", kernel, ", stride ", stride, ", padding ", padding);
  }
#ifdef ZOO_X86_KERNELS
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // Depth first: a 2-D convolution is one of depth 1 (one tap, stride 1, no padding on it).
  const size_t d = dims == 3 ? 0 : 1;  // where the given axes start in {depth, height, width}
  std::array<int64_t, 3> k{1, 1, 1}, s{1, 1, 1}, p{0, 0, 0};
  for (size_t i = 0; i < dims; ++i) {
    k[d + i] = kernel[i];
    s[d + i] = stride[i];
    p[d + i] = padding[i];
  }
  return weight_gradient(x, 0, 0, go.contiguous(), k, s, p);
#else
  return {};
#endif
}

}  // namespace zoo::ops::detail
