// CIFAR-10 and CIFAR-100 binaries: files the test writes in the published layout read back pixel for pixel, the
// class names, both folder layouts, and every damaged file refused in one line.
#include "datasets/cifar.h"
#include "datasets/registry.h"
#include "helpers.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::error_of;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// `n` records: label bytes, then pixel p of record r = (r * 31 + p * 7 + seed) % 256.
std::string records(int64_t n, const std::vector<std::vector<uint8_t>>& labels, int seed) {
  std::string out;
  for (int64_t r = 0; r < n; ++r) {
    for (auto l : labels[static_cast<size_t>(r)]) out.push_back(static_cast<char>(l));
    for (int64_t p = 0; p < 3072; ++p) out.push_back(static_cast<char>((r * 31 + p * 7 + seed) % 256));
  }
  return out;
}

datasets::Splits load(const std::string& name, const std::string& dir, json options = json::object(),
                      int64_t limit = 0) {
  datasets::DataConfig c;
  c.name = name;
  c.data_dir = dir;
  c.options = std::move(options);
  c.limit = limit;
  return datasets::DatasetRegistry::instance().at(name).load(c);
}

}  // namespace

TEST_CASE("CIFAR-10: five training batches and a test batch, red, green and blue planes", "[datasets][cifar]") {
  TempDir tmp;
  const auto dir = tmp.path() / "cifar-10-batches-bin";  // as the archive unpacks
  fs::create_directories(dir);
  for (int b = 1; b <= 5; ++b)
    zoo::test::write_text(dir / ("data_batch_" + std::to_string(b) + ".bin"),
                          records(2, {{static_cast<uint8_t>(b)}, {9}}, b));
  zoo::test::write_text(dir / "test_batch.bin", records(3, {{0}, {1}, {2}}, 100));
  auto s = load("cifar10", tmp.str());
  REQUIRE(s.train->size() == 10);
  REQUIRE(s.test->size() == 3);
  const auto batch = s.train->get(torch::tensor({2, 3}, torch::kInt64));  // batch 2: record 0 (label 2), 1 (label 9)
  CHECK(batch.target.equal(torch::tensor({2, 9}, torch::kInt64)));
  REQUIRE(batch.input.sizes() == torch::IntArrayRef({2, 3, 32, 32}));
  // Record 1 of data_batch_2 (seed 2): pixel (c, y, x) is byte c*1024 + y*32 + x of the record's pixels.
  for (auto [c, y, x] : {std::tuple<int64_t, int64_t, int64_t>{0, 0, 0}, {0, 5, 17}, {1, 0, 0}, {2, 31, 31}}) {
    const int64_t p = c * 1024 + y * 32 + x;
    CHECK(batch.input[1][c][y][x].item<float>() == Approx(static_cast<double>((31 + p * 7 + 2) % 256) / 255));
  }
  CHECK(s.class_names == std::vector<std::string>{"airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck"});
  // batches.meta.txt names the classes when it is there; --limit reads only what it needs.
  zoo::test::write_text(dir / "batches.meta.txt", "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n");
  auto limited = load("cifar10", dir.string(), json::object(), 3);
  CHECK(limited.train->size() == 3);
  CHECK(limited.class_names.front() == "a");
  CHECK(limited.class_names.back() == "j");
}

TEST_CASE("CIFAR-100: fine and coarse labels", "[datasets][cifar]") {
  TempDir tmp;
  zoo::test::write_text(tmp.path() / "train.bin", records(3, {{4, 99}, {19, 0}, {0, 50}}, 1));
  zoo::test::write_text(tmp.path() / "test.bin", records(1, {{7, 8}}, 2));
  auto fine = load("cifar100", tmp.str());
  CHECK(fine.train->get(torch::arange(3)).target.equal(torch::tensor({99, 0, 50}, torch::kInt64)));
  CHECK(fine.class_names.size() == 100);
  CHECK(fine.class_names[99] == "99");  // no fine_label_names.txt: the ids
  auto coarse = load("cifar100", tmp.str(), {{"labels", "coarse"}});
  CHECK(coarse.train->get(torch::arange(3)).target.equal(torch::tensor({4, 19, 0}, torch::kInt64)));
  CHECK(coarse.class_names.size() == 20);
  const auto x = fine.test->get(torch::tensor({0}, torch::kInt64)).input;
  CHECK(x[0][2][31][31].item<float>() == Approx(static_cast<double>((3071 * 7 + 2) % 256) / 255));
}

TEST_CASE("CIFAR: damaged and missing files get one line", "[datasets][cifar][errors]") {
  TempDir tmp;
  const auto dir = tmp.path();
  CHECK_THAT(error_of([&] { load("cifar10", ""); }),
             Catch::Contains("needs --data-dir") && Catch::Contains("https://www.cs.toronto.edu/~kriz/cifar.html"));
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }),
             Catch::Contains("missing data file " + (dir / "test_batch.bin").string()) &&
                 Catch::Contains("cifar-10-batches-bin/"));
  zoo::test::write_text(dir / "test_batch.bin", records(1, {{0}}, 0));
  for (int b = 1; b <= 4; ++b)
    zoo::test::write_text(dir / ("data_batch_" + std::to_string(b) + ".bin"), records(1, {{1}}, 0));
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }),
             Catch::Contains("missing data file " + (dir / "data_batch_5.bin").string()));
  zoo::test::write_text(dir / "data_batch_5.bin", records(1, {{1}}, 0).substr(1));  // one byte short
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }),
             Catch::Contains("data_batch_5.bin is 3072 bytes, not a whole number of 3073-byte records"));
  zoo::test::write_text(dir / "data_batch_5.bin", records(2, {{3}, {10}}, 0));
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }),
             Catch::Contains("data_batch_5.bin has label 10 in record 1, but the dataset has 10 classes"));
  zoo::test::write_text(dir / "data_batch_5.bin", "");
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }), Catch::Contains("is 0 bytes"));
  // A CIFAR-100 file where CIFAR-10's belongs: 3074-byte records.
  zoo::test::write_text(dir / "data_batch_5.bin", records(3, {{1, 1}, {1, 1}, {1, 1}}, 0));
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str()); }), Catch::Contains("of the other CIFAR variant"));
  CHECK_THAT(error_of([&] { load("cifar10", tmp.str(), {{"labels", "fine"}}); }), Catch::Contains("takes no options"));
  zoo::test::write_text(dir / "train.bin", records(1, {{1, 2}}, 0));
  zoo::test::write_text(dir / "test.bin", records(1, {{1, 2}}, 0));
  CHECK_THAT(error_of([&] {
               load("cifar100", tmp.str(), {{"labels", "medium"}});
             }),
             Catch::Contains("must be fine (100 classes) or coarse (20), got \"medium\""));
  zoo::test::write_text(dir / "train.bin", records(1, {{20, 2}}, 0));
  CHECK_THAT(error_of([&] {
               load("cifar100", tmp.str(), {{"labels", "coarse"}});
             }),
             Catch::Contains("has label 20 in record 0, but the dataset has 20 classes"));
}
