#include "ops/channels_last.h"

#include "ops/simd.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cstdint>

namespace zoo::ops {

namespace {

using torch::Tensor;

/// dst [K, R] = src [R, K] transposed, 16-bit elements: blocks of 8 x 8 through registers, the edges one by one.
void transpose16(const uint16_t* src, uint16_t* dst, int64_t R, int64_t K) {
  int64_t r0 = 0;
#ifdef ZOO_X86_KERNELS
  for (; r0 + 8 <= R; r0 += 8) {
    int64_t k0 = 0;
    for (; k0 + 8 <= K; k0 += 8) {
      __m128i t[8];
      for (int i = 0; i < 8; ++i) t[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (r0 + i) * K + k0));
      transpose8x8(t);
      for (int j = 0; j < 8; ++j) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (k0 + j) * R + r0), t[j]);
    }
    for (; k0 < K; ++k0)
      for (int64_t i = 0; i < 8; ++i) dst[k0 * R + r0 + i] = src[(r0 + i) * K + k0];
  }
#endif
  for (; r0 < R; ++r0)
    for (int64_t k = 0; k < K; ++k) dst[k * R + r0] = src[r0 * K + k];
}

/// out[n] = in[n] transposed as a [R, K] matrix of 16-bit values, for every item n of a bfloat16 tensor.
void transpose_items(const Tensor& in, Tensor& out, int64_t R, int64_t K) {
  const auto* src = reinterpret_cast<const uint16_t*>(in.data_ptr<at::BFloat16>());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t items = in.size(0), per_item = R * K;
  at::parallel_for(0, items, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, per_item)), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) transpose16(src + n * per_item, dst + n * per_item, R, K);
  });
}

bool bfloat16_cpu(const Tensor& t) {
  return t.defined() && t.dim() == 4 && t.device().is_cpu() && t.scalar_type() == torch::kBFloat16 &&
         t.layout() == torch::kStrided;
}

struct ToChannelsLastFunction : public torch::autograd::Function<ToChannelsLastFunction> {
  static Tensor forward(torch::autograd::AutogradContext* /*ctx*/, const Tensor& x) {
    auto out = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    transpose_items(x, out, x.size(1), x.size(2) * x.size(3));  // [C, H W] -> [H W, C] per item
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* /*ctx*/,
                                                 torch::autograd::variable_list grads) {
    const auto& g = grads[0];
    if (torch::GradMode::is_enabled() || !bfloat16_cpu(g) || !channels_last_only(g)) return {g.contiguous()};
    auto out = torch::empty(g.sizes(), g.options());
    transpose_items(g, out, g.size(2) * g.size(3), g.size(1));  // [H W, C] -> [C, H W] per item
    return {out};
  }
};

}  // namespace

namespace detail {
void transpose(const c10::BFloat16* src, c10::BFloat16* dst, int64_t R, int64_t K) {
  transpose16(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<uint16_t*>(dst), R, K);
}

void transpose(const float* src, float* dst, int64_t R, int64_t K) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) dst[k * R + r] = src[r * K + k];
}
}  // namespace detail

bool channels_last_only(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(torch::MemoryFormat::ChannelsLast);
}

Tensor to_channels_last(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "to_channels_last takes [N, C, H, W], got ", x.sizes());
  const auto last = torch::MemoryFormat::ChannelsLast;
  if (x.suggest_memory_format() == last) return x;
  if (bfloat16_cpu(x) && x.is_contiguous() && !torch::jit::tracer::isTracing()) return ToChannelsLastFunction::apply(x);
  // One channel (or one position) is channels-last and contiguous at once, and LibTorch reads such strides as
  // contiguous; contiguous() would keep them, a copy into channels-last strides does not.
  return x.is_contiguous(last) ? at::empty_like(x, last).copy_(x) : x.contiguous(last);
}

}  // namespace zoo::ops
