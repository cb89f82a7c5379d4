#include "datasets/dataset.h"

#include <algorithm>
#include <numeric>
#include <random>

namespace zoo::datasets {

TensorDataset::TensorDataset(torch::Tensor inputs, torch::Tensor targets, std::string description)
    : inputs_(std::move(inputs)), targets_(std::move(targets)), description_(std::move(description)) {
  TORCH_CHECK(inputs_.size(0) == targets_.size(0), "TensorDataset: ", inputs_.size(0), " inputs but ", targets_.size(0),
              " targets");
}

Batch TensorDataset::get(const torch::Tensor& indices) const {
  return {inputs_.index_select(0, indices), targets_.index_select(0, indices)};
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
