// The segmentation objective: metrics and the soft Dice loss against hand computations.
#include "training/segmentation_objective.h"
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
#include "datasets/segmentation.h"
#include "helpers.h"
#include "models/registry.h"
#include "models/segmentation.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("Segmentation metrics against hand computations", "[segmentation]") {
  auto truth = torch::tensor({0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2}, torch::kInt64).view({1, 4, 4});
  auto pred = torch::tensor({0, 1, 1, 1, 0, 0, 1, 1, 2, 2, 2, 0, 2, 2, 2, 2}, torch::kInt64).view({1, 4, 4});
  auto confusion = training::confusion_matrix(pred, truth, 3);
  CHECK(confusion.equal(torch::tensor({3, 1, 0, 0, 4, 0, 1, 0, 7}, torch::kInt64).view({3, 3})));
  auto zeros = torch::zeros({3}, torch::kFloat64);
  auto m = training::segmentation_metrics(confusion, zeros, zeros);
  CHECK(m["pixel_accuracy"].get<double>() == Approx(14.0 / 16));
  CHECK(m["iou"][0].get<double>() == Approx(3.0 / 5));
  CHECK(m["iou"][1].get<double>() == Approx(4.0 / 5));
  CHECK(m["iou"][2].get<double>() == Approx(7.0 / 8));
  CHECK(m["miou"].get<double>() == Approx((0.6 + 0.8 + 0.875) / 3));
  CHECK(m["dice"].get<double>() == Approx((6.0 / 8 + 8.0 / 9 + 14.0 / 15) / 3));
  // A class absent from truth and prediction is null and left out of the means.
  auto m4 =
      training::segmentation_metrics(training::confusion_matrix(pred, truth, 4), torch::zeros({4}), torch::zeros({4}));
  CHECK(m4["iou"][3].is_null());
  CHECK(m4["miou"].get<double>() == Approx((0.6 + 0.8 + 0.875) / 3));

  // Bands: a 4x4 square in an 8x8 image. Width 1: its 12 edge pixels, and the 20 background pixels around it;
  // width 2: the whole square. Image borders are not edges (the background's band does not touch them).
  auto square = torch::zeros({1, 8, 8}, torch::kInt64);
  square.slice(1, 2, 6).slice(2, 2, 6).fill_(1);
  auto band1 = training::boundary_bands(square, 2, 1);
  CHECK(band1[0][1].sum().item<int64_t>() == 12);
  CHECK(band1[0][0].sum().item<int64_t>() == 20);
  CHECK_FALSE(band1[0][1][3][3].item<bool>());
  CHECK(training::boundary_bands(square, 2, 2)[0][1].sum().item<int64_t>() == 16);
  // Against the same square shifted right by one pixel (width 1): the truth's band is rows 2 and 5 (x 2..5) and
  // columns 2 and 5 (y 3..4), the prediction's rows 2 and 5 (x 3..6) and columns 3 and 6; they share rows 2 and 5
  // at x 3..5: intersection 6, union 12 + 12 - 6 = 18.
  auto shifted = torch::zeros({1, 8, 8}, torch::kInt64);
  shifted.slice(1, 2, 6).slice(2, 3, 7).fill_(1);
  auto bt = training::boundary_bands(square, 2, 1)[0][1], bp = training::boundary_bands(shifted, 2, 1)[0][1];
  CHECK(bt.logical_and(bp).sum().item<int64_t>() == 6);
  CHECK(bt.logical_or(bp).sum().item<int64_t>() == 18);
}

TEST_CASE("Soft Dice loss: 0 for a perfect prediction, the formula for a uniform one", "[segmentation]") {
  auto labels = torch::tensor({0, 1, 1, 2, 2, 2}, torch::kInt64).view({1, 2, 3});
  auto perfect = 50 * torch::nn::functional::one_hot(labels, 3).movedim(-1, 1).to(torch::kFloat32);
  CHECK(training::soft_dice_loss(perfect, labels).item<double>() == Approx(0).margin(1e-6));
  // Uniform p = 1/3 on 6 pixels: class c with n_c pixels has dice (2 n_c / 3) / (2 + n_c).
  auto uniform = torch::zeros({1, 3, 2, 3});
  const double expected = 1 - ((2.0 / 3) / 3 + (4.0 / 3) / 4 + 2.0 / 5) / 3;
  CHECK(training::soft_dice_loss(uniform, labels).item<double>() == Approx(expected).epsilon(1e-5));
  // The objective adds dice * (1 - Dice) to the cross-entropy and logs both parts.
  torch::manual_seed(0);
  models::UNet unet(models::UNetOptions().encoder(models::EncoderOptions().base_channels(2).levels(2)).num_classes(3));
  torch::nn::AnyModule any(unet);
  datasets::Batch batch{torch::randn({1, 1, 2, 3}), labels};
  training::SegmentationObjective plain, with_dice(training::SegmentationOptions().dice(0.5));
  training::Terms t1, t2;
  const double ce = plain.loss(any, batch, t1).item<double>();
  const double both = with_dice.loss(any, batch, t2).item<double>();
  const double dice = training::soft_dice_loss(unet->forward(batch.input), labels).item<double>();
  CHECK(both == Approx(ce + 0.5 * dice).epsilon(1e-5));
  CHECK(t2.size() == 3);
  CHECK_THROWS_WITH(training::segmentation_options_from_json({{"dice", -1}}), Catch::Contains("'dice'"));
  CHECK_THROWS_WITH(training::segmentation_options_from_json({{"weights", 1}}),
                    Catch::Contains("valid: dice, boundary_width"));
}

TEST_CASE("Predicted classes: argmax over the class axis, first maximum and NaN as argmax", "[segmentation]") {
  torch::manual_seed(3);
  for (auto type : {torch::kFloat32, torch::kBFloat16, torch::kFloat64}) {
    auto logits = torch::randn({3, 5, 7, 9}).to(type);
    logits.select(1, 3).copy_(logits.select(1, 1));  // ties between classes 1 and 3 wherever 1 is the maximum
    logits.index_put_({0, torch::indexing::Slice(), 0, 0}, 1.0);  // all five equal: class 0
    logits.index_put_({1, 2, 1, 1}, NAN);
    logits.index_put_({1, 4, 1, 1}, NAN);  // two NaNs: the first one
    const auto predicted = training::predicted_classes(logits);
    CHECK(predicted.sizes() == torch::IntArrayRef({3, 7, 9}));
    CHECK(torch::equal(predicted, logits.argmax(1)));
    CHECK(predicted[0][0][0].item<int64_t>() == 0);
    CHECK(predicted[1][1][1].item<int64_t>() == 2);
    // The tied classes: never class 3 where class 1 holds the same maximum.
    CHECK(predicted.eq(3).sum().item<int64_t>() == 0);
  }
  // Volumes too (the 3-D U-Net's logits [N, C, D, H, W]).
  auto volume = torch::randn({2, 4, 6, 5, 3});
  CHECK(torch::equal(training::predicted_classes(volume), volume.argmax(1)));
}
