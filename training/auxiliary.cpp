#include "training/auxiliary.h"

#include "models/auxiliary.h"

#include <memory>
#include <string>
#include <vector>

namespace zoo::training {

int64_t attach_auxiliary_losses(Trainer& trainer) {
  struct Layer {
    std::string prefix;
    std::shared_ptr<models::AuxiliaryLoss> layer;
  };
  std::vector<Layer> layers;
  for (const auto& item : trainer.model().ptr()->named_modules()) {
    if (auto layer = std::dynamic_pointer_cast<models::AuxiliaryLoss>(item.value()))
      layers.push_back({item.key(), std::move(layer)});
  }
  if (layers.empty()) return 0;
  if (layers.size() == 1) layers.front().prefix.clear();
  for (auto& l : layers)
    if (!l.prefix.empty()) l.prefix += ".";
  trainer.add_loss_term("aux", [layers](torch::nn::Module&) {
    torch::Tensor total;
    for (const auto& l : layers)
      if (auto loss = l.layer->auxiliary_loss(); loss.defined()) total = total.defined() ? total + loss : loss;
    return total.defined() ? total : torch::zeros({});
  });
  trainer.add_log_terms([layers](torch::nn::Module&) {
    Terms terms;
    for (const auto& l : layers)
      for (auto& [name, value] : l.layer->auxiliary_statistics()) terms.emplace_back(l.prefix + name, value);
    return terms;
  });
  return static_cast<int64_t>(layers.size());
}

}  // namespace zoo::training
