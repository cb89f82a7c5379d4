#include "datasets/cifar.h"
#include "datasets/images.h"

#include "datasets/options.h"
#include "datasets/registry.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace zoo::datasets {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kPixels = 3 * 32 * 32;
constexpr const char* kWhere =
    "get the binary version from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and pass its folder as "
    "--data-dir";

std::string read_file(const std::string& path, int64_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  const auto size = static_cast<int64_t>(in.tellg());
  if (size > max_bytes)
    throw std::runtime_error(
        fmt::format("{} is {} bytes, more than a CIFAR file holds ({}); it is not one", path, size, max_bytes));
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(bytes.data(), size)) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  return bytes;
}

}  // namespace

ImageBytes::ImageBytes(torch::Tensor images, torch::Tensor targets, std::string description)
    : images_(std::move(images)), targets_(std::move(targets)), description_(std::move(description)) {
  TORCH_CHECK(images_.scalar_type() == torch::kUInt8 && images_.size(0) == targets_.size(0),
              "ImageBytes: needs uint8 images and one target per image");
}

Batch ImageBytes::get(const torch::Tensor& indices) const {
  return {pixels_to_unit(images_.index_select(0, indices)), targets_.index_select(0, indices)};
}

std::pair<torch::Tensor, torch::Tensor> parse_cifar(const std::string& bytes, int label_bytes, int label_index,
                                                    int64_t classes, const std::string& name) {
  TORCH_CHECK(label_bytes >= 1 && label_index >= 0 && label_index < label_bytes, "parse_cifar: bad label layout");
  const int64_t record = label_bytes + kPixels, size = static_cast<int64_t>(bytes.size());
  if (size == 0 || size % record != 0)
    throw std::runtime_error(fmt::format(
        "{} is {} bytes, not a whole number of {}-byte records ({} label byte{} + 3072 pixel bytes); the file is "
        "damaged or of the other CIFAR variant",
        name, size, record, label_bytes, label_bytes > 1 ? "s" : ""));
  const int64_t n = size / record;
  auto all = torch::from_blob(const_cast<char*>(bytes.data()), {n, record}, torch::kUInt8);
  auto labels = all.select(1, label_index).to(torch::kInt64);
  const int64_t top = labels.max().item<int64_t>();
  if (top >= classes) {
    const int64_t at = labels.argmax().item<int64_t>();
    throw std::runtime_error(
        fmt::format("{} has label {} in record {}, but the dataset has {} classes (0-{}); the file "
                    "is damaged or of the other CIFAR variant",
                    name, top, at, classes, classes - 1));
  }
  auto images = all.slice(1, label_bytes).reshape({n, 3, 32, 32}).clone();
  return {images, labels};
}

std::string cifar_dir(const std::string& dir, const std::string& sub, const std::string& probe,
                      const std::string& dataset) {
  if (fs::exists(fs::path(dir) / probe)) return dir;
  if (fs::exists(fs::path(dir) / sub / probe)) return (fs::path(dir) / sub).string();
  throw std::runtime_error("missing data file " + (fs::path(dir) / probe).string() + " (nor in " + sub +
                           "/ below it): dataset '" + dataset + "' needs the CIFAR binary files; " + kWhere);
}

std::vector<std::string> read_class_names(const std::string& file, size_t classes,
                                          const std::vector<std::string>& fallback) {
  std::vector<std::string> names;
  if (std::ifstream in(file); in) {
    std::string line;
    while (std::getline(in, line) && names.size() <= classes) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) names.push_back(line);
    }
  }
  if (names.size() == classes) return names;
  if (fallback.size() == classes) return fallback;
  names.clear();
  for (size_t i = 0; i < classes; ++i) names.push_back(std::to_string(i));
  return names;
}

namespace {

/// Reads and joins `files` of one split; keeps the first `limit` items.
std::shared_ptr<ImageBytes> load_split(const std::string& dir, const std::vector<std::string>& files, int label_bytes,
                                       int label_index, int64_t classes, int64_t limit, const std::string& what) {
  std::vector<torch::Tensor> images, labels;
  int64_t have = 0;
  for (const auto& f : files) {
    if (limit > 0 && have >= limit) break;
    const auto path = (fs::path(dir) / f).string();
    if (!fs::exists(path))
      throw std::runtime_error("missing data file " + path + ": " + what + " needs every file of the binary version; " +
                               kWhere);
    auto [x, y] = parse_cifar(read_file(path, int64_t{1} << 30), label_bytes, label_index, classes, path);
    have += x.size(0);
    images.push_back(x);
    labels.push_back(y);
  }
  auto x = torch::cat(images), y = torch::cat(labels);
  if (limit > 0 && limit < x.size(0)) x = x.slice(0, 0, limit).clone(), y = y.slice(0, 0, limit);
  return std::make_shared<ImageBytes>(x, y, fmt::format("{} ({} images, {})", what, x.size(0), dir));
}

const std::vector<std::string> kCifar10Names{"airplane", "automobile", "bird",  "cat",  "deer",
                                             "dog",      "frog",       "horse", "ship", "truck"};

const detail::DatasetRegistrar cifar10{[] {
  DatasetEntry e;
  e.name = "cifar10";
  e.description = "CIFAR-10: 50,000 + 10,000 32x32 RGB images, 10 classes (binary version; pass --data-dir)";
  e.default_dir = [] { return std::string("(none: pass --data-dir)"); };
  e.class_names = kCifar10Names;
  // The per-channel mean and standard deviation of the 50,000 training images (the values torchvision's and most
  // CIFAR training scripts use); --data-option mean=0 std=1 turns normalisation off.
  e.normalization = {{0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616}};
  e.load = [](const DataConfig& c) {
    if (!c.options.empty()) throw std::invalid_argument("dataset 'cifar10' takes no options, got " + c.options.dump());
    if (c.data_dir.empty()) throw std::invalid_argument(std::string("dataset 'cifar10' needs --data-dir: ") + kWhere);
    const auto dir = cifar_dir(c.data_dir, "cifar-10-batches-bin", "test_batch.bin", "cifar10");
    std::vector<std::string> train;
    for (int i = 1; i <= 5; ++i) train.push_back(fmt::format("data_batch_{}.bin", i));
    Splits s{load_split(dir, train, 1, 0, 10, c.limit, "cifar10 train"),
             load_split(dir, {"test_batch.bin"}, 1, 0, 10, c.limit, "cifar10 test")};
    s.class_names = read_class_names((fs::path(dir) / "batches.meta.txt").string(), 10, kCifar10Names);
    return s;
  };
  return e;
}()};

const detail::DatasetRegistrar cifar100{[] {
  DatasetEntry e;
  e.name = "cifar100";
  e.normalization = {{0.5071, 0.4865, 0.4409}, {0.2673, 0.2564, 0.2762}};  // its training images' statistics
  e.description =
      "CIFAR-100: 50,000 + 10,000 32x32 RGB images, 100 classes (labels=coarse: 20 superclasses; pass --data-dir)";
  e.default_dir = [] { return std::string("(none: pass --data-dir)"); };
  e.load = [](const DataConfig& c) {
    check_option_names(c.options, {"labels"}, "cifar100");
    if (c.data_dir.empty()) throw std::invalid_argument(std::string("dataset 'cifar100' needs --data-dir: ") + kWhere);
    const auto& given = c.options.contains("labels") ? c.options["labels"] : nlohmann::json("fine");
    const std::string labels = given.is_string() ? given.get<std::string>() : "";
    if (labels != "fine" && labels != "coarse")
      throw std::invalid_argument(
          "dataset option 'labels' of cifar100 must be fine (100 classes) or coarse (20), got " + given.dump());
    const bool fine = labels == "fine";
    const int64_t classes = fine ? 100 : 20;
    const auto dir = cifar_dir(c.data_dir, "cifar-100-binary", "test.bin", "cifar100");
    Splits s{load_split(dir, {"train.bin"}, 2, fine ? 1 : 0, classes, c.limit, "cifar100 train"),
             load_split(dir, {"test.bin"}, 2, fine ? 1 : 0, classes, c.limit, "cifar100 test")};
    s.class_names = read_class_names(
        (fs::path(dir) / (fine ? "fine_label_names.txt" : "coarse_label_names.txt")).string(), classes);
    return s;
  };
  return e;
}()};

}  // namespace
}  // namespace zoo::datasets
