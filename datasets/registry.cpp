#include "datasets/registry.h"

#include "datasets/mnist.h"

#include <stdexcept>

namespace zoo::datasets {

nlohmann::json to_json(const DataConfig& c) {
  return {{"name", c.name}, {"data_dir", c.data_dir}, {"limit", c.limit}, {"options", c.options}};
}

DataConfig data_config_from_json(const nlohmann::json& j) {
  DataConfig c;
  c.name = j.value("name", c.name);
  c.data_dir = j.value("data_dir", c.data_dir);
  c.limit = j.value("limit", c.limit);
  c.options = j.value("options", nlohmann::json::object());
  return c;
}

DatasetRegistry& DatasetRegistry::instance() {
  static DatasetRegistry registry;
  return registry;
}

void DatasetRegistry::add(DatasetEntry entry) {
  if (entries_.count(entry.name)) throw std::logic_error("dataset '" + entry.name + "' is registered twice");
  auto name = entry.name;
  entries_.emplace(std::move(name), std::move(entry));
}

const DatasetEntry& DatasetRegistry::at(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string valid;
    for (const auto& [n, e] : entries_) valid += (valid.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown dataset '" + name + "'; valid datasets: " + valid);
  }
  return it->second;
}

std::vector<std::string> DatasetRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [n, e] : entries_) out.push_back(n);
  return out;
}

Splits load_splits(const DataConfig& config) {
  const auto& entry = DatasetRegistry::instance().at(config.name);
  if (config.limit < 0) throw std::invalid_argument("--limit must be >= 0, got " + std::to_string(config.limit));
  return entry.load(config);
}

namespace {

DatasetEntry idx_dataset(const std::string& name, const std::string& description,
                         std::function<std::string()> default_dir) {
  DatasetEntry e;
  e.name = name;
  e.description = description;
  e.default_dir = default_dir;
  e.load = [name, default_dir](const DataConfig& c) {
    if (!c.options.empty())
      throw std::invalid_argument("dataset '" + name + "' takes no options, got " + c.options.dump());
    const std::string dir = c.data_dir.empty() ? default_dir() : c.data_dir;
    return Splits{load_mnist(dir, Split::Train, c.limit, name), load_mnist(dir, Split::Test, c.limit, name)};
  };
  return e;
}

const detail::DatasetRegistrar fashion_mnist{idx_dataset(
    "fashion-mnist", "Zalando Fashion-MNIST: 60,000 + 10,000 28x28 grey images, 10 classes",
    default_fashion_mnist_dir)};
const detail::DatasetRegistrar mnist{idx_dataset(
    "mnist", "MNIST digits in IDX format (same reader; pass --data-dir)", [] {
      if (const char* env = std::getenv("ZOO_DATA_DIR"); env && *env) return std::string(env);
      return std::string("/usr/share/datasets/mnist");
    })};

}  // namespace
}  // namespace zoo::datasets
