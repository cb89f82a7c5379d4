// The "segment" task: per-pixel (per-voxel) classification for models that return logits [N, C, *spatial]
// against int64 label maps [N, *spatial].
//
//   loss     = cross-entropy averaged over pixels + dice * (1 - soft Dice)          (task option "dice", default 0)
//   soft Dice = mean over classes of (2 sum p t + eps) / (sum p + sum t + eps), eps = 1e-6, p = softmax(logits),
//               t = one-hot(labels), sums over the batch and all pixels (milesial/Pytorch-UNet's dice_loss)
//
// Evaluation keeps a confusion matrix and boundary counts as running sums (all-reducible), and reports:
//   pixel_accuracy  correct pixels / pixels
//   iou             per class TP / (TP + FP + FN), null for a class absent from both truth and prediction
//   miou            mean of the non-null iou (background included, as in PASCAL VOC)
//   dice            mean over the same classes of 2 TP / (2 TP + FP + FN)
//   boundary_iou    Boundary IoU (Cheng et al., CVPR 2021): per class, the IoU of the bands of truth and
//                   prediction, a band being the pixels of a class's mask within `boundary_width` (default 2)
//                   pixels of its edge (mask minus its erosion by a (2w+1)-box; image borders are not edges);
//                   averaged over classes with a non-empty band in truth or prediction
#pragma once

#include "training/objective.h"

namespace zoo::training {

struct SegmentationOptions {
  TORCH_ARG(double, dice) = 0.0;
  TORCH_ARG(int64_t, boundary_width) = 2;
};

SegmentationOptions segmentation_options_from_json(const json& task_options);

class SegmentationObjective : public Objective {
 public:
  explicit SegmentationObjective(SegmentationOptions options = {}) : options_(options) {}
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) override;
  std::unique_ptr<Evaluator> evaluator(bool thorough) const override;
  std::string primary_metric() const override { return "miou"; }
  /// "segments": the first 4 items of 2-D data, each as image, true and predicted label maps.
  Pictures pictures(torch::nn::AnyModule& model, const datasets::Dataset& data) const override;

 private:
  SegmentationOptions options_;
};

/// Class ids [N, *spatial] a segmentation model predicts for `input` [N, C, *spatial] (eval mode, no gradient),
/// on the CPU.
torch::Tensor predict_labels(torch::nn::AnyModule& model, const torch::Tensor& input, const torch::Device& device);

/// The class of each pixel of logits [N, C, *spatial]: logits.argmax(1), computed as max's indices. Both take the
/// first maximum, and a NaN over any number; LibTorch 1.13's argmax over a dimension that is not the innermost is
/// ~8x slower (the 3-D U-Net's [2, 4, 24, 24, 24] logits, 1 thread: 3.1 ms against 0.4), and the training step
/// computes it for its pixel accuracy.
torch::Tensor predicted_classes(const torch::Tensor& logits);

/// 1 - soft Dice of logits [N, C, *] against labels [N, *] (see above).
torch::Tensor soft_dice_loss(const torch::Tensor& logits, const torch::Tensor& labels, double eps = 1e-6);

/// Confusion matrix [C, C] (int64; row = true class, column = predicted class) of label maps of equal shape.
torch::Tensor confusion_matrix(const torch::Tensor& predicted, const torch::Tensor& truth, int64_t num_classes);

/// The band of every class: [N, C, *] bool, the pixels of one-hot(labels) within `width` pixels of the mask's
/// edge (labels [N, *] with 2 or 3 spatial axes).
torch::Tensor boundary_bands(const torch::Tensor& labels, int64_t num_classes, int64_t width);

/// Metrics (pixel_accuracy, iou, miou, dice, boundary_iou) from a confusion matrix [C, C] and the per-class
/// band intersections and unions [C].
json segmentation_metrics(const torch::Tensor& confusion, const torch::Tensor& band_intersection,
                          const torch::Tensor& band_union);

}  // namespace zoo::training
