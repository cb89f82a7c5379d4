#include "models/registry.h"

#include <stdexcept>

namespace zoo::models {

ModelRegistry& ModelRegistry::instance() {
  static ModelRegistry registry;
  return registry;
}

void ModelRegistry::add(ModelEntry entry) {
  if (entries_.count(entry.name))
    throw std::logic_error("model '" + entry.name + "' is registered twice");
  auto name = entry.name;
  entries_.emplace(std::move(name), std::move(entry));
}

bool ModelRegistry::contains(const std::string& name) const { return entries_.count(name) > 0; }

const ModelEntry& ModelRegistry::at(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string valid;
    for (const auto& [n, e] : entries_) valid += (valid.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown model '" + name + "'; valid models: " + valid +
                                " (see 'zoo list')");
  }
  return it->second;
}

std::vector<std::string> ModelRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [n, e] : entries_) out.push_back(n);
  return out;
}

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
