#include "models/segmentation.h"

#include "models/batch_norm.h"
#include "models/conv3d.h"
#include "models/conv_transpose.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/max_pool.h"

#include <fmt/format.h>
#include <cmath>

namespace zoo::models {

namespace nn = torch::nn;

namespace {

void check_dims(int64_t dims, const char* what) {
  TORCH_CHECK(dims == 2 || dims == 3, what, " dims must be 2 (images) or 3 (volumes), got ", dims);
}

nn::AnyModule make_conv(int64_t dims, int64_t in, int64_t out, int64_t kernel, int64_t padding, bool bias) {
  if (dims == 2) return nn::AnyModule(nn::Conv2d(nn::Conv2dOptions(in, out, kernel).padding(padding).bias(bias)));
  return nn::AnyModule(Conv3d(nn::Conv3dOptions(in, out, kernel).padding(padding).bias(bias)));
}

nn::AnyModule make_batch_norm(int64_t dims, int64_t channels) {
  if (dims == 2) return nn::AnyModule(BatchNorm2d(channels));
  return nn::AnyModule(BatchNorm3d(channels));
}

nn::AnyModule make_conv_transpose(int64_t dims, int64_t in, int64_t out) {
  if (dims == 2) return nn::AnyModule(ConvTranspose2d(nn::ConvTranspose2dOptions(in, out, 2).stride(2)));
  return nn::AnyModule(ConvTranspose3d(nn::ConvTranspose3dOptions(in, out, 2).stride(2)));
}

std::string join_sizes(const std::vector<int64_t>& sizes) { return fmt::format("{}", fmt::join(sizes, "x")); }

/// Pads `x` at the end of every spatial axis to a multiple of `multiple`, or (without `pad`) refuses sizes that
/// are not such a multiple, naming the nearest sizes that work.
torch::Tensor fit_input(const torch::Tensor& x, int64_t dims, int64_t in_channels, int64_t multiple, bool pad,
                        const char* model) {
  TORCH_CHECK(x.dim() == dims + 2 && x.size(1) == in_channels, model, "(dims=", dims, ") expects [N, ", in_channels,
              ", ", dims == 2 ? "H, W" : "D, H, W", "], got ", x.sizes());
  std::vector<int64_t> sizes(x.sizes().begin() + 2, x.sizes().end()), pads, down, up;
  bool fits = true;
  for (int64_t d = dims - 1; d >= 0; --d) {  // constant_pad_nd lists the last axis first
    const int64_t s = sizes[static_cast<size_t>(d)], target = (s + multiple - 1) / multiple * multiple;
    pads.push_back(0);
    pads.push_back(target - s);
    fits = fits && target == s;
  }
  if (fits) return x;
  if (!pad) {
    for (int64_t s : sizes) {
      down.push_back(std::max(multiple, s / multiple * multiple));
      up.push_back((s + multiple - 1) / multiple * multiple);
    }
    TORCH_CHECK(false, fmt::format("{} input size {} is not a multiple of {} (2^(levels-1)) on every axis: use e.g. "
                                   "{} or {}, or the option encoder.pad=true",
                                   model, join_sizes(sizes), multiple, join_sizes(down), join_sizes(up)));
  }
  return torch::constant_pad_nd(x, pads, 0);
}

torch::Tensor crop_to(const torch::Tensor& y, const torch::Tensor& x) {
  auto out = y;
  for (int64_t d = 2; d < x.dim(); ++d)
    if (out.size(d) != x.size(d)) out = out.narrow(d, 0, x.size(d));
  return out;
}

torch::Tensor max_pool(const torch::Tensor& x, int64_t dims) {
  // The loops of ops/max_pool.h; in a trace they record torch::max_pool2d / max_pool3d with every size given for
  // every axis (ATen reads a single 0 or 1 as all axes, torch.onnx copies it as it is).
  return dims == 2 ? ops::max_pool2x2(x) : ops::max_pool2x2x2(x);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

DoubleConvImpl::DoubleConvImpl(DoubleConvOptions options_) : options(options_) { reset(); }

void DoubleConvImpl::reset() {
  const auto& o = options;
  check_dims(o.dims(), "DoubleConv");
  TORCH_CHECK(o.in_channels() > 0 && o.out_channels() > 0, "DoubleConv channels must be positive");
  double_conv = nn::Sequential();
  double_conv->push_back(make_conv(o.dims(), o.in_channels(), o.out_channels(), 3, 1, false));
  double_conv->push_back(make_batch_norm(o.dims(), o.out_channels()));
  double_conv->push_back(nn::ReLU());
  double_conv->push_back(make_conv(o.dims(), o.out_channels(), o.out_channels(), 3, 1, false));
  double_conv->push_back(make_batch_norm(o.dims(), o.out_channels()));
  double_conv->push_back(nn::ReLU());
  register_module("double_conv", double_conv);
}

void DoubleConvImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::DoubleConv(dims=" << options.dims() << ", " << options.in_channels() << " -> "
         << options.out_channels() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

const Schema<EncoderOptions>& encoder_schema() {
  static const auto schema = [] {
    using O = EncoderOptions;
    Schema<O> s;
    s.add("dims", ZOO_FIELD(O, dims), "2: images (Conv2d, ...); 3: volumes (Conv3d, ...)").check([](const json& v) {
      return v == 2 || v == 3 ? "" : "must be 2 (images) or 3 (volumes), got " + v.dump();
    });
    s.add("in_channels", ZOO_FIELD(O, in_channels), "channels of the input").at_least(1);
    s.add("levels", ZOO_FIELD(O, levels), "resolutions, bottleneck included (4: three poolings)")
        .at_least(1)
        .at_most(8);
    s.add("base_channels", ZOO_FIELD(O, base_channels), "channels of the first level (level i: base * 2^i)")
        .at_least(1);
    s.add("pad", ZOO_FIELD(O, pad), "pad inputs to a multiple of 2^(levels-1), crop the output back");
    return s;
  }();
  return schema;
}

namespace {

/// The settings U-Net and DeconvNet share: the encoder (nested) and the classes. Flat keys of zoo 0.1 stay valid.
template <typename Options>
Schema<Options> segmentation_schema() {
  Schema<Options> s;
  s.nest("encoder", ZOO_FIELD(Options, encoder), encoder_schema());
  s.add("num_classes", ZOO_FIELD(Options, num_classes), "classes per pixel, background included").at_least(2);
  for (const auto& setting : encoder_schema().settings()) s.alias(setting.name, "encoder." + setting.name);
  return s;
}

const Schema<UNetOptions>& unet_schema() {
  static const auto schema = [] {
    auto s = segmentation_schema<UNetOptions>();
    s.add("upsample", ZOO_FIELD(UNetOptions, upsample), "transpose (2x2 transposed conv) or bilinear (+ 3x3 conv)")
        .one_of({"transpose", "bilinear"}, "upsample mode");
    return s;
  }();
  return schema;
}

const Schema<DeconvNetOptions>& deconvnet_schema() {
  static const auto schema = segmentation_schema<DeconvNetOptions>();
  return schema;
}

/// The encoder both networks share: DoubleConv per level, c_i = base 2^i.
nn::ModuleList make_encoder(const EncoderOptions& o) {
  nn::ModuleList encoder;
  int64_t in = o.in_channels();
  for (int64_t i = 0; i < o.levels(); ++i) {
    encoder->push_back(DoubleConv(DoubleConvOptions(o.dims(), in, o.base_channels() << i)));
    in = o.base_channels() << i;
  }
  return encoder;
}
}  // namespace

UNetUpImpl::UNetUpImpl(int64_t dims_, int64_t in_channels_, int64_t out_channels_, std::string upsample_)
    : dims(dims_), in_channels(in_channels_), out_channels(out_channels_), mode(std::move(upsample_)) {
  reset();
}

void UNetUpImpl::reset() {
  TORCH_CHECK(mode == "transpose" || mode == "bilinear", "U-Net upsample must be transpose or bilinear, got '", mode,
              "'");
  // transpose: a 2x2 stride-2 transposed conv; bilinear: F.interpolate(x2) in forward, then this 3x3 conv
  up = mode == "transpose" ? make_conv_transpose(dims, in_channels, out_channels)
                           : make_conv(dims, in_channels, out_channels, 3, 1, true);
  register_module("up", up.ptr());
  conv = DoubleConv(DoubleConvOptions(dims, 2 * out_channels, out_channels));
  register_module("conv", conv);
}

torch::Tensor UNetUpImpl::upsample(const torch::Tensor& x) {
  if (mode == "transpose") return up.forward(x);
  namespace F = torch::nn::functional;
  auto options = F::InterpolateFuncOptions()
                     .scale_factor(std::vector<double>(static_cast<size_t>(dims), 2.0))
                     .align_corners(false);
  options.mode(dims == 2 ? F::InterpolateFuncOptions::mode_t(torch::kBilinear)
                         : F::InterpolateFuncOptions::mode_t(torch::kTrilinear));
  return up.forward(F::interpolate(x, options));
}

torch::Tensor UNetUpImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  return conv(torch::cat({skip, upsample(x)}, 1));
}

// ---------------------------------------------------------------------------------------------------------------

UNetImpl::UNetImpl(UNetOptions options_) : options(std::move(options_)) { reset(); }

void UNetImpl::reset() {
  check_options(unet_schema(), options, "UNet");
  const auto& o = options.encoder();
  encoder = make_encoder(o);
  decoder = nn::ModuleList();
  for (int64_t i = o.levels() - 2; i >= 0; --i)
    decoder->push_back(UNetUp(o.dims(), o.base_channels() << (i + 1), o.base_channels() << i, options.upsample()));
  head = make_conv(o.dims(), o.base_channels(), options.num_classes(), 1, 0, true);
  register_module("encoder", encoder);
  register_module("decoder", decoder);
  register_module("head", head.ptr());
}

std::vector<torch::Tensor> UNetImpl::encode(const torch::Tensor& x) {
  std::vector<torch::Tensor> features;
  auto h = x;
  for (size_t i = 0; i < encoder->size(); ++i) {
    if (i > 0) h = max_pool(h, options.encoder().dims());
    h = encoder[i]->as<DoubleConvImpl>()->forward(h);
    features.push_back(h);
  }
  return features;
}

torch::Tensor UNetImpl::decode(const std::vector<torch::Tensor>& features) {
  TORCH_CHECK(features.size() == encoder->size(), "UNet::decode needs ", encoder->size(), " feature maps, got ",
              features.size());
  last_concats_.clear();
  auto h = features.back();
  for (size_t k = 0; k < decoder->size(); ++k) {
    auto* up = decoder[k]->as<UNetUpImpl>();
    const auto& skip = features[features.size() - 2 - k];
    auto u = up->upsample(h);
    last_concats_.emplace_back(skip.sizes().vec(), u.sizes().vec());
    h = up->conv(torch::cat({skip, u}, 1));
  }
  return head.forward(h);
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x) {
  const auto& e = options.encoder();
  auto input = fit_input(x, e.dims(), e.in_channels(), multiple(), e.pad(), "UNet");
  return crop_to(decode(encode(input)), x);
}

void UNetImpl::pretty_print(std::ostream& stream) const {
  const auto& e = options.encoder();
  stream << "zoo::UNet(dims=" << e.dims() << ", in_channels=" << e.in_channels()
         << ", num_classes=" << options.num_classes() << ", levels=" << e.levels()
         << ", base_channels=" << e.base_channels() << ", upsample=" << options.upsample() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

DeconvNetUpImpl::DeconvNetUpImpl(int64_t dims_, int64_t in_channels_, int64_t out_channels_)
    : dims(dims_), in_channels(in_channels_), out_channels(out_channels_) {
  reset();
}

void DeconvNetUpImpl::reset() {
  reduce = nn::Sequential();
  reduce->push_back(make_conv(dims, in_channels, out_channels, 3, 1, false));
  reduce->push_back(make_batch_norm(dims, out_channels));
  reduce->push_back(nn::ReLU());
  register_module("reduce", reduce);
  conv = DoubleConv(DoubleConvOptions(dims, out_channels, out_channels));
  register_module("conv", conv);
}

torch::Tensor DeconvNetUpImpl::forward(const torch::Tensor& x, const torch::Tensor& switches,
                                       const std::vector<int64_t>& size) {
  return conv(ops::max_unpool(reduce->forward(x), switches, size));
}

DeconvNetImpl::DeconvNetImpl(DeconvNetOptions options_) : options(std::move(options_)) { reset(); }

void DeconvNetImpl::reset() {
  check_options(deconvnet_schema(), options, "DeconvNet");
  const auto& o = options.encoder();
  encoder = make_encoder(o);
  decoder = nn::ModuleList();
  for (int64_t i = o.levels() - 2; i >= 0; --i)
    decoder->push_back(DeconvNetUp(o.dims(), o.base_channels() << (i + 1), o.base_channels() << i));
  head = make_conv(o.dims(), o.base_channels(), options.num_classes(), 1, 0, true);
  register_module("encoder", encoder);
  register_module("decoder", decoder);
  register_module("head", head.ptr());
}

torch::Tensor DeconvNetImpl::forward(const torch::Tensor& x) {
  const auto& e = options.encoder();
  const int64_t dims = e.dims();
  auto h = fit_input(x, dims, e.in_channels(), multiple(), e.pad(), "DeconvNet");
  std::vector<torch::Tensor> switches;
  std::vector<std::vector<int64_t>> sizes;
  for (size_t i = 0; i < encoder->size(); ++i) {
    if (i > 0) {
      sizes.emplace_back(h.sizes().begin() + 2, h.sizes().end());
      auto [pooled, where] = ops::max_pool_with_switches(h, dims);
      h = pooled;
      switches.push_back(where);
    }
    h = encoder[i]->as<DoubleConvImpl>()->forward(h);
  }
  for (size_t k = 0; k < decoder->size(); ++k) {
    const size_t level = switches.size() - 1 - k;
    h = decoder[k]->as<DeconvNetUpImpl>()->forward(h, switches[level], sizes[level]);
  }
  return crop_to(head.forward(h), x);
}

void DeconvNetImpl::pretty_print(std::ostream& stream) const {
  const auto& e = options.encoder();
  stream << "zoo::DeconvNet(dims=" << e.dims() << ", in_channels=" << e.in_channels()
         << ", num_classes=" << options.num_classes() << ", levels=" << e.levels()
         << ", base_channels=" << e.base_channels() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

double segmentation_macs(const std::string& model, int64_t dims, int64_t in_channels, int64_t num_classes,
                         int64_t levels, int64_t base_channels, const std::string& upsample,
                         const std::vector<int64_t>& spatial) {
  const double k = dims == 2 ? 9.0 : 27.0;  // 3x3 or 3x3x3 taps
  double pixels = 1;
  for (int64_t s : spatial) pixels *= static_cast<double>(s);
  auto p = [&](int64_t level) { return pixels / std::pow(2.0, static_cast<double>(dims * level)); };
  auto c = [&](int64_t level) { return static_cast<double>(base_channels << level); };
  double macs = 0;
  for (int64_t i = 0; i < levels; ++i) {  // encoder: two 3x3 convs per level
    const double in = i == 0 ? static_cast<double>(in_channels) : c(i - 1);
    macs += k * (in * c(i) + c(i) * c(i)) * p(i);
  }
  for (int64_t i = levels - 2; i >= 0; --i) {
    if (model == "unet") {
      // 2x2 stride-2 transposed conv: one tap per output pixel and input channel; or a 3x3 conv after upsampling
      macs += (upsample == "bilinear" ? k : 1.0) * c(i + 1) * c(i) * p(i);
      macs += k * (2 * c(i) * c(i) + c(i) * c(i)) * p(i);
    } else {
      macs += k * c(i + 1) * c(i) * p(i + 1);          // reduce, at the coarse resolution
      macs += k * (c(i) * c(i) + c(i) * c(i)) * p(i);  // DoubleConv after unpooling
    }
  }
  return macs + c(0) * static_cast<double>(num_classes) * p(0);
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

json segmentation_train_defaults(int64_t dims) {
  // Volumes: fewer, costlier items, so smaller batches give the optimizer more steps for the same compute.
  const bool images = dims == 2;
  return {{"epochs", images ? 3 : 5},
          {"optimizer", "adam"},
          {"lr", 2e-3},
          {"batch_size", images ? 32 : 8},
          {"eval_batch_size", images ? 100 : 20},
          {"schedule", "cosine"}};
}

ModelEntry unet_entry(const std::string& name, const std::string& description, UNetOptions base,
                      const std::string& dataset) {
  return ModelSpec<UNet, UNetOptions>(name, description)
      .defaults(base)
      .task("segment")
      .dataset(dataset)
      .train_defaults(segmentation_train_defaults(base.encoder().dims()))
      .options(unet_schema());
}

ModelEntry deconvnet_entry(const std::string& name, const std::string& description, DeconvNetOptions base,
                           const std::string& dataset) {
  return ModelSpec<DeconvNet, DeconvNetOptions>(name, description)
      .defaults(base)
      .task("segment")
      .dataset(dataset)
      .train_defaults(segmentation_train_defaults(base.encoder().dims()))
      .options(deconvnet_schema());
}

}  // namespace

ZOO_REGISTER_MODEL(unet) {
  return unet_entry("unet", "U-Net segmenter: encoder-decoder with skip concatenation at every level (scenes)",
                    UNetOptions(), "scenes");
}
ZOO_REGISTER_MODEL(unet3d) {
  return unet_entry("unet3d", "3-D U-Net (Conv3d, MaxPool3d, ConvTranspose3d) for volumes",
                    UNetOptions().encoder(EncoderOptions().dims(3).levels(3).base_channels(16)).num_classes(4),
                    "volumes");
}
ZOO_REGISTER_MODEL(deconvnet) {
  return deconvnet_entry("deconvnet",
                         "DeconvNet segmenter (Noh et al. 2015): max-unpooling decoder, no skip connections (scenes)",
                         DeconvNetOptions(), "scenes");
}
ZOO_REGISTER_MODEL(deconvnet3d) {
  return deconvnet_entry(
      "deconvnet3d", "3-D DeconvNet (MaxUnpool3d) for volumes",
      DeconvNetOptions().encoder(EncoderOptions().dims(3).levels(3).base_channels(16)).num_classes(4), "volumes");
}

}  // namespace zoo::models
