// image-classes: torchvision's ImageFolder layout, both split layouts, the class order, pixel values read back, the
// resize against torchvision's, the cache and the per-batch decoding agreeing, and every bad folder in one line.
#include "datasets/classes.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "helpers.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::error_of;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// A grey-level image [1, h, w] whose pixels hold `value` (/255) everywhere.
void write_png(const fs::path& path, int64_t value, int64_t h = 8, int64_t w = 8) {
  fs::create_directories(path.parent_path());
  datasets::save_png(torch::full({1, h, w}, static_cast<double>(value) / 255), path.string());
}

datasets::Splits load(const std::string& dir, json options = json::object(), int64_t limit = 0) {
  datasets::DataConfig c;
  c.name = "image-classes";
  c.data_dir = dir;
  c.options = std::move(options);
  c.limit = limit;
  return datasets::DatasetRegistry::instance().at("image-classes").load(c);
}

std::vector<int64_t> labels_of(const datasets::Dataset& d) {
  const auto t = d.get(torch::arange(d.size())).target;
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

}  // namespace

TEST_CASE("image-classes: one folder of class folders, a seeded per-class split, pixels read back",
          "[datasets][image-classes]") {
  TempDir tmp;
  // cat: 5 images of value 10..14, dog: 3 of value 20..22, a hidden folder and a text file that are not classes.
  for (int i = 0; i < 5; ++i) write_png(tmp.path() / "cat" / ("c" + std::to_string(i) + ".png"), 10 + i);
  for (int i = 0; i < 3; ++i) write_png(tmp.path() / "dog" / ("d" + std::to_string(i) + ".png"), 20 + i);
  fs::create_directories(tmp.path() / ".cache");
  zoo::test::write_text(tmp.path() / "cat" / "notes.txt", "not an image");
  auto s = load(tmp.str(), {{"channels", 1}});
  CHECK(s.class_names == std::vector<std::string>{"cat", "dog"});
  // 20% of each class held out: round(0.2 * 5) = 1 cat, max(1, round(0.6)) = 1 dog.
  REQUIRE(s.train->size() == 6);
  REQUIRE(s.test->size() == 2);
  CHECK(labels_of(*s.train) == std::vector<int64_t>{0, 1, 0, 1, 0, 0});  // class by class in turn
  CHECK(labels_of(*s.test) == std::vector<int64_t>{0, 1});
  auto all = torch::cat({s.train->get(torch::arange(6)).input, s.test->get(torch::arange(2)).input});
  REQUIRE(all.sizes() == torch::IntArrayRef({8, 1, 8, 8}));
  // Every image read back with its own value, each exactly once, and with its class's values.
  auto values = (all.flatten(1).select(1, 0) * 255).round().to(torch::kInt64);
  CHECK(torch::equal(std::get<0>(values.sort()), torch::tensor({10, 11, 12, 13, 14, 20, 21, 22})));
  CHECK(torch::equal(all.amax({1, 2, 3}), all.amin({1, 2, 3})));
  const auto train_values = values.slice(0, 0, 6);
  for (int64_t i = 0; i < 6; ++i) CHECK((train_values[i].item<int64_t>() >= 20) == (labels_of(*s.train)[i] == 1));
  // The same seed gives the same split; another seed another one (with 5 cats, one of 5 choices).
  auto again = load(tmp.str(), {{"channels", 1}});
  CHECK(torch::equal(again.test->get(torch::arange(2)).input, s.test->get(torch::arange(2)).input));
  bool differs = false;
  for (int seed = 1; seed < 6 && !differs; ++seed)
    differs = !torch::equal(load(tmp.str(), {{"channels", 1}, {"seed", seed}}).test->get(torch::arange(2)).input,
                            s.test->get(torch::arange(2)).input);
  CHECK(differs);
  // RGB by default: grey replicated; --limit keeps a prefix that has both classes.
  auto rgb = load(tmp.str(), json::object(), 2);
  CHECK(rgb.train->get(torch::arange(2)).input.sizes() == torch::IntArrayRef({2, 3, 8, 8}));
  CHECK(labels_of(*rgb.train) == std::vector<int64_t>{0, 1});
}

TEST_CASE("image-classes: train/ and test/ (and val/) folders of their own", "[datasets][image-classes]") {
  TempDir tmp;
  for (const char* split : {"train", "test", "val"})
    for (const char* cls : {"a", "b", "c"}) write_png(tmp.path() / split / cls / "x.png", 7);
  write_png(tmp.path() / "train" / "b" / "y.png", 9);
  auto s = load(tmp.str(), {{"channels", 1}});
  CHECK(s.class_names == std::vector<std::string>{"a", "b", "c"});
  CHECK(s.train->size() == 4);
  CHECK(s.test->size() == 3);
  REQUIRE(s.val);
  CHECK(s.val->size() == 3);
  // val/ without test/: it is the test split, and validation is held out of train/ as usual.
  fs::remove_all(tmp.path() / "test");
  auto v = load(tmp.str(), {{"channels", 1}});
  CHECK(v.test->size() == 3);
  CHECK_FALSE(v.val);
  // A test split may lack a class; a class the training split does not have is refused.
  fs::remove_all(tmp.path() / "val" / "c");
  CHECK(load(tmp.str(), {{"channels", 1}}).test->size() == 2);
  write_png(tmp.path() / "val" / "d" / "x.png", 1);
  CHECK_THAT(error_of([&] { load(tmp.str()); }),
             Catch::Contains("val/d is a class the training split does not have (its classes: a, b, c)"));
}

TEST_CASE("image-classes: Resize + CenterCrop as torchvision's, cached and per-batch decoding agree",
          "[datasets][image-classes]") {
  TempDir tmp;
  torch::manual_seed(0);
  fs::create_directories(tmp.path() / "k");
  fs::create_directories(tmp.path() / "m");
  for (int i = 0; i < 6; ++i) {  // landscape and portrait images of random pixels
    auto image = torch::rand({3, i % 2 ? 30 : 17, i % 2 ? 20 : 41});
    datasets::save_png(image, (tmp.path() / "k" / (std::to_string(i) + ".png")).string());
    datasets::save_png(image, (tmp.path() / "m" / (std::to_string(i) + ".png")).string());
  }
  auto memory = load(tmp.str(), {{"size", 12}, {"cache", "memory"}});
  auto none = load(tmp.str(), {{"size", 12}, {"cache", "none"}, {"threads", 3}});
  auto tiny = load(tmp.str(), {{"size", 12}, {"cache_budget_mb", 1}, {"test_fraction", 0.5}});
  CHECK(memory.train->describe().find("decoded in memory") != std::string::npos);
  CHECK(none.train->describe().find("decoded per batch") != std::string::npos);
  const auto idx = torch::tensor({3, 0, 5, 1}, torch::kInt64);
  const auto a = memory.train->get(idx), b = none.train->get(idx);
  CHECK(a.input.sizes() == torch::IntArrayRef({4, 3, 12, 12}));
  CHECK(torch::equal(a.input, b.input));
  CHECK(torch::equal(a.target, b.target));
  CHECK(tiny.train->size() == 6);

  // torchvision.transforms.functional: resize(shorter side, antialias) then center_crop, on uint8 tensors.
  if (!zoo::test::python_has_torch() ||
      zoo::test::run_command(std::string(zoo::test::kPython) + " -c 'import torchvision'").code != 0) {
    WARN("skipped the torchvision comparison: /usr/bin/python3 cannot import torchvision");
    return;
  }
  const auto image = (torch::rand({3, 37, 23}) * 255).round().to(torch::kUInt8);
  // The pixels as raw bytes; Python views them as [3, 37, 23].
  zoo::test::write_text(tmp.str("image.raw"),
                        std::string(static_cast<const char*>(image.contiguous().data_ptr()), image.numel()));
  const std::string py = R"(
import sys, torch
import torchvision.transforms.functional as F
raw = open(sys.argv[1], "rb").read()
x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(3, 37, 23)
for size in (12, 23, 30, 50):
    y = F.center_crop(F.resize(x, size, antialias=True), size)
    print(" ".join(str(int(v)) for v in y.flatten().tolist()))
)";
  zoo::test::write_text(tmp.str("resize.py"), py);
  auto r =
      zoo::test::run_command(std::string(zoo::test::kPython) + " " + tmp.str("resize.py") + " " + tmp.str("image.raw"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::istringstream lines(r.out);
  for (int64_t size : {12, 23, 30, 50}) {
    INFO("size " << size);
    std::string line;
    REQUIRE(std::getline(lines, line));
    std::istringstream numbers(line);
    std::vector<int64_t> theirs{std::istream_iterator<int64_t>(numbers), std::istream_iterator<int64_t>()};
    const auto ours = datasets::resize_center_crop(image, size).to(torch::kInt64).flatten();
    REQUIRE(ours.numel() == static_cast<int64_t>(theirs.size()));
    // Rounding of the interpolated values may differ by one level.
    CHECK((ours - torch::tensor(theirs)).abs().max().item<int64_t>() <= 1);
  }
}

TEST_CASE("image-classes: bad folders and files get one line each", "[datasets][image-classes][errors]") {
  TempDir tmp;
  const auto root = tmp.path();
  SECTION("no data dir, a missing one, one without class folders") {
    CHECK_THAT(error_of([] { load(""); }), Catch::Contains("needs --data-dir DIR holding one folder of images per "
                                                           "class"));
    CHECK_THAT(error_of([&] { load(tmp.str("nope")); }), Catch::Contains("does not exist or is not a directory"));
    write_png(root / "loose.png", 1);
    CHECK_THAT(error_of([&] { load(tmp.str()); }),
               Catch::Contains("has no class folders (1 images lie in it directly)"));
  }
  SECTION("an empty class folder") {
    write_png(root / "a" / "x.png", 1);
    write_png(root / "a" / "y.png", 1);
    fs::create_directories(root / "b");
    CHECK_THAT(error_of([&] { load(tmp.str()); }),
               Catch::Contains("class folder " + (root / "b").string() + " holds no images"));
  }
  SECTION("a truncated image: named, or skipped and listed with skip_bad") {
    for (int i = 0; i < 4; ++i) write_png(root / "a" / (std::to_string(i) + ".png"), 1);
    for (int i = 0; i < 4; ++i) write_png(root / "b" / (std::to_string(i) + ".png"), 2);
    const auto good = zoo::test::read_text(root / "a" / "0.png");
    zoo::test::write_text(root / "b" / "1.png", good.substr(0, good.size() / 2));
    for (const char* cache : {"memory", "none"}) {
      INFO(cache);
      const auto e = error_of([&] { load(tmp.str(), {{"cache", cache}}); });
      CHECK_THAT(e, Catch::StartsWith("cannot read image " + (root / "b" / "1.png").string() + ": ") &&
                        Catch::Contains("skip_bad=true"));
      CHECK(e.find('\n') == std::string::npos);
    }
    zoo::test::write_text(root / "b" / "2.png", "GIF89a nonsense");  // a header claiming 28192 x 28271 pixels
    CHECK_THAT(error_of([&] {
                 load(tmp.str(), {{"cache", "none"}, {"verify", false}});
               }),
               Catch::Contains("b/2.png: its header claims 28192x28271 pixels"));
    auto s = load(tmp.str(), {{"skip_bad", true}, {"test_fraction", 0.25}});
    CHECK(s.train->size() + s.test->size() == 6);
    REQUIRE(s.notes.size() == 1);
    CHECK_THAT(s.notes[0], Catch::StartsWith("skipped 2 unreadable images (skip_bad=true):") &&
                               Catch::Contains((root / "b" / "1.png").string()) &&
                               Catch::Contains((root / "b" / "2.png").string()));
  }
  SECTION("images of different sizes without size=N; bad options") {
    write_png(root / "a" / "x.png", 1, 8, 8);
    write_png(root / "a" / "y.png", 1, 8, 6);
    write_png(root / "b" / "x.png", 1, 8, 8);
    write_png(root / "b" / "y.png", 1, 8, 8);
    CHECK_THAT(error_of([&] { load(tmp.str()); }),
               Catch::Contains("a/y.png is 6x8") && Catch::Contains("pass --data-option size=N"));
    CHECK(load(tmp.str(), {{"size", 4}}).train->get(torch::arange(2)).input.sizes() ==
          torch::IntArrayRef({2, 3, 4, 4}));
    CHECK_THAT(error_of([&] {
                 load(tmp.str(), {{"size", 4}, {"channels", 2}});
               }),
               Catch::Contains("'channels' must be 1 (grey) or 3 (RGB), got 2"));
    CHECK_THAT(error_of([&] {
                 load(tmp.str(), {{"size", 4}, {"cache", "disk"}});
               }),
               Catch::Contains("'cache' must be auto, memory or none, got 'disk'"));
    CHECK_THAT(error_of([&] { load(tmp.str(), {{"sise", 4}}); }), Catch::Contains("has no option 'sise'; valid: size"));
    CHECK_THAT(error_of([&] {
                 load(tmp.str(), {{"size", 4}, {"skip_bad", "yes"}});
               }),
               Catch::Contains("'skip_bad' expects true or false"));
  }
}

TEST_CASE("parallel_items: every item once, and the error of the lowest failing item", "[datasets]") {
  std::vector<int> seen(1000, 0);
  datasets::parallel_items(seen.size(), 4, [&](size_t i) { seen[i] += 1; });
  CHECK(std::count(seen.begin(), seen.end(), 1) == 1000);
  for (int run = 0; run < 5; ++run)
    CHECK(error_of([] {
            datasets::parallel_items(100, 4, [](size_t i) {
              if (i % 7 == 3) throw std::runtime_error("item " + std::to_string(i));
            });
          }) == "item 3");
}
