// Small convolutional classifier for 28x28 images:
//   features:   [Conv3x3(pad 1, no bias) -> BatchNorm -> ReLU -> MaxPool2] per entry of `channels`
//   classifier: Flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(num_classes)
// Fashion-MNIST reference: "2 Conv + pool" reaches ~0.916 (zalandoresearch benchmark table).
#pragma once

#include <torch/torch.h>

namespace zoo::models {

struct CNNOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(std::vector<int64_t>, channels) = std::vector<int64_t>{32, 64};
  TORCH_ARG(int64_t, hidden) = 128;
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(double, dropout) = 0.25;
};

/// torch::nn::MaxPool2d(2) computed by ops::max_pool2x2 (the same results, faster on CPU; a trace
/// records torch::max_pool2d): the pooling of the CNN stems (cnn, moe, mhc-resnet). No parameters.
class MaxPool2x2Impl : public torch::nn::Cloneable<MaxPool2x2Impl> {
 public:
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(MaxPool2x2);

/// The cnn's feature extractor, shared with models built on the same stem (moe): [Conv3x3(pad 1, no bias) ->
/// BatchNorm -> ReLU -> MaxPool2] per entry of `channels`, with its output channels and spatial size. `model`
/// names the caller in errors.
struct ConvStem {
  torch::nn::Sequential features{nullptr};
  int64_t channels = 0, size = 0;
};
ConvStem make_conv_stem(int64_t in_channels, int64_t image_size, const std::vector<int64_t>& channels,
                        const std::string& model);
/// make_conv_stem's checks alone (no layers built): at least one block, positive channels, an image that
/// survives every pooling.
void check_conv_stem(int64_t image_size, const std::vector<int64_t>& channels, const std::string& model);

/// Parameters are named like torchvision-style Python code: features.0.weight (conv), features.1.* (batch
/// norm), ..., classifier.0.weight, classifier.3.weight.
class CNNImpl : public torch::nn::Cloneable<CNNImpl> {
 public:
  explicit CNNImpl(CNNOptions options = {});
  void reset() override;
  /// x: [N, in_channels, image_size, image_size]; returns logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  CNNOptions options;
  torch::nn::Sequential features{nullptr};
  torch::nn::Sequential classifier{nullptr};
};
TORCH_MODULE(CNN);

}  // namespace zoo::models
