// The running sums of one training epoch: the loss and every logged term, weighted by batch size. Terms stay
// tensors until the epoch ends (no per-step synchronisation); an interrupted epoch saves its sums in state.json
// and a resumed one starts from them, so its metrics come out as if it had never stopped.
#pragma once

#include "training/objective.h"

#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace zoo::training {

class EpochSums {
 public:
  /// `partial`: the saved sums of an interrupted epoch ({"loss_sum", "items", "terms"}), or {} for a fresh one.
  explicit EpochSums(const json& partial);
  /// One step: its mean loss and terms over `n` items.
  void add(double loss, double n, const Terms& terms);
  double items() const { return items_; }
  double mean_loss() const { return loss_sum_ / items_; }
  /// name -> [weighted sum, total weight] of every term. With `all_reduce` (data-parallel) the loss, the items
  /// and every term are summed over ranks in one call, in the same order on every rank.
  json reduce(const std::function<void(torch::Tensor&)>& all_reduce);
  /// state.json's "partial" for an epoch stopped now, from reduce()'s result.
  json partial(double seconds, const json& term_sums) const;
  /// {"loss": mean, "<term>": mean, ...} from reduce()'s result.
  json metrics(const json& term_sums) const;

 private:
  void record(const std::string& name, const torch::Tensor& value, double n);
  double loss_sum_ = 0, items_ = 0;
  std::vector<std::pair<std::string, std::vector<std::pair<torch::Tensor, double>>>> terms_;
};

}  // namespace zoo::training
