// A plugin for the `zoo` tool built outside the tree: a model and a callback of its own, loaded with
// `zoo --plugin libtiny_plugin.so train tiny --callback stop-below ...` (docs/extending.md, "Plugins").
#include "callback_example.h"

#include <core/plugins.h>
#include <models/registry.h>

ZOO_PLUGIN();

struct TinyOptions {
  TORCH_ARG(int64_t, hidden) = 32;
  TORCH_ARG(int64_t, num_classes) = 10;
};

class TinyImpl : public torch::nn::Cloneable<TinyImpl> {
 public:
  explicit TinyImpl(TinyOptions o = {}) : options(o) { reset(); }
  void reset() override {
    fc1 = register_module("fc1", torch::nn::Linear(784, options.hidden()));
    fc2 = register_module("fc2", torch::nn::Linear(options.hidden(), options.num_classes()));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x.flatten(1)))); }
  TinyOptions options;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Tiny);

ZOO_REGISTER_MODEL(tiny) {
  return zoo::models::ModelSpec<Tiny, TinyOptions>("tiny", "two-layer perceptron from a plugin")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 3}, {"lr", 1e-3}})
      .ZOO_OPTION(TinyOptions, hidden)
      .ZOO_OPTION(TinyOptions, num_classes);
}

static const zoo::Registrar<zoo::training::CallbackEntry> stop_below{
    {"stop-below", "stops when the training loss falls below 10 (a plugin's example)",
     [] { return std::make_shared<StopBelow>(10.0); }}};
