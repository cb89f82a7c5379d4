// Segmentation: U-Net and DeconvNet in 2-D and 3-D, their data (scenes, volumes, image folders), the metrics,
// learning, and the tools (zoo segment, the unet-vs-deconvnet experiment).
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
#include "datasets/segmentation.h"
#include "helpers.h"
#include "models/registry.h"
#include "models/segmentation.h"
#include "training/segmentation_objective.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> parameter_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.key());
  return names;
}

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

/// Writes a grey PNG whose pixel values are `ids` (class ids, or grey levels 0..255).
void write_ids(const torch::Tensor& ids, const std::string& path) {
  datasets::save_png(ids.to(torch::kFloat32).div(255), path);
}

}  // namespace

TEST_CASE("U-Net and DeconvNet output the input's spatial size for any size, in 2-D and 3-D", "[segmentation]") {
  torch::manual_seed(0);
  for (const std::string upsample : {"transpose", "bilinear"}) {
    models::UNet unet(models::UNetOptions()
                          .encoder(models::EncoderOptions().base_channels(4).levels(4))
                          .num_classes(5)
                          .upsample(upsample));
    unet->eval();
    for (auto size : std::vector<std::vector<int64_t>>{{32, 32}, {37, 50}, {7, 9}, {1, 1}, {64, 24}}) {
      auto y = unet->forward(torch::randn({2, 1, size[0], size[1]}));
      CHECK(y.sizes() == torch::IntArrayRef({2, 5, size[0], size[1]}));
    }
  }
  models::DeconvNet deconv(
      models::DeconvNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(4)).num_classes(5));
  deconv->eval();
  for (auto size : std::vector<std::vector<int64_t>>{{32, 32}, {37, 50}, {7, 9}}) {
    auto y = deconv->forward(torch::randn({2, 1, size[0], size[1]}));
    CHECK(y.sizes() == torch::IntArrayRef({2, 5, size[0], size[1]}));
  }
  models::UNet unet3d(
      models::UNetOptions().encoder(models::EncoderOptions().dims(3).base_channels(2).levels(3)).num_classes(4));
  models::DeconvNet deconv3d(
      models::DeconvNetOptions().encoder(models::EncoderOptions().dims(3).base_channels(2).levels(3)).num_classes(4));
  unet3d->eval();
  deconv3d->eval();
  for (auto size : std::vector<std::vector<int64_t>>{{8, 8, 8}, {9, 13, 6}}) {
    auto x = torch::randn({1, 1, size[0], size[1], size[2]});
    CHECK(unet3d->forward(x).sizes() == torch::IntArrayRef({1, 4, size[0], size[1], size[2]}));
    CHECK(deconv3d->forward(x).sizes() == torch::IntArrayRef({1, 4, size[0], size[1], size[2]}));
  }
  // Without padding, sizes that are not a multiple of 2^(levels-1) are refused with the sizes that work.
  models::UNet strict(models::UNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(4).pad(false)));
  CHECK(strict->forward(torch::randn({1, 1, 32, 16})).size(2) == 32);
  try {
    strict->forward(torch::randn({1, 1, 30, 30}));
    FAIL("a 30x30 input was accepted without padding");
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    CHECK_THAT(msg, Catch::Contains("30x30 is not a multiple of 8"));
    CHECK_THAT(msg, Catch::Contains("24x24 or 32x32"));
  }
  CHECK_THROWS_WITH(unet3d->forward(torch::randn({1, 1, 8, 8})), Catch::Contains("expects [N, 1, D, H, W]"));
}

TEST_CASE("U-Net concatenates each skip with the upsampled map at the same resolution", "[segmentation]") {
  for (const std::string upsample : {"transpose", "bilinear"}) {
    models::UNet unet(
        models::UNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(4)).upsample(upsample));
    unet->forward(torch::randn({2, 1, 32, 32}));
    const auto& concats = unet->last_concats();
    REQUIRE(concats.size() == 3);
    // Deepest first: level 2 (16 channels, 8x8), level 1 (8, 16x16), level 0 (4, 32x32); the two halves match.
    const std::vector<std::vector<int64_t>> expected{{2, 16, 8, 8}, {2, 8, 16, 16}, {2, 4, 32, 32}};
    for (size_t k = 0; k < 3; ++k) {
      CHECK(concats[k].first == expected[k]);
      CHECK(concats[k].second == expected[k]);
    }
    // Each decoder DoubleConv therefore reads 2 c_i channels.
    auto* up = unet->decoder[2]->as<models::UNetUpImpl>();
    CHECK(up->conv->options.in_channels() == 8);
  }
}

TEST_CASE("U-Net and DeconvNet: Python parameter names and hand-counted parameters", "[segmentation]") {
  models::UNet unet(models::UNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(2)).num_classes(3));
  const auto names = parameter_names(*unet);
  for (const char* n :
       {"encoder.0.double_conv.0.weight", "encoder.0.double_conv.1.weight", "encoder.1.double_conv.3.weight",
        "decoder.0.up.weight", "decoder.0.up.bias", "decoder.0.conv.double_conv.4.bias", "head.weight", "head.bias"})
    CHECK(has(names, n));
  CHECK_FALSE(has(names, "encoder.0.double_conv.0.bias"));  // convs before batch norm have no bias
  // encoder 196 + 896, up 8*4*2*2 + 4 = 132, decoder DoubleConv(8 -> 4) 288 + 8 + 144 + 8, head 4*3 + 3
  CHECK(models::count_parameters(*unet) == 196 + 896 + 132 + 448 + 15);
  CHECK(unet->named_buffers().contains("encoder.0.double_conv.1.running_mean"));

  models::DeconvNet deconv(
      models::DeconvNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(2)).num_classes(3));
  const auto dnames = parameter_names(*deconv);
  for (const char* n : {"encoder.0.double_conv.0.weight", "decoder.0.reduce.0.weight", "decoder.0.reduce.1.bias",
                        "decoder.0.conv.double_conv.0.weight", "head.weight"})
    CHECK(has(dnames, n));
  // reduce 8*4*9 + 8 = 296, DoubleConv(4 -> 4) 144 + 8 + 144 + 8 = 304
  CHECK(models::count_parameters(*deconv) == 196 + 896 + 296 + 304 + 15);
  // At the default depth and width the two have nearly the same size (35 against 36 c^2 per decoder level).
  auto u = models::build_model("unet").first, d = models::build_model("deconvnet").first;
  const double ratio =
      static_cast<double>(models::count_parameters(*d.ptr())) / static_cast<double>(models::count_parameters(*u.ptr()));
  CHECK(ratio > 0.95);
  CHECK(ratio < 1.05);
  // The analytic count of multiply-accumulates matches the hand count of the small U-Net on 8x8.
  // encoder: 9*(1*4 + 16)*64 + 9*(32 + 64)*16; up 8*4*64; DoubleConv 9*(32 + 16)*64; head 4*3*64
  CHECK(models::segmentation_macs("unet", 2, 1, 3, 2, 4, "transpose", {8, 8}) ==
        Approx(9 * 20 * 64 + 9 * 96 * 16 + 8 * 4 * 64 + 9 * 48 * 64 + 12 * 64));
}

TEST_CASE("Gradient reaches the first encoder layer, and the U-Net skips are used", "[segmentation]") {
  torch::manual_seed(1);
  models::UNet unet(models::UNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(3)).num_classes(4));
  models::DeconvNet deconv(
      models::DeconvNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(3)).num_classes(4));
  auto x = torch::randn({2, 1, 16, 16});
  auto target = torch::randint(0, 4, {2, 16, 16}, torch::kInt64);
  for (torch::nn::Module* m :
       {static_cast<torch::nn::Module*>(unet.get()), static_cast<torch::nn::Module*>(deconv.get())}) {
    torch::Tensor logits = m == unet.get() ? unet->forward(x) : deconv->forward(x);
    torch::nn::functional::cross_entropy(logits, target).backward();
    auto grad = m->named_parameters()["encoder.0.double_conv.0.weight"].grad();
    REQUIRE(grad.defined());
    CHECK(grad.abs().sum().item<double>() > 1e-6);
    CHECK(torch::isfinite(grad).all().item<bool>());
  }
  // Zeroing what the skips carry changes the output: the decoder reads them.
  unet->eval();
  torch::NoGradGuard no_grad;
  auto features = unet->encode(x);
  auto with = unet->decode(features);
  for (size_t i = 0; i + 1 < features.size(); ++i) features[i] = torch::zeros_like(features[i]);
  auto without = unet->decode(features);
  CHECK((with - without).abs().max().item<double>() > 1e-3);
  CHECK(with.sizes() == without.sizes());
}

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

TEST_CASE("Scenes are deterministic per seed and their labels agree with their pixels", "[segmentation][data]") {
  // Three source items: item k is a 10x10 square of brightness 0.2 (k + 1) at the centre of 28x28, class k.
  auto items = torch::zeros({3, 1, 28, 28});
  for (int k = 0; k < 3; ++k) items[k][0].slice(0, 9, 19).slice(1, 9, 19).fill_(0.2 * (k + 1));
  auto classes = torch::tensor({0, 1, 2}, torch::kInt64);
  const auto options = datasets::SceneOptions().size(48).min_items(2).max_items(4);
  auto a = datasets::make_scenes(items, classes, 40, options, 7);
  auto b = datasets::make_scenes(items, classes, 40, options, 7);
  auto c = datasets::make_scenes(items, classes, 40, options, 8);
  CHECK(a->inputs().equal(b->inputs()));
  CHECK(a->targets().equal(b->targets()));
  CHECK_FALSE(a->inputs().equal(c->inputs()));
  CHECK(a->inputs().sizes() == torch::IntArrayRef({40, 1, 48, 48}));
  CHECK(a->targets().sizes() == torch::IntArrayRef({40, 48, 48}));
  // Item i does not depend on how many are made: a shorter set is a prefix.
  auto prefix = datasets::make_scenes(items, classes, 5, options, 7);
  CHECK(prefix->inputs().equal(a->inputs().slice(0, 0, 5)));
  // Background is exactly 0; a pixel of class k + 1 shows item k (the top item where items overlap).
  auto x = a->inputs().squeeze(1), y = a->targets();
  CHECK(x.masked_select(y == 0).abs().max().item<double>() == 0.0);
  CHECK(torch::allclose(x.masked_select(y > 0), 0.2 * y.masked_select(y > 0).to(torch::kFloat32)));
  // Every scene has 2..4 items: at least one class shows; all three show somewhere.
  CHECK((std::get<0>(y.flatten(1).max(1)) > 0).all().item<bool>());
  for (int k = 1; k <= 3; ++k) CHECK((y == k).any().item<bool>());
  CHECK_THROWS_WITH(datasets::make_scenes(items, classes, 4, datasets::SceneOptions().size(20), 0),
                    Catch::Contains("at least the item size"));
}

TEST_CASE("The scenes dataset: Fashion-MNIST items, 11 classes, test scenes from test items", "[segmentation][data]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  datasets::DataConfig config;
  config.name = "scenes";
  config.options = {{"n_train", 50}, {"n_test", 20}, {"size", 40}};
  auto splits = datasets::load_splits(config);
  CHECK(splits.train->size() == 50);
  CHECK(splits.test->size() == 20);
  auto batch = splits.test->get(torch::arange(20));
  CHECK(batch.input.sizes() == torch::IntArrayRef({20, 1, 40, 40}));
  CHECK(batch.target.max().item<int64_t>() <= 10);
  CHECK(batch.target.min().item<int64_t>() == 0);
  CHECK_FALSE(splits.train->get(torch::arange(20)).input.equal(batch.input));
  // One item on a 28x28 canvas is a whole item: each test scene is a (thresholded) Fashion-MNIST test image, and
  // its label is that image's class + 1.
  config.options = {{"n_train", 1}, {"n_test", 3}, {"size", 28}, {"min_items", 1}, {"max_items", 1}};
  auto single = datasets::load_splits(config).test->get(torch::arange(3));
  auto test_items = datasets::load_mnist(datasets::default_fashion_mnist_dir(), datasets::Split::Test);
  auto thresholded = torch::where(test_items->inputs() > 0.1, test_items->inputs(), torch::zeros({}));
  for (int64_t i = 0; i < 3; ++i) {
    auto distance = (thresholded - single.input[i]).abs().flatten(1).sum(1);
    const int64_t match = distance.argmin().item<int64_t>();
    CHECK(distance[match].item<double>() == 0.0);
    CHECK(single.target[i].max().item<int64_t>() == test_items->targets()[match].item<int64_t>() + 1);
  }
  config.options["colour"] = true;
  CHECK_THROWS_WITH(datasets::load_splits(config), Catch::Contains("has no option 'colour'"));
}

TEST_CASE("Volumes: deterministic 3-D scenes whose labels agree with the voxels", "[segmentation][data]") {
  const auto options = datasets::VolumeOptions().size(16).noise(0.0);
  auto a = datasets::make_volumes(12, options, 3), b = datasets::make_volumes(12, options, 3);
  CHECK(a->inputs().equal(b->inputs()));
  CHECK_FALSE(a->inputs().equal(datasets::make_volumes(12, options, 4)->inputs()));
  CHECK(a->inputs().sizes() == torch::IntArrayRef({12, 1, 16, 16, 16}));
  auto x = a->inputs().squeeze(1), y = a->targets();
  CHECK(x.masked_select(y == 0).abs().max().item<double>() == 0.0);
  auto fg = x.masked_select(y > 0);
  CHECK(fg.min().item<double>() >= 0.5);
  CHECK(fg.max().item<double>() <= 1.0);
  for (int k = 1; k <= 3; ++k) CHECK((y == k).any().item<bool>());
  CHECK(y.max().item<int64_t>() == 3);
  // With noise the labels stay, the voxels change.
  auto noisy = datasets::make_volumes(12, datasets::VolumeOptions().size(16).noise(0.3), 3);
  CHECK(noisy->targets().equal(y));
}

TEST_CASE("Image folders: images/NAME.png with masks/NAME.png, and every error in one line", "[segmentation][data]") {
  TempDir dir;
  fs::create_directories(dir.path() / "images");
  fs::create_directories(dir.path() / "masks");
  auto ids = torch::zeros({6, 8}, torch::kInt64);
  ids.slice(0, 1, 4).slice(1, 2, 6).fill_(2);
  ids[5][7] = 1;
  for (const char* name : {"a", "b", "c"}) {
    datasets::save_png(torch::rand({1, 6, 8}), dir.str(std::string("images/") + name + ".png"));
    write_ids(ids, dir.str(std::string("masks/") + name + ".png"));
  }
  auto data = datasets::load_image_folder(dir.str(), 3, 1);
  CHECK(data->inputs().sizes() == torch::IntArrayRef({3, 1, 6, 8}));
  CHECK(data->targets()[1].equal(ids));
  CHECK(data->inputs().max().item<double>() <= 1.0);
  CHECK(datasets::load_image_folder(dir.str(), 3, 3)->inputs().size(1) == 3);
  // Through the registry: the last 20% of sorted names (at least one) is the test split.
  datasets::DataConfig config;
  config.name = "image-folder";
  config.data_dir = dir.str();
  config.options = {{"num_classes", 3}};
  auto splits = datasets::load_splits(config);
  CHECK(splits.train->size() == 2);
  CHECK(splits.test->size() == 1);

  // A class id >= num_classes names the file, the pixel and the fix.
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 2, 1),
                    Catch::Contains("holds class id 2 at x=2, y=1, but num_classes is 2") &&
                        Catch::Contains("--data-option num_classes=3"));
  // A mask of another size.
  write_ids(torch::zeros({5, 8}, torch::kInt64), dir.str("masks/b.png"));
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 3, 1),
                    Catch::Contains("images/b.png is 8x6 but its mask") && Catch::Contains("is 8x5"));
  write_ids(ids, dir.str("masks/b.png"));
  // Images of different sizes.
  datasets::save_png(torch::rand({1, 7, 8}), dir.str("images/c.png"));
  write_ids(torch::zeros({7, 8}, torch::kInt64), dir.str("masks/c.png"));
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 3, 1), Catch::Contains("all images must have one size"));
  datasets::save_png(torch::rand({1, 6, 8}), dir.str("images/c.png"));
  // A colour mask.
  datasets::save_png(torch::rand({3, 6, 8}), dir.str("masks/c.png"));
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 3, 1), Catch::Contains("has colour pixels"));
  write_ids(ids, dir.str("masks/c.png"));
  // An unreadable image.
  std::ofstream(dir.str("images/d.png")) << "not a png";
  write_ids(ids, dir.str("masks/d.png"));
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 3, 1),
                    Catch::Contains("cannot read image") && Catch::Contains("images/d.png"));
  fs::remove(dir.path() / "images/d.png");
  // A missing mask.
  datasets::save_png(torch::rand({1, 6, 8}), dir.str("images/e.png"));
  CHECK_THROWS_WITH(datasets::load_image_folder(dir.str(), 3, 1),
                    Catch::Contains("no mask for") && Catch::Contains("masks/e.png"));
  // On the command line: exit 1 and one line on stderr.
  auto r = run_zoo("train unet --dataset image-folder --data-dir " + dir.str() +
                   " --data-option num_classes=3 --set base_channels=2 --out " + dir.str("run"));
  CHECK(r.code == 1);
  CHECK(zoo::test::count_lines(r.err) == 1);
  CHECK_THAT(r.err, Catch::StartsWith("zoo: error: image folder: no mask for"));
  CHECK_FALSE(fs::exists(dir.path() / "run"));
  config.data_dir = "";
  CHECK_THROWS_WITH(datasets::load_splits(config), Catch::Contains("needs --data-dir"));
}

TEST_CASE("Class colours and overlays: background keeps the image, classes blend with their colour",
          "[segmentation][images]") {
  auto labels = torch::tensor({0, 1, 2, 21}, torch::kInt64).view({2, 2});
  auto colours = datasets::colorize_labels(labels);
  REQUIRE(colours.sizes() == torch::IntArrayRef({3, 2, 2}));
  CHECK(colours.select(1, 0).select(1, 0).abs().sum().item<double>() == 0.0);  // class 0 is black
  CHECK(colours[0][0][1].item<float>() == Approx(31.0 / 255));                 // class 1: (31, 119, 180)
  CHECK(colours[2][0][1].item<float>() == Approx(180.0 / 255));
  CHECK(colours.select(1, 1).select(1, 1).equal(colours.select(1, 0).select(1, 1)));  // 21 repeats class 1
  CHECK_FALSE(colours.select(1, 1).select(1, 0).equal(colours.select(1, 0).select(1, 1)));
  auto image = torch::full({1, 2, 2}, 0.4);
  auto overlay = datasets::overlay_labels(image, labels, 0.25);
  REQUIRE(overlay.sizes() == torch::IntArrayRef({3, 2, 2}));
  CHECK(overlay.select(1, 0).select(1, 0).allclose(torch::full({3}, 0.4)));  // background unchanged
  auto expected = 0.75 * 0.4 + 0.25 * colours.select(1, 0).select(1, 1);
  CHECK(overlay.select(1, 0).select(1, 1).allclose(expected));
  CHECK_THROWS_WITH(datasets::overlay_labels(image, torch::zeros({3, 2}, torch::kInt64)),
                    Catch::Contains("do not match the image"));
}
