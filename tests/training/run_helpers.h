// Helpers of the tests that train small runs and read what they wrote (selection, schedules, loggers).
#pragma once

#include "training/checkpoint.h"
#include "training/options.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

namespace zoo::test {

/// Quiet, single-threaded, constant-rate training options.
inline training::TrainOptions quiet_options() {
  return training::TrainOptions().progress(false).threads(1).schedule("constant");
}

/// The records of RUN/metrics.jsonl.
inline std::vector<nlohmann::json> metrics_log(const std::string& run) {
  std::vector<nlohmann::json> records;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

/// Whether two TorchScript archives hold the same tensors under the same names.
inline bool same_file_tensors(const std::string& a, const std::string& b) {
  const auto x = training::read_tensors(a), y = training::read_tensors(b);
  if (x.size() != y.size()) return false;
  for (const auto& [k, v] : x)
    if (!y.count(k) || !torch::equal(v, y.at(k))) return false;
  return true;
}

}  // namespace zoo::test
