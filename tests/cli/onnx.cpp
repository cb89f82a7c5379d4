// zoo export --format onnx: the file onnx.checker accepts and OpenCV's DNN module runs equals the C++ forward on
// input the export never saw (checked here in Python apart from zoo's own check), the batch axis is free with
// --dynamic-batch, --opset is honoured, and models that do not export are refused in one line naming the
// operator, as are missing packages and bad flags; nothing is written when it fails.
#include "tests/cli/check_error.h"
#include "tests/helpers.h"
#include "training/run.h"

#include <torch/csrc/jit/serialization/pickle.h>
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

using zoo::test::check_error;
using zoo::test::run_zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

bool python_has_onnx() {
  return zoo::test::run_command(std::string(zoo::test::kPython) + " -c 'import torch, onnx, cv2'").code == 0;
}

}  // namespace

TEST_CASE("zoo export --format onnx: checked, run by OpenCV, equal to the C++ forward on new input",
          "[cli][export][onnx][python]") {
  if (!python_has_onnx()) {
    WARN(
        "skipped: /usr/bin/python3 cannot import torch, onnx and cv2 (apt-get install python3-torch python3-onnx "
        "python3-opencv)");
    return;
  }
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("runs/cnn");
  REQUIRE(run_zoo("train cnn --set channels=[4,8] --set hidden=16 --epochs 1 --limit 200 --no-progress --threads 1 "
                  "--out " +
                  run)
              .code == 0);
  auto r = run_zoo("export " + run + " --format onnx");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const auto file = tmp.str("runs/cnn.onnx");  // beside the run, as RUN.ts.pt
  REQUIRE(fs::exists(file));
  CHECK_THAT(r.out, Catch::Contains("ONNX opset 13, input [1, 1, 28, 28]") &&
                        Catch::Contains("OpenCV DNN equals the C++ forward to"));
  check_error(run_zoo("export " + run + " --format onnx"), "exists; add --force");

  // New input, 5 images: the C++ forward here, OpenCV's run of the ONNX file in Python.
  torch::manual_seed(5);
  const auto x = torch::rand({5, 1, 28, 28});
  auto [config, model] = zoo::training::load_run_model(run, "cpu");
  model.ptr()->eval();
  torch::NoGradGuard no_grad;
  const auto expected = model.forward(x);
  const auto bytes = torch::jit::pickle_save(x);
  std::ofstream(tmp.str("x.pt"), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(run_zoo("export " + run + " --format onnx --dynamic-batch --opset 11 --out " + tmp.str("dyn.onnx")).code ==
          0);
  const std::string check = std::string(zoo::test::kPython) + " -c '\nimport cv2, onnx, torch\nm = onnx.load(\"" +
                            tmp.str("dyn.onnx") +
                            "\")\nprint(\"batch\", m.graph.input[0].type.tensor_type.shape.dim[0].dim_param)\n"
                            "print(\"opset\", m.opset_import[0].version)\nnet = cv2.dnn.readNetFromONNX(\"" +
                            tmp.str("dyn.onnx") + "\")\nnet.setInput(torch.load(\"" + tmp.str("x.pt") +
                            "\").numpy())\ntorch.save(torch.from_numpy(net.forward()), \"" + tmp.str("y.pt") + "\")\n'";
  r = zoo::test::run_command(check);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("batch batch") && Catch::Contains("opset 11"));
  const auto y = zoo::test::read_text(tmp.str("y.pt"));
  const auto got = torch::pickle_load(std::vector<char>(y.begin(), y.end())).toTensor();
  REQUIRE(got.sizes() == expected.sizes());
  CHECK((got - expected).abs().max().item<double>() < 1e-4);
}

TEST_CASE("zoo export --format onnx: refusals name the operator, the package or the flag, and write nothing",
          "[cli][export][onnx][python]") {
  if (!python_has_onnx()) {
    WARN("skipped: /usr/bin/python3 cannot import torch, onnx and cv2");
    return;
  }
  TempDir tmp;
  const std::string train = " --epochs 1 --limit 40 --no-progress --threads 1 --out ";
  REQUIRE(run_zoo("train deconvnet --set levels=2 --set base_channels=4" + train + tmp.str("deconvnet")).code == 0);
  REQUIRE(run_zoo("train vae --set hidden=32 --set latent=4" + train + tmp.str("vae")).code == 0);
  REQUIRE(run_zoo("train conv4d --set channels=[2,4]" + train + tmp.str("conv4d")).code == 0);
  // torch.onnx has no symbolic for max_unpool; OpenCV 4.6 has no RandomNormalLike (the VAE's draw).
  check_error(run_zoo("export " + tmp.str("deconvnet") + " --format onnx"),
              "cannot export the operator aten::max_unpool2d");
  check_error(run_zoo("export " + tmp.str("vae") + " --format onnx"),
              "OpenCV's DNN module cannot load the exported model (operator RandomNormalLike");
  // Conv4d's trace keeps the batch size.
  check_error(run_zoo("export " + tmp.str("conv4d") + " --format onnx --dynamic-batch"),
              "trace keeps the example's batch size");
  // Without the packages (site-packages hidden), without Python at all.
  const auto bare = tmp.str("bare-python");
  zoo::test::write_text(bare, std::string("#!/bin/sh\nexec ") + zoo::test::kPython + " -S \"$@\"\n");
  fs::permissions(bare, fs::perms::owner_all);
  check_error(run_zoo("export " + tmp.str("vae") + " --format onnx --python " + bare),
              "needs python3-torch, python3-onnx, python3-opencv (only for this command): apt-get install "
              "python3-torch python3-onnx python3-opencv");
  check_error(run_zoo("export " + tmp.str("vae") + " --format onnx --python " + tmp.str("no-such-python")),
              "cannot start");
  // Flags that belong to --format onnx, and opsets torch.onnx does not have.
  check_error(run_zoo("export " + tmp.str("vae") + " --opset 11"),
              "--opset and --dynamic-batch belong to --format onnx");
  check_error(run_zoo("export " + tmp.str("vae") + " --format onnx --opset 99"), "--opset");
  for (const char* name : {"deconvnet.onnx", "vae.onnx", "conv4d.onnx", "deconvnet.onnx.tmp", "vae.onnx.tmp"}) {
    INFO(name);
    CHECK_FALSE(fs::exists(tmp.path() / name));
  }
}
