// 1-D to 4-D convolution classifiers and the synthetic data of the sheet's data-types table.
#include "datasets/registry.h"
#include "datasets/synthetic.h"
#include "models/convnet.h"
#include "models/registry.h"
#include "training/trainer.h"

#include <catch2/catch.hpp>

using namespace zoo;

TEST_CASE("Synthetic datasets: shapes, balanced labels, deterministic per seed", "[convnd][data]") {
  auto w = datasets::make_waveforms(400, 128, 0.1, 3);
  CHECK(w->inputs().sizes() == torch::IntArrayRef({400, 1, 128}));
  CHECK(torch::equal(w->inputs(), datasets::make_waveforms(400, 128, 0.1, 3)->inputs()));
  CHECK(!torch::equal(w->inputs(), datasets::make_waveforms(400, 128, 0.1, 4)->inputs()));
  CHECK(torch::bincount(w->targets()).min().item<int64_t>() > 70);  // 4 classes, ~100 each
  auto s = datasets::make_shapes3d(60, 12, 0.0, 1);
  CHECK(s->inputs().sizes() == torch::IntArrayRef({60, 1, 12, 12, 12}));
  // noise-free: binary volumes with a solid shape inside
  CHECK(torch::logical_or(s->inputs() == 0, s->inputs() == 1).all().item<bool>());
  CHECK(s->inputs().flatten(1).sum(1).min().item<float>() > 10);
  auto m = datasets::make_motion4d(30, 5, 8, 0.0, 2);
  CHECK(m->inputs().sizes() == torch::IntArrayRef({30, 1, 5, 8, 8, 8}));
  // the blob moves: along its label's axis the centre of mass shifts by a constant sign between frames
  const auto x = m->inputs();
  for (int64_t i = 0; i < 30; ++i) {
    const int64_t label = m->targets()[i].item<int64_t>(), axis = label / 2;
    auto frame_mass = [&](int64_t t) {
      auto f = x[i][0][t];
      auto coords = torch::arange(8, torch::kFloat32);
      std::vector<int64_t> other;
      for (int64_t a = 0; a < 3; ++a)
        if (a != axis) other.push_back(a);
      auto profile = f.sum(other);  // mass along `axis`
      return (profile * coords).sum().item<double>() / profile.sum().item<double>();
    };
    const double shift = frame_mass(4) - frame_mass(0);
    CHECK((label % 2 == 0 ? shift > 1.0 : shift < -1.0));
  }
  auto splits = datasets::load_splits({"waveforms", "", 100, {{"length", 64}}});
  CHECK(splits.train->size() == 100);
  CHECK_THROWS_WITH(datasets::load_splits({"waveforms", "", 0, {{"colour", 1}}}),
                    Catch::Contains("no option 'colour'"));
}

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
