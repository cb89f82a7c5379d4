#include "ops/packed_gemm.h"
#include "ops/autocast.h"

#include "ops/simd.h"

namespace zoo::ops {

namespace {

constexpr int64_t kPanel = 16;  // output columns per panel: two AVX registers

#ifdef ZOO_X86_KERNELS
// R rows of x times one panel (K x 16): lo[r] and hi[r] hold columns 0-7 and 8-15 of output row r.
template <int R>
ZOO_AVX2_FMA inline void panel_rows(const float* x, int64_t ldx, const float* panel, int64_t K, __m256 (&lo)[R],
                                    __m256 (&hi)[R]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel), b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
      lo[r] = _mm256_fmadd_ps(a, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(a, b1, hi[r]);
    }
  }
}

template <int R>
ZOO_AVX2_FMA void block(const float* x, int64_t ldx, const float* add, int64_t lda, float* out, int64_t ldo,
                        const float* panel, int64_t K, int64_t n, int64_t N) {
  __m256 lo[R], hi[R];
  panel_rows<R>(x, ldx, panel, K, lo, hi);
  // Unrolled (here and above) so that the accumulators stay in registers rather than in an array on the stack.
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo + n;
    const float* a = add ? add + r * lda + n : nullptr;
    if (N - n >= kPanel) {
      if (a) {
        lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(a));
        hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(a + 8));
      }
      _mm256_storeu_ps(o, lo[r]);
      _mm256_storeu_ps(o + 8, hi[r]);
    } else {  // the last, partial panel
      alignas(32) float row[kPanel];
      _mm256_store_ps(row, lo[r]);
      _mm256_store_ps(row + 8, hi[r]);
      for (int64_t j = 0; j < N - n; ++j) o[j] = a ? row[j] + a[j] : row[j];
    }
  }
}

ZOO_AVX2_FMA void kernel(const float* x, int64_t ldx, const float* add, int64_t lda, float* out, int64_t ldo,
                         const float* packed, int64_t M, int64_t K, int64_t N, int64_t panel_begin, int64_t panel_end) {
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const float* panel = packed + p * K * kPanel;
    const int64_t n = p * kPanel;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
      block<4>(x + m * ldx, ldx, add ? add + m * lda : nullptr, lda, out + m * ldo, ldo, panel, K, n, N);
    for (; m < M; ++m)
      block<1>(x + m * ldx, ldx, add ? add + m * lda : nullptr, lda, out + m * ldo, ldo, panel, K, n, N);
  }
}

#endif

}  // namespace

PackedWeight::PackedWeight(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32 && weight.device().is_cpu(),
              "PackedWeight expects a float32 CPU weight [N, K], got ", weight.sizes(), " ", weight.scalar_type());
  torch::NoGradGuard no_grad;
  n_ = weight.size(0);
  k_ = weight.size(1);
  const int64_t panels = (n_ + kPanel - 1) / kPanel;
  auto padded = torch::constant_pad_nd(weight.detach(), {0, 0, 0, panels * kPanel - n_});  // [panels * 16, K]
  packed_ = padded.view({panels, kPanel, k_}).transpose(1, 2).contiguous();                // [panels, K, 16]
}

bool PackedWeight::usable(const torch::Tensor& x) {
  return cpu_has_avx2_fma() && !autocast_enabled() && x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
}

torch::Tensor PackedWeight::addmm(const torch::Tensor& add, const torch::Tensor& x) const {
  TORCH_CHECK(defined(), "PackedWeight::addmm on an empty PackedWeight");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k_ && x.scalar_type() == torch::kFloat32 && x.device().is_cpu(),
              "PackedWeight::addmm expects x [M, ", k_, "] float32 on the CPU, got ", x.sizes());
  const int64_t M = x.size(0);
  TORCH_CHECK(!add.defined() || (add.sizes() == torch::IntArrayRef({M, n_}) && add.scalar_type() == torch::kFloat32),
              "PackedWeight::addmm expects add [", M, ", ", n_, "] float32, got ", add.sizes());
#ifdef ZOO_X86_KERNELS
  TORCH_CHECK(cpu_has_avx2_fma(), "PackedWeight::addmm needs AVX2 and FMA (check PackedWeight::usable first)");
  const auto xs = x.stride(1) == 1 ? x : x.contiguous();
  const auto as = !add.defined() || add.stride(1) == 1 ? add : add.contiguous();
  auto out = torch::empty({M, n_}, x.options());
  const float* xp = xs.data_ptr<float>();
  const float* ap = as.defined() ? as.data_ptr<float>() : nullptr;
  const int64_t ldx = xs.stride(0), lda = as.defined() ? as.stride(0) : 0;
  float* op = out.data_ptr<float>();
  const float* pp = packed_.data_ptr<float>();
  // One thread: at these sizes (25 us for [8 x 128] x [128 x 1024]) waking a second costs more than it saves
  // (measured: 46 us with at::parallel_for over the panels on 2 threads).
  kernel(xp, ldx, ap, lda, op, n_, pp, M, k_, n_, 0, packed_.size(0));
  return out;
#else
  TORCH_CHECK(false, "PackedWeight::addmm needs an x86-64 CPU with AVX2 and FMA (check PackedWeight::usable first)");
  return {};
#endif
}

}  // namespace zoo::ops
