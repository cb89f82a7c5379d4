// zoo export never destroys a checkpoint: the default output sits beside the run, an existing file needs --force,
// and a run's own files are refused even with it.
#include "tests/cli/check_error.h"
#include "tests/helpers.h"

#include <catch2/catch.hpp>

#include <filesystem>

using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("zoo export: RUN.ts.pt beside the run by default, --force to replace, a run's own files never",
          "[cli][export]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("runs/mlp");
  REQUIRE(run_zoo("train mlp --epochs 1 --limit 200 --no-progress --threads 1 --out " + run).code == 0);
  const auto checkpoint = zoo::test::read_text(run + "/model.pt");

  // The default: runs/mlp.ts.pt, whatever the current directory (here: inside the run, where ./model.pt used to go).
  auto r = zoo::test::run_command("cd " + run + " && " + ZOO_BIN + " export .");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(fs::exists(tmp.path() / "runs/mlp.ts.pt"));
  CHECK(r.out.find("mlp.ts.pt") != std::string::npos);
  CHECK(zoo::test::read_text(run + "/model.pt") == checkpoint);

  // An existing export: refused, then replaced with --force.
  check_error(run_zoo("export " + run), "exists; add --force");
  CHECK(run_zoo("export " + run + " --force").code == 0);

  // The run's own files, even with --force: the checkpoint is untouched and nothing is left behind.
  for (const std::string name : {"model.pt", "best.pt", "optimizer.pt", "state.json", "config.json", "epoch-2.pt"}) {
    INFO(name);
    check_error(run_zoo("export " + run + " --force --out " + run + "/" + name), "is a file of the run in");
  }
  check_error(run_zoo("export " + run + " --force --out " + run + "/../mlp/./model.pt"), "is a file of the run in");
  CHECK(zoo::test::read_text(run + "/model.pt") == checkpoint);
  CHECK(!fs::exists(run + "/epoch-2.pt"));
  CHECK(!fs::exists(run + "/model.pt.tmp"));
  // Another name inside the run directory is the user's choice.
  CHECK(run_zoo("export " + run + " --out " + run + "/callable.pt").code == 0);
  check_error(run_zoo("export " + run + " --out " + tmp.str("runs")), "is a directory");
}

TEST_CASE("zoo import: the run takes the model's recommended training settings, as zoo train MODEL would",
          "[cli][import]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("cnn");
  REQUIRE(run_zoo("train cnn --epochs 1 --limit 200 --no-progress --threads 1 --set channels=[4] --set hidden=8 "
                  "--out " +
                  run)
              .code == 0);
  // A run's model.pt is a TorchScript archive of the weights: zoo import reads it as it reads Python's.
  auto r =
      run_zoo("import " + run + "/model.pt --model cnn --set channels=[4] --set hidden=8 --out " + tmp.str("imported"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const auto config = nlohmann::json::parse(zoo::test::read_text(tmp.str("imported/config.json")));
  CHECK(config["train"]["optimizer"] == "adam");  // cnn's: adam 2e-3, cosine, batch 64, 3 epochs
  CHECK(config["train"]["lr"] == 2e-3);
  CHECK(config["train"]["schedule"] == "cosine");
  CHECK(config["train"]["batch_size"] == 64);
  CHECK(config["train"]["epochs"] == 3);
}
