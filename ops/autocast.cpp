#include "ops/autocast.h"
#include "ops/channels_last.h"
#include "ops/conv2d_bf16.h"
#include "ops/conv2d_one_channel.h"
#include "ops/conv3x3.h"
#include "ops/conv_weight_gradient.h"
#include "ops/group_norm.h"
#include "ops/relu.h"

#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/library.h>
#include <torch/version.h>

#include <mutex>

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
/// float32() of an optional operand (a bias, a norm's affine parameters): absent or undefined stays so.
c10::optional<at::Tensor> float32_optional(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? c10::optional<at::Tensor>(float32(*t)) : t;
}

#if TORCH_VERSION_MAJOR < 2
// LibTorch 1.13's CPU autocast has no rule for group_norm, whose kernel then refuses a bfloat16 input with float32
// affine parameters ("expected scalar type BFloat16 but found Float"; Python's torch.autocast fails alike). The rule
// here: zoo's group_norm (ops/group_norm.h) where it takes the operands, which reads the bfloat16 input as it is and
// hands a bfloat16 output on, with float32 statistics and parameters (PyTorch 2's mixed-type group norm); otherwise
// widen to float32 and run without autocast, the rule PyTorch gives such operations. (GroupNorm: the ODE-ResNet.)
// On a CPU with AMX the rule also hands 2-D maps on in channels-last memory where amx_channels_last says so (zoo's
// kernel reads and writes NHWC: ops/group_norm.h), so that the 3x3 convolutions around them, oneDNN's, take and give
// channels-last maps; the convolutions, ReLU (ops/relu.h), the solver's sums and the pooling keep the layout.
// (GroupNorm: the ODE-ResNet, one before each convolution, so its stem's output is converted once, by
// ops::to_channels_last.) The ODE-ResNet's bf16-mixed training step went 23.7-23.8 -> 20.1-20.4 ms, and 19.5-19.9 with
// zoo's transposes for the conversion (three alternating process pairs each, Intel Xeon, 2026-12-07;
// docs/precision.md).
at::Tensor group_norm_autocast(const at::Tensor& input, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias, double eps, bool cudnn_enabled) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto w = float32_optional(weight), b = float32_optional(bias);
  const at::Tensor none;
  if (group_norm_fast(input, num_groups, w.value_or(none), b.value_or(none))) {
    if (amx_channels_last(input.sizes()))
      return group_norm(to_channels_last(input), num_groups, w.value_or(none), b.value_or(none), eps);
    return group_norm(input, num_groups, w.value_or(none), b.value_or(none), eps);
  }
  return at::group_norm(float32(input), num_groups, w, b, eps, cudnn_enabled);
}
#endif

// A 3-D convolution over a single input channel whose weight gradient is wanted (the first layer of a volume
// network in training: conv3d, conv4d's frames, the 3-D U-Net and DeconvNet) computes in float32 under CPU autocast
// and hands its output on in bfloat16, as autocast's own rule would. oneDNN 2.6's bfloat16 weight gradient for it
// is slow: 11.9 ms against 3.3 in float32 for conv3d's first layer (64 x 16^3 volumes, 8 output channels, 1
// thread); in float32 the conv3d model's bf16-mixed training step takes 17-18 ms instead of 24-25 (docs/precision.md).
// Without a weight gradient (inference) bfloat16's forward is the faster one (2.6 ms against 3.4) and autocast's rule
// runs, as for every other convolution: input, weight and bias cast to bfloat16 (weights through autocast's cache),
// except, in training on a CPU with AMX, a strided one (every axis), whose weight gradient is zoo's
// (ops/conv_weight_gradient.h: oneDNN's AMX weight gradient is slow there).
bool conv_in_float32(const at::Tensor& input, const at::Tensor& weight, int64_t groups) {
  return groups == 1 && weight.dim() == 5 && weight.size(1) == 1 && input.scalar_type() == at::kFloat &&
         input.device().is_cpu() && at::GradMode::is_enabled() && weight.requires_grad();
}

at::Tensor conv3d_autocast(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (detail::conv3d_weight_gradient_applies(input, weight, bias, stride, padding, dilation, groups))
    return detail::conv3d_own_weight_gradient(input, weight, bias.value_or(at::Tensor()), stride, padding);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto low = dtype_of(c10::kCPU);
  if (conv_in_float32(input, weight, groups))
    return at::conv3d(input, float32(weight), float32_optional(bias), stride, padding, dilation, groups).to(low);
  using at::autocast::cached_cast;
  return at::conv3d(cached_cast(low, input, c10::kCPU), cached_cast(low, weight, c10::kCPU),
                    cached_cast(low, bias, c10::kCPU), stride, padding, dilation, groups);
}

// 1-D convolutions under CPU autocast in bfloat16, [N, C, L] as convolutions of one row, [N, C, 1, L]:
//  - on the CPUs that have AVX512-BF16 without AMX, zoo's direct bfloat16 kernel (ops/conv2d_bf16.h) where it takes
//    the geometry (1-7 taps, a stride up to the kernel, padding below it, no dilation, one group) and at most 64
//    channels in and out. oneDNN 2.6 reorders bfloat16 operands into its blocked layout and back on every call: the
//    1-D ConvNet's layers trained 1.02-1.42x faster in the kernel (zoo_bench ConvBf16, docs/precision.md).
//  - on CPUs with AMX (detail::cpu_has_amx_bf16()), every one: oneDNN's AMX kernel on a channels-last row, through
//    LibTorch's 2-D convolution, which hands the result on channels-last. LibTorch 1.13's own 1-D convolution makes
//    its input contiguous and copies oneDNN's channels-last output and input gradient back to contiguous [N, C, L]
//    (aten::contiguous, 0.45 ms of the 1-D ConvNet's 3.1 ms step under the profiler); this way the output is
//    [N, O, L] stored as [N, L, O], the next convolution and relu (ops/relu.h) take it as it is, and the 1-D
//    ConvNet trained 1.7x faster (2.55 -> 1.49 ms a step), with the same bits as autocast's rule (a test checks).
//    oneDNN's AMX kernels had trained it 1.36x faster than zoo's kernel already.
//  - elsewhere, autocast's own rule.
// 2-D convolutions stay with oneDNN in LibTorch's layout: on the models' 2-D layers the kernel trained within 0.9-1.1x
// of it (the ODE field's conv3x3 calls the kernel itself), and zoo's batch norm, group norm and pooling read
// contiguous maps. Outside a trace only: a trace records LibTorch's convolution, which TorchScript and Python load.
at::Tensor conv1d_autocast(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto low = dtype_of(c10::kCPU);
  auto cpu_float = [](const at::Tensor& t) {
    return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
  };
  if (low == at::kBFloat16 && groups == 1 && input.dim() == 3 && weight.dim() == 3 && stride.size() == 1 &&
      padding.size() == 1 && (dilation.size() == 1 && dilation[0] == 1) && cpu_float(input) && cpu_float(weight) &&
      (!bias.has_value() || !bias->defined() || cpu_float(*bias)) && weight.size(0) <= 64 && weight.size(1) <= 64 &&
      !torch::jit::tracer::isTracing() && detail::cpu_has_avx512_bf16() && !detail::cpu_has_amx_bf16()) {
    const auto x = input.unsqueeze(2), w = weight.unsqueeze(2);
    const std::vector<int64_t> s{1, stride[0]}, p{0, padding[0]};
    if (detail::conv2d_bf16_geometry(x, w, s, p))
      return detail::conv2d_bf16(x, w, bias.value_or(at::Tensor()), s, p).squeeze(2);
  }
  using at::autocast::cached_cast;
  if (low == at::kBFloat16 && input.dim() == 3 && weight.dim() == 3 && stride.size() == 1 && padding.size() == 1 &&
      dilation.size() == 1 && cpu_float(input) && cpu_float(weight) &&
      (!bias.has_value() || !bias->defined() || cpu_float(*bias)) && !torch::jit::tracer::isTracing() &&
      detail::cpu_has_amx_bf16()) {
    const auto x = to_channels_last(cached_cast(low, input, c10::kCPU).unsqueeze(2));
    const std::vector<int64_t> s{1, stride[0]}, p{0, padding[0]}, d{1, dilation[0]};
    return at::conv2d(x, cached_cast(low, weight, c10::kCPU).unsqueeze(2), cached_cast(low, bias, c10::kCPU), s, p, d,
                      groups)
        .squeeze(2);
  }
  return at::conv1d(cached_cast(low, input, c10::kCPU), cached_cast(low, weight, c10::kCPU),
                    cached_cast(low, bias, c10::kCPU), stride, padding, dilation, groups);
}

// 2-D convolutions under CPU autocast in bfloat16: autocast's rule (input, weight and bias cast to bfloat16, the
// weights through autocast's cache), except on CPUs with AVX512-BF16 and outside a trace for
//  - a 3x3 convolution of one input channel that needs no input gradient (the image networks' first layer): zoo's
//    kernel (ops/conv2d_one_channel.h), forward and weight gradient 2.6-3.7x faster than oneDNN's there;
//  - in training, narrow layers (at most 64 channels in and out) on small maps (at most 256 output pixels) of a batch
//    of 16 or more (ops/conv_weight_gradient.h): oneDNN's forward and input gradient with zoo's weight gradient, dot
//    products over pairs of neighbouring output pixels (not on CPUs with AMX, where oneDNN's own weight gradient is
//    faster and zoo's tile kernel faster still on small maps).
at::Tensor conv2d_autocast(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (detail::conv2d_one_channel_applies(input, weight, bias, stride, padding, dilation, groups))
    return detail::conv2d_one_channel(input, weight, bias.value_or(at::Tensor()), padding.front());
  if (detail::conv_weight_gradient_applies(input, weight, bias, stride, padding, dilation, groups))
    return detail::conv2d_own_weight_gradient(input, weight, bias.value_or(at::Tensor()), stride, padding);
  if (detail::conv2d_weight_tiles_applies(input, weight, bias, stride, padding, dilation, groups))
    return detail::conv2d_weight_by_tiles(input, weight, bias.value_or(at::Tensor()), padding);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto low = dtype_of(c10::kCPU);
  using at::autocast::cached_cast;
  return at::conv2d(cached_cast(low, input, c10::kCPU), cached_cast(low, weight, c10::kCPU),
                    cached_cast(low, bias, c10::kCPU), stride, padding, dilation, groups);
}

// ReLU under CPU autocast: zoo's kernel on bfloat16's 16-bit patterns (ops/relu.h), which LibTorch 1.13 widens to
// float32 and rounds back, slower than its float32 relu; any other input as LibTorch's relu. relu is not an autocast
// operation (no cast: a float32 input stays float32).
at::Tensor relu_autocast(const at::Tensor& x) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return zoo::ops::relu(x);
}

// Replacing LibTorch's autocast kernels for conv1d, conv2d and conv3d makes the dispatcher warn ("Overriding a
// previously registered kernel"); it is meant here, so the registration runs once, at the first AutocastScope, with
// warnings muted.
#if TORCH_VERSION_MAJOR >= 2
struct Mute : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};
using MuteGuard = c10::WarningUtils::WarningHandlerGuard;
#else
struct Mute : c10::WarningHandler {
  void process(const c10::SourceLocation&, const std::string&, const bool) override {}
};
using MuteGuard = c10::Warning::WarningHandlerGuard;
#endif

void register_rules() {
  static std::once_flag once;
  std::call_once(once, [] {
    Mute mute;
    MuteGuard guard(&mute);
    static auto* library = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::AutocastCPU, __FILE__,
                                              __LINE__);  // kept for the life of the process
    library->impl("conv1d", TORCH_FN(conv1d_autocast));
    library->impl("conv2d", TORCH_FN(conv2d_autocast));
    library->impl("conv3d", TORCH_FN(conv3d_autocast));
    library->impl("relu", TORCH_FN(relu_autocast));
  });
}
}  // namespace

// Autocast is on where its dispatch keys are not excluded in this thread, so a Float32Region (which excludes them)
// reads as off.
bool autocast_enabled() { return is_on(c10::kCPU) || is_on(c10::kCUDA); }

AutocastScope::AutocastScope(c10::DeviceType device_type, torch::ScalarType dtype, bool enabled)
    : enabled_(enabled), device_type_(device_type) {
  if (!enabled_) return;
  register_rules();
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

c10::optional<torch::ScalarType> cpu_autocast_type() {
  return is_on(c10::kCPU) ? c10::optional<torch::ScalarType>(dtype_of(c10::kCPU)) : c10::nullopt;
}

torch::Tensor autocast_result(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || t.scalar_type() != torch::kFloat32 || !is_on(c10::kCPU)) return t;
  return t.to(dtype_of(c10::kCPU));
}

torch::Tensor float32(const torch::Tensor& t) {
  if (!t.defined()) return t;
  const auto type = t.scalar_type();
  return type == torch::kBFloat16 || type == torch::kHalf ? t.to(torch::kFloat32) : t;
}

namespace {
struct Float32MeanFunction : public torch::autograd::Function<Float32MeanFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t start_dim) {
    ctx->saved_data["sizes"] = x.sizes().vec();
    ctx->saved_data["type"] = static_cast<int64_t>(x.scalar_type());
    const auto type = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    return x.flatten(start_dim).mean(-1, /*keepdim=*/false, type);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto type = static_cast<torch::ScalarType>(ctx->saved_data["type"].toInt());
    const auto& g = grads[0];  // [sizes[0 .. start_dim)]
    auto shape = g.sizes().vec();
    int64_t count = 1;
    for (size_t d = shape.size(); d < sizes.size(); ++d) count *= sizes[d];
    shape.resize(sizes.size(), 1);
    // Differentiable ops: under create_graph the gradient of this gradient (zero for x, as the mean is linear) is
    // LibTorch's.
    return {(g / static_cast<double>(count)).to(type).view(shape).expand(sizes), torch::Tensor()};
  }
};
}  // namespace

bool amx_channels_last(at::IntArrayRef maps) {
  if (maps.size() != 4 || maps[1] % 8 != 0 || !detail::cpu_has_amx_bf16()) return false;
  return !conv3x3_small_problem(maps[0], maps[2] * maps[3], maps[1], maps[1]);
}

torch::Tensor float32_mean(const torch::Tensor& x, int64_t start_dim) {
  TORCH_CHECK(x.is_floating_point(), "float32_mean takes a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(start_dim >= 1 && start_dim < x.dim(), "float32_mean averages axes ", start_dim, ".. of a tensor of ",
              x.dim(), " dimensions: start_dim must be 1 to ", x.dim() - 1);
  return Float32MeanFunction::apply(x, start_dim);
}

}  // namespace zoo::ops

#if TORCH_VERSION_MAJOR < 2
TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) { m.impl("group_norm", TORCH_FN(zoo::ops::group_norm_autocast)); }
#endif
