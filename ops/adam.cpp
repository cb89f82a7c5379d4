#include "ops/adam.h"

#include "ops/simd.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace zoo::ops {

AdamScalars AdamScalars::make(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                              bool amsgrad, int64_t step) {
  // Each value as LibTorch's Adam::step passes it to an ATen operation (a double Scalar, converted to float32 there).
  const double bias1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bias2 = 1 - std::pow(beta2, static_cast<double>(step));
  AdamScalars s;
  s.decay_scale = decoupled ? static_cast<float>(1 - lr * weight_decay) : 1.0f;
  s.has_l2 = !decoupled && weight_decay != 0;
  s.l2 = s.has_l2 ? static_cast<float>(weight_decay) : 0.0f;
  s.beta1 = static_cast<float>(beta1);
  s.one_minus_beta1 = static_cast<float>(1 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1 - beta2);
  s.sqrt_bias2 = static_cast<float>(std::sqrt(bias2));
  s.eps = static_cast<float>(eps);
  s.neg_step = static_cast<float>(-(lr / bias1));
  s.amsgrad = amsgrad;
  return s;
}

namespace {

/// ATen's vectorized kernels, without AVX2 or with it: ATEN_CPU_CAPABILITY=default makes them round each product
/// before the sum, which this kernel does not reproduce.
bool aten_vectorized() {
  const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
  return capability == nullptr || std::strcmp(capability, "default") != 0;
}

bool fits(const torch::Tensor& t, int64_t n) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.layout() == torch::kStrided &&
         t.is_contiguous() && t.numel() == n;
}

#ifdef ZOO_X86_KERNELS
/// A value the compiler must treat as computed: keeps a product rounded on its own where the source adds it after,
/// as ATen's kernels do, whatever a compiler's -ffp-contract allows (GCC 12 at -O3 does not contract these
/// intrinsics today; the tests would see it if one did).
ZOO_AVX2_FMA inline __m256 rounded(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}

/// NaN where either is NaN, else the larger: torch::maximum's rule (amsgrad's max_out).
ZOO_AVX2_FMA inline __m256 maximum(__m256 a, __m256 b) {
  const __m256 larger = _mm256_max_ps(a, b);
  return _mm256_blendv_ps(larger, _mm256_add_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

/// Eight elements of the update, in the order and roundings of ATen's operations (see the header).
ZOO_AVX2_FMA inline void update8(float* p, const float* g, float* m, float* v, float* vmax, const AdamScalars& s) {
  __m256 pv = _mm256_loadu_ps(p), gv = _mm256_loadu_ps(g);
  if (s.decay_scale != 1.0f) pv = rounded(_mm256_mul_ps(pv, _mm256_set1_ps(s.decay_scale)));  // p.mul_(1 - lr wd)
  if (s.has_l2) gv = _mm256_fmadd_ps(pv, _mm256_set1_ps(s.l2), gv);                           // grad.add(p, wd)
  // exp_avg.mul_(beta1).add_(grad, 1 - beta1)
  const __m256 mv = _mm256_fmadd_ps(gv, _mm256_set1_ps(s.one_minus_beta1),
                                    rounded(_mm256_mul_ps(_mm256_loadu_ps(m), _mm256_set1_ps(s.beta1))));
  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2): (value * grad) * grad + exp_avg_sq
  const __m256 vv = _mm256_fmadd_ps(rounded(_mm256_mul_ps(_mm256_set1_ps(s.one_minus_beta2), gv)), gv,
                                    rounded(_mm256_mul_ps(_mm256_loadu_ps(v), _mm256_set1_ps(s.beta2))));
  __m256 second = vv;
  if (s.amsgrad) {
    second = maximum(_mm256_loadu_ps(vmax), vv);
    _mm256_storeu_ps(vmax, second);
  }
  // (sqrt(v) / sqrt(1 - beta2^t)).add_(eps), then p.addcdiv_(exp_avg, denom, -step): p + (-step * m) / denom
  const __m256 denom = _mm256_add_ps(rounded(_mm256_div_ps(_mm256_sqrt_ps(second), _mm256_set1_ps(s.sqrt_bias2))),
                                     _mm256_set1_ps(s.eps));
  pv = _mm256_add_ps(pv, rounded(_mm256_div_ps(rounded(_mm256_mul_ps(_mm256_set1_ps(s.neg_step), mv)), denom)));
  _mm256_storeu_ps(p, pv);
  _mm256_storeu_ps(m, mv);
  _mm256_storeu_ps(v, vv);
}

/// Elements [begin, end) of the tensors; a last partial group of 8 goes through the same code on a padded copy (ATen's
/// scalar tails round as its vector code does, tested).
ZOO_AVX2_FMA void update_range(float* p, const float* g, float* m, float* v, float* vmax, int64_t begin, int64_t end,
                               const AdamScalars& s) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) update8(p + i, g + i, m + i, v + i, vmax ? vmax + i : nullptr, s);
  const int64_t rest = end - i;
  if (rest == 0) return;
  float P[8] = {}, G[8] = {}, M[8] = {}, V[8] = {}, X[8] = {};
  const auto bytes = static_cast<size_t>(rest) * sizeof(float);
  std::memcpy(P, p + i, bytes);
  std::memcpy(G, g + i, bytes);
  std::memcpy(M, m + i, bytes);
  std::memcpy(V, v + i, bytes);
  if (vmax) std::memcpy(X, vmax + i, bytes);
  update8(P, G, M, V, X, s);
  std::memcpy(p + i, P, bytes);
  std::memcpy(m + i, M, bytes);
  std::memcpy(v + i, V, bytes);
  if (vmax) std::memcpy(vmax + i, X, bytes);
}
#endif

}  // namespace

bool adam_update_fits(const torch::Tensor& p, const torch::Tensor& grad, const torch::Tensor& exp_avg,
                      const torch::Tensor& exp_avg_sq, const torch::Tensor& max_exp_avg_sq, const AdamScalars& s) {
  if (!cpu_has_avx2_fma() || !aten_vectorized() || !p.defined()) return false;
  const int64_t n = p.numel();
  return fits(p, n) && fits(grad, n) && fits(exp_avg, n) && fits(exp_avg_sq, n) &&
         (!s.amsgrad || fits(max_exp_avg_sq, n));
}

void adam_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                 torch::Tensor& max_exp_avg_sq, const AdamScalars& s) {
  TORCH_CHECK(adam_update_fits(p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, s),
              "adam_update: needs contiguous float32 CPU tensors of one size on a CPU with AVX2 + FMA");
#ifdef ZOO_X86_KERNELS
  float* pp = p.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  float* vmax = s.amsgrad ? max_exp_avg_sq.data_ptr<float>() : nullptr;
  // Chunks of whole groups of 8, so a thread's range never splits one (about 50 us of work per chunk).
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t n = p.numel(), chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    update_range(pp, g, m, v, vmax, b * kChunk, std::min(n, e * kChunk), s);
  });
#endif
}

}  // namespace zoo::ops
