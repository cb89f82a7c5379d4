// Auxiliary losses of layers in the trainer: added to the loss, logged, resumed exactly.
#include "training/auxiliary.h"
#include "helpers.h"
#include "models/attention.h"
#include "models/gated_lstm.h"
#include "models/moe.h"
#include "models/registry.h"
#include "training/checkpoint.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <set>

using namespace zoo;
using torch::Tensor;

TEST_CASE("The trainer adds a layer's auxiliary loss and logs expert utilisation each epoch", "[moe][trainer]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  auto config = test::small_run("moe", 600, training::TrainOptions().progress(false).threads(1).epochs(2));
  config.options = {{"experts", 4}, {"hidden", 16}, {"capacity_factor", 1.0}, {"balance_coef", 0.1}};
  auto run = training::Run::create(config, dir.str("run"));
  const auto last = run->fit();
  const auto train = last.at("train");
  REQUIRE(train.contains("expert_load"));
  const auto load = train.at("expert_load").get<std::vector<double>>();
  REQUIRE(load.size() == 4);
  double sum = 0;
  for (double v : load) sum += v;
  CHECK(sum == Approx(1.0).epsilon(1e-6));
  // alpha N sum f P: alpha = 0.1 at balance, N alpha = 0.4 if one expert took everything.
  CHECK(train.at("aux").get<double>() > 0.08);
  CHECK(train.at("aux").get<double>() < 0.2);
  CHECK(train.at("dropped").get<double>() >= 0);
  CHECK(train.at("load_entropy").get<double>() <= std::log(4.0) + 1e-6);
  // Chance is 0.1. This configuration reaches 0.42-0.56 over seeds 0-5 (zoo train moe, the same settings).
  CHECK(last.at("test").at("accuracy").get<double>() > 0.35);
  // The log line shows the load per expert.
  const auto lines = test::read_text(dir.path() / "run" / "metrics.jsonl");
  CHECK(test::count_lines(lines) == 2);
  CHECK(training::format_epoch_summary(last, 2).find("train expert_load [") != std::string::npos);
}

TEST_CASE("Expert utilisation survives a mid-epoch stop: the resumed epoch logs what an uninterrupted one does",
          "[moe][trainer][resume]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  auto config = test::small_run("moe", 600, training::TrainOptions().progress(false).threads(1).batch_size(100));
  config.options = {{"experts", 4}, {"hidden", 16}};
  const auto whole = training::Run::create(config, dir.str("whole"))->fit();
  {
    auto run = training::Run::create(config, dir.str("split"));
    int steps = 0;
    run->trainer().add_step_hook([&](torch::nn::Module&) {
      if (++steps == 3) training::request_stop(0);
    });
    CHECK_THROWS_AS(run->fit(), training::Interrupted);
    training::clear_stop_request();
    const auto partial = training::read_json_file(dir.str("split/state.json")).at("partial").at("terms");
    CHECK(partial.at("expert_load")[0].size() == 4);  // [weighted sums per expert, weight]
  }
  const auto resumed = training::Run::resume(dir.str("split"))->fit();
  const auto a = whole.at("train").at("expert_load").get<std::vector<double>>();
  const auto b = resumed.at("train").at("expert_load").get<std::vector<double>>();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).margin(1e-12));
  CHECK(resumed.at("train").at("aux").get<double>() == Approx(whole.at("train").at("aux").get<double>()).margin(1e-12));
  CHECK(resumed.at("test").at("accuracy") == whole.at("test").at("accuracy"));
}
