// ConvNet: one classifier for 1-, 2-, 3- and 4-D input, and what it learns.
#include "models/convnet.h"
#include "datasets/registry.h"
#include "datasets/synthetic.h"
#include "models/registry.h"
#include "training/trainer.h"

#include <catch2/catch.hpp>

using namespace zoo;

TEST_CASE("ConvNet: one classifier for 1-, 2-, 3- and 4-D input", "[convnd]") {
  const std::vector<std::vector<int64_t>> shapes{{2, 1, 32}, {2, 1, 12, 12}, {2, 1, 8, 8, 8}, {2, 1, 5, 6, 6, 6}};
  for (int64_t dims = 1; dims <= 4; ++dims) {
    models::ConvNet net(models::ConvNetOptions().dims(dims).channels({4, 8}).num_classes(5));
    auto y = net->forward(torch::rand(shapes[dims - 1]));
    CHECK(y.sizes() == torch::IntArrayRef({2, 5}));
    y.sum().backward();
    CHECK(net->named_parameters()["features.0.weight"].grad().abs().sum().item<double>() > 0);
    CHECK(net->named_parameters()["features.0.weight"].dim() == dims + 2);
  }
  auto names = models::ModelRegistry::instance().names();
  for (const char* name : {"conv1d", "conv3d", "conv4d"})
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
  CHECK(models::ModelRegistry::instance().at("conv4d").default_options()["dims"] == 4);
  CHECK(models::ModelRegistry::instance().at("conv4d").dataset == "motion4d");
}

TEST_CASE("ConvNet learns 1-D waveforms and 4-D motion (learning tests)", "[convnd][learning]") {
  auto learn = [](const std::string& model, const std::string& dataset, int64_t n, int64_t epochs) {
    torch::manual_seed(0);
    auto [net, options] = models::build_model(model);
    auto splits = datasets::load_splits({dataset, "", n, nlohmann::json::object()});
    training::Trainer trainer(net, std::make_shared<training::ClassificationObjective>(), splits,
                              training::TrainOptions().epochs(epochs).lr(5e-3).progress(false));
    return trainer.fit()["test"]["accuracy"].get<double>();
  };
  const double waves = learn("conv1d", "waveforms", 2000, 4);
  INFO("waveforms accuracy " << waves << " (chance 0.25)");
  CHECK(waves > 0.5);  // twice chance (measured 0.68)
  const double motion = learn("conv4d", "motion4d", 1500, 8);
  INFO("motion4d accuracy " << motion << " (chance 0.17)");
  CHECK(motion > 0.33);  // twice chance; a model blind to time cannot tell +x from -x (measured 0.42)
}
