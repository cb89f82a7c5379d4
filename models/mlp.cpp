#include "models/mlp.h"

#include "models/dropout.h"
#include "models/pretty.h"
#include "models/registry.h"

namespace zoo::models {

namespace {
/// The constructor's checks, which the registry also runs on options without building the module.
void check_mlp(const MLPOptions& o) {
  TORCH_CHECK(o.in_features() > 0 && o.num_classes() > 0, "MLP needs in_features > 0 and num_classes > 0");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "MLP dropout must be in [0, 1)");
  for (int64_t h : o.hidden()) TORCH_CHECK(h > 0, "MLP hidden sizes must be positive, got ", h);
}
}  // namespace

MLPImpl::MLPImpl(MLPOptions options_) : options(std::move(options_)) { reset(); }

void MLPImpl::reset() {
  check_mlp(options);
  net = torch::nn::Sequential();
  int64_t width = options.in_features();
  for (int64_t h : options.hidden()) {
    net->push_back(torch::nn::Linear(width, h));
    net->push_back(torch::nn::ReLU());
    if (options.dropout() > 0) net->push_back(Dropout(options.dropout()));
    width = h;
  }
  net->push_back(torch::nn::Linear(width, options.num_classes()));
  register_module("net", net);
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2 && x[0].numel() == options.in_features(), "MLP expects [N, ...] with ",
              options.in_features(), " features per item, got ", x.sizes());
  return net->forward(x.flatten(1));
}

void MLPImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::MLP(in_features=" << options.in_features() << ", hidden=" << format_list(options.hidden())
         << ", num_classes=" << options.num_classes() << ", dropout=" << options.dropout() << ")";
}

ZOO_REGISTER_MODEL(mlp) {
  return ModelSpec<MLP, MLPOptions>("mlp", "multilayer perceptron classifier (784-256-128-10, ReLU)")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults(
          {{"epochs", 10}, {"optimizer", "adam"}, {"lr", 1e-3}, {"schedule", "cosine"}, {"batch_size", 128}})
      .ZOO_OPTION(MLPOptions, in_features)
      .ZOO_OPTION(MLPOptions, hidden)
      .ZOO_OPTION(MLPOptions, num_classes)
      .ZOO_OPTION(MLPOptions, dropout)
      .validate(check_mlp);
}

}  // namespace zoo::models
