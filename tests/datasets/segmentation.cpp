// Segmentation data: scenes, volumes and image folders.
#include "datasets/segmentation.h"
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
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

/// Writes a grey PNG whose pixel values are `ids` (class ids, or grey levels 0..255).
void write_ids(const torch::Tensor& ids, const std::string& path) {
  datasets::save_png(ids.to(torch::kFloat32).div(255), path);
}

}  // namespace

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
  config.val_fraction = 0;  // the loader's own splits
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
  config.val_fraction = 0;  // the loader's own splits
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
