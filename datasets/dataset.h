// The dataset interface every loader implements, and the per-epoch sampler the trainer uses.
//
// Datasets are random-access: the trainer asks for a batch by a tensor of indices. In-memory datasets answer
// with one index_select, which keeps data loading far below 5% of a training step.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace zoo::datasets {

/// One batch: model input and target, stacked along dimension 0.
struct Batch {
  torch::Tensor input;
  torch::Tensor target;

  Batch to(const torch::Device& device) const { return {input.to(device), target.to(device)}; }
  int64_t size() const { return input.size(0); }
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// The items at `indices` (1-D int64), stacked.
  virtual Batch get(const torch::Tensor& indices) const = 0;
  /// One line: what this dataset is, for logs and `zoo info`.
  virtual std::string describe() const = 0;
  /// The trainer calls this before each training epoch (and on resume): datasets whose items depend on the epoch
  /// (random augmentation) take it from here; others ignore it.
  virtual void set_epoch(int64_t /*epoch*/) {}
};

/// A dataset held as two tensors whose first dimension indexes items.
class TensorDataset : public Dataset {
 public:
  TensorDataset(torch::Tensor inputs, torch::Tensor targets, std::string description);
  int64_t size() const override { return inputs_.size(0); }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override { return description_; }
  const torch::Tensor& inputs() const { return inputs_; }
  const torch::Tensor& targets() const { return targets_; }

 private:
  torch::Tensor inputs_, targets_;
  std::string description_;
};

/// The items of `base` at `indices`, like torch.utils.data.Subset.
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<Dataset> base, torch::Tensor indices, std::string description);
  int64_t size() const override { return indices_.size(0); }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override { return description_; }
  const torch::Tensor& indices() const { return indices_; }

 private:
  std::shared_ptr<Dataset> base_;
  torch::Tensor indices_;
  std::string description_;
};

/// A train, a test and (optionally) a validation split. Model selection (best checkpoint, early stopping) looks
/// only at `val`; `test` is for the one final evaluation.
struct Splits {
  std::shared_ptr<Dataset> train;
  std::shared_ptr<Dataset> test;
  std::shared_ptr<Dataset> val = nullptr;  ///< null: no validation split
  /// The names of the class ids of the targets, where the data names them (class folders, CIFAR's meta files);
  /// empty: the dataset entry's fixed names, or none.
  std::vector<std::string> class_names = {};
  /// What loading found worth a line (e.g. the files skip_bad left out), for the tool to print.
  std::vector<std::string> notes = {};
  /// The per-channel normalisation (x - mean) / std the inputs went through (--data-option mean/std); empty: none.
  std::vector<double> mean = {}, std = {};
};

/// Holds out round(fraction * size) items of `splits.train` as `splits.val` (a permutation drawn from `seed`, so
/// the same seed gives the same split; both parts keep their items in the original order). Throws when either
/// part would be empty.
void hold_out_validation(Splits& splits, double fraction, uint64_t seed);

/// Item order for one epoch, like torch.utils.data.DistributedSampler: a permutation of [0, size) drawn from
/// (seed, epoch) when `shuffle` (the same on every rank), padded by wrapping to a multiple of `world_size`, and
/// every `world_size`-th index from `rank` on. With world_size 1 it is just the (shuffled) order.
torch::Tensor epoch_order(int64_t size, bool shuffle, uint64_t seed, int64_t epoch, int64_t rank = 0,
                          int64_t world_size = 1);

}  // namespace zoo::datasets
