// Segmentation end to end: a U-Net learns, and the tools (train flags, eval --json, zoo segment, the
// unet-vs-deconvnet experiment) work as a user runs them.
#include "datasets/images.h"
#include "datasets/registry.h"
#include "helpers.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <fstream>

using namespace zoo;
using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// A small U-Net run on small scenes: 32x32 canvases with 1-2 items.
training::RunConfig small_scenes_run(const std::string& model, int64_t n_train, int64_t epochs) {
  training::RunConfig config;
  config.model = model;
  config.options = {{"base_channels", 16}, {"levels", 3}};
  config.data.name = "scenes";
  config.data.options = {{"n_train", n_train}, {"n_test", 200}, {"size", 32}, {"min_items", 1}, {"max_items", 2}};
  config.train =
      training::TrainOptions().epochs(epochs).batch_size(16).lr(3e-3).schedule("cosine").threads(1).progress(false);
  return config;
}

}  // namespace

TEST_CASE("A small U-Net learns to segment scenes: mIoU far above what chance reaches", "[segmentation][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir dir;
  auto run = training::Run::create(small_scenes_run("unet", 2000, 6), dir.str("unet"));
  const double before = run->evaluate()["miou"].get<double>();
  run->fit();
  const auto test = run->trainer().state().final["test"];
  // Floors chance cannot reach: predicting background everywhere scores the background's share of the pixels
  // as accuracy, and its IoU (about that share) over the 11 classes that occur as mIoU, under 0.06; the right
  // foreground with random classes about 0.15. Measured after training: mIoU 0.41, boundary IoU 0.35.
  datasets::DataConfig data = run->config().data;
  auto labels = datasets::load_splits(data).test->get(torch::arange(200)).target;
  const double background = labels.eq(0).to(torch::kFloat64).mean().item<double>();
  CHECK(before < 0.15);
  CHECK(test["miou"].get<double>() > 0.30);
  CHECK(test["pixel_accuracy"].get<double>() > background + 0.1);
  CHECK(test["boundary_iou"].get<double>() > 0.2);
  CHECK(test["iou"].size() == 11);
}

TEST_CASE("zoo train/eval/segment for a U-Net, with data and task options", "[segmentation][cli]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir dir;
  const std::string run = dir.str("run");
  auto r = run_zoo(
      "train unet --set base_channels=4 --set levels=3 --data-option n_train=64 --data-option n_test=16 "
      "--task-option dice=0.5 --epochs 1 --batch-size 16 --threads 1 --no-progress --out " +
      run);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out,
             Catch::Contains("val miou") && Catch::Contains("\ntest "));  // the epoch line has the scalar metrics
  auto metrics = json::parse(zoo::test::read_text(fs::path(run) / "metrics.jsonl"));
  CHECK(metrics["train"].contains("dice_loss"));
  CHECK(metrics["train"].contains("ce"));
  auto config = json::parse(zoo::test::read_text(fs::path(run) / "config.json"));
  CHECK(config["data"]["options"]["n_train"] == 64);
  CHECK(config["task_options"]["dice"] == 0.5);

  auto e = run_zoo("eval " + run + " --json --threads 1");
  REQUIRE(e.code == 0);
  auto m = json::parse(zoo::test::last_line(e.out));
  for (const char* key : {"miou", "boundary_iou", "pixel_accuracy", "dice", "loss"}) CHECK(m.contains(key));
  CHECK(m["iou"].size() == 11);
  CHECK(m["items"] == 16);

  // Test scenes as rows of image | truth | prediction: 3 columns of 64 + padding 2, drawn 3 times larger (tiles
  // at least 160 pixels wide) under a 24-pixel band of titles, with the legend to the right; only the picture
  // is left behind.
  auto s = run_zoo("segment " + run + " --n 4 --out " + dir.str("grid.png"));
  REQUIRE(s.code == 0);
  auto grid = datasets::load_image(dir.str("grid.png"));
  CHECK(grid.size(1) == 3 * (4 * 66 + 2) + 24);
  CHECK(grid.size(2) > 3 * (3 * 66 + 2) + 100);
  CHECK_FALSE(fs::exists(dir.path() / "grid.gp"));
  CHECK_FALSE(fs::exists(dir.path() / "grid.grid.png"));
  // Without gnuplot: the enlarged grid alone, and a line saying what to install.
  s = zoo::test::run_command("PATH=/nonexistent " + std::string(ZOO_BIN) + " segment " + run + " --n 2 --out " +
                             dir.str("plain.png"));
  REQUIRE(s.code == 0);
  CHECK_THAT(s.err, Catch::Contains("has no titles or legend: apt-get install gnuplot-nox"));
  CHECK(datasets::load_image(dir.str("plain.png")).sizes() ==
        torch::IntArrayRef({3, 3 * (2 * 66 + 2), 3 * (3 * 66 + 2)}));
  // A user's image: an overlay of the same size, and the label map with --mask.
  datasets::save_png(torch::rand({1, 40, 50}), dir.str("photo.png"));
  s = run_zoo("segment " + run + " --input " + dir.str("photo.png") + " --out " + dir.str("overlay.png") + " --mask " +
              dir.str("mask.png"));
  REQUIRE(s.code == 0);
  CHECK_THAT(s.out, Catch::Contains("predicted classes"));
  CHECK(datasets::load_image(dir.str("overlay.png")).sizes() == torch::IntArrayRef({3, 40, 50}));
  auto mask = datasets::load_image(dir.str("mask.png"));
  CHECK(mask.sizes() == torch::IntArrayRef({1, 40, 50}));
  CHECK(mask.max().item<int64_t>() <= 10);
  // --scale draws the overlay 3x; --figure writes image | prediction with the legend; the shares name the classes.
  s = run_zoo("segment " + run + " --input " + dir.str("photo.png") + " --out " + dir.str("big.png") +
              " --scale 3 --figure " + dir.str("fig.png"));
  INFO(s.out << s.err);
  REQUIRE(s.code == 0);
  CHECK(datasets::load_image(dir.str("big.png")).sizes() == torch::IntArrayRef({3, 120, 150}));
  CHECK(datasets::load_image(dir.str("fig.png")).size(2) > 3 * (2 * 52 + 2));  // two tiles at 3x, then the legend
  CHECK_THAT(s.out, Catch::Matches(R"((.|\n)*predicted classes: [0-9]+ [a-zA-Z/ -]+ \([0-9.]+%\)(.|\n)*)"));
  CHECK_THAT(s.out, Catch::Contains("the figure with its legend"));
  // An image whose forward would not fit the budget: refused from its header, before decoding; nothing written.
  // (A 1 x 1,000,000 picture is padded to 4 x 1,000,000 for this 3-level U-Net: 4M pixels x 4 channels x 40 bytes.)
  datasets::save_png(torch::rand({1, 1, 1000000}), dir.str("line.png"));
  auto refused = run_zoo("segment " + run + " --input " + dir.str("line.png") + " --out " + dir.str("line-out.png") +
                         " --max-memory 100");
  CHECK(refused.code == 1);
  CHECK(zoo::test::count_lines(refused.err) == 1);
  CHECK_THAT(refused.err, Catch::Contains("is 1000000x1 pixels (1000000x4 once padded to a multiple of 4): the "
                                          "forward of this model needs about 0.6 GB, above --max-memory 100 MB") &&
                              Catch::Contains("raise --max-memory to 611"));
  CHECK_FALSE(fs::exists(dir.path() / "line-out.png"));

  // Errors: one line, non-zero exit.
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"segment " + run, "needs --input IMAGE or --n N"},
           {"segment " + run + " --input " + dir.str("missing.png"), "cannot read image"},
           {"segment " + run + " --n 4 --input " + dir.str("photo.png"), "excludes"},
           {"segment " + run + " --n 10 --offset 10", "exceeds the"},
           {"segment " + run + " --n 2 --figure " + dir.str("f.png"), "--figure goes with --input"},
           {"segment " + run + " --n 2 --scale 100", "--scale"},
           {"train unet --data-option size", "--data-option expects key=value"},
           {"train unet --data-option colour=1 --out " + dir.str("x"), "has no option 'colour'"},
           {"train unet --task-option dice=-1 --out " + dir.str("y"), "'dice'"},
           {"train unet --resume " + run + " --data-option size=32", "cannot change a run being resumed"}}) {
    auto bad = run_zoo(args);
    CHECK(bad.code != 0);
    CHECK(zoo::test::count_lines(bad.err) == 1);
    CHECK_THAT(bad.err, Catch::Contains(message));
  }
}

TEST_CASE("zoo segment refuses runs that do not segment, and 2-D input for a 3-D model", "[segmentation][cli]") {
  TempDir dir;
  auto r = run_zoo(
      "train unet3d --set base_channels=2 --set levels=2 --data-option n_train=8 --data-option n_test=4 "
      "--data-option size=8 --epochs 1 --threads 1 --no-progress --out " +
      dir.str("u3"));
  REQUIRE(r.code == 0);
  datasets::save_png(torch::rand({1, 8, 8}), dir.str("photo.png"));
  auto s = run_zoo("segment " + dir.str("u3") + " --input " + dir.str("photo.png"));
  CHECK(s.code == 1);
  CHECK_THAT(s.err, Catch::Contains("is a 3-D model"));
  // Volumes show as middle slices: rows of 3 panels of 8 + padding, drawn 20 times larger.
  s = run_zoo("segment " + dir.str("u3") + " --n 2 --out " + dir.str("v.png"));
  REQUIRE(s.code == 0);
  CHECK_THAT(s.out, Catch::Contains("middle slices"));
  CHECK(datasets::load_image(dir.str("v.png")).size(1) == 20 * (2 * 10 + 2) + 24);
  r = run_zoo("train mlp --limit 64 --epochs 1 --threads 1 --no-progress --out " + dir.str("mlp"));
  if (r.code == 0) {  // needs Fashion-MNIST
    s = run_zoo("segment " + dir.str("mlp") + " --n 2");
    CHECK(s.code == 1);
    CHECK_THAT(s.err, Catch::Contains("zoo segment needs a segmentation run"));
  }
}

TEST_CASE("zoo experiment unet-vs-deconvnet writes the table, the CSV and the picture", "[segmentation][experiment]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir dir;
  auto r = run_zoo(
      "experiment unet-vs-deconvnet --epochs 1 --n-train 64 --n-test 16 --size 32 --base-channels 4 "
      "--levels 3 --show 3 --threads 1 --out " +
      dir.str());
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("boundary IoU"));
  std::ifstream csv(dir.str("unet_vs_deconvnet.csv"));
  std::string header, unet, deconv, extra;
  std::getline(csv, header);
  std::getline(csv, unet);
  std::getline(csv, deconv);
  CHECK(header == "model,parameters,miou,boundary_iou,pixel_accuracy,dice,train_seconds,epochs");
  CHECK_THAT(unet, Catch::StartsWith("unet,"));
  CHECK_THAT(deconv, Catch::StartsWith("deconvnet,"));
  CHECK_FALSE(std::getline(csv, extra));
  // Rows of image | truth | unet | deconvnet, 32-pixel tiles drawn 5 times larger, titles and legend.
  const auto picture = datasets::load_image(dir.str("unet_vs_deconvnet.png"));
  CHECK(picture.size(1) == 5 * (3 * 34 + 2) + 24);
  CHECK(picture.size(2) > 5 * (4 * 34 + 2) + 100);
  CHECK(fs::exists(dir.path() / "unet" / "model.pt"));
  CHECK(fs::exists(dir.path() / "deconvnet" / "model.pt"));
}
