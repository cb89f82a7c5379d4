// ResNet, as torchvision builds it (He et al. 2016, "Deep Residual Learning for Image Recognition"):
//
//   stem:    conv1 7x7/2 (no bias) -> bn1 -> ReLU -> 3x3/2 max-pool          ("imagenet", torchvision's)
//            conv1 3x3/1 (no bias) -> bn1 -> ReLU                            ("cifar": small images keep their size)
//   layer1..layer4: blocks of y = ReLU(F(x) + shortcut(x)), 64, 128, 256, 512 planes, stride 2 from layer2 on
//     basic (resnet18, 34):      F = conv3x3 -> BN -> ReLU -> conv3x3 -> BN
//     bottleneck (resnet50..):   F = conv1x1 -> BN -> ReLU -> conv3x3 (the stride, "ResNet v1.5") -> BN -> ReLU
//                                    -> conv1x1 (4x the planes) -> BN
//     shortcut: identity, or conv1x1/stride -> BN ("downsample") where the shape changes
//   head:    global average pool -> fc
//
// Parameter and buffer names are torchvision's (conv1.weight, layer1.0.bn1.running_mean, layer2.0.downsample.0.weight,
// fc.bias), so torch.save(torchvision.models.resnet18().state_dict()) imports name for name; initialisation is
// torchvision's too (Kaiming-normal fan-out convolutions, BN weight 1 and bias 0, optionally the last BN of each
// block zeroed: "zero_init_residual", Goyal et al. 2017).
#pragma once

#include "models/batch_norm.h"

#include <torch/torch.h>

#include <string>

namespace zoo::models {

struct ResNetOptions {
  TORCH_ARG(int64_t, depth) = 18;  ///< 18, 34 (basic blocks), 50, 101, 152 (bottlenecks)
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, num_classes) = 1000;
  TORCH_ARG(std::string, stem) = "imagenet";  ///< "imagenet" (7x7/2 + max-pool) or "cifar" (3x3/1, no pool)
  TORCH_ARG(bool, zero_init_residual) = false;
};

/// One residual block; `bottleneck` picks the three-convolution form. Submodules: conv1, bn1, conv2, bn2, (conv3,
/// bn3,) and downsample (a Sequential of conv and BN) when stride or width change.
struct ResNetBlockOptions {
  ResNetBlockOptions(int64_t in_channels, int64_t planes) : in_channels_(in_channels), planes_(planes) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, planes);
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(bool, bottleneck) = false;
};

class ResNetBlockImpl : public torch::nn::Cloneable<ResNetBlockImpl> {
 public:
  explicit ResNetBlockImpl(ResNetBlockOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// The block's output channels: planes, or 4 * planes for a bottleneck.
  int64_t out_channels() const;
  /// The batch norm that ends the residual branch (bn2 or bn3): zero_init_residual sets its weight to 0.
  BatchNorm2d last_bn() const;
  void pretty_print(std::ostream& stream) const override;

  ResNetBlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(ResNetBlock);

class ResNetImpl : public torch::nn::Cloneable<ResNetImpl> {
 public:
  explicit ResNetImpl(ResNetOptions options = {});
  void reset() override;
  /// x: [N, in_channels, H, W], any H, W the stem and three stride-2 stages leave at least 1 pixel of; returns
  /// logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  ResNetOptions options;
  torch::nn::Conv2d conv1{nullptr};
  BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ResNet);

/// Blocks per stage of a depth: 18 {2,2,2,2}, 34 {3,4,6,3}, 50 {3,4,6,3}, 101 {3,4,23,3}, 152 {3,8,36,3}.
std::vector<int64_t> resnet_stage_blocks(int64_t depth);

}  // namespace zoo::models
