#include "ops/max_pool.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cmath>
#include <cstdint>

namespace zoo::ops {

namespace {

using torch::Tensor;

torch::Tensor reference(const Tensor& x) { return torch::max_pool2d(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}); }

/// Each plane's outputs and the position (0..3, row-major) of the maximum in each 2x2 window.
template <typename T>
void pool_forward(const T* x, T* y, uint8_t* where, int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < Ho; ++i) {
        const T* r0 = x + (p * H + 2 * i) * W;
        const T* r1 = r0 + W;
        T* out = y + (p * Ho + i) * Wo;
        uint8_t* pos = where + (p * Ho + i) * Wo;
        for (int64_t j = 0; j < Wo; ++j) {
          // LibTorch's rule, starting from the first element: a larger value or a NaN takes over.
          float best = static_cast<float>(r0[2 * j]);
          uint8_t k = 0;
          const float v1 = static_cast<float>(r0[2 * j + 1]), v2 = static_cast<float>(r1[2 * j]),
                      v3 = static_cast<float>(r1[2 * j + 1]);
          if (v1 > best || std::isnan(v1)) best = v1, k = 1;
          if (v2 > best || std::isnan(v2)) best = v2, k = 2;
          if (v3 > best || std::isnan(v3)) best = v3, k = 3;
          out[j] = static_cast<T>(best);
          pos[j] = k;
        }
      }
    }
  });
}

/// gx (zeros) gets each window's gradient at the window's maximum.
template <typename T>
void pool_backward(const T* gy, const uint8_t* where, T* gx, int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < Ho; ++i) {
        T* r0 = gx + (p * H + 2 * i) * W;
        T* r1 = r0 + W;
        const T* g = gy + (p * Ho + i) * Wo;
        const uint8_t* pos = where + (p * Ho + i) * Wo;
        for (int64_t j = 0; j < Wo; ++j) (pos[j] < 2 ? r0 : r1)[2 * j + (pos[j] & 1)] = g[j];
      }
    }
  });
}

struct MaxPool2x2Function : public torch::autograd::Function<MaxPool2x2Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x) {
    const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / (H * W);
    auto sizes = x.sizes().vec();
    sizes[sizes.size() - 2] = H / 2;
    sizes[sizes.size() - 1] = W / 2;
    auto y = torch::empty(sizes, x.options());
    auto where = torch::empty(sizes, x.options().dtype(torch::kUInt8));
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool2x2", [&] {
      pool_forward<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), planes, H, W);
    });
    ctx->save_for_backward({x, where});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &where = saved[1];
    if (torch::GradMode::is_enabled()) {  // create_graph: a gradient that is differentiable again
      const auto y = reference(x);
      return {torch::autograd::grad({y}, {x}, {grads[0]}, /*retain_graph=*/true, /*create_graph=*/true)[0]};
    }
    const auto gy = grads[0].to(x.scalar_type()).contiguous();
    const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / (H * W);
    auto gx = torch::zeros_like(x, torch::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "max_pool2x2_backward", [&] {
      pool_backward<scalar_t>(gy.data_ptr<scalar_t>(), where.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), planes, H,
                              W);
    });
    return {gx};
  }
};

}  // namespace

Tensor max_pool2x2(const Tensor& x, bool fast) {
  const auto type = x.scalar_type();
  const bool loop = fast && !torch::jit::tracer::isTracing() && x.device().is_cpu() && (x.dim() == 3 || x.dim() == 4) &&
                    x.is_contiguous() &&
                    (type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kBFloat16) &&
                    x.size(-2) >= 2 && x.size(-1) >= 2 && x.numel() > 0;
  return loop ? MaxPool2x2Function::apply(x) : reference(x);
}

}  // namespace zoo::ops
