// The synthetic datasets of the sheet's data-types table (1-D to 4-D).
#include "datasets/synthetic.h"
#include "datasets/registry.h"
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
  auto splits =
      datasets::load_splits({"waveforms", "", 100, {{"length", 64}}, 0.0});  // val_fraction 0: the loader's splits
  CHECK(splits.train->size() == 100);
  CHECK_THROWS_WITH(datasets::load_splits({"waveforms", "", 0, {{"colour", 1}}}),
                    Catch::Contains("no option 'colour'"));
}
