// IDX reader and Fashion-MNIST loader: valid files, gzip, every corruption the reader must refuse.
#include "datasets/idx.h"
#include "datasets/mnist.h"
#include "datasets/registry.h"
#include "tests/helpers.h"

#include <zlib.h>
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <vector>

using namespace zoo;
using zoo::test::error_of;
using zoo::test::TempDir;

namespace {

std::vector<uint8_t> idx_bytes(uint8_t type, std::vector<uint32_t> dims, size_t payload) {
  std::vector<uint8_t> b{0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  for (size_t i = 0; i < payload; ++i) b.push_back(static_cast<uint8_t>(i * 7 + 3));
  return b;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
}

}  // namespace

TEST_CASE("IDX: a valid file gives the stored shape and bytes, plain or gzip", "[idx]") {
  TempDir tmp;
  auto bytes = idx_bytes(0x08, {3, 2, 4}, 24);
  for (bool gz : {false, true}) {
    const auto path = tmp.str(gz ? "a.gz" : "a");
    write_file(path, bytes, gz);
    auto t = datasets::read_idx(path);
    CHECK(t.sizes() == torch::IntArrayRef({3, 2, 4}));
    CHECK(t.scalar_type() == torch::kUInt8);
    CHECK(t.flatten()[0].item<int>() == 3);
    CHECK(t.flatten()[23].item<int>() == (23 * 7 + 3) % 256);
  }
}

TEST_CASE("IDX: corrupt files get one clear error each", "[idx][errors]") {
  TempDir tmp;
  auto check = [&](const std::vector<uint8_t>& bytes, const std::string& expected) {
    const auto path = tmp.str("bad");
    write_file(path, bytes, false);
    const auto msg = error_of([&] { datasets::read_idx(path); });
    INFO(msg);
    CHECK(msg.find(expected) != std::string::npos);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  };
  SECTION("bad magic") { check({1, 2, 8, 1, 0, 0, 0, 1, 5}, "bad magic"); }
  SECTION("unsupported element type") { check(idx_bytes(0x0D, {2}, 8), "not supported"); }
  SECTION("truncated header") { check({0, 0, 8, 3, 0, 0}, "truncated"); }
  SECTION("truncated data") { check(idx_bytes(0x08, {10, 28, 28}, 100), "truncated"); }
  SECTION("header claims 2^96 bytes: no allocation, an error") {
    check(idx_bytes(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, 16), "claims more data");
  }
  SECTION("trailing bytes") { check(idx_bytes(0x08, {2, 2}, 9), "after the data"); }
  SECTION("too short to be IDX") { check({0, 0}, "not an IDX file"); }
}

TEST_CASE("IDX: a truncated gzip stream is an error", "[idx][errors]") {
  TempDir tmp;
  const auto full = tmp.str("full.gz");
  write_file(full, idx_bytes(0x08, {1000, 28}, 28000), true);
  auto bytes = zoo::test::read_text(full);
  const auto cut = tmp.str("cut.gz");
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  const auto msg = error_of([&] { datasets::read_idx(cut); });
  INFO(msg);
  CHECK((msg.find("truncated") != std::string::npos || msg.find("corrupt") != std::string::npos));
}

TEST_CASE("IDX: devices, FIFOs and streams longer than their header are refused early", "[idx][errors]") {
  TempDir tmp;
  // /dev/zero reads forever (its bytes even look like a magic number's start): refused before reading.
  CHECK(error_of([] { datasets::read_idx("/dev/zero"); }) ==
        "/dev/zero is not a regular file (a device, FIFO or directory); give an IDX data file");
  const auto fifo = tmp.str("fifo");
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(error_of([&] { datasets::read_idx(fifo); }).find("is not a regular file") != std::string::npos);
  // A header that claims 5,000,000 images of 28 x 28 (3.9 GB): refused from the header, before the data.
  const auto huge = tmp.str("huge.gz");
  write_file(huge, idx_bytes(0x08, {5000000, 28, 28}, 1000), true);
  CHECK(error_of([&] { datasets::read_idx(huge); }) ==
        huge +
            ": its header claims more data ([5000000, 28, 28]) than an IDX data file may hold (2 GiB); it is not "
            "a data set file");
  // A gzip stream that inflates far past what its header claims (a bomb of 64 MB of zeros behind a 2 x 2 header)
  // stops at the first chunk past the claim.
  auto bomb = idx_bytes(0x08, {2, 2}, 4);
  bomb.resize(size_t{64} << 20, 0);
  const auto bomb_path = tmp.str("bomb.gz");
  write_file(bomb_path, bomb, true);
  CHECK(std::filesystem::file_size(bomb_path) < (size_t{1} << 20));
  CHECK(error_of([&] {
          datasets::read_idx(bomb_path);
        }).find("holds more bytes than its header describes (at least ") != std::string::npos);
}

TEST_CASE("MNIST loader: missing files name the path and the package", "[idx][errors]") {
  TempDir tmp;
  const auto msg = error_of([&] { datasets::load_mnist(tmp.str(), datasets::Split::Train); });
  CHECK(msg.find(tmp.str()) != std::string::npos);
  CHECK(msg.find("train-images-idx3-ubyte") != std::string::npos);
  CHECK(msg.find("apt-get install dataset-fashion-mnist") != std::string::npos);
}

TEST_CASE("MNIST loader: image and label counts that differ are an error", "[idx][errors]") {
  TempDir tmp;
  write_file(tmp.str("t10k-images-idx3-ubyte"), idx_bytes(0x08, {5, 28, 28}, 5 * 784), false);
  write_file(tmp.str("t10k-labels-idx1-ubyte"), std::vector<uint8_t>{0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4}, false);
  const auto msg = error_of([&] { datasets::load_mnist(tmp.str(), datasets::Split::Test); });
  CHECK(msg.find("5 images but") != std::string::npos);
  CHECK(msg.find("4 labels") != std::string::npos);
}

TEST_CASE("MNIST loader: a small hand-made split loads scaled to [0,1] with --limit", "[idx]") {
  TempDir tmp;
  auto images = idx_bytes(0x08, {4, 28, 28}, 4 * 784);
  write_file(tmp.str("t10k-images-idx3-ubyte.gz"), images, true);
  write_file(tmp.str("t10k-labels-idx1-ubyte"), std::vector<uint8_t>{0, 0, 8, 1, 0, 0, 0, 4, 9, 0, 3, 1}, false);
  auto all = datasets::load_mnist(tmp.str(), datasets::Split::Test);
  REQUIRE(all->size() == 4);
  CHECK(all->inputs().sizes() == torch::IntArrayRef({4, 1, 28, 28}));
  CHECK(all->inputs().flatten()[1].item<float>() == Approx(10.0 / 255.0));
  CHECK(all->targets().scalar_type() == torch::kInt64);
  CHECK(all->targets()[0].item<int64_t>() == 9);
  auto two = datasets::load_mnist(tmp.str(), datasets::Split::Test, 2);
  CHECK(two->size() == 2);
  CHECK(torch::equal(two->inputs(), all->inputs().slice(0, 0, 2)));
}

TEST_CASE("Fashion-MNIST: the Debian package's full splits", "[idx][data]") {
  REQUIRE(zoo::test::have_fashion_mnist());  // CI installs dataset-fashion-mnist through scripts/setup
  datasets::DataConfig whole;
  whole.val_fraction = 0;  // the package's training split as it is, no validation part held out
  auto splits = datasets::load_splits(whole);
  REQUIRE(splits.train->size() == 60000);
  REQUIRE(splits.test->size() == 10000);
  auto train = std::dynamic_pointer_cast<datasets::TensorDataset>(splits.train);
  REQUIRE(train);
  CHECK(train->inputs().sizes() == torch::IntArrayRef({60000, 1, 28, 28}));
  CHECK(train->inputs().min().item<float>() == 0.0f);
  CHECK(train->inputs().max().item<float>() == 1.0f);
  // Fashion-MNIST is balanced: 6000 training images per class.
  auto counts = torch::bincount(train->targets());
  CHECK(counts.size(0) == 10);
  CHECK(torch::all(counts == 6000).item<bool>());
}

TEST_CASE("epoch_order: a deterministic permutation per (seed, epoch), disjoint shards", "[sampler]") {
  auto a = datasets::epoch_order(103, true, 7, 1);
  CHECK(torch::equal(std::get<0>(a.sort()), torch::arange(103)));
  CHECK(torch::equal(a, datasets::epoch_order(103, true, 7, 1)));
  CHECK(!torch::equal(a, datasets::epoch_order(103, true, 7, 2)));
  CHECK(!torch::equal(a, datasets::epoch_order(103, true, 8, 1)));
  CHECK(torch::equal(datasets::epoch_order(5, false, 7, 1), torch::arange(5)));
  // Three ranks: equal shard sizes (padded by wrapping like DistributedSampler), together every item.
  std::vector<torch::Tensor> shards;
  for (int r = 0; r < 3; ++r) shards.push_back(datasets::epoch_order(103, true, 7, 1, r, 3));
  for (const auto& s : shards) CHECK(s.size(0) == 35);
  auto all = torch::cat(shards);
  CHECK(std::get<0>(torch::_unique(all)).size(0) == 103);
  CHECK(torch::equal(shards[0].slice(0, 0, 3), torch::stack({a[0], a[3], a[6]})));
}

TEST_CASE("IDX: a header with a zero dimension is an empty tensor (fuzz finding: memcpy from null)", "[idx]") {
  const uint8_t bytes[] = {0, 0, 8, 2, 0, 0, 0, 0, 0, 0, 0, 5};
  const auto t = datasets::parse_idx(bytes, sizeof bytes, "empty");
  CHECK(t.sizes() == torch::IntArrayRef({0, 5}));
  const uint8_t extra[] = {0, 0, 8, 2, 0, 0, 0, 0, 0, 0, 0, 5, 7};
  CHECK_THROWS_WITH(datasets::parse_idx(extra, sizeof extra, "extra"), Catch::Contains("1 bytes after the data"));
}
