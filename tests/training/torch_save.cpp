// torch.save files read without running them: pickles written here by hand (the opcodes of pickletools' table),
// every prefix of a valid one, hostile ones (globals that run code, views past their storage, deep nesting), then
// files Debian's python3-torch writes (views with offsets and strides, shared storages, every dtype, parameters,
// checkpoints with an optimizer, protocol 4) compared with the raw bytes Python writes beside them, and the CLI.
#include "training/torch_save.h"
#include "cli/check_error.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>

using namespace std::string_literals;

using namespace zoo;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

/// Pickle bytes by opcode, as a writer (or an attacker) would emit them.
struct PickleText {
  std::string bytes;
  PickleText& op(const std::string& code) { return bytes += code, *this; }
  PickleText& str(const std::string& s) {
    bytes += 'X';
    for (int k = 0; k < 4; ++k) bytes += static_cast<char>((s.size() >> (8 * k)) & 0xff);
    return op(s);
  }
  PickleText& int1(int v) { return bytes += 'K', bytes += static_cast<char>(v), *this; }
  PickleText& global(const std::string& module, const std::string& name) {
    return op("c" + module + "\n" + name + "\n");
  }
  /// _rebuild_tensor_v2 of float storage KEY (numel elements) at offset with size and stride (2-D at most).
  PickleText& tensor(const std::string& key, int numel, int offset, std::vector<int> size, std::vector<int> stride) {
    global("torch._utils", "_rebuild_tensor_v2").op("((").str("storage").global("torch", "FloatStorage");
    str(key).str("cpu").int1(numel).op("tQ").int1(offset);
    op("(");
    for (int s : size) int1(s);
    op("t(");
    for (int s : stride) int1(s);
    return op("t\x89}tR");
  }
};

std::vector<char> floats(std::initializer_list<float> values) {
  std::vector<char> out(values.size() * 4);
  std::memcpy(out.data(), values.begin(), out.size());
  return out;
}

training::SavedFile parse_pickle(const std::string& bytes, std::vector<char> storage = floats({1, 2, 3, 4})) {
  return training::parse_torch_save_pickle(
      bytes, [&](const std::string&, uint64_t) { return storage; }, "f.pth");
}

/// OrderedDict {"w": 2x2, "tail": elements 1..3, "t": w transposed}, all on one storage of 4 floats.
std::string state_dict_pickle() {
  PickleText p;
  p.op("\x80\x02").global("collections", "OrderedDict").op(")R(");
  p.str("w").tensor("0", 4, 0, {2, 2}, {2, 1});
  p.str("tail").tensor("0", 4, 1, {3}, {1});
  p.str("t").tensor("0", 4, 0, {2, 2}, {1, 2});
  return p.op("u.").bytes;
}

void check_refused(const std::string& bytes, const std::string& expected) {
  INFO(expected);
  CHECK_THROWS_WITH(parse_pickle(bytes), Catch::Contains(expected));
}

}  // namespace

TEST_CASE("torch.save pickles: a state_dict by hand, its views share one storage", "[torch_save]") {
  const auto file = parse_pickle(state_dict_pickle());
  REQUIRE(file.top.state_dict);
  CHECK(file.top.kind == "state_dict of 3 tensors");
  REQUIRE(file.top.tensors.size() == 3);
  CHECK(file.top.tensors[0].first == "w");  // file order
  CHECK(torch::equal(file.top.tensors[0].second, torch::tensor({{1.0f, 2.0f}, {3.0f, 4.0f}})));
  CHECK(torch::equal(file.top.tensors[1].second, torch::tensor({2.0f, 3.0f, 4.0f})));
  CHECK(torch::equal(file.top.tensors[2].second, torch::tensor({{1.0f, 3.0f}, {2.0f, 4.0f}})));
  CHECK(file.top.tensors[1].second.data_ptr<float>() == file.top.tensors[0].second.data_ptr<float>() + 1);
  std::string chosen = "unset";
  CHECK(training::saved_state_dict(file, "f.pth", "", &chosen).size() == 3);
  CHECK(chosen.empty());
}

TEST_CASE("torch.save pickles: every prefix of a valid pickle is refused as cut short, none crashes", "[torch_save]") {
  const auto bytes = state_dict_pickle();
  for (size_t n = 0; n < bytes.size(); ++n) {
    INFO(n);
    CHECK_THROWS_AS(parse_pickle(bytes.substr(0, n)), std::runtime_error);
  }
}

TEST_CASE("torch.save pickles: hostile and damaged pickles are refused, naming the problem", "[torch_save]") {
  // A global that runs code: refused by name before anything is called (GLOBAL and protocol 4's STACK_GLOBAL).
  check_refused(PickleText().op("\x80\x02").global("os", "system").str("echo hi").op("\x85R.").bytes,
                "holds the global os.system, which a state_dict never uses");
  check_refused(PickleText().op("\x80\x04").str("builtins").str("eval").op("\x93").str("1").op("\x85R.").bytes,
                "holds the global builtins.eval");
  check_refused(PickleText().op("\x80\x02").global("torch", "load").op(".").bytes, "the global torch.load");
  // A view that reaches past its storage (4 floats): offset 3 + 2 elements; a stride that jumps out.
  check_refused(PickleText().op("\x80\x02").tensor("0", 4, 3, {2}, {1}).op(".").bytes,
                "reaches past the end of storage 0 (4 elements): the storage is too small for its view");
  check_refused(PickleText().op("\x80\x02").tensor("0", 4, 0, {2, 2}, {3, 1}).op(".").bytes, "reaches past the end");
  check_refused(PickleText().op("\x80\x02").tensor("0", 4, 5, {0}, {1}).op(".").bytes, "starts at element 5");
  // The storage record holds 16 bytes; the pickle says 5 floats.
  check_refused(PickleText().op("\x80\x02").tensor("0", 5, 0, {2}, {1}).op(".").bytes,
                "storage 0 holds 16 bytes, but 5 elements of Float need 20");
  check_refused(PickleText().op("\x80\x02").tensor("../x", 4, 0, {2}, {1}).op(".").bytes, "not a record name");
  check_refused(PickleText().op("\x80\x02").tensor("0", 4, 0, {2, 2}, {1}).op(".").bytes, "size [2, 2] but stride [1]");
  check_refused(PickleText().op("\x80\x01N.").bytes, "protocol 1");
  check_refused(PickleText().op("\x80\x02(S'a'\n.").bytes, "opcode 0x53");  // STRING: not in torch.save's pickles
  check_refused(PickleText().op("\x80\x02h\x05.").bytes, "memo entry 5, never stored");
  check_refused(PickleText().op("\x80\x02NN.").bytes, "ends with 2 objects on the stack");
  check_refused(PickleText().op("\x80\x02R.").bytes, "from an empty stack");
  check_refused(PickleText().op("\x80\x02NNa.").bytes, "appends to a None");
  check_refused(PickleText().op("\x80\x02}(]Nu.").bytes, "a dict key of type list");
  // Deep nesting and a cycle: no recursion anywhere, so neither crashes.
  const size_t depth = 300'000;
  const auto nested = parse_pickle("\x80\x02" + std::string(depth, ']') + std::string(depth - 1, 'a') + ".");
  CHECK(nested.top.kind == "list");
  CHECK(parse_pickle("\x80\x02]q\x00h\x00"
                     "a."s)
            .top.kind == "list");  // a list that holds itself
  // Not a state_dict: said, with what the file holds.
  const auto list = parse_pickle(
      "\x80\x02]K\x01"
      "a.");
  CHECK_THROWS_WITH(training::saved_state_dict(list, "f.pth", "", nullptr),
                    Catch::Contains("f.pth holds a list, not a state_dict"));
}

TEST_CASE("torch.save pickles: the state_dict of a checkpoint dict, by --key or the only one", "[torch_save]") {
  training::SavedObject sd{"model", "state_dict of 1 tensors", true, {{"w", torch::ones({2})}}};
  training::SavedObject other{"ema", "state_dict of 1 tensors", true, {{"w", torch::zeros({2})}}};
  training::SavedObject epoch{"epoch", "int", false, {}};
  training::SavedFile one{{"", "dict of 2 entries", false, {}}, {sd, epoch}};
  std::string chosen;
  CHECK(torch::equal(training::saved_state_dict(one, "c.pth", "", &chosen).at(0).second, torch::ones({2})));
  CHECK(chosen == "model");
  training::SavedFile two{{"", "dict of 3 entries", false, {}}, {sd, other, epoch}};
  CHECK_THROWS_WITH(training::saved_state_dict(two, "c.pth", "", nullptr),
                    Catch::Contains("c.pth holds 'model' (state_dict of 1 tensors), 'ema' (state_dict of 1 tensors), "
                                    "'epoch' (int); pick the state_dict with --key NAME"));
  CHECK(torch::equal(training::saved_state_dict(two, "c.pth", "ema", &chosen).at(0).second, torch::zeros({2})));
  CHECK(chosen == "ema");
  CHECK_THROWS_WITH(training::saved_state_dict(two, "c.pth", "epoch", nullptr),
                    Catch::Contains("entry 'epoch' of c.pth is a int, not a state_dict"));
  CHECK_THROWS_WITH(training::saved_state_dict(two, "c.pth", "opt", nullptr),
                    Catch::Contains("c.pth has no entry 'opt'; it holds 'model'"));
  training::SavedFile none{{"", "dict of 1 entries", false, {}}, {epoch}};
  CHECK_THROWS_WITH(training::saved_state_dict(none, "c.pth", "", nullptr),
                    Catch::Contains("holds no state_dict: 'epoch' (int)"));
}

TEST_CASE("torch.save files from Python: views, shared storages, every dtype, parameters, checkpoints, protocol 4",
          "[torch_save][python]") {
  if (!test::python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  TempDir tmp;
  // Python writes the files and, beside them, each tensor's contiguous bytes: the values to expect, independently.
  const std::string script = R"(
import sys, torch
out = sys.argv[1]
torch.manual_seed(0)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
tensors = {"view": base[1:, ::2], "t": base.t(), "row": base[3], "scalar": torch.tensor(2.5),
           "half": torch.randn(5).half(), "bf16": torch.randn(2, 3).bfloat16(), "long": torch.arange(-3, 4),
           "int": torch.tensor([7, -8], dtype=torch.int32), "i8": torch.tensor([-5, 7], dtype=torch.int8),
           "u8": torch.tensor([250, 3], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
           "f64": torch.randn(3, dtype=torch.float64), "empty": torch.zeros(0, 3)}
torch.save(tensors, out + "/views.pth")
for k, v in tensors.items():
    open(out + "/" + k + ".bin", "wb").write(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
torch.save(tensors, out + "/p4.pth", pickle_protocol=4)
m = torch.nn.Module()
m.a = torch.nn.Linear(3, 3)
m.b = torch.nn.Linear(3, 3)
m.b.weight = m.a.weight  # tied
m.bn = torch.nn.BatchNorm1d(3)
torch.save(m.state_dict(), out + "/tied.pth")
torch.save(dict(m.named_parameters()), out + "/params.pth")
opt = torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, 0.99))
m.bn(m.b(m.a(torch.randn(4, 3)))).sum().backward()
opt.step()
torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "lr": 0.1, "name": "run",
            "flag": True, "none": None, "big": 2**40}, out + "/checkpoint.pth")
torch.save({"model": m.state_dict(), "ema": m.state_dict()}, out + "/two.pth")
)";
  test::write_text(tmp.path() / "write.py", script);
  auto r = test::run_command(std::string(test::kPython) + " " + tmp.str("write.py") + " " + tmp.str());
  INFO(r.err);
  REQUIRE(r.code == 0);
  for (const char* name : {"views.pth", "p4.pth"}) {
    INFO(name);
    const auto file = training::read_torch_save(tmp.str(name));
    REQUIRE(file.top.state_dict);
    REQUIRE(file.top.tensors.size() == 13);
    std::map<std::string, torch::Tensor> got(file.top.tensors.begin(), file.top.tensors.end());
    for (const auto& [key, t] : got) {
      INFO(key);
      const auto expected = test::read_text(tmp.path() / (key + ".bin"));
      const auto c = t.contiguous();
      REQUIRE(static_cast<size_t>(c.numel() * c.element_size()) == expected.size());
      if (!expected.empty()) CHECK(std::memcmp(c.data_ptr(), expected.data(), expected.size()) == 0);
    }
    CHECK(got.at("half").scalar_type() == torch::kFloat16);
    CHECK(got.at("bf16").scalar_type() == torch::kBFloat16);
    CHECK(got.at("long").scalar_type() == torch::kInt64);
    CHECK(got.at("bool").scalar_type() == torch::kBool);
    CHECK(got.at("view").sizes() == torch::IntArrayRef({3, 3}));
    CHECK(got.at("view").strides() == torch::IntArrayRef({6, 2}));
    CHECK(got.at("view").storage_offset() == 6);
    CHECK(got.at("t").strides() == torch::IntArrayRef({1, 6}));
    CHECK(got.at("scalar").dim() == 0);
    // Views of one tensor share its storage, as torch.load gives them.
    CHECK(got.at("view").storage().data_ptr().get() == got.at("t").storage().data_ptr().get());
    CHECK(got.at("row").storage().data_ptr().get() == got.at("t").storage().data_ptr().get());
  }
  // Tied weights stay one storage; a dict of Parameters (_rebuild_parameter) reads too.
  const auto tied = training::read_torch_save(tmp.str("tied.pth"));
  REQUIRE(tied.top.state_dict);
  std::map<std::string, torch::Tensor> t(tied.top.tensors.begin(), tied.top.tensors.end());
  CHECK(t.size() == 9);  // a.weight/bias, b.weight/bias, bn.weight/bias/running_mean/running_var/num_batches_tracked
  CHECK(t.at("a.weight").data_ptr() == t.at("b.weight").data_ptr());
  CHECK(t.at("bn.num_batches_tracked").scalar_type() == torch::kInt64);
  CHECK(torch::equal(t.at("bn.running_var"), torch::ones({3})));
  const auto params = training::read_torch_save(tmp.str("params.pth"));
  REQUIRE(params.top.state_dict);
  CHECK(params.top.tensors.size() == 5);  // a tied parameter is listed once by named_parameters
  // A checkpoint: the one state_dict is found among the optimizer's state, numbers, strings, None and a big int.
  std::string chosen;
  const auto sd = training::saved_state_dict(training::read_torch_save(tmp.str("checkpoint.pth")), "c", "", &chosen);
  CHECK(chosen == "model");
  CHECK(sd.size() == 9);
  const auto two = training::read_torch_save(tmp.str("two.pth"));
  CHECK_THROWS_WITH(training::saved_state_dict(two, "two.pth", "", nullptr), Catch::Contains("--key NAME"));
  CHECK(training::saved_state_dict(two, "two.pth", "ema", nullptr).size() == 9);
}

TEST_CASE("zoo import of torch.save files: --key, hostile and broken files in one line, nothing written",
          "[torch_save][python][cli]") {
  if (!test::python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  TempDir tmp;
  const std::string script = R"(
import os, sys, zipfile, torch
out = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import zoo_twins
torch.manual_seed(0)
m = zoo_twins.build("mlp", {"in_features": 784, "hidden": [16], "num_classes": 10, "dropout": 0.0})
torch.save(m.state_dict(), out + "/sd.pth")
torch.save({"model": m.state_dict(), "ema": m.state_dict(), "epoch": 2}, out + "/two.pth")
torch.save(m.state_dict(), out + "/legacy.pth", _use_new_zipfile_serialization=False)
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + out + "/pwned",))
torch.save({"model": m.state_dict(), "x": Evil()}, out + "/evil.pth")
data = open(out + "/sd.pth", "rb").read()
open(out + "/cut.pth", "wb").write(data[: len(data) // 2])
with zipfile.ZipFile(out + "/sd.pth") as src, zipfile.ZipFile(out + "/short.pth", "w") as dst:
    for item in src.infolist():
        body = src.read(item.filename)
        dst.writestr(item, body[:-8] if item.filename.endswith("data/0") else body)
)";
  test::write_text(tmp.path() / "write.py", script);
  auto r = test::run_command(std::string(test::kPython) + " " + tmp.str("write.py") + " " + tmp.str() + " " +
                             ZOO_SOURCE_DIR + "/tests/python");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const std::string set = " --model mlp --set hidden=[16] --out ";
  r = test::run_zoo("import " + tmp.str("two.pth") + set + tmp.str("run-two"));
  test::check_error(r,
                    "two.pth holds 'model' (state_dict of 4 tensors), 'ema' (state_dict of 4 tensors), 'epoch' "
                    "(int); pick the state_dict with --key NAME");
  CHECK_FALSE(fs::exists(tmp.path() / "run-two"));
  r = test::run_zoo("import " + tmp.str("two.pth") + " --key ema" + set + tmp.str("run-ema"));
  REQUIRE(r.code == 0);
  r = test::run_zoo("import " + tmp.str("sd.pth") + set + tmp.str("run-sd"));
  REQUIRE(r.code == 0);
  const auto a = training::read_tensors(tmp.str("run-ema/model.pt"));
  const auto b = training::read_tensors(tmp.str("run-sd/model.pt"));
  REQUIRE(a.size() == 4);
  for (const auto& [name, t] : a) CHECK(torch::equal(t, b.at(name)));
  r = test::run_zoo("import " + tmp.str("sd.pth") + " --key model" + set + tmp.str("run-key"));
  test::check_error(r, "--key model: " + tmp.str("sd.pth") + " holds a state_dict of 4 tensors, not a dict of entries");
  r = test::run_zoo("import " + tmp.str("evil.pth") + set + tmp.str("run-evil"));
  test::check_error(r, "holds the global posix.system, which a state_dict never uses");
  CHECK_FALSE(fs::exists(tmp.path() / "pwned"));
  r = test::run_zoo("import " + tmp.str("legacy.pth") + set + tmp.str("run-legacy"));
  test::check_error(r, "is a legacy torch.save pickle");
  CHECK_THAT(r.err, Catch::Contains("torch.save(torch.load(PATH), NEW_PATH)"));
  r = test::run_zoo("import " + tmp.str("cut.pth") + set + tmp.str("run-cut"));
  test::check_error(r, "cut.pth is a damaged zip archive");
  r = test::run_zoo("import " + tmp.str("short.pth") + set + tmp.str("run-short"));
  test::check_error(r, "storage 0 holds 50168 bytes, but 12544 elements of Float need 50176");
  for (const char* run : {"run-two", "run-key", "run-evil", "run-legacy", "run-cut", "run-short"}) {
    INFO(run);
    CHECK_FALSE(fs::exists(tmp.path() / run));
  }
}
