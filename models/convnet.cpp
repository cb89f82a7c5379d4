#include "models/convnet.h"

#include "models/conv3d.h"
#include "models/conv4d.h"
#include "models/pretty.h"
#include "models/registry.h"
#include "ops/autocast.h"

namespace zoo::models {

namespace {
/// The constructor's checks, which the registry also runs on options without building the module.
void check_convnet(const ConvNetOptions& o) {
  TORCH_CHECK(o.dims() >= 1 && o.dims() <= 4, "ConvNet dims must be 1, 2, 3 or 4, got ", o.dims());
  TORCH_CHECK(!o.channels().empty(), "ConvNet needs at least one block (channels)");
  TORCH_CHECK(o.in_channels() > 0 && o.num_classes() > 0, "ConvNet in_channels and num_classes must be positive");
  for (int64_t c : o.channels()) TORCH_CHECK(c > 0, "ConvNet channels must be positive");
}
}  // namespace

ConvNetImpl::ConvNetImpl(ConvNetOptions options_) : options(std::move(options_)) { reset(); }

void ConvNetImpl::reset() {
  namespace nn = torch::nn;
  const auto& o = options;
  check_convnet(o);
  features = nn::Sequential();
  int64_t in = o.in_channels();
  for (size_t i = 0; i < o.channels().size(); ++i) {
    const int64_t out = o.channels()[i], stride = i == 0 ? 1 : 2;
    switch (o.dims()) {
      case 1:
        features->push_back(nn::Conv1d(nn::Conv1dOptions(in, out, 3).stride(stride).padding(1)));
        break;
      case 2:
        features->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1)));
        break;
      case 3:
        features->push_back(Conv3d(nn::Conv3dOptions(in, out, 3).stride(stride).padding(1)));
        break;
      default:
        features->push_back(Conv4d(Conv4dOptions(in, out, 3).stride(stride).padding(1)));
        break;
    }
    features->push_back(nn::ReLU());
    in = out;
  }
  head = nn::Linear(in, o.num_classes());
  register_module("features", features);
  register_module("head", head);
}

torch::Tensor ConvNetImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == options.dims() + 2 && x.size(1) == options.in_channels(), "ConvNet(dims=", options.dims(),
              ") expects [N, ", options.in_channels(), ", ", options.dims(), " axes], got ", x.sizes());
  // The global average pool and the head in float32 under mixed precision, as losses reduce: the pool is a sum over
  // every position, and the head's product of a few classes gains nothing in bfloat16 while its casts cost (with
  // float32_mean's broadcast gradient, 0.23-0.36 ms of the 1-D ConvNet's 3.3 ms bf16-mixed step).
  const auto pooled = ops::float32_mean(features->forward(x), 2);
  const ops::Float32Region float32_region;
  return head(pooled);
}

void ConvNetImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::ConvNet(dims=" << options.dims() << ", in_channels=" << options.in_channels()
         << ", channels=" << format_list(options.channels()) << ", num_classes=" << options.num_classes() << ")";
}

namespace {
ModelEntry convnet_entry(const std::string& name, const std::string& description, int64_t dims,
                         const std::string& dataset, int64_t classes, std::vector<int64_t> channels, int64_t epochs) {
  return ModelSpec<ConvNet, ConvNetOptions>(name, description)
      .defaults(ConvNetOptions().dims(dims).num_classes(classes).channels(channels))
      .task("classify")
      .dataset(dataset)
      .train_defaults({{"epochs", epochs}, {"optimizer", "adam"}, {"lr", 2e-3}, {"batch_size", 64}})
      .ZOO_OPTION(ConvNetOptions, dims)
      .ZOO_OPTION(ConvNetOptions, in_channels)
      .ZOO_OPTION(ConvNetOptions, channels)
      .ZOO_OPTION(ConvNetOptions, num_classes)
      .validate(check_convnet);
}
}  // namespace

ZOO_REGISTER_MODEL(conv1d) {
  return convnet_entry("conv1d", "1-D conv classifier (Conv1d) for signals, e.g. the waveforms dataset", 1, "waveforms",
                       4, {16, 32, 64}, 10);
}
ZOO_REGISTER_MODEL(conv3d) {
  return convnet_entry("conv3d", "3-D conv classifier (Conv3d) for volumes, e.g. the shapes3d dataset", 3, "shapes3d",
                       3, {8, 16, 32}, 10);
}
ZOO_REGISTER_MODEL(conv4d) {
  return convnet_entry("conv4d", "4-D conv classifier (zoo Conv4d: space + time), e.g. the motion4d dataset", 4,
                       "motion4d", 6, {8, 16}, 12);
}

}  // namespace zoo::models
