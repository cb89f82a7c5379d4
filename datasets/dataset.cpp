#include "datasets/dataset.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

namespace zoo::datasets {

TensorDataset::TensorDataset(torch::Tensor inputs, torch::Tensor targets, std::string description)
    : inputs_(std::move(inputs)), targets_(std::move(targets)), description_(std::move(description)) {
  TORCH_CHECK(inputs_.size(0) == targets_.size(0), "TensorDataset: ", inputs_.size(0), " inputs but ", targets_.size(0),
              " targets");
}

Batch TensorDataset::get(const torch::Tensor& indices) const {
  return {inputs_.index_select(0, indices), targets_.index_select(0, indices)};
}

Subset::Subset(std::shared_ptr<Dataset> base, torch::Tensor indices, std::string description)
    : base_(std::move(base)), indices_(std::move(indices)), description_(std::move(description)) {
  TORCH_CHECK(base_ && indices_.dim() == 1, "Subset: needs a dataset and 1-D indices");
}

Batch Subset::get(const torch::Tensor& indices) const { return base_->get(indices_.index_select(0, indices)); }

void hold_out_validation(Splits& splits, double fraction, uint64_t seed) {
  if (!(fraction > 0 && fraction < 1))
    throw std::invalid_argument(fmt::format("the validation fraction must be in (0, 1), got {}", fraction));
  const int64_t n = splits.train->size();
  const auto n_val = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  if (n_val < 1 || n_val >= n)
    throw std::invalid_argument(fmt::format(
        "--val-fraction {} of {} training items leaves {} split empty; raise --limit or change --val-fraction "
        "(0 turns validation off)",
        fraction, n, n_val < 1 ? "the validation" : "the training"));
  // Our own generator, as in epoch_order: the split depends on the seed only (and differs from every epoch's
  // order, which mixes the epoch number into the seed the same way).
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 0x5EEDF00DULL);
  for (size_t i = order.size() - 1; i > 0; --i) {
    std::uniform_int_distribution<size_t> pick(0, i);
    std::swap(order[i], order[pick(rng)]);
  }
  std::vector<int64_t> val(order.begin(), order.begin() + n_val), train(order.begin() + n_val, order.end());
  std::sort(val.begin(), val.end());
  std::sort(train.begin(), train.end());
  const auto base = splits.train;
  const std::string what = base->describe();
  splits.val = std::make_shared<Subset>(base, torch::tensor(val, torch::kInt64),
                                        fmt::format("{}: validation part, {} items", what, n_val));
  splits.train = std::make_shared<Subset>(base, torch::tensor(train, torch::kInt64),
                                          fmt::format("{}: training part, {} items", what, n - n_val));
}

torch::Tensor epoch_order(int64_t size, bool shuffle, uint64_t seed, int64_t epoch, int64_t rank, int64_t world_size) {
  TORCH_CHECK(size > 0, "epoch_order: empty dataset");
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "epoch_order: bad rank ", rank, " of ", world_size);
  std::vector<int64_t> order(static_cast<size_t>(size));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle) {
    // Our own generator (not torch's global one): the order depends only on (seed, epoch), so a resumed run
    // and every rank of a distributed run see exactly the same permutation.
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
    for (size_t i = order.size() - 1; i > 0; --i) {
      std::uniform_int_distribution<size_t> pick(0, i);
      std::swap(order[i], order[pick(rng)]);
    }
  }
  const int64_t per_rank = (size + world_size - 1) / world_size;
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(per_rank));
  for (int64_t i = rank; i < per_rank * world_size; i += world_size) mine.push_back(order[i % size]);
  return torch::tensor(mine, torch::kInt64);
}

}  // namespace zoo::datasets
