// Callbacks of the loop: the order of calls, added terms, stopping, resumable state.
#include "helpers.h"

#include "core/registry.h"
#include "core/schema.h"
#include "models/mlp.h"
#include "models/registry.h"
#include "tools/cli/settings.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <limits>

using namespace zoo;
using zoo::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {
/// Counts the steps it has seen; its count is resumable state.
class StepCounter : public training::Callback {
 public:
  std::string name() const override { return "test-step-counter"; }
  void on_batch_end(training::Trainer&, const training::StepInfo&) override { ++steps; }
  json state() const override { return {{"steps", steps}}; }
  void load_state(const json& s) override { steps = s.at("steps").get<int64_t>(); }
  int64_t steps = 0;
};
std::shared_ptr<StepCounter> last_counter;
const Registrar<training::CallbackEntry> step_counter{{"test-step-counter", "counts steps (a test)", [] {
                                                         last_counter = std::make_shared<StepCounter>();
                                                         return last_counter;
                                                       }}};

/// Records the order of the loop's calls.
class Recorder : public training::Callback {
 public:
  void on_fit_start(training::Trainer&) override { calls.push_back("fit_start"); }
  void on_epoch_start(training::Trainer&, int64_t e, int64_t, int64_t) override {
    calls.push_back("epoch_start " + std::to_string(e));
  }
  void loss_terms(training::Trainer&, training::Terms& t) override {
    calls.push_back("loss_terms");
    t.emplace_back("zero", torch::zeros({}));
  }
  void log_terms(training::Trainer&, training::Terms&) override { calls.push_back("log_terms"); }
  void after_backward(training::Trainer& t) override {
    // The gradient exists here, before the optimizer step.
    calls.push_back(t.model().ptr()->parameters()[0].grad().defined() ? "after_backward grad" : "after_backward");
  }
  void after_step(training::Trainer&) override { calls.push_back("after_step"); }
  void on_batch_end(training::Trainer&, const training::StepInfo& s) override {
    calls.push_back("batch_end " + std::to_string(s.step) + "/" + std::to_string(s.steps));
  }
  void on_train_end(training::Trainer&) override { calls.push_back("train_end"); }
  void on_evaluation_end(training::Trainer&, json& record) override {
    calls.push_back("evaluation_end");
    record["extra"] = 1;
  }
  void on_epoch_end(training::Trainer&, const json& record) override {
    calls.push_back("epoch_end " + std::to_string(record.value("extra", 0)));
  }
  void on_fit_end(training::Trainer&) override { calls.push_back("fit_end"); }
  std::vector<std::string> calls;
};
}  // namespace

TEST_CASE("Callbacks: called at fixed points of the loop, in order, and a term they add is logged",
          "[core][callbacks]") {
  auto x = torch::randn({8, 1, 28, 28});
  auto data = std::make_shared<datasets::TensorDataset>(x, torch::randint(0, 10, {8}, torch::kInt64), "tiny");
  training::Trainer trainer(torch::nn::AnyModule(models::MLP()), std::make_shared<training::ClassificationObjective>(),
                            {data, data}, training::TrainOptions().epochs(1).batch_size(4).progress(false).threads(1));
  auto recorder = std::make_shared<Recorder>();
  trainer.add_callback(recorder);
  const auto record = trainer.fit();
  const std::vector<std::string> step = {"loss_terms", "log_terms", "after_backward grad", "after_step"};
  std::vector<std::string> expected = {"fit_start", "epoch_start 1"};
  for (int s = 1; s <= 2; ++s) {
    expected.insert(expected.end(), step.begin(), step.end());
    expected.push_back("batch_end " + std::to_string(s) + "/2");
  }
  expected.insert(expected.end(), {"train_end", "evaluation_end", "epoch_end 1", "fit_end"});
  CHECK(recorder->calls == expected);
  CHECK(record["train"].contains("zero"));
  CHECK(record["extra"] == 1);
}

TEST_CASE("Callbacks: stop_after_epoch ends fit without an error, and a callback's state resumes exactly",
          "[core][callbacks][checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config =
      zoo::test::small_run("mlp", 300, training::TrainOptions().epochs(3).batch_size(100).progress(false).threads(1));
  config.callbacks = {"test-step-counter"};
  {  // uninterrupted: 3 epochs of 3 steps
    auto run = training::Run::create(config, tmp.str("whole"));
    run->fit();
    CHECK(last_counter->steps == 9);
    CHECK(training::read_json_file(tmp.str("whole/state.json"))["callbacks"]["test-step-counter"]["steps"] == 9);
    CHECK(training::read_run_config(tmp.str("whole")).callbacks == std::vector<std::string>{"test-step-counter"});
  }
  {  // stopped by a callback after epoch 1, then resumed: the counter goes on from its checkpoint
    auto run = training::Run::create(config, tmp.str("split"));
    run->trainer().add_epoch_hook([&](const json&) { run->trainer().stop_after_epoch("test"); });
    const auto record = run->fit();
    CHECK(record["epoch"] == 1);
    CHECK(last_counter->steps == 3);
    auto resumed = training::Run::resume(tmp.str("split"));
    CHECK(last_counter->steps == 3);  // a new counter, its state loaded
    resumed->fit();
    CHECK(last_counter->steps == 9);
  }
  // The two runs end with the same weights.
  const auto a = training::read_tensors(tmp.str("whole/model.pt")),
             b = training::read_tensors(tmp.str("split/model.pt"));
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) CHECK(torch::equal(t, b.at(name)));
  // An unknown callback name is refused with the registered ones.
  config.callbacks = {"nope"};
  CHECK_THROWS_WITH(training::Run::create(config, tmp.str("bad")),
                    Catch::Contains("unknown callback 'nope'; valid callbacks: "));
}
