#include "models/cnn.h"

#include "models/batch_norm.h"
#include "models/dropout.h"
#include "models/pretty.h"
#include "models/registry.h"
#include "ops/max_pool.h"

namespace zoo::models {

CNNImpl::CNNImpl(CNNOptions options_) : options(std::move(options_)) { reset(); }

void check_conv_stem(int64_t image_size, const std::vector<int64_t>& channels, const std::string& model) {
  TORCH_CHECK(!channels.empty(), model, " needs at least one conv block (channels)");
  int64_t size = image_size;
  for (int64_t c : channels) {
    TORCH_CHECK(c > 0, model, " channels must be positive, got ", c);
    TORCH_CHECK(size >= 2, model, ": image_size ", image_size, " is too small for ", channels.size(), " pooling steps");
    size /= 2;
  }
}

torch::Tensor MaxPool2x2Impl::forward(const torch::Tensor& x) { return ops::max_pool2x2(x); }

void MaxPool2x2Impl::pretty_print(std::ostream& stream) const { stream << "zoo::MaxPool2x2(kernel_size=2, stride=2)"; }

ConvStem make_conv_stem(int64_t in_channels, int64_t image_size, const std::vector<int64_t>& channels,
                        const std::string& model) {
  namespace nn = torch::nn;
  check_conv_stem(image_size, channels, model);
  ConvStem stem{nn::Sequential(), in_channels, image_size};
  for (int64_t c : channels) {
    stem.features->push_back(nn::Conv2d(nn::Conv2dOptions(stem.channels, c, 3).padding(1).bias(false)));
    stem.features->push_back(BatchNorm2d(c));
    stem.features->push_back(nn::ReLU());
    stem.features->push_back(MaxPool2x2());
    stem.channels = c;
    stem.size /= 2;
  }
  return stem;
}

namespace {
/// The constructor's checks, which the registry also runs on options without building the module.
void check_cnn(const CNNOptions& o) {
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "CNN dropout must be in [0, 1)");
  TORCH_CHECK(o.in_channels() > 0 && o.hidden() > 0 && o.num_classes() > 0,
              "CNN in_channels, hidden and num_classes must be positive");
  check_conv_stem(o.image_size(), o.channels(), "CNN");
}
}  // namespace

void CNNImpl::reset() {
  namespace nn = torch::nn;
  check_cnn(options);
  const auto stem = make_conv_stem(options.in_channels(), options.image_size(), options.channels(), "CNN");
  features = stem.features;
  const int64_t flat = stem.channels * stem.size * stem.size;
  classifier = nn::Sequential(nn::Linear(flat, options.hidden()), nn::ReLU(), Dropout(options.dropout()),
                              nn::Linear(options.hidden(), options.num_classes()));
  register_module("features", features);
  register_module("classifier", classifier);
}

torch::Tensor CNNImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels() && x.size(2) == options.image_size() &&
                  x.size(3) == options.image_size(),
              "CNN expects [N, ", options.in_channels(), ", ", options.image_size(), ", ", options.image_size(),
              "], got ", x.sizes());
  return classifier->forward(features->forward(x).flatten(1));
}

void CNNImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::CNN(in_channels=" << options.in_channels() << ", image_size=" << options.image_size()
         << ", channels=" << format_list(options.channels()) << ", hidden=" << options.hidden()
         << ", num_classes=" << options.num_classes() << ", dropout=" << options.dropout() << ")";
}

ZOO_REGISTER_MODEL(cnn) {
  return ModelSpec<CNN, CNNOptions>("cnn", "convolutional classifier (2x conv-BN-ReLU-pool, 128 hidden)")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 3}, {"optimizer", "adam"}, {"lr", 2e-3}, {"schedule", "cosine"}, {"batch_size", 64}})
      .ZOO_OPTION(CNNOptions, in_channels)
      .ZOO_OPTION(CNNOptions, image_size)
      .ZOO_OPTION(CNNOptions, channels)
      .ZOO_OPTION(CNNOptions, hidden)
      .ZOO_OPTION(CNNOptions, num_classes)
      .ZOO_OPTION(CNNOptions, dropout)
      .validate(check_cnn);
}

}  // namespace zoo::models
