// safetensors both ways with Python: zoo export -> a reader written from the format in Python equals the run's
// weights; Python's file -> zoo import -> zoo export -> the same tensors bit for bit.
#include "tests/cli/check_error.h"
#include "tests/helpers.h"

#include <catch2/catch.hpp>

using zoo::test::check_error;
using zoo::test::run_command;
using zoo::test::run_zoo;
using zoo::test::TempDir;

namespace {
zoo::test::CommandResult python_io(const std::string& args) {
  return run_command(std::string(zoo::test::kPython) + " " + ZOO_SOURCE_DIR + "/tests/python/safetensors_io.py " +
                     args);
}
}  // namespace

TEST_CASE("safetensors: zoo export -> Python reads the run's weights, Python -> zoo import -> export bit for bit",
          "[safetensors][python]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  if (!zoo::test::python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  TempDir tmp;
  const auto run = tmp.str("runs/mlp");
  REQUIRE(run_zoo("train mlp --epochs 1 --limit 300 --no-progress --threads 1 --set hidden=[16] --out " + run).code ==
          0);
  auto r = run_zoo("export " + run + " --format safetensors --checkpoint last");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const auto file = tmp.str("runs/mlp.hf/model.safetensors");
  CHECK(std::filesystem::exists(tmp.str("runs/mlp.hf/config.json")));
  auto check = python_io("check " + file + " " + run + "/model.pt");
  INFO(check.out << check.err);
  REQUIRE(check.code == 0);
  const auto seen = nlohmann::json::parse(check.out);
  CHECK(seen["tensors"] == 4);
  CHECK(seen["metadata"]["zoo_model"] == "mlp");
  // Back into a run without --model: the file names the model and its options.
  r = run_zoo("import " + file + " --out " + tmp.str("back"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(run_zoo("eval " + tmp.str("back") + " --limit 100 --json").code == 0);

  // Python -> zoo: a file with no zoo metadata needs --model; then zoo's export of the import is the same file's
  // tensors.
  const auto from_python = tmp.str("python.safetensors");
  REQUIRE(python_io("write " + from_python).code == 0);
  check_error(run_zoo("import " + from_python + " --out " + tmp.str("x")), "names no zoo model; give --model");
  r = run_zoo("import " + from_python + " --model mlp --set hidden=[8] --out " + tmp.str("imported"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  REQUIRE(run_zoo("export " + tmp.str("imported") + " --format safetensors --checkpoint last --out " +
                  tmp.str("again.safetensors"))
              .code == 0);
  auto same = python_io("same " + from_python + " " + tmp.str("again.safetensors"));
  INFO(same.out << same.err);
  CHECK(same.code == 0);
  // A damaged file is refused in one line, nothing written.
  zoo::test::write_text(tmp.path() / "bad.safetensors", zoo::test::read_text(from_python).substr(0, 200));
  check_error(run_zoo("import " + tmp.str("bad.safetensors") + " --model mlp --out " + tmp.str("bad")),
              "runs past the end of the file");
  CHECK(!std::filesystem::exists(tmp.str("bad")));
  check_error(run_zoo("export " + run + " --format safetensors --out " + tmp.str("w.bin")), "must end in .safetensors");
}
