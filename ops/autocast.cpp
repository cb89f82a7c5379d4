#include "ops/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>
#include <torch/version.h>

namespace zoo::ops {

namespace {
// LibTorch 2.4 replaced the per-device functions (set_cpu_enabled, set_autocast_cpu_dtype, ...) by ones that take
// the device type; the old ones remain, deprecated.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool is_on(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
void set_on(c10::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
torch::ScalarType dtype_of(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
void set_dtype(c10::DeviceType d, torch::ScalarType t) { at::autocast::set_autocast_dtype(d, t); }
#else
bool is_on(c10::DeviceType d) { return d == c10::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled(); }
void set_on(c10::DeviceType d, bool on) {
  if (d == c10::kCPU)
    at::autocast::set_cpu_enabled(on);
  else
    at::autocast::set_enabled(on);
}
torch::ScalarType dtype_of(c10::DeviceType d) {
  return d == c10::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
}
void set_dtype(c10::DeviceType d, torch::ScalarType t) {
  if (d == c10::kCPU)
    at::autocast::set_autocast_cpu_dtype(t);
  else
    at::autocast::set_autocast_gpu_dtype(t);
}
#endif
}  // namespace

namespace {
#if TORCH_VERSION_MAJOR < 2
// LibTorch 1.13's CPU autocast has no rule for group_norm, whose kernel then refuses a bfloat16 input with float32
// affine parameters ("expected scalar type BFloat16 but found Float"; Python's torch.autocast fails alike). Give it
// the rule PyTorch gives such operations: widen to float32 and run without autocast. (GroupNorm: the ODE-ResNet.)
at::Tensor group_norm_float32(const at::Tensor& input, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                              const c10::optional<at::Tensor>& bias, double eps, bool cudnn_enabled) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  auto widen = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? c10::optional<at::Tensor>(float32(*t)) : t;
  };
  return at::group_norm(float32(input), num_groups, widen(weight), widen(bias), eps, cudnn_enabled);
}
#endif
}  // namespace

// Autocast is on where its dispatch keys are not excluded in this thread, so a Float32Region (which excludes them)
// reads as off.
bool autocast_enabled() { return is_on(c10::kCPU) || is_on(c10::kCUDA); }

AutocastScope::AutocastScope(c10::DeviceType device_type, torch::ScalarType dtype, bool enabled)
    : enabled_(enabled), device_type_(device_type) {
  if (!enabled_) return;
  TORCH_CHECK(device_type == c10::kCPU || device_type == c10::kCUDA, "autocast is for the CPU or CUDA, not ",
              device_type);
  was_enabled_ = is_on(device_type);
  was_dtype_ = dtype_of(device_type);
  set_on(device_type, true);
  set_dtype(device_type, dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_on(device_type_, was_enabled_);
  set_dtype(device_type_, was_dtype_);
}

Float32Region::Float32Region() : no_autocast_(c10::autocast_dispatch_keyset) {}

torch::Tensor float32(const torch::Tensor& t) {
  if (!t.defined()) return t;
  const auto type = t.scalar_type();
  return type == torch::kBFloat16 || type == torch::kHalf ? t.to(torch::kFloat32) : t;
}

}  // namespace zoo::ops

#if TORCH_VERSION_MAJOR < 2
TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) { m.impl("group_norm", TORCH_FN(zoo::ops::group_norm_float32)); }
#endif
