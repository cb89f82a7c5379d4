// zoo train --init (transfer learning from a run, a safetensors file or a torch.save file) and --freeze: the new
// run starts from the file's weights except a head of another shape (listed), frozen parameters do not move and
// their batch-norm statistics stay (unless --no-freeze-bn), a frozen run resumes bit for bit, bad input is one line.
#include "tests/cli/check_error.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"

#include <catch2/catch.hpp>

#include <filesystem>

using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string kCnn = "train cnn --set channels=[4,8] --limit 300 --no-progress --threads 1";

std::map<std::string, torch::Tensor> weights(const std::string& run, const std::string& file = "model.pt") {
  return zoo::training::read_tensors(run + "/" + file);
}

}  // namespace

TEST_CASE("zoo train --init RUN|FILE --freeze: a new head, frozen layers and their statistics kept",
          "[cli][transfer]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto source = tmp.str("source");
  REQUIRE(run_zoo(kCnn + " --set hidden=16 --epochs 1 --out " + source).code == 0);
  const auto from = weights(source, "best.pt");  // --init RUN takes the run's best weights

  // Another head size: the classifier's first layer keeps its fresh values and is listed; the features are frozen.
  auto r =
      run_zoo(kCnn + " --epochs 1 --set hidden=32 --init " + source + " --freeze 'features.*' --out " + tmp.str("a"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("started from " + source + ": 13 of 16 tensors; kept fresh") &&
                        Catch::Contains("classifier.0.weight [32, 392] (file [16, 392])") &&
                        Catch::Contains("frozen (features.*): 348 of"));
  const auto a = weights(tmp.str("a"));
  size_t compared = 0;
  for (const auto& [name, t] : a)
    if (name.rfind("features.", 0) == 0) {  // weights, biases and batch-norm statistics: as in the source
      INFO(name);
      CHECK(torch::equal(t, from.at(name)));
      ++compared;
    }
  CHECK(compared == 12);  // 2 x (conv weight; bn weight, bias, running_mean, running_var, num_batches_tracked)
  CHECK_FALSE(torch::equal(a.at("classifier.3.weight"), from.at("classifier.3.weight")));  // trained on

  // --no-freeze-bn: the frozen batch-norm layers' statistics follow the new batches; their weights do not move.
  r = run_zoo(kCnn + " --epochs 1 --set hidden=16 --init " + source + " --freeze 'features.*' --no-freeze-bn --out " +
              tmp.str("bn"));
  REQUIRE(r.code == 0);
  const auto bn = weights(tmp.str("bn"));
  CHECK(torch::equal(bn.at("features.1.weight"), from.at("features.1.weight")));
  CHECK_FALSE(torch::equal(bn.at("features.1.running_mean"), from.at("features.1.running_mean")));

  // The same weights from a safetensors export: the classifier's last layer frozen this time.
  REQUIRE(run_zoo("export " + source + " --format safetensors --out " + tmp.str("w.safetensors")).code == 0);
  r = run_zoo(kCnn + " --epochs 1 --set hidden=16 --init " + tmp.str("w.safetensors") +
              " --freeze 'classifier.3.*' --out " + tmp.str("st"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("16 of 16 tensors"));
  const auto st = weights(tmp.str("st"));
  CHECK(torch::equal(st.at("classifier.3.weight"), from.at("classifier.3.weight")));
  CHECK_FALSE(torch::equal(st.at("features.0.weight"), from.at("features.0.weight")));

  // A frozen run resumes bit for bit: 2 epochs at once against 1 then --resume to 2.
  // (A constant rate: a cosine over 1 planned epoch, extended, is another schedule than one over 2.)
  const std::string two = " --set hidden=16 --schedule constant --init " + source + " --freeze 'features.0.*'";
  REQUIRE(run_zoo(kCnn + two + " --epochs 2 --out " + tmp.str("whole")).code == 0);
  REQUIRE(run_zoo(kCnn + two + " --epochs 1 --out " + tmp.str("half")).code == 0);
  REQUIRE(run_zoo("train --resume " + tmp.str("half") + " --epochs 2 --no-progress").code == 0);
  const auto whole = weights(tmp.str("whole")), half = weights(tmp.str("half"));
  for (const auto& [name, t] : whole) {
    INFO(name);
    CHECK(torch::equal(t, half.at(name)));
  }
}

TEST_CASE("zoo train --init / --freeze: bad input is one line and writes nothing", "[cli][transfer]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto source = tmp.str("source");
  REQUIRE(run_zoo(kCnn + " --epochs 1 --out " + source).code == 0);
  check_error(run_zoo(kCnn + " --freeze 'nothing.*' --out " + tmp.str("x1")),
              "--freeze 'nothing.*' matches no parameter; the model's are features.0.weight, features.1.weight");
  check_error(run_zoo(kCnn + " --freeze '*' --out " + tmp.str("x2")), "freeze every parameter");
  check_error(run_zoo(kCnn + " --init " + tmp.str("missing.pt") + " --out " + tmp.str("x3")), "missing ");
  // Weights of another model: nothing matches.
  REQUIRE(run_zoo("train mlp --set hidden=[8] --epochs 1 --limit 100 --no-progress --threads 1 --out " + tmp.str("mlp"))
              .code == 0);
  check_error(run_zoo(kCnn + " --init " + tmp.str("mlp") + " --out " + tmp.str("x4")),
              "--init " + tmp.str("mlp") + " matches no tensor of the model");
  check_error(run_zoo(kCnn + " --init " + source + " --init-key model --out " + tmp.str("x5")),
              "a key picks an entry of a torch.save file");
  check_error(run_zoo("train --resume " + source + " --init " + tmp.str("mlp")), "--init cannot change a run");
  check_error(run_zoo("train --resume " + source + " --freeze 'features.*'"), "--freeze cannot change a run");
  for (const char* run : {"x1", "x2", "x3", "x4", "x5"}) {
    INFO(run);
    CHECK_FALSE(fs::exists(tmp.path() / run));
  }
}
