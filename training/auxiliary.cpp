#include "training/auxiliary.h"

#include "models/auxiliary.h"

#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

namespace {
/// Adds every AuxiliaryLoss layer's loss to the training loss (logged as "aux") and logs their statistics
/// (prefixed with the layer's name when there are several).
class AuxiliaryLossCallback : public Callback {
 public:
  struct Layer {
    std::string prefix;
    std::shared_ptr<models::AuxiliaryLoss> layer;
  };
  explicit AuxiliaryLossCallback(std::vector<Layer> layers) : layers_(std::move(layers)) {}

  void loss_terms(Trainer&, Terms& terms) override {
    torch::Tensor total;
    for (const auto& l : layers_)
      if (auto loss = l.layer->auxiliary_loss(); loss.defined()) total = total.defined() ? total + loss : loss;
    terms.emplace_back("aux", total.defined() ? total : torch::zeros({}));
  }
  void log_terms(Trainer&, Terms& terms) override {
    for (const auto& l : layers_)
      for (auto& [name, value] : l.layer->auxiliary_statistics()) terms.emplace_back(l.prefix + name, value);
  }

 private:
  std::vector<Layer> layers_;
};
}  // namespace

int64_t attach_auxiliary_losses(Trainer& trainer) {
  std::vector<AuxiliaryLossCallback::Layer> layers;
  for (const auto& item : trainer.model().ptr()->named_modules()) {
    if (auto layer = std::dynamic_pointer_cast<models::AuxiliaryLoss>(item.value()))
      layers.push_back({item.key(), std::move(layer)});
  }
  if (layers.empty()) return 0;
  if (layers.size() == 1) layers.front().prefix.clear();
  for (auto& l : layers)
    if (!l.prefix.empty()) l.prefix += ".";
  const auto n = static_cast<int64_t>(layers.size());
  trainer.add_callback(std::make_shared<AuxiliaryLossCallback>(std::move(layers)));
  return n;
}

}  // namespace zoo::training
