#include "models/resnet.h"

#include "core/schema.h"
#include "models/registry.h"

namespace zoo::models {

namespace nn = torch::nn;

namespace {

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

const Schema<ResNetOptions>& resnet_schema() {
  static const auto schema = [] {
    using O = ResNetOptions;
    Schema<O> s;
    s.add("depth", ZOO_FIELD(O, depth), "layers: 18, 34 (basic blocks), 50, 101, 152 (bottleneck blocks)")
        .check([](const json& v) {
          const auto d = v.get<int64_t>();
          return d == 18 || d == 34 || d == 50 || d == 101 || d == 152 ? "" : "must be 18, 34, 50, 101 or 152";
        });
    s.add("in_channels", ZOO_FIELD(O, in_channels), "channels of the input images (3: RGB, 1: grey)").at_least(1);
    s.add("num_classes", ZOO_FIELD(O, num_classes), "number of classes (logits); torchvision's default is 1000")
        .at_least(1);
    s.add("stem", ZOO_FIELD(O, stem),
          "imagenet: 7x7/2 conv and 3x3/2 max-pool (torchvision's); cifar: 3x3/1 conv, no pool (small images)")
        .one_of({"imagenet", "cifar"}, "stem");
    s.add("zero_init_residual", ZOO_FIELD(O, zero_init_residual),
          "start each block's last batch norm at weight 0, so every block starts as the identity");
    return s;
  }();
  return schema;
}

}  // namespace

std::vector<int64_t> resnet_stage_blocks(int64_t depth) {
  switch (depth) {
    case 18:
      return {2, 2, 2, 2};
    case 34:
    case 50:
      return {3, 4, 6, 3};
    case 101:
      return {3, 4, 23, 3};
    case 152:
      return {3, 8, 36, 3};
    default:
      TORCH_CHECK(false, "resnet: depth must be 18, 34, 50, 101 or 152, got ", depth);
  }
}

// ---- one block -----------------------------------------------------------------------------------------------

ResNetBlockImpl::ResNetBlockImpl(ResNetBlockOptions options_) : options(std::move(options_)) { reset(); }

int64_t ResNetBlockImpl::out_channels() const { return options.bottleneck() ? 4 * options.planes() : options.planes(); }

void ResNetBlockImpl::reset() {
  const int64_t in = options.in_channels(), planes = options.planes(), stride = options.stride();
  TORCH_CHECK(in > 0 && planes > 0 && stride > 0, "ResNetBlock: in_channels, planes and stride must be positive");
  if (options.bottleneck()) {
    conv1 = register_module("conv1", conv(in, planes, 1, 1));
    bn1 = register_module("bn1", BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, stride));
    bn2 = register_module("bn2", BatchNorm2d(planes));
    conv3 = register_module("conv3", conv(planes, 4 * planes, 1, 1));
    bn3 = register_module("bn3", BatchNorm2d(4 * planes));
  } else {
    conv1 = register_module("conv1", conv(in, planes, 3, stride));
    bn1 = register_module("bn1", BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, 1));
    bn2 = register_module("bn2", BatchNorm2d(planes));
  }
  if (stride != 1 || in != out_channels())
    downsample =
        register_module("downsample", nn::Sequential(conv(in, out_channels(), 1, stride), BatchNorm2d(out_channels())));
}

BatchNorm2d ResNetBlockImpl::last_bn() const { return options.bottleneck() ? bn3 : bn2; }

torch::Tensor ResNetBlockImpl::forward(const torch::Tensor& x) {
  auto y = torch::relu(bn1(conv1(x)));
  y = bn2(conv2(y));
  if (options.bottleneck()) y = bn3(conv3(torch::relu(y)));
  return torch::relu(y + (downsample ? downsample->forward(x) : x));
}

void ResNetBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ResNetBlock(" << (options.bottleneck() ? "bottleneck" : "basic")
         << ", in_channels=" << options.in_channels() << ", planes=" << options.planes()
         << ", stride=" << options.stride() << ")";
}

// ---- the network ---------------------------------------------------------------------------------------------

ResNetImpl::ResNetImpl(ResNetOptions options_) : options(std::move(options_)) { reset(); }

void ResNetImpl::reset() {
  check_options(resnet_schema(), options, "resnet");
  const bool cifar = options.stem() == "cifar";
  conv1 =
      register_module("conv1", cifar ? conv(options.in_channels(), 64, 3, 1) : conv(options.in_channels(), 64, 7, 2));
  bn1 = register_module("bn1", BatchNorm2d(64));
  const bool bottleneck = options.depth() >= 50;
  const auto blocks = resnet_stage_blocks(options.depth());
  int64_t channels = 64;
  nn::Sequential* stages[] = {&layer1, &layer2, &layer3, &layer4};
  for (size_t i = 0; i < 4; ++i) {
    nn::Sequential stage;
    const int64_t planes = int64_t{64} << i;
    for (int64_t b = 0; b < blocks[i]; ++b) {
      ResNetBlock block(ResNetBlockOptions(channels, planes).stride(b == 0 && i > 0 ? 2 : 1).bottleneck(bottleneck));
      channels = block->out_channels();
      stage->push_back(block);
    }
    *stages[i] = register_module("layer" + std::to_string(i + 1), stage);
  }
  fc = register_module("fc", nn::Linear(channels, options.num_classes()));

  // torchvision's initialisation; fc keeps nn.Linear's own (as in torchvision).
  torch::NoGradGuard no_grad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(c->weight, 0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = m->as<BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (options.zero_init_residual())
    for (auto* stage : stages)
      for (auto& block : *(*stage)) nn::init::zeros_(block.get<ResNetBlock>()->last_bn()->weight);
}

torch::Tensor ResNetImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "resnet", options.depth(), " expects [N, ",
              options.in_channels(), ", H, W], got ", x.sizes());
  auto y = torch::relu(bn1(conv1(x)));
  if (options.stem() == "imagenet") y = torch::max_pool2d(y, 3, 2, 1);
  y = layer4->forward(layer3->forward(layer2->forward(layer1->forward(y))));
  return fc(torch::adaptive_avg_pool2d(y, {1, 1}).flatten(1));
}

void ResNetImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ResNet(depth=" << options.depth() << ", in_channels=" << options.in_channels()
         << ", num_classes=" << options.num_classes() << ", stem=" << options.stem() << ")";
}

namespace {

ModelEntry resnet_entry(int64_t depth, const char* what) {
  return ModelSpec<ResNet, ResNetOptions>("resnet" + std::to_string(depth), what)
      .task("classify")
      .dataset("image-classes")
      .train_defaults({{"epochs", 10},
                       {"optimizer", "sgd"},
                       {"lr", 0.1},
                       {"momentum", 0.9},
                       {"weight_decay", 5e-4},
                       {"schedule", "cosine"},
                       {"batch_size", 128}})
      .defaults(ResNetOptions().depth(depth))
      .options(resnet_schema());
}

}  // namespace

ZOO_REGISTER_MODEL(resnet18) { return resnet_entry(18, "torchvision's ResNet-18 (basic blocks, 11.7M parameters)"); }
ZOO_REGISTER_MODEL(resnet34) { return resnet_entry(34, "torchvision's ResNet-34 (basic blocks, 21.8M parameters)"); }
ZOO_REGISTER_MODEL(resnet50) { return resnet_entry(50, "torchvision's ResNet-50 (bottlenecks, 25.6M parameters)"); }

}  // namespace zoo::models
