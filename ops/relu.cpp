#include "ops/relu.h"

#include "ops/simd.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cstdint>

namespace zoo::ops {

namespace {

using torch::Tensor;

constexpr uint16_t kMagnitude = 0x7FFF, kInfinity = 0x7F80, kSign = 0x8000;

/// clamp_min(x, 0) of one bfloat16 pattern: zero for a negative number (sign set, magnitude in (0, inf]), else x.
inline uint16_t relu_bits(uint16_t x) {
  const uint16_t magnitude = x & kMagnitude;
  return (x & kSign) != 0 && magnitude != 0 && magnitude <= kInfinity ? uint16_t{0} : x;
}

/// threshold_backward(g, y, 0) of one pattern: g where y > 0 or y is NaN (y <= 0 fails), else zero.
inline uint16_t pass_bits(uint16_t g, uint16_t y) {
  const uint16_t magnitude = y & kMagnitude;
  return ((y & kSign) == 0 && magnitude != 0) || magnitude > kInfinity ? g : uint16_t{0};
}

#ifdef ZOO_X86_KERNELS
/// relu_bits of 16 patterns.
ZOO_AVX2_FMA inline __m256i relu16(__m256i x) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i magnitude = _mm256_and_si256(x, _mm256_set1_epi16(static_cast<int16_t>(kMagnitude)));
  const __m256i negative = _mm256_cmpgt_epi16(zero, x);  // sign set: -0, NaN and -inf included
  const __m256i kept = _mm256_or_si256(_mm256_cmpeq_epi16(magnitude, zero),
                                       _mm256_cmpgt_epi16(magnitude, _mm256_set1_epi16(kInfinity)));  // -0, NaN
  return _mm256_andnot_si256(_mm256_andnot_si256(kept, negative), x);
}

/// pass_bits of 16 patterns.
ZOO_AVX2_FMA inline __m256i pass16(__m256i g, __m256i y) {
  const __m256i magnitude = _mm256_and_si256(y, _mm256_set1_epi16(static_cast<int16_t>(kMagnitude)));
  const __m256i positive = _mm256_cmpgt_epi16(y, _mm256_setzero_si256());  // sign clear, not +0
  const __m256i nan = _mm256_cmpgt_epi16(magnitude, _mm256_set1_epi16(kInfinity));
  return _mm256_and_si256(g, _mm256_or_si256(positive, nan));
}

ZOO_AVX2_FMA void relu_range(const uint16_t* x, uint16_t* y, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        relu16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
  for (; i < end; ++i) y[i] = relu_bits(x[i]);
}

ZOO_AVX2_FMA void pass_range(const uint16_t* g, const uint16_t* y, uint16_t* gx, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(gx + i),
                        pass16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i))));
  for (; i < end; ++i) gx[i] = pass_bits(g[i], y[i]);
}
#endif

inline const uint16_t* bits(const Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
inline uint16_t* bits(Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

struct ReluFunction : public torch::autograd::Function<ReluFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x) {
    // x's own strides (a dense layout: contiguous, channels-last, an NLC-strided 1-D map): one flat loop over the
    // elements in memory order serves any of them.
    auto y = torch::empty_like(x);
    TORCH_INTERNAL_ASSERT(y.strides() == x.strides());
#ifdef ZOO_X86_KERNELS
    const uint16_t* in = bits(x);
    uint16_t* out = bits(y);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) { relu_range(in, out, begin, end); });
#endif
    ctx->save_for_backward({y});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto y = ctx->get_saved_variables()[0];
    const auto& g = grads[0];
    // create_graph (a gradient differentiable again), or a gradient the kernel does not take (another type, other
    // strides than the output's, an expanded view): LibTorch's own backward of relu.
    if (torch::GradMode::is_enabled() || g.scalar_type() != torch::kBFloat16 || !g.device().is_cpu() ||
        g.sizes() != y.sizes() || g.strides() != y.strides())
      return {torch::threshold_backward(g, y, 0)};
    auto gx = torch::empty_like(y);
#ifdef ZOO_X86_KERNELS
    const uint16_t *gy = bits(g), *out = bits(y);
    uint16_t* result = bits(gx);
    at::parallel_for(0, y.numel(), kGrain,
                     [&](int64_t begin, int64_t end) { pass_range(gy, out, result, begin, end); });
#endif
    return {gx};
  }
};

}  // namespace

namespace detail {
bool relu_kernel_applies(const Tensor& x) {
  return x.defined() && x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && x.layout() == torch::kStrided &&
         x.is_non_overlapping_and_dense() && cpu_has_avx2_fma() && !torch::jit::tracer::isTracing();
}
}  // namespace detail

Tensor relu(const Tensor& x) { return detail::relu_kernel_applies(x) ? ReluFunction::apply(x) : torch::relu(x); }

}  // namespace zoo::ops
