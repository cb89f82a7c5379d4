// ResNet-18/34/50: torchvision's names, parameter counts and initialisation, both stems, and weights written by
// torchvision itself imported name for name (zoo import) giving torchvision's outputs.
#include "models/resnet.h"
#include "datasets/images.h"
#include "helpers.h"
#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/weights.h"

#include <catch2/catch.hpp>

using namespace zoo::models;
using zoo::test::parameter_names;

TEST_CASE("ResNet: torchvision's names and sizes for 18, 34 and 50 layers", "[models][resnet]") {
  // torchvision 0.14: len(resnetN().state_dict()) and sum(p.numel() for p in resnetN().parameters()).
  const std::vector<std::tuple<int64_t, size_t, int64_t>> expected{
      {18, 122, 11689512}, {34, 218, 21797672}, {50, 320, 25557032}};
  for (const auto& [depth, entries, parameters] : expected) {
    INFO("resnet" << depth);
    auto [model, options] = build_model("resnet" + std::to_string(depth));
    CHECK(options.at("depth") == depth);
    CHECK(count_parameters(*model.ptr()) == parameters);
    const auto names = model.ptr()->named_parameters().keys();
    CHECK(model.ptr()->named_parameters().size() + model.ptr()->named_buffers().size() == entries);
    for (const char* name : {"conv1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                             "layer2.0.downsample.1.weight", "layer4.1.bn2.weight", "fc.weight", "fc.bias"})
      CHECK(std::find(names.begin(), names.end(), name) != names.end());
    CHECK(model.ptr()->named_buffers().contains("layer1.0.bn1.running_mean"));
    CHECK(model.ptr()->named_buffers().contains("layer3.1.bn1.num_batches_tracked"));
    // Basic blocks of 18 and 34 keep their width, so layer1 has no downsample; a bottleneck widens 64 -> 256.
    CHECK(model.ptr()->named_parameters().contains("layer1.0.downsample.0.weight") == (depth == 50));
    CHECK(model.ptr()->named_parameters().contains("layer1.0.conv3.weight") == (depth == 50));
  }
}

TEST_CASE("ResNet: shapes through both stems, torchvision's initialisation, errors", "[models][resnet]") {
  ResNet imagenet(ResNetOptions().num_classes(7));
  CHECK(imagenet->forward(torch::randn({2, 3, 64, 64})).sizes() == torch::IntArrayRef({2, 7}));
  // 64x64 -> 32 (conv1) -> 16 (pool) -> 16, 8, 4, 2: what layer4 sees.
  auto trace = torch::relu(imagenet->bn1(imagenet->conv1(torch::randn({1, 3, 64, 64}))));
  CHECK(trace.sizes() == torch::IntArrayRef({1, 64, 32, 32}));
  ResNet cifar(ResNetOptions().stem("cifar").in_channels(1).num_classes(10));
  CHECK(cifar->conv1->options.kernel_size()->at(0) == 3);
  CHECK(cifar->conv1->options.stride()->at(0) == 1);
  CHECK(cifar->forward(torch::randn({2, 1, 28, 28})).sizes() == torch::IntArrayRef({2, 10}));

  // Kaiming normal, fan-out, ReLU gain: std = sqrt(2 / (out_channels * k * k)); layer1.0.conv1 is 64 x 64 x 3 x 3.
  torch::manual_seed(0);
  ResNet r18;
  const auto w = r18->layer1[0]->as<ResNetBlock>()->conv1->weight;
  CHECK(w.std().item<double>() == Approx(std::sqrt(2.0 / (64 * 9))).epsilon(0.02));
  CHECK(w.mean().item<double>() == Approx(0).margin(0.003));
  CHECK(torch::equal(r18->bn1->weight, torch::ones({64})));
  CHECK(torch::equal(r18->bn1->bias, torch::zeros({64})));
  // zero_init_residual: the last batch norm of each block starts at 0, so each block is relu(shortcut(x)).
  for (int64_t depth : {18, 50}) {
    ResNet z(ResNetOptions().depth(depth).zero_init_residual(true));
    auto block = z->layer2[1]->as<ResNetBlock>();
    CHECK(block->last_bn()->weight.abs().sum().item<double>() == 0);
    CHECK(block->bn1->weight.abs().sum().item<double>() == block->bn1->weight.numel());
    z->eval();
    auto x = torch::rand({1, block->options.in_channels(), 5, 5});
    CHECK(torch::equal(block->forward(x), torch::relu(x)));
  }
  // clone() is deep.
  auto copy = std::dynamic_pointer_cast<ResNetImpl>(r18->clone());
  REQUIRE(copy);
  torch::NoGradGuard no_grad;
  copy->fc->weight.zero_();
  CHECK(r18->fc->weight.abs().sum().item<double>() > 0);

  CHECK_THAT(zoo::test::error_of([&] {
               r18->forward(torch::rand({1, 1, 32, 32}));
             }),
             Catch::StartsWith("resnet18 expects [N, 3, H, W], got [1, 1, 32, 32]"));
  CHECK_THAT(zoo::test::error_of([] {
               build_model("resnet18", {{"depth", 20}});
             }),
             Catch::Contains("must be 18, 34, 50, 101 or 152"));
  CHECK_THAT(zoo::test::error_of([] {
               build_model("resnet18", {{"stem", "tiny"}});
             }),
             Catch::Contains("'tiny' is unknown; valid stems: imagenet, cifar"));
}

TEST_CASE("ResNet: torchvision's own weights import name for name and give torchvision's outputs",
          "[models][resnet][python]") {
  if (!zoo::test::python_has_torch() ||
      zoo::test::run_command(std::string(zoo::test::kPython) + " -c 'import torchvision'").code != 0) {
    WARN("skipped: /usr/bin/python3 cannot import torchvision (apt-get install python3-torchvision)");
    return;
  }
  zoo::test::TempDir tmp;
  // torchvision builds each model with its own random weights; one training step moves the batch-norm statistics
  // off their initial values, so the buffers are checked too.
  const std::string script = R"(
import sys, torch, torchvision
torch.manual_seed(0)
for depth in (18, 34, 50):
    m = getattr(torchvision.models, "resnet%d" % depth)(num_classes=6)
    m.train()
    m(torch.randn(4, 3, 48, 48))
    m.eval()
    x = torch.randn(2, 3, 48, 48)
    torch.save(dict(m.state_dict()), "%s/r%d.pth" % (sys.argv[1], depth))
    torch.save({"x": x, "y": m(x).detach()}, "%s/io%d.pth" % (sys.argv[1], depth))
)";
  zoo::test::write_text(tmp.str("make.py"), script);
  auto py = zoo::test::run_command(std::string(zoo::test::kPython) + " " + tmp.str("make.py") + " " + tmp.str(""));
  INFO(py.out << py.err);
  REQUIRE(py.code == 0);
  // A run is made on data: six class folders of small RGB images (resnet's default dataset, image-classes).
  for (int c = 0; c < 6; ++c)
    for (int i = 0; i < 2; ++i) {
      std::filesystem::create_directories(tmp.path() / "data" / ("c" + std::to_string(c)));
      zoo::datasets::save_png(
          torch::rand({3, 8, 8}),
          (tmp.path() / "data" / ("c" + std::to_string(c)) / (std::to_string(i) + ".png")).string());
    }
  for (int64_t depth : {18, 34, 50}) {
    INFO("resnet" << depth);
    const auto run = tmp.str("run" + std::to_string(depth));
    auto r = zoo::test::run_zoo("import " + tmp.str("r" + std::to_string(depth) + ".pth") + " --model resnet" +
                                std::to_string(depth) + " --set num_classes=6 --data-dir " + tmp.str("data") +
                                " --out " + run);
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    auto [model, options] = build_model("resnet" + std::to_string(depth), {{"num_classes", 6}});
    const auto report = zoo::training::init_from(*model.ptr(), zoo::training::read_weights(run), run);
    CHECK(report.copied == report.total);
    CHECK(report.kept.empty());
    model.ptr()->eval();
    const auto io = zoo::training::read_weights(tmp.str("io" + std::to_string(depth) + ".pth"));
    const auto ours = model.forward(io.at("x"));
    CHECK((ours - io.at("y")).abs().max().item<double>() < 1e-5 * std::max(1.0, io.at("y").abs().max().item<double>()));
  }
}
