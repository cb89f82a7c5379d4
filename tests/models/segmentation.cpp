// U-Net and DeconvNet in 2-D and 3-D: sizes, skips, Python names, gradients.
#include "datasets/segmentation.h"
#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
#include "helpers.h"
#include "models/registry.h"
#include "models/segmentation.h"
#include "ops/autocast.h"
#include "training/segmentation_objective.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;
using zoo::test::parameter_names;

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
    CHECK(contains(names, n));
  CHECK_FALSE(contains(names, "encoder.0.double_conv.0.bias"));  // convs before batch norm have no bias
  // encoder 196 + 896, up 8*4*2*2 + 4 = 132, decoder DoubleConv(8 -> 4) 288 + 8 + 144 + 8, head 4*3 + 3
  CHECK(models::count_parameters(*unet) == 196 + 896 + 132 + 448 + 15);
  CHECK(unet->named_buffers().contains("encoder.0.double_conv.1.running_mean"));

  models::DeconvNet deconv(
      models::DeconvNetOptions().encoder(models::EncoderOptions().base_channels(4).levels(2)).num_classes(3));
  const auto dnames = parameter_names(*deconv);
  for (const char* n : {"encoder.0.double_conv.0.weight", "decoder.0.reduce.0.weight", "decoder.0.reduce.1.bias",
                        "decoder.0.conv.double_conv.0.weight", "head.weight"})
    CHECK(contains(dnames, n));
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

TEST_CASE("U-Net and DeconvNet in 2-D and 3-D train under bf16-mixed autocast, close to float32", "[segmentation]") {
  // LibTorch 1.13 has no bfloat16 CPU kernels for 3-D max pooling with indices or for max-unpooling: the
  // DeconvNets once failed under bf16-mixed ("max_pool3d_with_indices_cpu not implemented for 'BFloat16'").
  for (const int64_t dims : {2, 3}) {
    const auto encoder = models::EncoderOptions().dims(dims).base_channels(4).levels(3);
    std::vector<std::pair<std::string, torch::nn::AnyModule>> nets = {
        {"unet", torch::nn::AnyModule(models::UNet(models::UNetOptions().encoder(encoder).num_classes(3)))},
        {"deconvnet",
         torch::nn::AnyModule(models::DeconvNet(models::DeconvNetOptions().encoder(encoder).num_classes(3)))}};
    auto x = dims == 2 ? torch::randn({2, 1, 16, 16}) : torch::randn({2, 1, 8, 8, 8});
    for (auto& [name, net] : nets) {
      INFO(name << " " << dims << "-D");
      torch::manual_seed(0);
      net.ptr()->eval();
      const auto reference = net.forward(x);
      torch::Tensor mixed;
      {
        zoo::ops::AutocastScope autocast(c10::DeviceType::CPU, torch::kBFloat16);
        mixed = net.forward(x);
      }
      REQUIRE(mixed.sizes() == reference.sizes());
      CHECK(torch::isfinite(mixed).all().item<bool>());
      CHECK((mixed.to(torch::kFloat32) - reference).abs().max().item<double>() <
            0.05 * reference.abs().max().item<double>() + 1e-3);
      net.ptr()->train();
      {
        zoo::ops::AutocastScope autocast(c10::DeviceType::CPU, torch::kBFloat16);
        net.forward(x).to(torch::kFloat32).pow(2).mean().backward();
      }
      for (const auto& p : net.ptr()->parameters()) {
        REQUIRE(p.grad().defined());
        CHECK(p.grad().scalar_type() == torch::kFloat32);
      }
    }
  }
}
