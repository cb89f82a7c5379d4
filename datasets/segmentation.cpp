#include "datasets/segmentation.h"

#include "datasets/images.h"
#include "datasets/mnist.h"
#include "datasets/options.h"
#include "datasets/random.h"
#include "datasets/registry.h"

#include <algorithm>
#include <filesystem>
#include <random>

namespace zoo::datasets {

namespace fs = std::filesystem;

namespace {
std::string size_text(int64_t h, int64_t w) { return std::to_string(w) + "x" + std::to_string(h); }

/// The seed of item `index` of a dataset seeded `seed` (splitmix64 of both): every item is its own random stream,
/// so item i is the same whether 10 or 10,000 items are made (--limit keeps a prefix of the same data).
uint64_t item_seed(uint64_t seed, int64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index) + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

std::shared_ptr<TensorDataset> make_scenes(const torch::Tensor& items, const torch::Tensor& classes, int64_t n,
                                           const SceneOptions& o, uint64_t seed) {
  TORCH_CHECK(items.dim() == 4 && items.size(1) == 1 && classes.dim() == 1 && classes.size(0) == items.size(0) &&
                  items.size(0) > 0,
              "scenes: need items [M, 1, h, w] and classes [M], got ", items.sizes(), " and ", classes.sizes());
  const int64_t m = items.size(0), h = items.size(2), w = items.size(3), s = o.size();
  TORCH_CHECK(n > 0, "scenes: need at least one scene");
  TORCH_CHECK(s >= h && s >= w, "scenes: size must be at least the item size ", h, ", got ", s);
  TORCH_CHECK(o.min_items() >= 1 && o.max_items() >= o.min_items(),
              "scenes: need 1 <= min_items <= max_items, got min_items ", o.min_items(), ", max_items ", o.max_items());
  auto src = items.to(torch::kFloat32).contiguous();
  auto cls = classes.to(torch::kInt64).contiguous();
  auto inputs = torch::zeros({n, 1, s, s}, torch::kFloat32);
  auto labels = torch::zeros({n, s, s}, torch::kInt64);
  const float* item = src.data_ptr<float>();
  const int64_t* item_class = cls.data_ptr<int64_t>();
  float* image = inputs.data_ptr<float>();
  int64_t* label = labels.data_ptr<int64_t>();
  const auto threshold = static_cast<float>(o.threshold());
  for (int64_t i = 0; i < n; ++i) {
    std::mt19937_64 rng(item_seed(seed, i));
    auto draw = [&rng](int64_t lo, int64_t hi) {  // uniform in [lo, hi], the same on every platform
      return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
    };
    float* img = image + i * s * s;
    int64_t* lab = label + i * s * s;
    const int64_t count = draw(o.min_items(), o.max_items());
    for (int64_t j = 0; j < count; ++j) {  // later items are pasted over earlier ones
      const int64_t pick = draw(0, m - 1), y0 = draw(0, s - h), x0 = draw(0, s - w);
      const float* it = item + pick * h * w;
      const int64_t c = item_class[pick] + 1;
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const float v = it[y * w + x];
          if (v > threshold) {
            const int64_t at = (y0 + y) * s + x0 + x;
            img[at] = v;
            lab[at] = c;
          }
        }
    }
  }
  return std::make_shared<TensorDataset>(inputs, labels,
                                         "scenes (" + std::to_string(n) + " x [1, " + std::to_string(s) + ", " +
                                             std::to_string(s) + "], " + std::to_string(o.min_items()) + "-" +
                                             std::to_string(o.max_items()) + " items)");
}

std::shared_ptr<TensorDataset> make_volumes(int64_t n, const VolumeOptions& o, uint64_t seed) {
  const int64_t s = o.size();
  TORCH_CHECK(n > 0 && s >= 8, "volumes: need n > 0 and size >= 8, got size ", s);
  TORCH_CHECK(o.min_objects() >= 1 && o.max_objects() >= o.min_objects(),
              "volumes: need 1 <= min_objects <= max_objects");
  TORCH_CHECK(o.noise() >= 0, "volumes: noise must be >= 0");
  const double S = static_cast<double>(s);
  auto axis = torch::arange(s, torch::kFloat32) + 0.5;
  auto grid = torch::meshgrid({axis, axis, axis}, "ij");
  auto volumes = torch::empty({n, 1, s, s, s}, torch::kFloat32);
  auto labels = torch::empty({n, s, s, s}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) {
    auto g = seeded_generator(item_seed(seed, i));
    const int64_t count = at::randint(o.min_objects(), o.max_objects() + 1, {1}, g, torch::kInt64).item<int64_t>();
    auto volume = torch::zeros({s, s, s}, torch::kFloat32);
    auto label = torch::zeros({s, s, s}, torch::kInt64);
    for (int64_t j = 0; j < count; ++j) {  // later objects occlude earlier ones
      const int64_t cls = at::randint(1, 4, {1}, g, torch::kInt64).item<int64_t>();
      auto center = uniform(g, {3}, 0.2 * S, 0.8 * S);
      auto half = uniform(g, {3}, 0.08 * S, 0.18 * S);
      const double radius = uniform(g, {1}, 0.1 * S, 0.2 * S).item<double>();
      const double brightness = uniform(g, {1}, 0.5, 1.0).item<double>();
      auto dz = grid[0] - center[0], dy = grid[1] - center[1], dx = grid[2] - center[2];
      torch::Tensor mask;
      if (cls == 1)
        mask = (dz * dz + dy * dy + dx * dx) < radius * radius;
      else if (cls == 2)
        mask = (dz.abs() < half[0]) & (dy.abs() < half[1]) & (dx.abs() < half[2]);
      else
        mask = ((dy * dy + dx * dx) < radius * radius) & (dz.abs() < 1.5 * half[0]);
      label.masked_fill_(mask, cls);
      volume.masked_fill_(mask, brightness);
    }
    volumes[i][0].copy_(volume + o.noise() * at::randn({s, s, s}, g, torch::kFloat32));
    labels[i].copy_(label);
  }
  return std::make_shared<TensorDataset>(volumes, labels,
                                         "volumes (" + std::to_string(n) + " x [1, " + std::to_string(s) + "^3])");
}

std::vector<std::string> image_folder_names(const std::string& dir) {
  const fs::path images = fs::path(dir) / "images";
  if (!fs::is_directory(images))
    throw std::invalid_argument("image folder " + dir + " has no images/ directory: expected " + dir +
                                "/images/NAME.png with " + dir + "/masks/NAME.png");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(images))
    if (entry.is_regular_file() && entry.path().filename().string()[0] != '.')
      names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  if (names.empty()) throw std::invalid_argument("image folder " + images.string() + " holds no images");
  return names;
}

std::shared_ptr<TensorDataset> load_image_folder(const std::string& dir, int64_t num_classes, int64_t channels,
                                                 std::vector<std::string> names) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("image folder: channels must be 1 (grey) or 3 (RGB), got " + std::to_string(channels));
  if (num_classes < 2 || num_classes > 256)
    throw std::invalid_argument("image folder: num_classes must be 2..256, got " + std::to_string(num_classes));
  if (names.empty()) names = image_folder_names(dir);
  const fs::path root(dir);
  std::vector<torch::Tensor> inputs, labels;
  std::string first;
  for (const auto& name : names) {
    const auto image_path = (root / "images" / name).string();
    const auto mask_path = (root / "masks" / fs::path(name).stem()).string() + ".png";
    if (!fs::exists(mask_path))
      throw std::invalid_argument("image folder: no mask for " + image_path + ": expected " + mask_path);
    auto image = load_image(image_path, static_cast<int>(channels));
    auto mask = load_image(mask_path);
    const int64_t h = image.size(1), w = image.size(2);
    if (mask.size(1) != h || mask.size(2) != w)
      throw std::invalid_argument("image folder: " + image_path + " is " + size_text(h, w) + " but its mask " +
                                  mask_path + " is " + size_text(mask.size(1), mask.size(2)) +
                                  "; an image and its mask must have the same size");
    if (!inputs.empty() && (inputs[0].size(1) != h || inputs[0].size(2) != w))
      throw std::invalid_argument("image folder: " + image_path + " is " + size_text(h, w) + " but " + first + " is " +
                                  size_text(inputs[0].size(1), inputs[0].size(2)) +
                                  "; all images must have one size (resize them first)");
    if (mask.size(0) >= 3 && (!mask[0].equal(mask[1]) || !mask[0].equal(mask[2])))
      throw std::invalid_argument("image folder: mask " + mask_path +
                                  " has colour pixels; a mask must be grey with pixel value = class id");
    auto ids = mask[0].to(torch::kInt64);
    const int64_t top = ids.max().item<int64_t>();
    if (top >= num_classes) {
      const int64_t at = ids.flatten().argmax().item<int64_t>();
      throw std::invalid_argument("image folder: mask " + mask_path + " holds class id " + std::to_string(top) +
                                  " at x=" + std::to_string(at % w) + ", y=" + std::to_string(at / w) +
                                  ", but num_classes is " + std::to_string(num_classes) +
                                  ": set --data-option num_classes=" + std::to_string(top + 1) +
                                  " (and the model's --set num_classes=" + std::to_string(top + 1) + ")");
    }
    if (inputs.empty()) first = image_path;
    inputs.push_back(pixels_to_unit(image));
    labels.push_back(ids);
  }
  return std::make_shared<TensorDataset>(torch::stack(inputs), torch::stack(labels),
                                         "image folder " + dir + " (" + std::to_string(inputs.size()) + " images)");
}

std::vector<std::string> segmentation_class_names(const std::string& dataset) {
  if (dataset == "scenes")
    return {"background", "T-shirt/top", "trouser", "pullover", "dress",     "coat",
            "sandal",     "shirt",       "sneaker", "bag",      "ankle boot"};
  if (dataset == "volumes") return {"background", "sphere", "box", "cylinder"};
  return {};
}

namespace {

const detail::DatasetRegistrar scenes{[] {
  DatasetEntry e;
  e.name = "scenes";
  e.description =
      "2-D segmentation: 2-4 Fashion-MNIST items pasted on a 64x64 canvas, label map with 11 classes (generated)";
  e.default_dir = default_fashion_mnist_dir;
  e.load = [](const DataConfig& c) {
    check_option_names(c.options, {"n_train", "n_test", "seed", "size", "min_items", "max_items", "threshold"},
                       "scenes");
    const auto& o = c.options;
    const SceneOptions d;  // the defaults live in the options struct only
    const auto options = SceneOptions()
                             .size(int_option(o, "size", d.size()))
                             .min_items(int_option(o, "min_items", d.min_items()))
                             .max_items(int_option(o, "max_items", d.max_items()))
                             .threshold(number_option(o, "threshold", d.threshold()));
    const auto seed = static_cast<uint64_t>(int_option(o, "seed", 0));
    const std::string dir = c.data_dir.empty() ? default_fashion_mnist_dir() : c.data_dir;
    auto train_items = load_mnist(dir, Split::Train, 0, "fashion-mnist");
    auto test_items = load_mnist(dir, Split::Test, 0, "fashion-mnist");
    return Splits{make_scenes(train_items->inputs(), train_items->targets(),
                              limited(int_option(o, "n_train", 4000), c.limit), options, 2 * seed + 1),
                  make_scenes(test_items->inputs(), test_items->targets(),
                              limited(int_option(o, "n_test", 1000), c.limit), options, 2 * seed + 2)};
  };
  return e;
}()};

const detail::DatasetRegistrar volumes{[] {
  DatasetEntry e;
  e.name = "volumes";
  e.description = "3-D segmentation: spheres, boxes and cylinders in noise, [1, 24, 24, 24], 4 classes (generated)";
  e.default_dir = [] { return std::string("(generated)"); };
  e.load = [](const DataConfig& c) {
    check_option_names(c.options, {"n_train", "n_test", "seed", "size", "min_objects", "max_objects", "noise"},
                       "volumes");
    const auto& o = c.options;
    const VolumeOptions d;
    const auto options = VolumeOptions()
                             .size(int_option(o, "size", d.size()))
                             .min_objects(int_option(o, "min_objects", d.min_objects()))
                             .max_objects(int_option(o, "max_objects", d.max_objects()))
                             .noise(number_option(o, "noise", d.noise()));
    const auto seed = static_cast<uint64_t>(int_option(o, "seed", 0));
    return Splits{make_volumes(limited(int_option(o, "n_train", 1000), c.limit), options, 2 * seed + 1),
                  make_volumes(limited(int_option(o, "n_test", 200), c.limit), options, 2 * seed + 2)};
  };
  return e;
}()};

const detail::DatasetRegistrar image_folder{[] {
  DatasetEntry e;
  e.name = "image-folder";
  e.description =
      "your segmentation data: --data-dir DIR with DIR/images/NAME.png and DIR/masks/NAME.png (or DIR/train/... "
      "and DIR/test/...)";
  e.default_dir = [] { return std::string("(none: pass --data-dir)"); };
  e.load = [](const DataConfig& c) {
    check_option_names(c.options, {"num_classes", "channels", "test_fraction"}, "image-folder");
    if (c.data_dir.empty())
      throw std::invalid_argument(
          "dataset 'image-folder' needs --data-dir DIR holding images/NAME.png and "
          "masks/NAME.png");
    const auto& o = c.options;
    const int64_t classes = int_option(o, "num_classes", 2), channels = int_option(o, "channels", 1);
    const double test_fraction = number_option(o, "test_fraction", 0.2);
    const fs::path root(c.data_dir);
    if (!fs::is_directory(root))
      throw std::invalid_argument("image folder " + c.data_dir + " does not exist or is not a directory");
    auto take = [&](std::vector<std::string> names) {
      if (c.limit > 0 && static_cast<int64_t>(names.size()) > c.limit) names.resize(static_cast<size_t>(c.limit));
      return names;
    };
    if (fs::is_directory(root / "train") && fs::is_directory(root / "test")) {
      const auto train_dir = (root / "train").string(), test_dir = (root / "test").string();
      return Splits{load_image_folder(train_dir, classes, channels, take(image_folder_names(train_dir))),
                    load_image_folder(test_dir, classes, channels, take(image_folder_names(test_dir)))};
    }
    if (!(test_fraction > 0 && test_fraction < 1))
      throw std::invalid_argument("dataset option 'test_fraction' must be in (0, 1), got " +
                                  std::to_string(test_fraction));
    auto names = image_folder_names(c.data_dir);
    if (names.size() < 2)
      throw std::invalid_argument("image folder " + c.data_dir +
                                  " needs at least 2 images to hold some out for testing");
    // The last test_fraction of the sorted names (at least one) is the test split: deterministic, no shuffling.
    const auto n_test = std::min(
        names.size() - 1, std::max<size_t>(1, static_cast<size_t>(test_fraction * static_cast<double>(names.size()))));
    std::vector<std::string> train(names.begin(), names.end() - static_cast<std::ptrdiff_t>(n_test)),
        test(names.end() - static_cast<std::ptrdiff_t>(n_test), names.end());
    return Splits{load_image_folder(c.data_dir, classes, channels, take(train)),
                  load_image_folder(c.data_dir, classes, channels, take(test))};
  };
  return e;
}()};

}  // namespace
}  // namespace zoo::datasets
