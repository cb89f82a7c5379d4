// Your own images, as a user goes: zoo dataset export writes Fashion-MNIST as class folders, zoo train resnet18 learns
// from them (class names kept in the run), zoo predict of the run or its export prints class names and brings other
// image sizes to the model's, zoo eval --per-class names the classes; bad input in one line.
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "tests/cli/check_error.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"

#include <torch/csrc/jit/serialization/pickle.h>
#include <catch2/catch.hpp>

#include <filesystem>

using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

size_t count_files(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

const std::string kTrain =
    "train resnet18 --dataset image-classes --set stem=cifar --set in_channels=1 --set num_classes=10 "
    "--data-option channels=1 --data-option size=16 --data-option mean=0.5 --data-option std=0.25 "
    "--data-option augment=crop=2,flip --batch-size 32 --lr 0.05 --no-progress --threads 1 ";

}  // namespace

TEST_CASE("zoo dataset export, then train, predict and eval on the class folders", "[cli][images]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto data = tmp.str("fm");
  auto r = run_zoo("dataset export fashion-mnist --limit 300 --out " + data);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("300 training and 300 test images in 10 class folders"));
  CHECK(count_files(fs::path(data) / "train") == 300);
  CHECK(count_files(fs::path(data) / "test") == 300);
  // Item 0 of the training split (an ankle boot, label 9) is train/Ankle boot/000.png, pixel for pixel.
  const auto item =
      zoo::datasets::load_mnist(zoo::datasets::default_fashion_mnist_dir(), zoo::datasets::Split::Train, 1);
  const auto png = zoo::datasets::load_image(data + "/train/Ankle boot/000.png");
  CHECK(torch::equal(png, item->inputs()[0].mul(255).round().to(torch::kUInt8)));
  CHECK(fs::is_directory(data + "/train/T-shirt-top"));  // "T-shirt/top": no slash in a folder name
  check_error(run_zoo("dataset export fashion-mnist --limit 5 --out " + data), "already exists", 1);
  check_error(run_zoo("dataset export scenes --limit 5 --out " + tmp.str("s")), "names no classes", 1);

  // Two epochs on the folders: the loss falls, the class names are the folders'.
  const auto run = tmp.str("run");
  r = run_zoo(kTrain + "--epochs 2 --val-fraction 0 --data-dir " + data + " --out " + run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const auto config = zoo::training::read_json_file(run + "/config.json");
  REQUIRE(config["classes"].size() == 10);
  CHECK(config["classes"][0] == "Ankle boot");
  CHECK(config["classes"][8] == "T-shirt-top");
  CHECK(config["input_shape"] == nlohmann::json({1, 16, 16}));
  CHECK(config["mean"] == nlohmann::json({0.5}));
  CHECK(config["std"] == nlohmann::json({0.25}));
  std::vector<double> losses;
  std::istringstream lines(zoo::test::read_text(run + "/metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("train")) losses.push_back(j["train"]["loss"].get<double>());
  }
  REQUIRE(losses.size() == 2);
  CHECK(losses[1] < losses[0]);

  // zoo predict RUN: a 96x80 colour picture is read grey and brought to 16x16; the classes by name.
  torch::manual_seed(0);
  zoo::datasets::save_png(torch::rand({3, 80, 96}), tmp.str("big.png"));
  r = run_zoo("predict " + run + " --input " + tmp.str("big.png") + " --topk 3");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("input [1, 1, 16, 16] -> output [1, 10]"));
  const auto top = r.out.substr(r.out.find("top classes ") + 12);
  int named = 0;
  for (const auto& name : config["classes"]) named += top.find(name.get<std::string>() + " (") != std::string::npos;
  CHECK(named == 3);
  check_error(run_zoo("predict " + run + " --input " + tmp.str("big.png") + " --no-resize"),
              "is 96x80 but the model takes 16x16 images; leave out --no-resize", 1);
  check_error(run_zoo("predict " + run + " --input " + tmp.str("big.png") + " --resize 16x0"),
              "--resize expects N or HxW", 1);
  // --classes FILE replaces the names; the export carries the run's names and input size.
  std::string names;
  for (int i = 0; i < 10; ++i) names += "class" + std::to_string(i) + "\n";
  zoo::test::write_text(tmp.str("names.txt"), names);
  r = run_zoo("predict " + run + " --input " + tmp.str("big.png") + " --topk 10 --classes " + tmp.str("names.txt"));
  CHECK_THAT(r.out, Catch::Contains("class0 (") && Catch::Contains("class9 ("));
  REQUIRE(run_zoo("export " + run + " --out " + tmp.str("m.pt")).code == 0);
  auto exported = run_zoo("predict " + tmp.str("m.pt") + " --input " + tmp.str("big.png") + " --topk 3");
  INFO(exported.out << exported.err);
  REQUIRE(exported.code == 0);
  CHECK(exported.out == run_zoo("predict " + run + " --input " + tmp.str("big.png") + " --topk 3").out);
  // The image went through the run's normalisation: the same tensor, normalised by hand and given as a tensor
  // file, prints the same answer.
  const auto by_hand = (zoo::datasets::resize_center_crop(zoo::datasets::load_image(tmp.str("big.png"), 1), 16, 16)
                            .to(torch::kFloat32)
                            .div(255.0)
                            .unsqueeze(0) -
                        0.5) /
                       0.25;
  const auto bytes = torch::jit::pickle_save(by_hand);
  zoo::write_bytes(tmp.str("x.pt"), std::string(bytes.begin(), bytes.end()));
  r = run_zoo("predict " + run + " --input " + tmp.str("x.pt") + " --topk 3");
  INFO(r.out << r.err);
  CHECK(r.out == exported.out);
  // A folder of images of another size: each brought to the model's.
  r = run_zoo("predict " + run + " --batch " + data + "/test/Bag --topk 1");
  REQUIRE(r.code == 0);
  CHECK(zoo::test::count_lines(r.out) == count_files(fs::path(data) / "test" / "Bag"));

  // zoo eval --per-class: the folders' names.
  r = run_zoo("eval " + run + " --per-class");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("Ankle boot") && Catch::Contains("T-shirt-top"));
}

TEST_CASE("zoo train on class folders: a model that does not fit the data is one line", "[cli][images][errors]") {
  TempDir tmp;
  for (const char* cls : {"a", "b", "c"})
    for (int i = 0; i < 3; ++i) {
      fs::create_directories(tmp.path() / "d" / cls);
      zoo::datasets::save_png(torch::rand({3, 8, 8}), (tmp.path() / "d" / cls / (std::to_string(i) + ".png")).string());
    }
  const std::string base = "train resnet18 --dataset image-classes --data-dir " + tmp.str("d") +
                           " --epochs 1 --no-progress --val-fraction 0 --set stem=cifar ";
  check_error(run_zoo(base + "--set num_classes=2 --out " + tmp.str("r1")),
              "resnet18 has num_classes 2 but the data has 3 classes (a, b, c): add --set num_classes=3", 1);
  CHECK_FALSE(fs::exists(tmp.str("r1")));
  check_error(run_zoo(base + "--set num_classes=3 --data-option channels=1 --out " + tmp.str("r2")),
              "the model does not fit the data", 1);
  check_error(run_zoo(base + "--set num_classes=3 --set in_channels=1 --out " + tmp.str("r3")),
              "resnet18 expects [N, 1, H, W], got [2, 3, 8, 8]", 1);
  // More outputs than classes: a note, and the run trains.
  auto r = run_zoo(base + "--out " + tmp.str("r4"));
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK_THAT(r.err,
             Catch::Contains("note: resnet18 has 1000 outputs for 3 classes: --set num_classes=3 fits the data"));
  check_error(run_zoo("train resnet18 --epochs 1 --out " + tmp.str("r5")),
              "dataset 'image-classes' needs --data-dir DIR holding one folder of images per class", 1);
}
