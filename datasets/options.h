// Reading a dataset's options (DataConfig::options, `--data-option key=value`) with errors that name the option.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace zoo::datasets {

inline int64_t int_option(const nlohmann::json& o, const char* key, int64_t fallback) {
  if (!o.contains(key)) return fallback;
  if (!o[key].is_number_integer())
    throw std::invalid_argument(std::string("dataset option '") + key + "' expects an integer, got " + o[key].dump());
  return o[key].get<int64_t>();
}

inline double number_option(const nlohmann::json& o, const char* key, double fallback) {
  if (!o.contains(key)) return fallback;
  if (!o[key].is_number())
    throw std::invalid_argument(std::string("dataset option '") + key + "' expects a number, got " + o[key].dump());
  return o[key].get<double>();
}

/// Refuses options not in `keys`, listing the valid ones.
inline void check_option_names(const nlohmann::json& o, const std::vector<std::string>& keys,
                               const std::string& dataset) {
  if (!o.is_object())
    throw std::invalid_argument("options of dataset '" + dataset + "' must be a JSON object, got " + o.dump());
  for (auto it = o.begin(); it != o.end(); ++it)
    if (std::find(keys.begin(), keys.end(), it.key()) == keys.end()) {
      std::string valid;
      for (const auto& k : keys) valid += (valid.empty() ? "" : ", ") + k;
      throw std::invalid_argument("dataset '" + dataset + "' has no option '" + it.key() + "'; valid: " + valid);
    }
}

/// n, or `limit` when that is smaller and positive (--limit).
inline int64_t limited(int64_t n, int64_t limit) { return limit > 0 ? std::min(n, limit) : n; }

}  // namespace zoo::datasets
