// Image transforms on a dataset's items, set with --data-option and applied by load_splits to any dataset whose
// items are images [C, H, W] in [0, 1]:
//
//   augment   training split only, a comma-separated list (torchvision's names in brackets):
//               flip                       horizontal flip with probability 0.5        (RandomHorizontalFlip)
//               crop=P                     pad P zeros on each side, then a random crop of the original size
//                                                                                      (RandomCrop(size, padding=P))
//               resized-crop=S             a random area fraction in [S, 1] and aspect ratio in [3/4, 4/3],
//                                          bilinearly resized to the original size     (RandomResizedCrop(scale=(S,
//                                          1)))
//               jitter=J                   brightness, contrast and saturation factors drawn from [1-J, 1+J], in a
//                                          random order                                (ColorJitter(J, J, J))
//   mean, std normalisation x -> (x - mean) / std per channel, on every split (training, validation, test) and
//             in zoo predict; a number or one per channel. Defaults per dataset (CIFAR's statistics; none elsewhere).
//
// The random draws of an item depend on (seed, epoch, item index) only, not on the batch it falls in, the order of
// the epoch or the thread: a resumed run sees the same augmentations, and ranks of a distributed run (which hold
// different items) see different ones. Validation and test items are never augmented.
#pragma once

#include "datasets/dataset.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace zoo::datasets {

struct AugmentOptions {
  double flip = 0;            ///< probability of a horizontal flip
  int64_t crop_padding = -1;  ///< >= 0: pad-and-crop with this padding
  double resized_crop = 0;    ///< > 0: the smallest area fraction of a random resized crop
  double jitter = 0;          ///< colour jitter strength
  bool any() const { return flip > 0 || crop_padding >= 0 || resized_crop > 0 || jitter > 0; }
};

/// Parses the `augment` option ("flip,crop=4,resized-crop=0.08,jitter=0.4"); an unknown or malformed part is an
/// error naming it and the valid forms.
AugmentOptions parse_augment(const std::string& spec);

/// The per-channel normalisation of a dataset; empty vectors: none.
struct Normalization {
  std::vector<double> mean, std;
  bool any() const { return !mean.empty(); }
  /// (x - mean) / std over dimension `channel_dim` of x.
  torch::Tensor apply(const torch::Tensor& x, int64_t channel_dim = 1) const;
};

/// One item's augmentation, drawn from (seed, epoch, index): `image` [C, H, W] in [0, 1], the result the same shape.
torch::Tensor augment_image(const torch::Tensor& image, const AugmentOptions& options, uint64_t seed, int64_t epoch,
                            int64_t index);

/// A dataset whose inputs are augmented (when `augment` has anything) and normalised.
class Transformed : public Dataset {
 public:
  Transformed(std::shared_ptr<Dataset> base, AugmentOptions augment, Normalization normalization, uint64_t seed);
  int64_t size() const override { return base_->size(); }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override;
  void set_epoch(int64_t epoch) override { epoch_ = epoch; }

 private:
  std::shared_ptr<Dataset> base_;
  AugmentOptions augment_;
  Normalization normalization_;
  uint64_t seed_;
  int64_t epoch_ = 0;
};

/// Takes the keys `augment`, `mean`, `std` out of `options` (so the dataset's own loader never sees them) and
/// returns what they ask for; `default_norm` is the dataset's default normalisation.
std::pair<AugmentOptions, Normalization> take_transform_options(nlohmann::json& options,
                                                                const Normalization& default_norm);

/// Wraps the splits: augmentation on `train`, normalisation on all of them (a no-op when neither is asked for).
/// Refuses datasets whose items are not images [C, H, W] with 1 or 3 channels and mean/std of the wrong length.
void apply_transforms(Splits& splits, const AugmentOptions& augment, const Normalization& normalization, uint64_t seed,
                      const std::string& dataset);

}  // namespace zoo::datasets
