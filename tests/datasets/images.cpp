// Images: class colours and overlays.
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
#include "datasets/segmentation.h"
#include "helpers.h"
#include "models/registry.h"
#include "models/segmentation.h"
#include "training/segmentation_objective.h"

#include <fmt/format.h>
#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

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

TEST_CASE("Class colours for legends: the colours colorize_labels paints, and the names of each dataset's classes",
          "[segmentation][images]") {
  const auto colours = datasets::colorize_labels(torch::arange(0, 23).view({1, 23}));  // [3, 1, 23]
  for (int64_t id = 0; id < 23; ++id) {
    INFO("class " << id);
    const auto rgb = colours.select(2, id).flatten().mul(255).round().to(torch::kInt64);
    CHECK(datasets::class_colour_hex(id) ==
          fmt::format("#{:02x}{:02x}{:02x}", rgb[0].item<int64_t>(), rgb[1].item<int64_t>(), rgb[2].item<int64_t>()));
  }
  CHECK(datasets::class_colour_hex(0) == "#000000");
  CHECK(datasets::class_colour_hex(21) == datasets::class_colour_hex(1));  // the palette repeats after 20
  CHECK_THROWS_WITH(datasets::class_colour_hex(-1), Catch::Contains("negative class id"));
  const auto scenes = datasets::segmentation_class_names("scenes");
  REQUIRE(scenes.size() == 11);  // background + the ten Fashion-MNIST classes, in label order
  CHECK(scenes[0] == "background");
  CHECK(scenes[1] == "T-shirt/top");
  CHECK(scenes[10] == "ankle boot");
  CHECK(datasets::segmentation_class_names("volumes") ==
        std::vector<std::string>{"background", "sphere", "box", "cylinder"});
  CHECK(datasets::segmentation_class_names("image-folder").empty());
}
