// Encoder-decoder networks for semantic segmentation, in 2-D (images) and 3-D (volumes).
//
//   U-Net (Ronneberger, Fischer, Brox, MICCAI 2015, arXiv 1505.04597), "same"-padded as milesial/Pytorch-UNet:
//     encoder level i:  DoubleConv(c_{i-1} -> c_i), c_i = base * 2^i, then 2x max-pool (not after the bottleneck)
//     decoder level i:  up(c_{i+1} -> c_i) (2x2 transposed conv, or bilinear upsampling + 3x3 conv), then
//                       concat [skip_i, up] along channels (2 c_i) -> DoubleConv(2 c_i -> c_i)
//     head:             1x1 conv c_0 -> num_classes (logits per pixel)
//   DeconvNet (Noh, Hong, Han, ICCV 2015, arXiv 1505.04366; the segmentation network, not Zeiler & Fergus 2014's
//   visualisation deconvnet): the same encoder, pooling with indices ("switches"); decoder level i:
//     reduce(c_{i+1} -> c_i, 3x3 conv-BN-ReLU), max-unpool with level i's switches, DoubleConv(c_i -> c_i).
//   No skip connections: fine detail reaches the decoder only through the switches. At equal width the two have
//   nearly the same number of parameters (35 c_i^2 against 36 c_i^2 per decoder level with 3x3 kernels).
//
// DoubleConv = 2 x (3x3 conv with padding 1 and no bias, batch norm, ReLU). `dims` = 2 uses Conv2d/BatchNorm2d/
// MaxPool2d/ConvTranspose2d, `dims` = 3 their 3-D versions. Inputs of any size: with `pad` (default) the input is
// zero-padded at the end of each axis to a multiple of 2^(levels-1) and the output cropped back, so the output
// always has the input's spatial size; without it a size that is not such a multiple is an error naming the
// sizes that work. Input [N, in_channels, *spatial], output [N, num_classes, *spatial].
#pragma once

#include "core/schema.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace zoo::models {

/// 2 x (3x3 conv (no bias), batch norm, ReLU) as `double_conv` = Sequential of 6, like milesial's DoubleConv.
struct DoubleConvOptions {
  DoubleConvOptions(int64_t dims, int64_t in_channels, int64_t out_channels)
      : dims_(dims), in_channels_(in_channels), out_channels_(out_channels) {}
  TORCH_ARG(int64_t, dims);
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
};

class DoubleConvImpl : public torch::nn::Cloneable<DoubleConvImpl> {
 public:
  explicit DoubleConvImpl(DoubleConvOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x) { return double_conv->forward(x); }
  void pretty_print(std::ostream& stream) const override;

  DoubleConvOptions options;
  torch::nn::Sequential double_conv{nullptr};
};
TORCH_MODULE(DoubleConv);

/// What U-Net and DeconvNet share: their input, their encoder (a DoubleConv per level, 2x max-pooled between
/// levels) and the padding of inputs to a size the encoder takes.
struct EncoderOptions {
  /// 2 (images: Conv2d, ...) or 3 (volumes: Conv3d, ...).
  TORCH_ARG(int64_t, dims) = 2;
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Resolutions, bottleneck included: 4 = three poolings.
  TORCH_ARG(int64_t, levels) = 4;
  /// Channels of the first level; level i has base_channels * 2^i.
  TORCH_ARG(int64_t, base_channels) = 64;
  /// Pad inputs to a multiple of 2^(levels-1) and crop the output back (false: such sizes only).
  TORCH_ARG(bool, pad) = true;
};

/// The encoder's settings: names, docs and checks (nested as "encoder" in both models' options).
const Schema<EncoderOptions>& encoder_schema();

struct UNetOptions {
  TORCH_ARG(EncoderOptions, encoder) = {};
  /// Background + the 10 Fashion-MNIST classes of the `scenes` dataset.
  TORCH_ARG(int64_t, num_classes) = 11;
  /// "transpose" (2x2 transposed conv, stride 2) or "bilinear" (bilinear/trilinear x2, then a 3x3 conv).
  TORCH_ARG(std::string, upsample) = "transpose";
};

/// One U-Net decoder level: `up` (ConvTranspose; or, for bilinear, interpolation then a 3x3 Conv), then the
/// concatenation with the skip, then `conv` (DoubleConv).
class UNetUpImpl : public torch::nn::Cloneable<UNetUpImpl> {
 public:
  UNetUpImpl(int64_t dims, int64_t in_channels, int64_t out_channels, std::string upsample);
  void reset() override;
  /// up(x), concatenated after `skip` along channels, through conv.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);
  /// The upsampled map before concatenation: up(x), or up(interpolate(x, x2)) for bilinear.
  torch::Tensor upsample(const torch::Tensor& x);

  int64_t dims, in_channels, out_channels;
  std::string mode;
  torch::nn::AnyModule up;
  DoubleConv conv{nullptr};
};
TORCH_MODULE(UNetUp);

class UNetImpl : public torch::nn::Cloneable<UNetImpl> {
 public:
  explicit UNetImpl(UNetOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// The encoder's output at every level, finest first (the last is the bottleneck); `x` must already have a
  /// size divisible by multiple().
  std::vector<torch::Tensor> encode(const torch::Tensor& x);
  /// Logits from encode()'s features: the bottleneck goes up, level by level, concatenated with features[i].
  torch::Tensor decode(const std::vector<torch::Tensor>& features);
  /// Spatial sizes must be a multiple of this (2^(levels-1)); with `pad` any size works.
  int64_t multiple() const { return int64_t{1} << (options.encoder().levels() - 1); }
  /// The two halves of every skip concatenation of the last forward/decode, deepest first: [skip, upsampled].
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>>& last_concats() const {
    return last_concats_;
  }
  void pretty_print(std::ostream& stream) const override;

  UNetOptions options;
  torch::nn::ModuleList encoder{nullptr};  ///< DoubleConv per level, finest first
  torch::nn::ModuleList decoder{nullptr};  ///< UNetUp per level, deepest first (levels - 1 of them)
  torch::nn::AnyModule head;               ///< 1x1 conv to num_classes

 private:
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> last_concats_;
};
TORCH_MODULE(UNet);

struct DeconvNetOptions {
  TORCH_ARG(EncoderOptions, encoder) = {};
  TORCH_ARG(int64_t, num_classes) = 11;
};

/// One DeconvNet decoder level: `reduce` (3x3 conv-BN-ReLU, c_{i+1} -> c_i), max-unpool, `conv` (DoubleConv).
class DeconvNetUpImpl : public torch::nn::Cloneable<DeconvNetUpImpl> {
 public:
  DeconvNetUpImpl(int64_t dims, int64_t in_channels, int64_t out_channels);
  void reset() override;
  /// Unpools reduce(x) to `size` with the switches of the matching encoder level (ops::max_pool_with_switches).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& switches, const std::vector<int64_t>& size);

  int64_t dims, in_channels, out_channels;
  torch::nn::Sequential reduce{nullptr};
  DoubleConv conv{nullptr};
};
TORCH_MODULE(DeconvNetUp);

class DeconvNetImpl : public torch::nn::Cloneable<DeconvNetImpl> {
 public:
  explicit DeconvNetImpl(DeconvNetOptions options = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  int64_t multiple() const { return int64_t{1} << (options.encoder().levels() - 1); }
  void pretty_print(std::ostream& stream) const override;

  DeconvNetOptions options;
  torch::nn::ModuleList encoder{nullptr};
  torch::nn::ModuleList decoder{nullptr};
  torch::nn::AnyModule head;
};
TORCH_MODULE(DeconvNet);

/// Multiply-accumulates of one forward pass of the convolutions (batch norm, ReLU and pooling left out) of a
/// U-Net or DeconvNet with these settings on one input of the given spatial size, counted analytically; FLOPs
/// are twice this. For throughput figures (benchmarks), not for the models themselves.
double segmentation_macs(const std::string& model, int64_t dims, int64_t in_channels, int64_t num_classes,
                         int64_t levels, int64_t base_channels, const std::string& upsample,
                         const std::vector<int64_t>& spatial);

}  // namespace zoo::models
