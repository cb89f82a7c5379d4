// Augmentation and normalisation (datasets/augment.h): each transform against what it must do to a known image,
// the draws a function of (seed, epoch, item) only, evaluation untouched, a resumed augmented run bit for bit the
// same as a straight one, and every bad option in one line.
#include "datasets/augment.h"
#include "datasets/registry.h"
#include "helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::error_of;
using zoo::test::TempDir;

namespace {

/// A [C, h, w] image whose pixels are all different: (c * h * w + y * w + x + 1) / (C * h * w + 1).
torch::Tensor ramp(int64_t c, int64_t h, int64_t w) {
  return (torch::arange(c * h * w, torch::kFloat32) + 1).div(static_cast<double>(c * h * w + 1)).view({c, h, w});
}

datasets::Splits fashion(json options, int64_t limit = 200) {
  datasets::DataConfig c;
  c.limit = limit;
  c.options = std::move(options);
  return datasets::load_splits(c, 7);
}

}  // namespace

TEST_CASE("Augment: the option's forms and their errors", "[datasets][augment][errors]") {
  auto o = datasets::parse_augment("flip,crop=4,jitter=0.4");
  CHECK(o.flip == 0.5);
  CHECK(o.crop_padding == 4);
  CHECK(o.jitter == 0.4);
  CHECK(o.resized_crop == 0);
  CHECK(datasets::parse_augment("resized-crop=0.08").resized_crop == 0.08);
  CHECK_FALSE(datasets::parse_augment("").any());
  CHECK(error_of([] { datasets::parse_augment("flip,rotate"); }) ==
        "dataset option 'augment': unknown transform 'rotate'; valid: flip, crop=P, resized-crop=S, jitter=J "
        "(comma-separated)");
  CHECK(error_of([] { datasets::parse_augment("crop=x"); }) ==
        "dataset option 'augment': 'crop=x' needs a number after 'crop='");
  CHECK(error_of([] { datasets::parse_augment("crop=2.5"); }) ==
        "dataset option 'augment': crop=P needs a whole padding in 0..1024, got crop=2.5");
  CHECK(error_of([] {
          datasets::parse_augment("resized-crop=0");
        }).find("resized-crop=S needs the smallest area fraction S in (0, 1]") != std::string::npos);
  CHECK(error_of([] { datasets::parse_augment("jitter=1.5"); }).find("jitter=J needs J in (0, 1)") !=
        std::string::npos);
  CHECK(error_of([] { datasets::parse_augment("crop=4,resized-crop=0.5"); }) ==
        "dataset option 'augment': crop and resized-crop both crop; choose one");
}

TEST_CASE("Augment: crop is a shift of the zero-padded image, flip a mirror, both drawn from (seed, epoch, item)",
          "[datasets][augment]") {
  const auto image = ramp(3, 6, 7);
  const auto padded = torch::constant_pad_nd(image, {2, 2, 2, 2}, 0);
  const auto crop = datasets::parse_augment("crop=2");
  std::set<std::pair<int64_t, int64_t>> offsets;
  for (int64_t item = 0; item < 200; ++item) {
    const auto out = datasets::augment_image(image, crop, 1, 0, item);
    REQUIRE(out.sizes() == image.sizes());
    bool found = false;
    for (int64_t i = 0; i <= 4 && !found; ++i)
      for (int64_t j = 0; j <= 4 && !found; ++j)
        if (torch::equal(out, padded.slice(1, i, i + 6).slice(2, j, j + 7))) {
          offsets.insert({i, j});
          found = true;
        }
    CHECK(found);
  }
  CHECK(offsets.size() == 25);  // every one of the 5 x 5 offsets is drawn

  const auto flip = datasets::parse_augment("flip");
  int flipped = 0;
  for (int64_t item = 0; item < 400; ++item) {
    const auto out = datasets::augment_image(image, flip, 1, 0, item);
    const bool mirrored = torch::equal(out, image.flip({2}));
    CHECK((mirrored || torch::equal(out, image)));
    flipped += mirrored;
  }
  CHECK(flipped > 160);  // p = 0.5 of 400: 200 +- 10 (40 is four standard deviations)
  CHECK(flipped < 240);

  // The same (seed, epoch, item) gives the same image; another epoch, item or seed another one.
  const auto both = datasets::parse_augment("flip,crop=2,jitter=0.3");
  const auto a = datasets::augment_image(image, both, 5, 3, 11);
  CHECK(torch::equal(a, datasets::augment_image(image, both, 5, 3, 11)));
  int differ = 0;
  for (int64_t k = 0; k < 8; ++k) {
    differ += !torch::equal(a, datasets::augment_image(image, both, 5, 4 + k, 11));
    differ += !torch::equal(a, datasets::augment_image(image, both, 5, 3, 12 + k));
    differ += !torch::equal(a, datasets::augment_image(image, both, 6 + k, 3, 11));
  }
  CHECK(differ == 24);
}

TEST_CASE("Augment: resized crop keeps the size and the order of a ramp, jitter stays in [0, 1]",
          "[datasets][augment]") {
  // A horizontal ramp: any crop, resized bilinearly, is again non-decreasing along x, inside the original range.
  const auto ramp_x = torch::linspace(0.1, 0.9, 32).view({1, 1, 32}).expand({3, 24, 32}).contiguous();
  const auto rrc = datasets::parse_augment("resized-crop=0.2");
  int64_t whole = 0;
  for (int64_t item = 0; item < 50; ++item) {
    const auto out = datasets::augment_image(ramp_x, rrc, 2, 0, item);
    REQUIRE(out.sizes() == ramp_x.sizes());
    CHECK((out.slice(2, 1) - out.slice(2, 0, -1)).min().item<double>() >= -1e-6);
    CHECK(out.min().item<double>() >= 0.1 - 1e-6);
    CHECK(out.max().item<double>() <= 0.9 + 1e-6);
    whole += torch::allclose(out, ramp_x);
  }
  CHECK(whole < 5);  // it crops (an area of [0.2, 1] of the image is rarely the whole of it)

  // Colour jitter of a constant grey image: brightness scales it, contrast and saturation leave it alone.
  const auto jitter = datasets::parse_augment("jitter=0.4");
  for (int64_t item = 0; item < 50; ++item) {
    const auto out = datasets::augment_image(torch::full({3, 4, 4}, 0.5), jitter, 3, 0, item);
    const double v = out[0][0][0].item<double>();
    CHECK(torch::allclose(out, torch::full({3, 4, 4}, v)));
    CHECK(v >= 0.5 * 0.6 - 1e-6);
    CHECK(v <= 0.5 * 1.4 + 1e-6);
  }
  const auto bright = datasets::augment_image(ramp(3, 8, 8), jitter, 3, 0, 1);
  CHECK(bright.min().item<double>() >= 0);
  CHECK(bright.max().item<double>() <= 1);
  CHECK_FALSE(torch::allclose(bright, ramp(3, 8, 8)));
}

TEST_CASE("Augment: only the training split, the draws of an item independent of its batch, normalisation on all",
          "[datasets][augment]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  const auto plain = fashion(json::object());
  auto aug = fashion({{"augment", "flip,crop=3"}, {"mean", 0.25}, {"std", 0.5}});
  CHECK(aug.mean == std::vector<double>{0.25});
  CHECK(aug.std == std::vector<double>{0.5});
  CHECK(plain.mean.empty());
  const auto all = torch::arange(plain.test->size());
  // Test and validation: normalised, never augmented.
  CHECK(torch::allclose(aug.test->get(all).input, (plain.test->get(all).input - 0.25) / 0.5));
  const auto v = torch::arange(plain.val->size());
  CHECK(torch::allclose(aug.val->get(v).input, (plain.val->get(v).input - 0.25) / 0.5));
  // Training: item 9 is the same image in a batch of its own and inside another batch.
  aug.train->set_epoch(2);
  const auto alone = aug.train->get(torch::tensor({9}, torch::kInt64)).input[0];
  const auto inside = aug.train->get(torch::tensor({4, 9, 30}, torch::kInt64)).input[1];
  CHECK(torch::equal(alone, inside));
  const auto t = torch::arange(aug.train->size());
  const auto e2 = aug.train->get(t).input;
  aug.train->set_epoch(3);
  const auto e3 = aug.train->get(t).input;
  CHECK_FALSE(torch::equal(e2, e3));
  const auto base = (plain.train->get(t).input - 0.25) / 0.5;
  CHECK_FALSE(torch::equal(e2, base));
  CHECK(torch::equal(aug.train->get(t).target, plain.train->get(t).target));
  CHECK(aug.train->describe().find("[flip, crop=3, mean [0.25] std [0.5]]") != std::string::npos);

  CHECK(error_of([] {
          fashion({{"mean", 0.5}});
        }) == "dataset options 'mean' and 'std' go together (e.g. --data-option mean=0.5 --data-option std=0.25)");
  CHECK(error_of([] {
          fashion({{"mean", {0.5, 0.5, 0.5}}, {"std", {0.2, 0.2, 0.2}}});
        }) == "dataset options mean/std have 3 values but the images have 1 channels");
  CHECK(error_of([] { fashion({{"mean", 0.5}, {"std", 0}}); }) == "dataset option 'std' must be positive, got 0");
  CHECK(error_of([] {
          fashion({{"mean", "x"}, {"std", 1}});
        }) == "dataset option 'mean' expects a number or a list of 1 or 3 numbers (one per channel), got \"x\"");
  CHECK(error_of([] {
          fashion({{"augment", 3}});
        }) == "dataset option 'augment' expects a list like flip,crop=4; got 3");
  datasets::DataConfig text;
  text.name = "waveforms";
  text.limit = 10;
  text.options = {{"augment", "flip"}};
  CHECK(error_of([&] { datasets::load_splits(text, 0); })
            .find("dataset options augment, mean and std need images [C, H, W] with 1 or 3 channels; waveforms has "
                  "items") == 0);
}

TEST_CASE("Augment: a run with augmentation resumes bit for bit and records its normalisation",
          "[datasets][augment][resume]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run(
      "mlp", 400, training::TrainOptions().progress(false).threads(1).epochs(2).batch_size(50).seed(3));
  config.data.options = {{"augment", "flip,crop=2,jitter=0.2"}, {"mean", 0.3}, {"std", 0.35}};
  training::Run::create(config, tmp.str("straight"))->fit();
  auto first = config;
  first.train.epochs(1);
  training::Run::create(first, tmp.str("resumed"))->fit();
  training::Run::resume(tmp.str("resumed"), 2)->fit();
  const auto a = training::read_tensors(tmp.str("straight/model.pt"));
  const auto b = training::read_tensors(tmp.str("resumed/model.pt"));
  REQUIRE(a.size() == b.size());
  for (const auto& [name, value] : a) CHECK(torch::equal(value, b.at(name)));
  // Without augmentation the weights differ: the transforms were applied.
  auto none = config;
  none.data.options = {{"mean", 0.3}, {"std", 0.35}};
  training::Run::create(none, tmp.str("plain"))->fit();
  CHECK_FALSE(torch::equal(a.at("net.0.weight"), training::read_tensors(tmp.str("plain/model.pt")).at("net.0.weight")));
  const auto recorded = training::read_run_config(tmp.str("straight"));
  CHECK(recorded.mean == std::vector<double>{0.3});
  CHECK(recorded.std == std::vector<double>{0.35});
}
