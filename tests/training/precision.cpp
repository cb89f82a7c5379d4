// --precision: the names and checks, the loss scaler of fp16-mixed (PyTorch's GradScaler semantics, with
// injected infinite gradients), and the trainer in bf16-mixed and bf16 against float32 from the same weights.
#include "training/precision.h"
#include "datasets/dataset.h"
#include "models/cnn.h"
#include "models/mlp.h"
#include "tests/helpers.h"
#include "tests/training/run_helpers.h"
#include "training/grad_scaler.h"
#include "training/run.h"
#include "training/trainer.h"

#include <catch2/catch.hpp>

#include <cstdlib>

using namespace zoo;
using training::GradScaler;
using training::GradScalerOptions;
using training::Precision;

namespace {

/// Sets an environment variable for a scope.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }
  const char* name_;
  std::string old_;
  bool had_ = false;
};

/// Ten well-separated classes of 28x28 images: class c is pattern c plus noise.
datasets::Splits separable(int64_t n_train = 512, int64_t n_test = 256) {
  torch::manual_seed(123);
  const auto centers = torch::randn({10, 1, 28, 28});
  auto make = [&](int64_t n) {
    auto y = torch::randint(0, 10, {n}, torch::kInt64);
    auto x = centers.index_select(0, y) + 0.5 * torch::randn({n, 1, 28, 28});
    return std::make_shared<datasets::TensorDataset>(x, y, "separable");
  };
  return {make(n_train), make(n_test)};
}

training::Trainer cnn_trainer(const datasets::Splits& data, const std::string& precision) {
  torch::manual_seed(1);
  return training::Trainer(torch::nn::AnyModule(models::CNN()), std::make_shared<training::ClassificationObjective>(),
                           data, test::quiet_options().precision(precision).epochs(2).batch_size(32).lr(1e-3));
}

}  // namespace

TEST_CASE("Precision: names, the CPU's bfloat16 and what stands against a precision", "[precision]") {
  CHECK(training::precision_names() == std::vector<std::string>{"32", "bf16-mixed", "bf16", "fp16-mixed"});
  CHECK(training::parse_precision("bf16-mixed") == Precision::bf16_mixed);
  CHECK(std::string(training::precision_name(Precision::fp16_mixed)) == "fp16-mixed");
  CHECK_THROWS_WITH(training::parse_precision("fp8"),
                    Catch::Contains("'fp8' is unknown; valid precisions: 32, bf16-mixed, bf16, fp16-mixed"));
  CHECK(training::reduced_type(Precision::bf16_mixed) == torch::kBFloat16);
  CHECK(training::reduced_type(Precision::fp16_mixed) == torch::kHalf);
  CHECK(training::reduced_type(Precision::fp32) == torch::kFloat32);
  CHECK(training::dtype_name(torch::kBFloat16) == "bfloat16");

  CHECK(training::cpu_flags_have_bf16("fpu vme avx2 avx512f avx512_bf16 vaes"));
  CHECK(training::cpu_flags_have_bf16("fpu amx_bf16 amx_tile"));
  CHECK_FALSE(training::cpu_flags_have_bf16("fpu avx2 avx512f avx512_vnni"));
  CHECK_FALSE(training::cpu_flags_have_bf16("xavx512_bf16"));  // whole words only

  const c10::Device cpu(torch::kCPU), cuda(torch::kCUDA);
  CHECK(training::precision_problem(Precision::fp32, cpu, false).empty());
  CHECK(training::precision_problem(Precision::fp16_mixed, cpu, true).find("fp16-mixed is for CUDA devices") == 0);
  CHECK(training::precision_problem(Precision::fp16_mixed, cuda, false).empty());
  {
    ScopedEnv no_bf16("ZOO_CPU_BF16", "0");
    CHECK_FALSE(training::cpu_has_bf16());
    const auto problem = training::precision_problem(Precision::bf16_mixed, cpu, false);
    CHECK(problem.find("bf16-mixed: this CPU has no native bfloat16") == 0);
    CHECK(problem.find("use --precision 32, or --force") != std::string::npos);
    CHECK(training::precision_problem(Precision::bf16_mixed, cpu, true).empty());
    CHECK(training::precision_problem(Precision::bf16_mixed, cuda, false).empty());  // the GPU's, not the CPU's
  }
  {
    ScopedEnv bf16("ZOO_CPU_BF16", "1");
    CHECK(training::cpu_has_bf16());
    CHECK(training::precision_problem(Precision::bf16, cpu, false).empty());
  }
}

TEST_CASE("GradScaler: scale, unscale, skipped steps on inf and NaN, backoff and growth as PyTorch's",
          "[precision][grad_scaler]") {
  GradScaler scaler(GradScalerOptions().init_scale(8).growth_interval(3));
  auto p = torch::ones({3}, torch::requires_grad());
  const auto c = torch::tensor({1.0F, 2.0F, 3.0F});
  auto step = [&](float injected) {
    p.mutable_grad() = torch::Tensor();
    scaler.scale((p * c).sum()).backward();
    if (injected != 0) p.mutable_grad()[1] = injected;
    const bool found = scaler.unscale({p});
    scaler.update(found);
    return found;
  };
  scaler.scale((p * c).sum()).backward();
  CHECK(zoo::test::max_abs(p.grad() - 8 * c) == 0);  // the scaled gradient
  CHECK_FALSE(scaler.unscale({p}));
  CHECK(zoo::test::max_abs(p.grad() - c) == 0);  // unscaled: the true gradient

  // S = 8: two finite steps count up, the third grows S to 16 (growth_interval 3).
  CHECK_FALSE(step(0));
  CHECK(scaler.growth_tracker() == 1);
  CHECK_FALSE(step(0));
  CHECK_FALSE(step(0));
  CHECK(scaler.current_scale() == 16);
  CHECK(scaler.growth_tracker() == 0);
  CHECK_FALSE(step(0));
  CHECK(scaler.growth_tracker() == 1);
  // An infinite gradient: the step is to be skipped, S halves and the count starts again; NaN likewise.
  CHECK(step(std::numeric_limits<float>::infinity()));
  CHECK(scaler.current_scale() == 8);
  CHECK(scaler.growth_tracker() == 0);
  CHECK(step(std::numeric_limits<float>::quiet_NaN()));
  CHECK(scaler.current_scale() == 4);
  CHECK(step(-std::numeric_limits<float>::infinity()));
  CHECK(scaler.current_scale() == 2);

  // The state goes through state.json and back; out-of-range states are refused.
  CHECK_FALSE(step(0));
  const auto state = scaler.state();
  CHECK(state == nlohmann::json{{"scale", 2.0}, {"growth_tracker", 1}});
  GradScaler restored(GradScalerOptions().init_scale(8).growth_interval(3));
  restored.load_state(state);
  CHECK(restored.current_scale() == 2);
  CHECK(restored.growth_tracker() == 1);
  CHECK_THROWS_WITH(restored.load_state({{"scale", -1.0}, {"growth_tracker", 0}}), Catch::Contains("out of range"));
  CHECK_THROWS_WITH(restored.load_state({{"scale", 1.0}, {"growth_tracker", 3}}), Catch::Contains("out of range"));

  // S does not grow past the largest finite double.
  GradScaler huge(GradScalerOptions().init_scale(1e308).growth_interval(1));
  huge.update(false);
  CHECK(huge.current_scale() == 1e308);
  // Parameters without gradients are left out; none at all is no overflow.
  CHECK_FALSE(scaler.unscale({torch::ones({2}, torch::requires_grad())}));
}

TEST_CASE("Trainer in bf16-mixed: float32 weights and gradients, the first loss within 1% of float32's, it learns",
          "[precision][trainer][learning]") {
  const auto data = separable();
  auto fp32 = cnn_trainer(data, "32");
  auto mixed = cnn_trainer(data, "bf16-mixed");
  const auto batch = data.train->get(torch::arange(32));
  training::Terms terms;
  const double loss32 = fp32.train_step(batch, 1e-3, terms);
  const double loss16 = mixed.train_step(batch, 1e-3, terms);
  CHECK(loss16 == Approx(loss32).epsilon(0.01));
  CHECK(loss16 != loss32);  // the forward did run in bfloat16
  for (const auto& p : mixed.model().ptr()->parameters()) {
    CHECK(p.scalar_type() == torch::kFloat32);
    CHECK(p.grad().scalar_type() == torch::kFloat32);
  }
  CHECK_FALSE(ops::autocast_enabled());  // the scope ended with the step

  auto fresh32 = cnn_trainer(data, "32");
  auto fresh16 = cnn_trainer(data, "bf16-mixed");
  const double before = fresh16.evaluate()["accuracy"].get<double>();
  const double acc32 = fresh32.fit()["test"]["accuracy"].get<double>();
  const double acc16 = fresh16.fit()["test"]["accuracy"].get<double>();
  INFO("float32 " << acc32 << ", bf16-mixed " << acc16 << ", before " << before);
  CHECK(before < 0.3);
  CHECK(acc16 > 0.9);
  CHECK(std::abs(acc16 - acc32) < 0.03);
}

TEST_CASE("Trainer in bf16: bfloat16 weights train and evaluate, and fp16-mixed is refused off CUDA",
          "[precision][trainer]") {
  const auto data = separable(256, 128);
  auto t = cnn_trainer(data, "bf16");
  for (const auto& p : t.model().ptr()->parameters()) CHECK(p.scalar_type() == torch::kBFloat16);
  training::Terms terms;
  const auto batch = data.train->get(torch::arange(32));
  const double first = t.train_step(batch, 1e-3, terms);
  for (int i = 0; i < 20; ++i) t.train_step(batch, 1e-3, terms);
  CHECK(std::isfinite(first));
  CHECK(t.train_step(batch, 1e-3, terms) < 0.5 * first);  // it fits the batch
  const auto metrics = t.evaluate();
  CHECK(metrics["loss"].get<double>() > 0);

  CHECK_THROWS_WITH(cnn_trainer(data, "fp16-mixed"),
                    Catch::Contains("train.precision fp16-mixed is for CUDA devices (float16 with loss scaling); on "
                                    "the CPU use bf16-mixed"));
}

TEST_CASE("Trainer in fp16-mixed on CUDA: loss scaling, its state in the checkpoint", "[precision][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("skipped: no CUDA device here (fp16-mixed runs on CUDA only)");
    return;
  }
  test::TempDir dir;
  auto config = test::small_run("cnn", 256, test::quiet_options().epochs(1).device("cuda").precision("fp16-mixed"));
  auto run = training::Run::create(config, (dir.path() / "run").string());
  run->fit();
  REQUIRE(run->trainer().grad_scaler() != nullptr);
  CHECK(run->trainer().grad_scaler()->current_scale() > 0);
  const auto state = training::read_json_file((dir.path() / "run" / "state.json").string());
  CHECK(state.at("grad_scaler").at("scale").get<double>() == run->trainer().grad_scaler()->current_scale());
}

TEST_CASE("Resuming in another precision: 32 <-> bf16-mixed goes on and is recorded, bf16 cannot switch",
          "[precision][run]") {
  REQUIRE(test::have_fashion_mnist());
  test::TempDir dir;
  const auto run_dir = (dir.path() / "run").string();
  auto config = test::small_run("mlp", 300, test::quiet_options().epochs(1).batch_size(50));
  training::Run::create(config, run_dir)->fit();
  {
    auto run = training::Run::resume(run_dir, 2, -1, true, nullptr, false, "bf16-mixed");
    CHECK(run->trainer().precision() == Precision::bf16_mixed);
    run->fit();
    CHECK(run->trainer().state().epoch == 2);
  }
  CHECK(training::read_run_config(run_dir).train.precision() == "bf16-mixed");
  CHECK_THROWS_WITH(training::Run::resume(run_dir, 3, -1, true, nullptr, false, "bf16"),
                    Catch::Contains("cannot change a run trained in bf16-mixed to bf16"));
  CHECK_THROWS_WITH(training::Run::resume(run_dir, 3, -1, true, nullptr, false, "fp8"),
                    Catch::Contains("train.precision 'fp8' is unknown"));
  auto back = training::Run::resume(run_dir, 3, -1, true, nullptr, false, "32");
  back->fit();
  CHECK(training::read_run_config(run_dir).train.precision() == "32");
  CHECK(test::metrics_log(run_dir).size() == 3);
}
