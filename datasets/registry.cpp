#include "datasets/registry.h"

#include "datasets/mnist.h"

#include <stdexcept>

namespace zoo::datasets {

const Schema<DataConfig>& data_schema() {
  static const Schema<DataConfig> schema = [] {
    Schema<DataConfig> s("data option");
    s.add("name", ZOO_MEMBER(DataConfig, name), "Dataset name (default: the model's; see 'zoo list --datasets')")
        .flag("--dataset");
    s.add("data_dir", ZOO_MEMBER(DataConfig, data_dir),
          "Data directory (default $ZOO_DATA_DIR or the dataset's default)");
    s.add("limit", ZOO_MEMBER(DataConfig, limit), "Use only the first N items of each split (0 = all)").at_least(0);
    s.add("options", ZOO_MEMBER(DataConfig, options),
          "Dataset option key=value (JSON value), repeatable, e.g. --data-option size=32 (see README, Data)")
        .check([](const json& v) { return v.is_object() ? "" : "must be a JSON object"; })
        .flag("--data-option");
    s.add("val_fraction", ZOO_MEMBER(DataConfig, val_fraction),
          "Fraction of the training split held out for validation, where the best epoch and early stopping are "
          "decided (0 = none: nothing is selected and the last weights are tested)")
        .at_least(0)
        .check([](const json& v) { return v.get<double>() < 1 ? "" : "must be below 1"; });
    return s;
  }();
  return schema;
}

nlohmann::json to_json(const DataConfig& c) { return data_schema().to_json(c); }

DataConfig data_config_from_json(const nlohmann::json& j) { return data_schema().from_json(j); }

Splits load_splits(const DataConfig& config, uint64_t seed) {
  const auto& entry = DatasetRegistry::instance().at(config.name);
  try {
    data_schema().validate(config);
  } catch (const SettingError& e) {
    throw SettingError("data." + e.setting(), e.problem());
  }
  DataConfig own = config;  // the dataset's own options: without those of the transforms
  const auto [augment, normalization] = take_transform_options(own.options, entry.normalization);
  Splits splits = entry.load(own);
  if (splits.class_names.empty()) splits.class_names = entry.class_names;
  if (config.val_fraction == 0) {
    splits.val = nullptr;
  } else if (!splits.val) {
    hold_out_validation(splits, config.val_fraction, seed);
  }
  apply_transforms(splits, augment, normalization, seed, config.name);
  return splits;
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

DatasetEntry with_classes(DatasetEntry e, std::vector<std::string> names) {
  e.class_names = std::move(names);
  return e;
}

const detail::DatasetRegistrar fashion_mnist{with_classes(
    idx_dataset("fashion-mnist", "Zalando Fashion-MNIST: 60,000 + 10,000 28x28 grey images, 10 classes",
                default_fashion_mnist_dir),
    {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"})};
const detail::DatasetRegistrar mnist{
    with_classes(idx_dataset("mnist", "MNIST digits in IDX format (same reader; pass --data-dir)",
                             [] {
                               if (const char* env = std::getenv("ZOO_DATA_DIR"); env && *env) return std::string(env);
                               return std::string("/usr/share/datasets/mnist");
                             }),
                 {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"})};

}  // namespace
}  // namespace zoo::datasets
