// Dataset registry: names -> loaders of train/test splits, so tools and configs refer to data by name.
#pragma once

#include "core/registry.h"
#include "core/schema.h"
#include "datasets/augment.h"
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
  double val_fraction = 0.1;  ///< of the training split, held out for validation unless the dataset has its own
};

/// Every setting of DataConfig (config.json's "data"; flags --dataset, --data-dir, --limit, --data-option).
const Schema<DataConfig>& data_schema();
nlohmann::json to_json(const DataConfig& config);
DataConfig data_config_from_json(const nlohmann::json& j);

struct DatasetEntry {
  static constexpr const char* registry_kind = "dataset";
  static constexpr const char* registry_hint = "";
  std::string name;
  std::string description;
  std::function<std::string()> default_dir;
  std::function<Splits(const DataConfig&)> load;
  /// The names of the class ids of its targets (classification labels, segmentation classes); empty: not named.
  std::vector<std::string> class_names;
  /// The normalisation its images get unless --data-option mean/std say otherwise (CIFAR's statistics); none: empty.
  Normalization normalization;
};

using DatasetRegistry = ::zoo::Registry<DatasetEntry>;

/// Loads the splits of the dataset a config names. Without a validation split of its own, `val_fraction` of the
/// training items are held out for it (hold_out_validation, drawn from `seed`: the run's seed). The options
/// `augment`, `mean` and `std` of any image dataset are taken here (datasets/augment.h): augmentation of the
/// training split, drawn from (`seed`, epoch, item), and normalisation of every split.
Splits load_splits(const DataConfig& config, uint64_t seed = 0);

namespace detail {
using DatasetRegistrar = ::zoo::Registrar<DatasetEntry>;
}  // namespace detail

}  // namespace zoo::datasets
