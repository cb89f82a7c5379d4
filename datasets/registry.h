// Dataset registry: names -> loaders of train/test splits, so tools and configs refer to data by name.
#pragma once

#include "datasets/dataset.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace zoo::datasets {

/// What a run asks of its data: recorded in config.json.
struct DataConfig {
  std::string name = "fashion-mnist";
  std::string data_dir;  ///< empty: the dataset's default
  int64_t limit = 0;     ///< > 0: use the first `limit` items of each split
  nlohmann::json options = nlohmann::json::object();
};

nlohmann::json to_json(const DataConfig& config);
DataConfig data_config_from_json(const nlohmann::json& j);

struct DatasetEntry {
  std::string name;
  std::string description;
  std::function<std::string()> default_dir;
  std::function<Splits(const DataConfig&)> load;
};

class DatasetRegistry {
 public:
  static DatasetRegistry& instance();
  void add(DatasetEntry entry);
  const DatasetEntry& at(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, DatasetEntry> entries_;
};

/// Loads both splits of the dataset a config names.
Splits load_splits(const DataConfig& config);

namespace detail {
struct DatasetRegistrar {
  explicit DatasetRegistrar(DatasetEntry entry) { DatasetRegistry::instance().add(std::move(entry)); }
};
}  // namespace detail

}  // namespace zoo::datasets
