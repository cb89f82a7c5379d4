// Checkpoints: round trip, mismatch errors, crash safety of the commit protocol, exact resume.
#include "training/checkpoint.h"
#include "models/cnn.h"
#include "models/mlp.h"
#include "tests/helpers.h"
#include "training/run.h"

#include <catch2/catch.hpp>

using namespace zoo;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {
bool same_tensors(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end() || !torch::equal(v, it->second)) return false;
  }
  return true;
}
training::TrainOptions quiet() { return training::TrainOptions().progress(false).threads(1); }
}  // namespace

TEST_CASE("Checkpoint: module round trip keeps every parameter and buffer", "[checkpoint]") {
  TempDir tmp;
  models::CNN a, b;
  a->forward(torch::rand({3, 1, 28, 28}));  // moves batch-norm running statistics
  training::save_module(*a, tmp.str("m.pt"));
  training::load_module(*b, tmp.str("m.pt"));
  auto ta = training::read_tensors(tmp.str("m.pt"));
  CHECK(ta.count("features.1.running_mean") == 1);
  CHECK(ta.count("features.1.num_batches_tracked") == 1);
  CHECK(ta.size() == a->named_parameters().size() + a->named_buffers().size());
  for (const auto& p : b->named_parameters()) CHECK(torch::equal(p.value(), a->named_parameters()[p.key()]));
  for (const auto& p : b->named_buffers()) CHECK(torch::equal(p.value(), a->named_buffers()[p.key()]));
}

TEST_CASE("Checkpoint: weights that do not match the model are refused, naming each difference",
          "[checkpoint][errors]") {
  TempDir tmp;
  models::MLP small(models::MLPOptions().hidden({8}));
  training::save_module(*small, tmp.str("m.pt"));
  models::MLP other(models::MLPOptions().hidden({16}));
  auto before = other->parameters()[0].clone();
  try {
    training::load_module(*other, tmp.str("m.pt"));
    FAIL("a mismatched load must throw");
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("shape of net.0.weight: file [8, 784], model [16, 784]") != std::string::npos);
  }
  CHECK(torch::equal(before, other->parameters()[0]));  // nothing half-loaded
  std::ofstream(tmp.str("junk.pt")) << "not a zip";
  CHECK_THROWS_WITH(training::load_module(*other, tmp.str("junk.pt")), Catch::Contains("is not a TorchScript archive"));
}

TEST_CASE("Checkpoint: an interrupted write never damages the previous checkpoint", "[checkpoint]") {
  TempDir tmp;
  const auto run = tmp.str();
  auto write = [&](const std::string& text) {
    training::write_checkpoint(run, {{"a.txt", [&](const std::string& p) { std::ofstream(p) << text << "-a"; }},
                                     {"b.txt", [&](const std::string& p) { std::ofstream(p) << text << "-b"; }}});
  };
  write("one");
  CHECK(zoo::test::read_text(tmp.path() / "a.txt") == "one-a");

  SECTION("a writer that fails (disk full) leaves the old files and no staging directory") {
    CHECK_THROWS_WITH(
        training::write_checkpoint(
            run, {{"a.txt", [](const std::string& p) { std::ofstream(p) << "x"; }},
                  {"b.txt", [](const std::string&) { throw std::runtime_error("No space left on device"); }}}),
        Catch::Contains("No space left on device") && Catch::Contains("previous checkpoint") &&
            Catch::Contains("is intact"));
    CHECK(zoo::test::read_text(tmp.path() / "a.txt") == "one-a");
    CHECK(zoo::test::read_text(tmp.path() / "b.txt") == "one-b");
    CHECK(!fs::exists(tmp.path() / ".staging"));
  }
  SECTION("the first checkpoint failing does not claim a previous one") {
    const auto fresh = tmp.str("fresh");
    fs::create_directories(fresh);
    CHECK_THROWS_WITH(
        training::write_checkpoint(
            fresh, {{"a.txt", [](const std::string&) { throw std::runtime_error("No space left on device"); }}}),
        Catch::Contains("no checkpoint was saved in " + fresh) && !Catch::Contains("intact"));
    CHECK(fs::is_empty(fresh));
  }
  SECTION("killed before the commit: the staging directory is discarded") {
    fs::create_directories(tmp.path() / ".staging");
    std::ofstream(tmp.path() / ".staging" / "a.txt") << "half";
    training::recover_checkpoint(run);
    CHECK(!fs::exists(tmp.path() / ".staging"));
    CHECK(zoo::test::read_text(tmp.path() / "a.txt") == "one-a");
  }
  SECTION("killed after the commit: readers see the new set and recovery rolls it forward") {
    fs::create_directories(tmp.path() / ".commit");
    std::ofstream(tmp.path() / ".commit" / "b.txt") << "two-b";  // a.txt was already moved
    std::ofstream(tmp.path() / "a.txt") << "two-a";
    CHECK(training::checkpoint_file(run, "b.txt") == (tmp.path() / ".commit" / "b.txt").string());
    training::recover_checkpoint(run);
    CHECK(zoo::test::read_text(tmp.path() / "a.txt") == "two-a");
    CHECK(zoo::test::read_text(tmp.path() / "b.txt") == "two-b");
    CHECK(!fs::exists(tmp.path() / ".commit"));
    write("three");
    CHECK(zoo::test::read_text(tmp.path() / "a.txt") == "three-a");
    CHECK(zoo::test::read_text(tmp.path() / "b.txt") == "three-b");
    CHECK(!fs::exists(tmp.path() / ".commit"));
  }
}

TEST_CASE("Resume: 1 epoch + resume to 2 equals an uninterrupted 2-epoch run, bit for bit", "[checkpoint][resume]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  // cnn: dropout and batch norm, so the RNG state and the buffers must be restored too
  auto config = zoo::test::small_run("cnn", 640, quiet().epochs(2).batch_size(64).seed(3).optimizer("adam"));

  training::Run::create(config, tmp.str("straight"))->fit();

  auto first = config;
  first.train.epochs(1);
  training::Run::create(first, tmp.str("resumed"))->fit();
  CHECK(training::read_json_file(tmp.str("resumed/state.json"))["epoch"] == 1);
  auto resumed = training::Run::resume(tmp.str("resumed"), 2);
  CHECK(resumed->trainer().state().epoch == 1);
  resumed->fit();

  auto a = training::read_tensors(tmp.str("straight/model.pt"));
  auto b = training::read_tensors(tmp.str("resumed/model.pt"));
  CHECK(same_tensors(a, b));
  auto sa = training::read_json_file(tmp.str("straight/state.json"));
  auto sb = training::read_json_file(tmp.str("resumed/state.json"));
  CHECK(sa["step"] == sb["step"]);
  CHECK(sa["final"]["test"] == sb["final"]["test"]);
  CHECK(sa["rng_state"] == sb["rng_state"]);
  CHECK(zoo::test::count_lines(zoo::test::read_text(tmp.path() / "resumed" / "metrics.jsonl")) == 2);
  CHECK(training::read_run_config(tmp.str("resumed")).train.epochs() == 2);
}

TEST_CASE("Resume: metrics.jsonl is repaired from state.json after a crash between commit and log",
          "[checkpoint][resume]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run("mlp", 200, quiet().epochs(1));
  training::Run::create(config, tmp.str("run"))->fit();
  std::ofstream(tmp.path() / "run" / "metrics.jsonl", std::ios::trunc) << "{\"epoch\": 1, \"torn";
  auto run = training::Run::resume(tmp.str("run"), 2);
  run->fit();
  const auto log = zoo::test::read_text(tmp.path() / "run" / "metrics.jsonl");
  CHECK(zoo::test::count_lines(log) == 2);
  CHECK(nlohmann::json::parse(log.substr(0, log.find('\n')))["epoch"] == 1);
}

TEST_CASE("Runs: an existing run is never overwritten, a missing one is a clear error", "[checkpoint][errors]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run("mlp", 100, quiet());
  training::Run::create(config, tmp.str("run"))->fit();
  CHECK_THROWS_WITH(training::Run::create(config, tmp.str("run")),
                    Catch::Contains("already holds a run") && Catch::Contains("--resume"));
  CHECK_THROWS_WITH(training::Run::resume(tmp.str("nope")), Catch::Contains("does not exist"));
  std::ofstream(tmp.path() / "run" / "config.json", std::ios::trunc) << "{ not json";
  CHECK_THROWS_WITH(training::Run::open(tmp.str("run")), Catch::Contains("config.json is not valid JSON"));
}

TEST_CASE("Runs: a new run holds an epoch-0 checkpoint, so a run killed in its first epoch resumes exactly",
          "[checkpoint]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  auto config = zoo::test::small_run("mlp", 300, quiet().seed(4));
  training::Run::create(config, tmp.str("straight"))->fit();
  training::Run::create(config, tmp.str("run"));  // killed before its first epoch ended
  CHECK(training::read_json_file(tmp.str("run/state.json"))["epoch"] == 0);
  CHECK_THROWS_WITH(training::Run::create(config, tmp.str("run")), Catch::Contains("--resume"));
  training::Run::resume(tmp.str("run"))->fit();
  CHECK(same_tensors(training::read_tensors(tmp.str("straight/model.pt")),
                     training::read_tensors(tmp.str("run/model.pt"))));
  // A directory with only config.json (killed between the two writes) has nothing to lose: it starts again.
  for (const char* f : {"state.json", "model.pt", "optimizer.pt", "metrics.jsonl"}) fs::remove(tmp.path() / "run" / f);
  CHECK_THROWS_WITH(training::Run::resume(tmp.str("run")), Catch::Contains("no checkpoint yet"));
  training::Run::create(config, tmp.str("run"))->fit();
  CHECK(training::read_json_file(tmp.str("run/state.json"))["epoch"] == 1);
}

TEST_CASE("Checkpoint: a damaged archive is refused by its CRC-32s before LibTorch parses it (fuzz finding)",
          "[checkpoint][errors]") {
  TempDir tmp;
  models::MLP mlp(models::MLPOptions().hidden({4}));
  const std::string path = tmp.str("model.pt");
  training::save_module(*mlp, path);
  CHECK_NOTHROW(training::verify_archive(path));
  std::string bytes = test::read_text(path);
  auto write = [&](const std::string& content) { std::ofstream(path, std::ios::binary | std::ios::trunc) << content; };
  // One flipped bit in the archive's code section: LibTorch 1.13's loader crashed (SIGSEGV) on such a file.
  const auto code = bytes.find("def forward") != std::string::npos ? bytes.find("def forward") : bytes.find("class ");
  REQUIRE(code != std::string::npos);
  std::string flipped = bytes;
  flipped[code + 2] = static_cast<char>(flipped[code + 2] ^ 0x10);
  write(flipped);
  CHECK_THROWS_WITH(training::load_module(*mlp, path), Catch::Contains("fails its CRC-32 check"));
  // The input the fuzzer found crashes no more either.
  const auto found =
      test::read_text(fs::path(ZOO_SOURCE_DIR) / "tests/fuzz/corpus/checkpoint/flipped-bit-in-code-section");
  write(found);
  CHECK_THROWS_WITH(training::load_module(*mlp, path), Catch::Contains("is not a TorchScript archive, or is damaged"));
  // A damaged deflated entry (PyTorch deflates some code records): its CRC-32 is checked after inflating.
  write(test::read_text(fs::path(ZOO_SOURCE_DIR) / "tests/fuzz/corpus/checkpoint/damaged-deflated-code"));
  CHECK_THROWS_WITH(training::load_module(*mlp, path), Catch::Contains("is not a TorchScript archive, or is damaged"));
  // Cut short: the zip directory at the end is missing.
  write(bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS_WITH(training::load_module(*mlp, path), Catch::Contains("no zip directory at its end"));
  write("not a zip at all");
  CHECK_THROWS_WITH(training::load_module(*mlp, path), Catch::Contains("is not a TorchScript archive, or is damaged"));
  // The intact file still loads.
  write(bytes);
  CHECK_NOTHROW(training::load_module(*mlp, path));
}

TEST_CASE("Checkpoint: archives libzip would read but LibTorch would misread are refused, each in one line",
          "[checkpoint][errors]") {
  TempDir tmp;
  models::MLP mlp(models::MLPOptions().hidden({4}));
  const std::string path = tmp.str("model.pt");
  training::save_module(*mlp, path);
  const std::string bytes = test::read_text(path);
  // Entries data/0 .. data/3 (the four tensors): each name occurs in its local header, then in the directory.
  const auto suffix = std::string("/data/1");
  const auto local_name = bytes.find(suffix), central_name = bytes.rfind(suffix);
  REQUIRE((local_name != std::string::npos && central_name > local_name));
  const size_t name_start = bytes.rfind('\0', local_name) + 1;  // the name follows its header's last zero byte
  const size_t local = local_name - (local_name - name_start) - 30;
  const size_t name_len = local_name + suffix.size() - name_start;
  const size_t central = central_name + suffix.size() - name_len - 46;
  REQUIRE(bytes.compare(local, 4, "PK\3\4") == 0);
  REQUIRE(bytes.compare(central, 4, "PK\1\2") == 0);
  auto refused = [&](std::string damaged, const std::string& why) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << damaged;
    INFO(why);
    CHECK_THROWS_WITH(training::verify_archive(path),
                      Catch::Contains("is not a TorchScript archive, or is damaged") && Catch::Contains(why));
  };
  std::string twice = bytes;  // data/1 renamed data/0 in both places: one name, two entries
  twice[local_name + suffix.size() - 1] = twice[central_name + suffix.size() - 1] = '0';
  refused(twice, "is there twice");
  std::string other = bytes;  // only the local header says data/9
  other[local_name + suffix.size() - 1] = '9';
  refused(other, "disagree");
  std::string method = bytes;  // bzip2 (12), which LibTorch's miniz does not read, in both headers
  method[local + 8] = method[central + 10] = 12;
  refused(method, "uses compression method 12");
  std::string directory = bytes;  // the MS-DOS directory attribute in the directory entry
  directory[central + 38] = static_cast<char>(directory[central + 38] | 0x10);
  refused(directory, "is marked as a directory");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  CHECK(training::verify_archive(path).size() >= 4);
}

TEST_CASE("Checkpoint: every one-byte damage anywhere in an archive is refused or changes nothing",
          "[checkpoint][errors]") {
  TempDir tmp;
  models::MLP mlp(models::MLPOptions().hidden({4}));
  const std::string path = tmp.str("model.pt");
  training::save_module(*mlp, path);
  const auto expected = training::read_tensors(path);
  const std::string bytes = test::read_text(path);
  int refused = 0, harmless = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string damaged = bytes;
    damaged[i] = static_cast<char>(damaged[i] ^ 0x5a);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << damaged;
    try {
      // Bytes no reader uses (times, "made by" versions) may change: the tensors must then be the same.
      if (same_tensors(training::read_tensors(path), expected))
        ++harmless;
      else
        FAIL("byte " << i << " changed the tensors without an error");
    } catch (const std::runtime_error& e) {
      ++refused;
    }
  }
  // Almost every byte is data, code or a name: nearly all damage is refused, as the sizes below show.
  INFO("refused " << refused << ", harmless " << harmless << " of " << bytes.size());
  CHECK(refused > static_cast<int>(bytes.size()) * 9 / 10);
  CHECK(harmless > 0);
}

TEST_CASE(
    "Runs: only rank 0 refuses an existing run when it starts one, a reader rank that starts late does not "
    "take rank 0's new checkpoint for an old run",
    "[checkpoint][distributed]") {
  TempDir tmp;
  const auto dir = tmp.str("run");
  std::filesystem::create_directories(dir);
  zoo::test::write_text(tmp.path() / "run" / "state.json", "{\"epoch\": 0}\n");  // rank 0's epoch-0 checkpoint
  CHECK_NOTHROW(training::RunDirectory(dir, false).create({{"model", "mlp"}}));
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "run" / "config.json"));  // a reader writes nothing
  CHECK_THROWS_WITH(training::RunDirectory(dir, true).create({{"model", "mlp"}}),
                    Catch::Contains("already holds a run") && Catch::Contains("--resume " + dir));
}
