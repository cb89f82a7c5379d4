#include "models/registry.h"

#include <stdexcept>

namespace zoo::models {

std::pair<torch::nn::AnyModule, json> build_model(const std::string& name, const json& options) {
  const auto& entry = ModelRegistry::instance().at(name);
  json complete = entry.complete_options(options);
  return {entry.build(complete), complete};
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace zoo::models
