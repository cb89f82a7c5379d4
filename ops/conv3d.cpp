#include "ops/conv3d.h"
#include "ops/autocast.h"
#include "ops/conv2d_bf16.h"
#include "ops/simd.h"
#include "ops/twice.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace zoo::ops {

using torch::Tensor;

namespace {

Tensor reference(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                 torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups) {
  return torch::conv3d(x, weight, bias, stride, padding, dilation, groups);
}

bool float32_cpu(const Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat32; }

/// LibTorch's CPU convolution picks oneDNN for float32 by a rule written for images (ATen's
/// ConvParams::use_mkldnn): a batch of one goes to its native path (vol2col and a matrix product, `slow_conv3d`)
/// unless N C D H > 20,480 (a volume's last axis is not counted), groups > 1 or the kernel is larger than 3 in its
/// last two axes. At one volume of the 3-D models that path is 1.4-3.5x slower than oneDNN (docs/speed.md), so
/// those calls go to oneDNN's convolution directly, the operation LibTorch runs for two volumes; a 1x1 kernel at one
/// thread (where ATen keeps its native path on purpose), traces (which record torch::conv3d) and autocast (whose rule
/// casts first) keep torch::conv3d.
bool one_volume_on_native_path(const Tensor& x, const Tensor& weight, int64_t groups) {
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && x.dim() == 5 && weight.dim() == 5 &&
         x.size(0) == 1 && float32_cpu(x) && float32_cpu(weight) && groups == 1 &&
         !(weight.size(3) > 3 && weight.size(4) > 3) && x.size(1) * x.size(2) * x.size(3) <= 20480 &&
         (weight.size(3) != 1 || weight.size(4) != 1 || at::get_num_threads() > 1) &&
         !torch::jit::tracer::isTracing() && !cpu_autocast_type();
}

/// torch::conv3d, one volume through oneDNN where LibTorch would take its slow native path.
Tensor library_conv3d(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                      torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups) {
  if (one_volume_on_native_path(x, weight, groups) && x.numel() > 0 &&
      (!bias.defined() || bias.scalar_type() == torch::kFloat32))
    return at::mkldnn_convolution(x, weight, bias, per_axis(padding, 3), per_axis(stride, 3), per_axis(dilation, 3),
                                  groups);
  return reference(x, weight, bias, stride, padding, dilation, groups);
}

#ifdef ZOO_X86_KERNELS

// Geometry of one direct convolution: the input zero-padded to [N, D + 2, H + 2, Wp] (Wp = round_up(W, 8) + 8, so
// that an 8-wide load at any block of a row, shifted by up to 2 taps, stays inside its row), the output and its
// gradient [N, O, D, H, W]. A plane is one (n, d); a block is 8 consecutive voxels of a row, the last one of a row
// cut to W % 8 by masks.
struct Geometry {
  int64_t N, O, D, H, W, Hp, Wp;
  int64_t row_blocks() const { return (W + 7) / 8; }
};

// Lane masks for a block's first `rem` voxels (maskload / maskstore).
ZOO_AVX2_FMA inline __m256i lanes(int64_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// A block's first rem < 8 voxels, the other lanes 0 (a row's end), through a mask; stored in float32 through a mask,
// in bfloat16 (which AVX2 has no 16-bit masked stores for) through a small copy.
ZOO_AVX2_FMA inline __m256 load_first(const float* p, int64_t rem) { return _mm256_maskload_ps(p, lanes(rem)); }
ZOO_AVX2_FMA inline void store_first(float* p, __m256 v, int64_t rem) { _mm256_maskstore_ps(p, lanes(rem), v); }
ZOO_AVX2_FMA inline void store_first(c10::BFloat16* p, __m256 v, int64_t rem) {
  c10::BFloat16 block[8];
  store8(block, v);
  std::copy(block, block + rem, p);
}

// Forward of B blocks x 4 output channels: acc[j][o] = bias[o] + sum over the 27 taps of w[tap][o] * x[block j
// shifted by the tap]. `plane` is the padded input at the block's depth, `taps` the packed weight [27][4].
// The output is stored as T: float32, or bfloat16 (rounded to nearest even) under bf16-mixed. Not inlined: inside
// the plane loop GCC spills the tap addresses to the stack, and the forward ran at 1.5-2.2x its time (64 x 16^3 -> 8:
// 2.0-2.8 ms against 1.3).
template <int B, typename T>
ZOO_AVX2_FMA __attribute__((noinline)) void forward_blocks(const float* plane, int64_t Hp, int64_t Wp,
                                                           const float* taps, const float* bias, const int64_t (&in)[B],
                                                           const int64_t (&out)[B], const int64_t (&rem)[B],
                                                           T* const (&dst)[4], int channels) {
  __m256 acc[B][4];
#pragma GCC unroll 4
  for (int o = 0; o < 4; ++o) {
    const __m256 b = _mm256_set1_ps(bias[o]);
#pragma GCC unroll 2
    for (int j = 0; j < B; ++j) acc[j][o] = b;
  }
#pragma GCC unroll 3
  for (int kd = 0; kd < 3; ++kd)
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; ++kh)
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        const int tap = (kd * 3 + kh) * 3 + kw;
        __m256 v[B];
#pragma GCC unroll 2
        for (int j = 0; j < B; ++j) v[j] = _mm256_loadu_ps(plane + in[j] + (kd * Hp + kh) * Wp + kw);
#pragma GCC unroll 4
        for (int o = 0; o < 4; ++o) {
          const __m256 w = _mm256_broadcast_ss(taps + tap * 4 + o);
#pragma GCC unroll 2
          for (int j = 0; j < B; ++j) acc[j][o] = _mm256_fmadd_ps(w, v[j], acc[j][o]);
        }
      }
#pragma GCC unroll 2
  for (int j = 0; j < B; ++j) {
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
      if (o >= channels) break;
      if (rem[j] == 8)
        store8(dst[o] + out[j], acc[j][o]);
      else
        store_first(dst[o] + out[j], acc[j][o], rem[j]);
    }
  }
}

// The output planes [begin, end) of the flattened (n, d) range, every group of 4 output channels. `packed` holds
// the weight as [ceil(O / 4)][27][4] and `bias` ceil(O / 4) * 4 values (0 past O).
template <typename T>
ZOO_AVX2_FMA void forward_planes(const float* xp, const Geometry& g, const float* packed, const float* bias, T* y,
                                 int64_t begin, int64_t end) {
  const int64_t rb = g.row_blocks(), blocks = g.H * rb, groups = (g.O + 3) / 4;
  for (int64_t nd = begin; nd < end; ++nd) {
    const int64_t n = nd / g.D, d = nd % g.D;
    const float* plane = xp + (n * (g.D + 2) + d) * g.Hp * g.Wp;
    for (int64_t q = 0; q < groups; ++q) {
      const int channels = static_cast<int>(std::min<int64_t>(4, g.O - q * 4));
      T* dst[4];
      for (int o = 0; o < 4; ++o) dst[o] = y + ((n * g.O + q * 4 + std::min(o, channels - 1)) * g.D + d) * g.H * g.W;
      const float* taps = packed + q * 27 * 4;
      const auto where = [&](int64_t i, int64_t& in, int64_t& out, int64_t& rem) {
        const int64_t h = i / rb, w0 = i % rb * 8;
        in = h * g.Wp + w0;
        out = h * g.W + w0;
        rem = std::min<int64_t>(8, g.W - w0);
      };
      int64_t i = 0;
      for (; i + 2 <= blocks; i += 2) {
        int64_t in[2], out[2], rem[2];
        where(i, in[0], out[0], rem[0]);
        where(i + 1, in[1], out[1], rem[1]);
        forward_blocks<2>(plane, g.Hp, g.Wp, taps, bias + q * 4, in, out, rem, dst, channels);
      }
      if (i < blocks) {
        int64_t in[1], out[1], rem[1];
        where(i, in[0], out[0], rem[0]);
        forward_blocks<1>(plane, g.Hp, g.Wp, taps, bias + q * 4, in, out, rem, dst, channels);
      }
    }
  }
}

// One output channel group (4 channels, `grad` their gradient planes in float32; a group short of 4 channels points
// the missing ones at a plane of zeros) x one row of taps (kd, kh; kw = 0, 1, 2) of one plane: the 12 sums of
// grad[o][voxel] * x[voxel shifted by the tap] stay in registers while the plane's blocks stream through, and are
// added to sums[o][kw] (vectors of 8 partial sums, 28 vectors apart). `rows` is the padded input at the tap row's
// depth and height offset. With rows of whole blocks (Masked = false) every load is a plain one; otherwise every
// block reads its gradient through a mask (all lanes but at a row's end): one path, so that the sums are not
// spilled to memory between a row's blocks. Not inlined, for the reason given at forward_blocks.
template <bool Masked>
ZOO_AVX2_FMA __attribute__((noinline)) void weight_taps(const float* rows, const float* const (&grad)[4],
                                                        const Geometry& g, float* sums) {
  __m256 acc[4][3];
  for (int o = 0; o < 4; ++o)
    for (int kw = 0; kw < 3; ++kw) acc[o][kw] = _mm256_setzero_ps();
  for (int64_t h = 0; h < g.H; ++h) {
    const float* row = rows + h * g.Wp;
    for (int64_t w0 = 0; w0 < g.W; w0 += 8) {
      const int64_t at = h * g.W + w0;
      const __m256i mask = lanes(g.W - w0);
      __m256 gv[4];
#pragma GCC unroll 4
      for (int o = 0; o < 4; ++o) {
        gv[o] = Masked ? _mm256_maskload_ps(grad[o] + at, mask) : _mm256_loadu_ps(grad[o] + at);
      }
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        const __m256 v = _mm256_loadu_ps(row + w0 + kw);
#pragma GCC unroll 4
        for (int o = 0; o < 4; ++o) acc[o][kw] = _mm256_fmadd_ps(gv[o], v, acc[o][kw]);
      }
    }
  }
  for (int o = 0; o < 4; ++o)
    for (int kw = 0; kw < 3; ++kw) {
      float* s = sums + (o * 28 + kw) * 8;
      _mm256_storeu_ps(s, _mm256_add_ps(_mm256_loadu_ps(s), acc[o][kw]));
    }
}

// The weight and bias gradients of planes [begin, end), added to sums [O4][27 + 1][8] (O4 = ceil(O / 4) * 4; per
// output channel 27 taps and the bias, each a vector of 8 partial sums). `zeros`: H * W zeros. A bfloat16 gradient
// is widened to float32 once per plane (exactly), into `widened` [4][H W], rather than at each of the 9 tap rows
// that read it: conv4d's bf16-mixed weight gradient had taken 4.7 ms a step against float32's 3.7.
template <typename T>
ZOO_AVX2_FMA void weight_planes(const float* xp, const T* gy, const float* zeros, const Geometry& g, float* sums,
                                int64_t begin, int64_t end) {
  const int64_t groups = (g.O + 3) / 4, HW = g.H * g.W;
  std::vector<float> widened(std::is_same_v<T, float> ? 0 : static_cast<size_t>(4 * HW));
  for (int64_t nd = begin; nd < end; ++nd) {
    const int64_t n = nd / g.D, d = nd % g.D;
    for (int64_t q = 0; q < groups; ++q) {
      const int channels = static_cast<int>(std::min<int64_t>(4, g.O - q * 4));
      const float* grad[4];
      for (int o = 0; o < 4; ++o) {
        const T* plane = gy + ((n * g.O + q * 4 + o) * g.D + d) * HW;
        if (o >= channels) {
          grad[o] = zeros;
        } else if constexpr (std::is_same_v<T, float>) {
          grad[o] = plane;
        } else {
          float* to = widened.data() + o * HW;
          int64_t i = 0;
          for (; i + 8 <= HW; i += 8) _mm256_storeu_ps(to + i, load8(plane + i));
          for (; i < HW; ++i) to[i] = static_cast<float>(plane[i]);
          grad[o] = to;
        }
      }
      for (int kd = 0; kd < 3; ++kd)
        for (int kh = 0; kh < 3; ++kh) {
          const float* rows = xp + ((n * (g.D + 2) + d + kd) * g.Hp + kh) * g.Wp;
          float* at = sums + (q * 4 * 28 + (kd * 3 + kh) * 3) * 8;
          g.W % 8 == 0 ? weight_taps<false>(rows, grad, g, at) : weight_taps<true>(rows, grad, g, at);
        }
      for (int o = 0; o < channels; ++o) {  // the bias: the plane's sum of the gradient, the plane now in cache
        __m256 acc = _mm256_setzero_ps();
        for (int64_t h = 0; h < g.H; ++h)
          for (int64_t w0 = 0; w0 < g.W; w0 += 8) {
            const int64_t rem = std::min<int64_t>(8, g.W - w0);
            const float* p = grad[o] + h * g.W + w0;
            acc = _mm256_add_ps(acc, rem == 8 ? load8(p) : load_first(p, rem));
          }
        float* s = sums + ((q * 4 + o) * 28 + 27) * 8;
        _mm256_storeu_ps(s, _mm256_add_ps(_mm256_loadu_ps(s), acc));
      }
    }
  }
}

// The weight gradient's planes are summed in at most this many chunks, each into sums of its own, added in chunk
// order at the end: the result does not depend on the number of threads.
constexpr int64_t kChunks = 32;

// x [N, 1, D, H, W] (any strides) -> [N, D + 2, H + 2, round_up(W, 8) + 8], zero outside x.
Tensor pad(const Tensor& x) {
  const int64_t N = x.size(0), D = x.size(2), H = x.size(3), W = x.size(4);
  auto xp = torch::zeros({N, D + 2, H + 2, round_up(W, 8) + 8}, x.options());
  xp.narrow(1, 1, D).narrow(2, 1, H).narrow(3, 1, W).copy_(x.select(1, 0));
  return xp;
}

Geometry geometry(const Tensor& xp, int64_t O) {
  return {xp.size(0), O, xp.size(1) - 2, xp.size(2) - 2, 0, xp.size(2), xp.size(3)};
}

// The output [N, O, D, H, W] in float32, or in bfloat16 where `bfloat16` (rounded in the kernel's stores).
Tensor direct_forward(const Tensor& xp, int64_t W, const Tensor& weight, const Tensor& bias, bool bfloat16) {
  const int64_t O = weight.size(0), O4 = round_up(O, 4);
  Geometry g = geometry(xp, O);
  g.W = W;
  std::vector<float> packed(static_cast<size_t>(O4 * 27), 0.0f), b(static_cast<size_t>(O4), 0.0f);
  const auto wc = weight.detach().contiguous();
  const float* w = wc.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t tap = 0; tap < 27; ++tap)
      packed[static_cast<size_t>((o / 4 * 27 + tap) * 4 + o % 4)] = w[o * 27 + tap];
  if (bias.numel() > 0) {
    const auto bc = bias.detach().contiguous();
    std::copy(bc.data_ptr<float>(), bc.data_ptr<float>() + O, b.begin());
  }
  auto y = torch::empty({g.N, O, g.D, g.H, g.W}, xp.options().dtype(bfloat16 ? torch::kBFloat16 : torch::kFloat32));
  const float* x = xp.data_ptr<float>();
  const int64_t work = g.H * g.W * O4 * 27;  // multiply-adds per plane
  at::parallel_for(0, g.N * g.D, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)),
                   [&](int64_t begin, int64_t end) {
                     if (bfloat16)
                       forward_planes(x, g, packed.data(), b.data(), y.data_ptr<c10::BFloat16>(), begin, end);
                     else
                       forward_planes(x, g, packed.data(), b.data(), y.data_ptr<float>(), begin, end);
                   });
  return y;
}

// Under bf16-mixed on a CPU with AMX, the forward as autocast's bfloat16 convolution computes it: x and the weight
// rounded to bfloat16, their products summed in float32 (plus the bias), rounded once. One AMX tile product per 16
// output voxels (R = 16 / W rows of a plane) gives all (up to 16) output channels: A = the weight [16 channels][32
// K], K the 27 taps in pairs, B = the 16 voxels' inputs at those taps in pairs. The pairs are (jw = 0, jw = 1) of
// each (jd, jh), the voxel's input and its right neighbour, one permutation of a load from the item's zero-padded
// bfloat16 grid; and the jw = 2 taps of two (jd, jh) side by side, one two-source permutation. The 16 voxels' lanes
// sit at (i / W) (W + 2) + i % W from the block's first voxel, so all of a permutation's values lie within 32 of it
// for W of 2, 4, 8 or 16.

bool amx_forward_fits(int64_t O, int64_t H, int64_t W) {
  return detail::amx_tiles_present() && detail::cpu_has_amx_bf16() && O <= 16 &&
         (W == 2 || W == 4 || W == 8 || W == 16) && H % (16 / W) == 0;
}

/// The weight gradient [O, 1, 3, 3, 3] and the bias gradient [O] from total(o, k), the sums of tap k (27: the bias).
template <typename Total>
std::pair<Tensor, Tensor> weight_and_bias(int64_t O, const torch::TensorOptions& options, const Total& total) {
  auto dweight = torch::empty({O, 1, 3, 3, 3}, options);
  auto dbias = torch::empty({O}, options);
  float* dw = dweight.data_ptr<float>();
  float* db = dbias.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < 28; ++k) (k < 27 ? dw[o * 27 + k] : db[o]) = total(o, k);
  return {dweight, dbias};
}

/// One item's x [D, H, W] (float32, W <= 16) rounded to bfloat16 (to nearest even, as autocast's cast) into the
/// inside of its zero-padded grid [D + 2, H + 2, W + 2].
ZOO_AVX512_BF16 inline void fill_grid(const float* x, uint16_t* grid, int64_t D, int64_t H, int64_t W) {
  const int64_t Wg = W + 2, plane = (H + 2) * Wg;
  for (int64_t z = 0; z < D; ++z)
    for (int64_t h = 0; h < H; ++h)
      _mm256_mask_storeu_epi16(
          grid + (z + 1) * plane + (h + 1) * Wg + 1, first16(W),
          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(first16(W), x + (z * H + h) * W))));
}

/// Items [n0, n1) of y [N, O, D, H, W] in bfloat16 from x [N, 1, D, H, W] in float32: `a` the weight tile (16 x 32
/// bfloat16), `bias` O floats.
ZOO_AMX_BF16 ZOO_AVX512_BF16 void amx_forward_items(const float* x, int64_t n0, int64_t n1, int64_t D, int64_t H,
                                                    int64_t W, int64_t O, const uint16_t* a, const float* bias,
                                                    uint16_t* y) {
  const int64_t Wg = W + 2, plane = (H + 2) * Wg, rows = 16 / W;
  std::vector<uint16_t> grid(static_cast<size_t>((D + 2) * plane + 64), 0);  // zeros around the item, and after it
  alignas(64) uint16_t b[16 * 32] = {};                                      // pair rows 14 and 15 stay zero
  alignas(64) float c[16 * 16];
  alignas(64) int16_t slide[32], cross[32];
  for (int64_t i = 0; i < 16; ++i) {
    const auto at = static_cast<int16_t>(i / W * Wg + i % W);
    slide[2 * i] = at, slide[2 * i + 1] = static_cast<int16_t>(at + 1);   // the voxel's input and its neighbour's
    cross[2 * i] = at, cross[2 * i + 1] = static_cast<int16_t>(at + 32);  // the same voxel in two loads
  }
  const __m512i by_slide = _mm512_load_si512(slide), by_cross = _mm512_load_si512(cross);
  int64_t shift[9];  // (jd, jh)'s offset in the grid
  for (int64_t t = 0; t < 9; ++t) shift[t] = t / 3 * plane + t % 3 * Wg;
  configure_tiles();
  _tile_loadd(0, a, 64);
  for (int64_t n = n0; n < n1; ++n) {
    fill_grid(x + n * D * H * W, grid.data(), D, H, W);
    uint16_t* yn = y + n * O * D * H * W;
    for (int64_t z = 0; z < D; ++z)
      for (int64_t h = 0; h < H; h += rows) {
        const uint16_t* first = grid.data() + z * plane + h * Wg;  // tap (0, 0, 0) of voxel (z, h, 0)
        for (int64_t t = 0; t < 9; ++t)
          _mm512_store_si512(b + t * 32, _mm512_permutexvar_epi16(by_slide, _mm512_loadu_si512(first + shift[t])));
        for (int64_t t = 0; t < 5; ++t) {
          const __m512i left = _mm512_loadu_si512(first + shift[2 * t] + 2);
          const __m512i right = t < 4 ? _mm512_loadu_si512(first + shift[2 * t + 1] + 2) : _mm512_setzero_si512();
          _mm512_store_si512(b + (9 + t) * 32, _mm512_permutex2var_epi16(left, by_cross, right));
        }
        _tile_loadd(1, b, 64);
        _tile_zero(2);
        _tile_dpbf16ps(2, 0, 1);
        _tile_stored(2, c, 64);
        for (int64_t o = 0; o < O; ++o) {
          const __m512 v = _mm512_add_ps(_mm512_load_ps(c + o * 16), _mm512_set1_ps(bias[o]));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(yn + ((o * D + z) * H + h) * W),
                              reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
        }
      }
  }
  release_tiles();
}

/// The forward on AMX tiles (amx_forward_fits): y [N, O, D, H, W] in bfloat16.
Tensor amx_forward(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t N = x.size(0), D = x.size(2), H = x.size(3), W = x.size(4), O = weight.size(0);
  // The weight's tile: row o, K 2 r + e the tap of pair r (r < 9: (jd, jh) = r, jw = e; 9 <= r < 14: jw = 2 of
  // (jd, jh) = 2 (r - 9) + e; rows 14 and 15 zero).
  std::vector<uint16_t> a(16 * 32, 0);
  const auto wb = weight.detach().to(torch::kBFloat16).contiguous();
  const auto* wp = reinterpret_cast<const uint16_t*>(wb.data_ptr<at::BFloat16>());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t r = 0; r < 14; ++r)
      for (int64_t e = 0; e < 2; ++e) {
        const int64_t jdh = r < 9 ? r : 2 * (r - 9) + e, jw = r < 9 ? e : 2;
        if (jdh < 9) a[static_cast<size_t>(o * 32 + 2 * r + e)] = wp[o * 27 + jdh * 3 + jw];
      }
  std::vector<float> b(static_cast<size_t>(O), 0.0f);
  if (bias.numel() > 0) {
    const auto bc = bias.detach().contiguous();
    std::copy(bc.data_ptr<float>(), bc.data_ptr<float>() + O, b.begin());
  }
  auto y = torch::empty({N, O, D, H, W}, x.options().dtype(torch::kBFloat16));
  const auto xc = x.contiguous();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    amx_forward_items(xc.data_ptr<float>(), n0, n1, D, H, W, O, a.data(), b.data(),
                      reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
  });
  return y;
}

// Under bf16-mixed on a CPU with AMX the weight and bias gradients are autocast's too (x rounded to bfloat16, the
// products summed in float32), on tiles: per 32 output voxels (R = 32 / W rows), C[taps, channels] += A B with A =
// the voxels' inputs at the 27 taps (one row per tap, two-source permutations of two loads of the bfloat16 grid per
// (jd, jh)) and a row of ones (whose sums are the bias's gradient), B = dy's 32 voxels of each channel in pairs, a
// 16 x 16 transpose of 32-bit pairs. The sums stay in two tile registers over an item slice (kSlice items), the
// slices' are added in order: the same bits at any thread count.
constexpr int64_t kSlice = 4;

bool amx_weight_fits(int64_t O, int64_t H, int64_t W) {
  return amx_forward_fits(O, H, W) && W * H >= 32 && H % (32 / W) == 0;
}

/// r[k] = the 32-bit column k of the 16 rows r (a 16 x 16 transpose of 32-bit elements, in registers).
ZOO_AVX512_BF16 inline void transpose16x16(__m512i (&r)[16]) {
  // The masked forms with every lane set: GCC 12 warns of the plain ones' undefined pass-through operand.
  const __mmask16 all = 0xFFFF;
  const __mmask8 all8 = 0xFF;
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_epi32(all, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_epi32(all, r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + c], 128-bit lane L: column 4 L + c of rows g .. g + 3
    u[g] = _mm512_maskz_unpacklo_epi64(all8, t[g], t[g + 2]);
    u[g + 1] = _mm512_maskz_unpackhi_epi64(all8, t[g], t[g + 2]);
    u[g + 2] = _mm512_maskz_unpacklo_epi64(all8, t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_maskz_unpackhi_epi64(all8, t[g + 1], t[g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i x0 = _mm512_maskz_shuffle_i32x4(all, u[c], u[4 + c], 0x88),
                  x1 = _mm512_maskz_shuffle_i32x4(all, u[c], u[4 + c], 0xdd);
    const __m512i y0 = _mm512_maskz_shuffle_i32x4(all, u[8 + c], u[12 + c], 0x88),
                  y1 = _mm512_maskz_shuffle_i32x4(all, u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_maskz_shuffle_i32x4(all, x0, y0, 0x88);
    r[4 + c] = _mm512_maskz_shuffle_i32x4(all, x1, y1, 0x88);
    r[8 + c] = _mm512_maskz_shuffle_i32x4(all, x0, y0, 0xdd);
    r[12 + c] = _mm512_maskz_shuffle_i32x4(all, x1, y1, 0xdd);
  }
}

/// Slices [s0, s1) of the N items (kSlice items each), each slice's sums [32 rows: 27 taps, the bias, 4 zero][16
/// channels] to sums + slice * 512, from x [N, 1, D, H, W] in float32 and dy [N, O, D, H, W] in bfloat16.
ZOO_AMX_BF16 ZOO_AVX512_BF16 void amx_weight_slices(const float* x, const uint16_t* dy, int64_t s0, int64_t s1,
                                                    int64_t N, int64_t D, int64_t H, int64_t W, int64_t O,
                                                    float* sums) {
  const int64_t Wg = W + 2, plane = (H + 2) * Wg, rows = 32 / W, volume = D * H * W;
  std::vector<uint16_t> grid(static_cast<size_t>((D + 2) * plane + 128), 0);
  alignas(64) uint16_t a[32 * 32] = {}, b[16 * 32];
  alignas(64) int16_t index[32];
  for (int64_t l = 0; l < 32; ++l) index[l] = static_cast<int16_t>(l / W * Wg + l % W);
  const __m512i at = _mm512_load_si512(index);
  for (int64_t l = 0; l < 32; ++l) a[27 * 32 + l] = 0x3F80;  // 1.0: the bias's row
  configure_tiles();
  for (int64_t slice = s0; slice < s1; ++slice) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t n = slice * kSlice; n < std::min(N, (slice + 1) * kSlice); ++n) {
      fill_grid(x + n * volume, grid.data(), D, H, W);
      for (int64_t z = 0; z < D; ++z)
        for (int64_t h = 0; h < H; h += rows) {
          const uint16_t* first = grid.data() + z * plane + h * Wg;  // tap (0, 0, 0) of voxel (z, h, 0)
          for (int64_t t = 0; t < 9; ++t) {
            const uint16_t* from = first + t / 3 * plane + t % 3 * Wg;
            const __m512i lo = _mm512_loadu_si512(from), hi = _mm512_loadu_si512(from + 32);
            for (int64_t jw = 0; jw < 3; ++jw)
              _mm512_store_si512(
                  a + (t * 3 + jw) * 32,
                  _mm512_permutex2var_epi16(lo, _mm512_add_epi16(at, _mm512_set1_epi16(static_cast<short>(jw))), hi));
          }
          __m512i r[16];
          for (int64_t o = 0; o < 16; ++o)
            r[o] = o < O ? _mm512_loadu_si512(dy + (n * O + o) * volume + (z * H + h) * W) : _mm512_setzero_si512();
          transpose16x16(r);
          for (int64_t k = 0; k < 16; ++k) _mm512_store_si512(b + k * 32, r[k]);
          _tile_loadd(2, a, 64);
          _tile_loadd(3, a + 16 * 32, 64);
          _tile_loadd(4, b, 64);
          _tile_dpbf16ps(0, 2, 4);
          _tile_dpbf16ps(1, 3, 4);
        }
    }
    _tile_stored(0, sums + slice * 512, 64);
    _tile_stored(1, sums + slice * 512 + 16 * 16, 64);
  }
  release_tiles();
}

/// The weight [O, 1, 3, 3, 3] and bias [O] gradients on AMX tiles (amx_weight_fits), in float32.
std::pair<Tensor, Tensor> amx_weight_grad(const Tensor& x, const Tensor& grad) {
  const auto xc = x.contiguous(), gy = grad.contiguous();
  const int64_t N = x.size(0), D = x.size(2), H = x.size(3), W = x.size(4), O = gy.size(1);
  const int64_t slices = (N + kSlice - 1) / kSlice;
  std::vector<float> sums(static_cast<size_t>(slices * 32 * 16));
  at::parallel_for(0, slices, 1, [&](int64_t s0, int64_t s1) {
    amx_weight_slices(xc.data_ptr<float>(), reinterpret_cast<const uint16_t*>(gy.data_ptr<at::BFloat16>()), s0, s1, N,
                      D, H, W, O, sums.data());
  });
  return weight_and_bias(O, x.options(), [&](int64_t o, int64_t k) {
    float total = 0;
    for (int64_t slice = 0; slice < slices; ++slice) total += sums[static_cast<size_t>((slice * 32 + k) * 16 + o)];
    return total;
  });
}

// The weight gradient [O, 1, 3, 3, 3] and the bias gradient [O] of a direct convolution, from the output's gradient
// in float32 or bfloat16 (read as it is: widening bfloat16 is exact).
std::pair<Tensor, Tensor> direct_weight_grad(const Tensor& xp, const Tensor& grad) {
  const auto gy = grad.scalar_type() == torch::kBFloat16 ? grad.contiguous() : grad.to(torch::kFloat32).contiguous();
  const int64_t O = gy.size(1), O4 = round_up(O, 4);
  Geometry g = geometry(xp, O);
  g.W = gy.size(4);
  const int64_t planes = g.N * g.D, chunks = std::min(planes, kChunks), per = (planes + chunks - 1) / chunks;
  const int64_t stride = O4 * 28 * 8;  // floats of one chunk's sums
  std::vector<float> sums(static_cast<size_t>(chunks * stride), 0.0f);
  const std::vector<float> zeros(static_cast<size_t>(g.H * g.W), 0.0f);  // the gradient of a group's missing channels
  const float* x = xp.data_ptr<float>();
  const int64_t work = per * g.H * g.W * O4 * 27;  // multiply-adds per chunk
  at::parallel_for(0, chunks, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      float* at = sums.data() + c * stride;
      const int64_t first = c * per, last = std::min(planes, (c + 1) * per);
      if (gy.scalar_type() == torch::kBFloat16)
        weight_planes(x, gy.data_ptr<c10::BFloat16>(), zeros.data(), g, at, first, last);
      else
        weight_planes(x, gy.data_ptr<float>(), zeros.data(), g, at, first, last);
    }
  });
  return weight_and_bias(O, xp.options(), [&](int64_t o, int64_t k) {
    float total = 0;
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t lane = 0; lane < 8; ++lane) total += sums[static_cast<size_t>(c * stride + (o * 28 + k) * 8 + lane)];
    return total;
  });
}

// The direct convolution, its output in float32 or, under bf16-mixed (`bfloat16`), in bfloat16: the float32 sums
// rounded in the kernel's stores, what autocast's cast of a float32 output gives, without the cast's pass over memory
// (and its gradient's back).
struct Conv3dFunction : public torch::autograd::Function<Conv3dFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, bool bfloat16) {
    if (bfloat16 && amx_forward_fits(weight.size(0), x.size(3), x.size(4))) {
      ctx->save_for_backward({Tensor(), x, weight, bias});  // the padded input made in the backward, if it runs
      ctx->saved_data["bfloat16"] = bfloat16;
      return amx_forward(x, weight, bias);
    }
    auto xp = pad(x);
    auto y = direct_forward(xp, x.size(4), weight, bias, bfloat16);
    ctx->save_for_backward({xp, x, weight, bias});
    ctx->saved_data["bfloat16"] = bfloat16;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[1], &weight = saved[2], &bias = saved[3];
    const auto& go = grads[0];
    const bool bfloat16 = ctx->saved_data["bfloat16"].toBool();
    torch::autograd::variable_list out(4);
    if (torch::GradMode::is_enabled()) {  // under create_graph: through torch::conv3d's autograd
      return gradients_through(
          ctx, {x, weight, bias},
          [&] {
            const auto y = reference(x, weight, bias.numel() > 0 ? bias : Tensor(), 1, 1, 1, 1);
            return bfloat16 ? y.to(torch::kBFloat16) : y;
          },
          go, 4);
    }
    if (ctx->needs_input_grad(0)) out[0] = torch::conv_transpose3d(go.to(torch::kFloat32), weight, {}, 1, 1);
    if (ctx->needs_input_grad(1) || (ctx->needs_input_grad(2) && bias.numel() > 0)) {
      const bool tiles =
          bfloat16 && go.scalar_type() == torch::kBFloat16 && amx_weight_fits(weight.size(0), x.size(3), x.size(4));
      auto [dweight, dbias] =
          tiles ? amx_weight_grad(x, go) : direct_weight_grad(saved[0].defined() ? saved[0] : pad(x), go);
      out[1] = dweight;
      if (bias.numel() > 0) out[2] = dbias;
    }
    return out;
  }
};
#endif  // ZOO_X86_KERNELS

}  // namespace

bool conv3d_direct_available(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                             torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups) {
  return cpu_has_avx2_fma() && !torch::jit::tracer::isTracing() && x.dim() == 5 && x.size(1) == 1 &&
         weight.dim() == 5 && weight.size(1) == 1 && weight.size(2) == 3 && weight.size(3) == 3 &&
         weight.size(4) == 3 && groups == 1 && all_equal(stride, 3, 1) && all_equal(padding, 3, 1) &&
         all_equal(dilation, 3, 1) && float32_cpu(x) && float32_cpu(weight) &&
         (!bias.defined() || (float32_cpu(bias) && bias.dim() == 1 && bias.size(0) == weight.size(0)));
}

bool conv3d_direct(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
                   torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups) {
  if (!conv3d_direct_available(x, weight, bias, stride, padding, dilation, groups)) return false;
  // The direct kernel's time grows with the groups of 4 output channels, oneDNN's with its blocks of 16, and one
  // block of 16 takes about as long as 3 groups of 4 (zoo_bench's Conv3dFirstLayer, 1 thread: 8 channels 1.66x
  // faster direct, 12 1.20x, 24 1.52x, 16 0.79x).
  const int64_t out = weight.size(0), groups4 = (out + 3) / 4, blocks16 = (out + 15) / 16;
  return groups4 <= 3 * blocks16;
}

Tensor conv3d(const Tensor& x, const Tensor& weight, const Tensor& bias, torch::IntArrayRef stride,
              torch::IntArrayRef padding, torch::IntArrayRef dilation, int64_t groups, Conv3dKernel kernel) {
  const bool direct =
      kernel == Conv3dKernel::direct ||
      (kernel == Conv3dKernel::automatic && conv3d_direct(x, weight, bias, stride, padding, dilation, groups));
  if (!direct) return library_conv3d(x, weight, bias, stride, padding, dilation, groups);
  TORCH_CHECK(conv3d_direct_available(x, weight, bias, stride, padding, dilation, groups),
              "conv3d's direct kernel is for x [N, 1, D, H, W] and a weight [O, 1, 3, 3, 3] with stride 1, padding 1, "
              "float32 CPU tensors, on an x86-64 CPU with AVX2 and FMA, outside a trace (got x ",
              x.sizes(), " ", x.scalar_type(), ", weight ", weight.sizes(), "); use Conv3dKernel::automatic");
#ifdef ZOO_X86_KERNELS
  if (x.numel() == 0) return reference(x, weight, bias, stride, padding, dilation, groups);
  // The autograd function takes tensors only: no bias is an empty one. Under bf16-mixed the kernel writes bfloat16,
  // under another autocast type autocast_result casts its float32.
  const auto low = cpu_autocast_type();
  const bool bfloat16 = low && *low == torch::kBFloat16;
  auto y = Conv3dFunction::apply(x, weight, bias.defined() ? bias : torch::empty({0}, x.options()), bfloat16);
  return bfloat16 ? y : autocast_result(y);
#else
  return {};
#endif
}

}  // namespace zoo::ops
