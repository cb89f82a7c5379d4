#include "datasets/mnist.h"

#include "datasets/idx.h"
#include "datasets/images.h"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace zoo::datasets {
namespace fs = std::filesystem;

std::string default_fashion_mnist_dir() {
  if (const char* env = std::getenv("ZOO_DATA_DIR"); env && *env) return env;
  return "/usr/share/datasets/fashion-mnist";
}

namespace {

std::string find_file(const std::string& dir, const std::string& stem, const std::string& dataset) {
  for (const auto& candidate : {fs::path(dir) / stem, fs::path(dir) / (stem + ".gz")})
    if (fs::exists(candidate)) return candidate.string();
  std::string hint = dataset == "fashion-mnist"
                         ? "install it with 'apt-get install dataset-fashion-mnist' (or scripts/setup)"
                         : "put the " + dataset + " IDX files there";
  throw std::runtime_error("missing data file " + (fs::path(dir) / (stem + "[.gz]")).string() + ": " + hint +
                           ", or point --data-dir / ZOO_DATA_DIR at a directory that has it");
}

}  // namespace

std::shared_ptr<TensorDataset> load_mnist(const std::string& dir, Split split, int64_t limit, const std::string& name) {
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string image_path = find_file(dir, prefix + "-images-idx3-ubyte", name);
  const std::string label_path = find_file(dir, prefix + "-labels-idx1-ubyte", name);
  torch::Tensor images = read_idx(image_path);
  torch::Tensor labels = read_idx(label_path);
  if (images.dim() != 3)
    throw std::runtime_error(image_path + " holds a tensor of shape " + c10::str(images.sizes()) +
                             ", expected [N, rows, cols] images");
  if (labels.dim() != 1)
    throw std::runtime_error(label_path + " holds a tensor of shape " + c10::str(labels.sizes()) +
                             ", expected [N] labels");
  if (images.size(0) != labels.size(0))
    throw std::runtime_error(image_path + " has " + std::to_string(images.size(0)) + " images but " + label_path +
                             " has " + std::to_string(labels.size(0)) + " labels");
  if (images.size(0) == 0) throw std::runtime_error(image_path + " holds no images");
  if (labels.max().item<int64_t>() > 9)
    throw std::runtime_error(label_path + " has label " + std::to_string(labels.max().item<int64_t>()) +
                             ", expected classes 0-9");
  if (limit > 0 && limit < images.size(0)) {
    images = images.slice(0, 0, limit);
    labels = labels.slice(0, 0, limit);
  }
  auto inputs = pixels_to_unit(images.unsqueeze(1));
  auto targets = labels.to(torch::kInt64);
  const auto n = inputs.size(0);
  return std::make_shared<TensorDataset>(
      inputs, targets,
      name + " " + (split == Split::Train ? "train" : "test") + " (" + std::to_string(n) + " images, " + dir + ")");
}

}  // namespace zoo::datasets
