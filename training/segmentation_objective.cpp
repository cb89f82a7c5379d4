#include "training/segmentation_objective.h"

#include "datasets/images.h"
#include "ops/autocast.h"

#include <stdexcept>

namespace zoo::training {

namespace F = torch::nn::functional;

SegmentationOptions segmentation_options_from_json(const json& task_options) {
  if (!task_options.is_object())
    throw std::invalid_argument("task options of 'segment' must be a JSON object, got " + task_options.dump());
  SegmentationOptions o;
  for (auto it = task_options.begin(); it != task_options.end(); ++it) {
    const auto& v = it.value();
    if (it.key() == "dice") {
      if (!v.is_number() || v.get<double>() < 0)
        throw std::invalid_argument("task option 'dice' (weight of the Dice loss) must be a number >= 0, got " +
                                    v.dump());
      o.dice(v.get<double>());
    } else if (it.key() == "boundary_width") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1)
        throw std::invalid_argument("task option 'boundary_width' must be an integer >= 1, got " + v.dump());
      o.boundary_width(v.get<int64_t>());
    } else {
      throw std::invalid_argument("task 'segment' has no option '" + it.key() + "'; valid: dice, boundary_width");
    }
  }
  return o;
}

namespace {

/// The model's logits, checked against the labels: [N, C, *spatial] for labels [N, *spatial] in [0, C).
torch::Tensor segment_logits(torch::nn::AnyModule& model, const datasets::Batch& batch) {
  auto logits = model.forward(batch.input);
  const auto& y = batch.target;
  TORCH_CHECK(
      logits.dim() == y.dim() + 1 && logits.size(0) == y.size(0) && logits.sizes().slice(2).equals(y.sizes().slice(1)),
      "a segmenter must return logits [N, classes, *spatial] matching labels [N, *spatial]; got logits ",
      logits.sizes(), " for labels ", y.sizes());
  const int64_t top = y.numel() ? y.max().item<int64_t>() : 0;
  TORCH_CHECK(top < logits.size(1) && (y.numel() == 0 || y.min().item<int64_t>() >= 0), "the labels hold class id ",
              top, " but the model predicts ", logits.size(1), " classes (set the model's num_classes to at least ",
              top + 1, ")");
  return ops::float32(logits);  // losses and metrics in float32 under mixed precision
}

torch::Tensor one_hot_channels(const torch::Tensor& labels, int64_t num_classes) {
  // [N, *] -> [N, C, *]
  return F::one_hot(labels, num_classes).movedim(-1, 1);
}

class SegmentationEvaluator : public Evaluator {
 public:
  explicit SegmentationEvaluator(SegmentationOptions options) : options_(options) {}

  void add(torch::nn::AnyModule& model, const datasets::Batch& batch) override {
    auto logits = segment_logits(model, batch);
    const int64_t c = logits.size(1);
    if (!confusion_.defined()) {
      classes_ = c;
      confusion_ = torch::zeros({c, c}, torch::kFloat64);
      band_inter_ = torch::zeros({c}, torch::kFloat64);
      band_union_ = torch::zeros({c}, torch::kFloat64);
    }
    TORCH_CHECK(c == classes_, "the model changed its number of classes during evaluation");
    loss_ += F::cross_entropy(logits, batch.target, F::CrossEntropyFuncOptions().reduction(torch::kSum)).item<double>();
    pixels_ += static_cast<double>(batch.target.numel());
    items_ += static_cast<double>(batch.size());
    auto predicted = predicted_classes(logits);
    confusion_ += confusion_matrix(predicted, batch.target, c).to(torch::kFloat64).cpu();
    auto truth_band = boundary_bands(batch.target, c, options_.boundary_width());
    auto pred_band = boundary_bands(predicted, c, options_.boundary_width());
    std::vector<int64_t> reduce{0};
    for (int64_t d = 2; d < truth_band.dim(); ++d) reduce.push_back(d);
    band_inter_ += truth_band.logical_and(pred_band).sum(reduce).to(torch::kFloat64).cpu();
    band_union_ += truth_band.logical_or(pred_band).sum(reduce).to(torch::kFloat64).cpu();
  }

  torch::Tensor state() const override {
    auto head = torch::tensor({loss_, pixels_, items_}, torch::kFloat64);
    if (!confusion_.defined()) return head;
    return torch::cat({head, confusion_.flatten(), band_inter_, band_union_});
  }

  json result(const torch::Tensor& s) const override {
    auto a = s.accessor<double, 1>();
    json out = {{"loss", a[1] > 0 ? a[0] / a[1] : 0.0}, {"items", static_cast<int64_t>(a[2])}};
    if (s.size(0) == 3) return out;
    const int64_t c = classes_;
    auto confusion = s.narrow(0, 3, c * c).view({c, c});
    auto metrics = segmentation_metrics(confusion, s.narrow(0, 3 + c * c, c), s.narrow(0, 3 + c * c + c, c));
    for (auto it = metrics.begin(); it != metrics.end(); ++it) out[it.key()] = it.value();
    return out;
  }

 private:
  SegmentationOptions options_;
  int64_t classes_ = 0;
  double loss_ = 0, pixels_ = 0, items_ = 0;
  torch::Tensor confusion_, band_inter_, band_union_;
};

}  // namespace

torch::Tensor predict_labels(torch::nn::AnyModule& model, const torch::Tensor& input, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.ptr()->eval();
  return predicted_classes(model.forward(input.to(device))).cpu();
}

torch::Tensor predicted_classes(const torch::Tensor& logits) { return std::get<1>(logits.max(1)); }

torch::Tensor soft_dice_loss(const torch::Tensor& logits, const torch::Tensor& labels, double eps) {
  const int64_t c = logits.size(1);
  auto p = torch::softmax(logits, 1);
  auto t = one_hot_channels(labels, c).to(p.dtype());
  std::vector<int64_t> reduce{0};
  for (int64_t d = 2; d < logits.dim(); ++d) reduce.push_back(d);
  auto intersection = (p * t).sum(reduce);
  auto total = p.sum(reduce) + t.sum(reduce);
  return 1 - ((2 * intersection + eps) / (total + eps)).mean();
}

torch::Tensor confusion_matrix(const torch::Tensor& predicted, const torch::Tensor& truth, int64_t num_classes) {
  TORCH_CHECK(predicted.sizes() == truth.sizes(), "confusion_matrix: predicted ", predicted.sizes(), " and truth ",
              truth.sizes(), " differ in shape");
  auto index = truth.flatten().to(torch::kInt64) * num_classes + predicted.flatten().to(torch::kInt64);
  return torch::bincount(index, {}, num_classes * num_classes).view({num_classes, num_classes});
}

torch::Tensor boundary_bands(const torch::Tensor& labels, int64_t num_classes, int64_t width) {
  const int64_t spatial = labels.dim() - 1;
  TORCH_CHECK(spatial == 2 || spatial == 3, "boundary_bands: labels must be [N, H, W] or [N, D, H, W], got ",
              labels.sizes());
  auto mask = one_hot_channels(labels, num_classes).to(torch::kFloat32);
  // Erosion = 1 - dilation of the complement; max-pool pads with -inf, so outside the image is neither.
  const int64_t k = 2 * width + 1;
  auto complement = 1 - mask;
  auto dilated = spatial == 2 ? torch::max_pool2d(complement, {k, k}, {1, 1}, {width, width})
                              : torch::max_pool3d(complement, {k, k, k}, {1, 1, 1}, {width, width, width});
  return mask.gt(0.5).logical_and(dilated.gt(0.5));
}

json segmentation_metrics(const torch::Tensor& confusion, const torch::Tensor& band_intersection,
                          const torch::Tensor& band_union) {
  auto m = confusion.to(torch::kFloat64).cpu();
  const int64_t c = m.size(0);
  auto tp = m.diagonal();
  auto fp = m.sum(0) - tp, fn = m.sum(1) - tp;
  auto inter = band_intersection.to(torch::kFloat64).cpu(), uni = band_union.to(torch::kFloat64).cpu();
  json iou = json::array();
  double iou_sum = 0, dice_sum = 0, biou_sum = 0;
  int64_t present = 0, banded = 0;
  for (int64_t k = 0; k < c; ++k) {
    const double t = tp[k].item<double>(), u = t + fp[k].item<double>() + fn[k].item<double>();
    if (u > 0) {
      iou.push_back(t / u);
      iou_sum += t / u;
      dice_sum += 2 * t / (u + t);
      ++present;
    } else {
      iou.push_back(nullptr);
    }
    if (uni[k].item<double>() > 0) {
      biou_sum += inter[k].item<double>() / uni[k].item<double>();
      ++banded;
    }
  }
  const double total = m.sum().item<double>();
  return {{"pixel_accuracy", total > 0 ? tp.sum().item<double>() / total : 0.0},
          {"miou", present ? iou_sum / static_cast<double>(present) : 0.0},
          {"dice", present ? dice_sum / static_cast<double>(present) : 0.0},
          {"boundary_iou", banded ? biou_sum / static_cast<double>(banded) : 0.0},
          {"iou", iou}};
}

torch::Tensor SegmentationObjective::loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) {
  auto logits = segment_logits(model, batch);
  auto loss = F::cross_entropy(logits, batch.target);
  if (options_.dice() > 0) {
    auto dice = soft_dice_loss(logits, batch.target);
    terms.emplace_back("ce", loss.detach());
    terms.emplace_back("dice_loss", dice.detach());
    loss = loss + options_.dice() * dice;
  }
  terms.emplace_back("pixel_accuracy", predicted_classes(logits.detach()).eq(batch.target).to(torch::kFloat32).mean());
  return loss;
}

std::unique_ptr<Evaluator> SegmentationObjective::evaluator(bool) const {
  return std::make_unique<SegmentationEvaluator>(options_);
}

namespace {
const detail::ObjectiveRegistrar segment{
    "segment", [](const json&, const json& task_options) -> std::shared_ptr<Objective> {
      return std::make_shared<SegmentationObjective>(segmentation_options_from_json(task_options));
    }};
}  // namespace

Pictures SegmentationObjective::pictures(torch::nn::AnyModule& model, const datasets::Dataset& data) const {
  const auto device = model.ptr()->parameters().front().device();
  const auto batch = data.get(torch::arange(std::min<int64_t>(4, data.size()))).to(device);
  if (batch.input.dim() != 4) return {};  // volumes: no flat picture
  const auto predicted = predicted_classes(model.forward(batch.input)).cpu();
  auto images = batch.input.cpu().to(torch::kFloat32);
  if (images.size(1) == 1) images = images.expand({-1, 3, -1, -1});
  std::vector<torch::Tensor> tiles;
  for (int64_t i = 0; i < batch.size(); ++i) {
    tiles.push_back(images[i].slice(0, 0, 3));
    tiles.push_back(datasets::colorize_labels(batch.target.cpu()[i]));
    tiles.push_back(datasets::colorize_labels(predicted[i]));
  }
  return {{"segments", datasets::make_grid(torch::stack(tiles), datasets::GridOptions().nrow(3))}};
}

}  // namespace zoo::training
