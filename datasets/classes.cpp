#include "datasets/classes.h"

#include "core/choices.h"

#include "datasets/images.h"
#include "datasets/options.h"
#include "datasets/registry.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace zoo::datasets {

namespace fs = std::filesystem;

bool is_image_file(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::set<std::string> known{".png", ".jpg", ".jpeg", ".bmp", ".tga", ".gif",
                                           ".psd", ".hdr", ".pic",  ".pnm", ".ppm", ".pgm"};
  return known.count(ext) > 0;
}

namespace {

bool hidden(const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; }

std::vector<std::string> sorted_images(const fs::path& folder) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (!hidden(entry.path()) && !entry.is_directory() && is_image_file(entry.path().string()))
      files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

/// Per-class lists -> one list, class by class in turn.
LabelledFiles interleave(const std::vector<std::vector<std::string>>& per_class) {
  LabelledFiles out;
  size_t longest = 0;
  for (const auto& files : per_class) longest = std::max(longest, files.size());
  for (size_t r = 0; r < longest; ++r)
    for (size_t k = 0; k < per_class.size(); ++k)
      if (r < per_class[k].size()) {
        out.files.push_back(per_class[k][r]);
        out.labels.push_back(static_cast<int64_t>(k));
      }
  return out;
}

std::string size_text(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

}  // namespace

std::vector<std::string> class_folders(const std::string& dir) {
  if (!fs::is_directory(dir))
    throw std::invalid_argument("image classes: " + dir + " does not exist or is not a directory");
  std::vector<std::string> names;
  size_t loose = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (hidden(entry.path())) continue;
    if (entry.is_directory())
      names.push_back(entry.path().filename().string());
    else if (is_image_file(entry.path().string()))
      ++loose;
  }
  std::sort(names.begin(), names.end());
  if (names.empty())
    throw std::invalid_argument("image classes: " + dir + " has no class folders" +
                                (loose ? fmt::format(" ({} images lie in it directly)", loose) : std::string()) +
                                "; expected " + dir + "/<class>/<image>, one folder per class");
  return names;
}

LabelledFiles class_images(const std::string& dir, const std::vector<std::string>& classes, bool require_all) {
  const auto present = class_folders(dir);
  for (const auto& name : present)
    if (std::find(classes.begin(), classes.end(), name) == classes.end())
      throw std::invalid_argument("image classes: " + (fs::path(dir) / name).string() +
                                  " is a class the training split does not have (its classes: " + join(classes) + ")");
  std::vector<std::vector<std::string>> per_class;
  for (const auto& name : classes) {
    const fs::path folder = fs::path(dir) / name;
    per_class.push_back(fs::is_directory(folder) ? sorted_images(folder) : std::vector<std::string>{});
    if (require_all && per_class.back().empty())
      throw std::invalid_argument("image classes: class folder " + folder.string() +
                                  " holds no images (PNG, JPEG, BMP, TGA, GIF or PNM); add some or remove the folder");
  }
  return interleave(per_class);
}

void parallel_items(size_t n, int64_t threads, const std::function<void(size_t)>& fn) {
  const size_t workers = std::min<size_t>(
      n, threads > 0 ? static_cast<size_t>(threads) : std::max(1u, std::thread::hardware_concurrency()));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::mutex mutex;
  size_t failed_at = n;
  std::exception_ptr failure;
  auto work = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (i < failed_at) failed_at = i, failure = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 0; t + 1 < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

int64_t default_cache_budget() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024 / 2;
  return int64_t{2} << 30;
}

ImageFiles::ImageFiles(LabelledFiles items, const ImageClassesOptions& o, std::string what)
    : items_(std::move(items)), options_(o), what_(std::move(what)) {
  if (o.channels() != 1 && o.channels() != 3)
    throw std::invalid_argument("dataset option 'channels' must be 1 (grey) or 3 (RGB), got " +
                                std::to_string(o.channels()));
  if (o.size() < 0 || o.size() > 4096)
    throw std::invalid_argument("dataset option 'size' must be in 0..4096 (0: the images' own), got " +
                                std::to_string(o.size()));
  if (o.cache() != "auto" && o.cache() != "memory" && o.cache() != "none")
    throw std::invalid_argument("dataset option 'cache' must be auto, memory or none, got '" + o.cache() + "'");
  if (items_.files.empty()) throw std::invalid_argument("image classes: " + what_ + " holds no images");
  const size_t n = items_.files.size();

  // Every header, in parallel: unreadable files are found now, and the images' size when `size` is 0.
  std::vector<ImageInfo> info(n);
  std::vector<std::string> problem(n);
  parallel_items(n, o.threads(), [&](size_t i) {
    try {
      info[i] = image_info(items_.files[i]);
    } catch (const std::exception& e) {
      problem[i] = e.what();
    }
  });
  auto drop_bad = [&] {
    LabelledFiles kept;
    std::vector<ImageInfo> kept_info;
    for (size_t i = 0; i < items_.files.size(); ++i) {
      if (problem[i].empty()) {
        kept.files.push_back(items_.files[i]);
        kept.labels.push_back(items_.labels[i]);
        kept_info.push_back(info[i]);
      } else if (!o.skip_bad()) {
        throw std::runtime_error(problem[i] +
                                 "; remove the file or pass --data-option skip_bad=true to leave out "
                                 "unreadable images");
      } else {
        skipped_.push_back(problem[i].substr(std::string("cannot read image ").size()));
      }
    }
    items_ = std::move(kept);
    info = std::move(kept_info);
    problem.assign(items_.files.size(), "");
    if (items_.files.empty())
      throw std::invalid_argument("image classes: no readable images in " + what_ + " (" +
                                  std::to_string(skipped_.size()) + " skipped)");
  };
  drop_bad();

  size_ = o.size();
  if (size_ == 0) {
    for (size_t i = 0; i < info.size(); ++i)
      if (info[i].width != info[0].width || info[i].height != info[0].height || info[i].width != info[i].height)
        throw std::invalid_argument(
            "image classes: " + items_.files[i] + " is " + size_text(info[i].width, info[i].height) +
            (i ? " but " + items_.files[0] + " is " + size_text(info[0].width, info[0].height) : ", not square") +
            "; pass --data-option size=N to bring every image to N x N (shorter side, then centre crop)");
    size_ = info[0].width;
  }

  const int64_t bytes = static_cast<int64_t>(items_.files.size()) * o.channels() * size_ * size_;
  const int64_t budget = o.cache_budget_mb() > 0 ? o.cache_budget_mb() << 20 : default_cache_budget();
  const bool keep = o.cache() == "memory" || (o.cache() == "auto" && bytes <= budget);
  if (keep || o.verify()) {
    // Every image decoded once: a header stb reads over pixels it cannot (a truncated file) is found now, not in
    // the middle of training. Kept as bytes (a quarter of float32) when cached, converted batch by batch.
    std::vector<torch::Tensor> decoded(items_.files.size());
    parallel_items(decoded.size(), o.threads(), [&](size_t i) {
      try {
        auto image = decode(i);
        if (keep) decoded[i] = std::move(image);
      } catch (const std::exception& e) {
        problem[i] = e.what();
      }
    });
    std::vector<torch::Tensor> kept;
    for (size_t i = 0; i < decoded.size(); ++i)
      if (problem[i].empty() && keep) kept.push_back(std::move(decoded[i]));
    drop_bad();
    if (keep) cache_ = torch::stack(kept);
  }
  targets_ = torch::tensor(items_.labels, torch::kInt64);
}

torch::Tensor ImageFiles::decode(size_t i) const {
  auto image = load_image(items_.files[i], static_cast<int>(options_.channels()));
  if (options_.size() > 0) return resize_center_crop(image, size_);
  if (image.size(1) != size_ || image.size(2) != size_)
    throw std::runtime_error("cannot read image " + items_.files[i] + ": it is " +
                             size_text(image.size(2), image.size(1)) + ", the others " + size_text(size_, size_));
  return image;
}

Batch ImageFiles::get(const torch::Tensor& indices) const {
  const auto targets = targets_.index_select(0, indices);
  if (cache_.defined()) return {pixels_to_unit(cache_.index_select(0, indices)), targets};
  const auto idx = indices.to(torch::kInt64).contiguous();
  const int64_t* at = idx.data_ptr<int64_t>();
  auto bytes = torch::empty({idx.size(0), options_.channels(), size_, size_}, torch::kUInt8);
  parallel_items(static_cast<size_t>(idx.size(0)), options_.threads(),
                 [&](size_t j) { bytes[static_cast<int64_t>(j)].copy_(decode(static_cast<size_t>(at[j]))); });
  return {pixels_to_unit(bytes), targets};
}

std::string ImageFiles::describe() const {
  std::string text = fmt::format(
      "{} ({} images, {}x{}x{}, {})", what_, items_.files.size(), options_.channels(), size_, size_,
      cached() ? fmt::format("decoded in memory, {:.0f} MB", cache_.numel() / 1048576.0) : "decoded per batch");
  if (!skipped_.empty()) text += fmt::format(", {} unreadable skipped", skipped_.size());
  return text;
}

namespace {

ImageClassesOptions image_classes_options(const nlohmann::json& o) {
  const ImageClassesOptions d;
  ImageClassesOptions options;
  options.size(int_option(o, "size", d.size()))
      .channels(int_option(o, "channels", d.channels()))
      .threads(int_option(o, "threads", d.threads()))
      .cache_budget_mb(int_option(o, "cache_budget_mb", d.cache_budget_mb()));
  if (o.contains("cache")) {
    if (!o["cache"].is_string())
      throw std::invalid_argument("dataset option 'cache' expects auto, memory or none, got " + o["cache"].dump());
    options.cache(o["cache"].get<std::string>());
  }
  for (const char* key : {"skip_bad", "verify"}) {
    if (!o.contains(key)) continue;
    if (!o[key].is_boolean())
      throw std::invalid_argument(std::string("dataset option '") + key + "' expects true or false, got " +
                                  o[key].dump());
    (std::string(key) == "skip_bad" ? options.skip_bad(o[key].get<bool>()) : options.verify(o[key].get<bool>()));
  }
  return options;
}

/// A seeded per-class split of one folder: the last round(fraction * n) of each class's shuffled files are test.
std::pair<LabelledFiles, LabelledFiles> split_by_class(const LabelledFiles& all, size_t classes, double fraction,
                                                       uint64_t seed) {
  std::vector<std::vector<std::string>> per_class(classes);
  for (size_t i = 0; i < all.files.size(); ++i) per_class[static_cast<size_t>(all.labels[i])].push_back(all.files[i]);
  std::vector<std::vector<std::string>> train(classes), test(classes);
  for (size_t k = 0; k < classes; ++k) {
    auto files = per_class[k];
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + k + 1);
    for (size_t i = files.size(); i > 1; --i) std::swap(files[i - 1], files[rng() % i]);
    const auto n_test =
        files.size() < 2 ? 0 : std::max<size_t>(1, static_cast<size_t>(std::llround(fraction * files.size())));
    train[k].assign(files.begin(), files.end() - static_cast<std::ptrdiff_t>(n_test));
    test[k].assign(files.end() - static_cast<std::ptrdiff_t>(n_test), files.end());
    std::sort(train[k].begin(), train[k].end());
    std::sort(test[k].begin(), test[k].end());
  }
  return {interleave(train), interleave(test)};
}

LabelledFiles first(LabelledFiles items, int64_t limit) {
  if (limit > 0 && static_cast<int64_t>(items.files.size()) > limit) {
    items.files.resize(static_cast<size_t>(limit));
    items.labels.resize(static_cast<size_t>(limit));
  }
  return items;
}

const detail::DatasetRegistrar image_classes{[] {
  DatasetEntry e;
  e.name = "image-classes";
  e.description =
      "your labelled images: --data-dir DIR with DIR/<class>/<image> (or DIR/train/<class>, DIR/test/<class>), "
      "as torchvision's ImageFolder";
  e.default_dir = [] { return std::string("(none: pass --data-dir)"); };
  e.load = [](const DataConfig& c) {
    check_option_names(
        c.options,
        {"size", "channels", "cache", "skip_bad", "verify", "threads", "cache_budget_mb", "test_fraction", "seed"},
        "image-classes");
    if (c.data_dir.empty())
      throw std::invalid_argument(
          "dataset 'image-classes' needs --data-dir DIR holding one folder of images per class (DIR/<class>/<image>)");
    const auto options = image_classes_options(c.options);
    const double test_fraction = number_option(c.options, "test_fraction", 0.2);
    const auto seed = static_cast<uint64_t>(int_option(c.options, "seed", 0));
    const fs::path root(c.data_dir);
    if (!fs::is_directory(root))
      throw std::invalid_argument("image classes: " + c.data_dir + " does not exist or is not a directory");
    Splits splits;
    LabelledFiles train, test, val;
    std::string train_what = c.data_dir, test_what;
    if (fs::is_directory(root / "train")) {
      train_what = (root / "train").string();
      splits.class_names = class_folders(train_what);
      train = class_images(train_what, splits.class_names, true);
      const bool has_test = fs::is_directory(root / "test"), has_val = fs::is_directory(root / "val");
      if (has_test || has_val) {
        test_what = (root / (has_test ? "test" : "val")).string();
        test = class_images(test_what, splits.class_names, false);
      }
      if (has_test && has_val) val = class_images((root / "val").string(), splits.class_names, false);
    } else {
      splits.class_names = class_folders(c.data_dir);
      train = class_images(c.data_dir, splits.class_names, true);
    }
    if (test.files.empty()) {  // one folder: a seeded split, every class in both parts
      if (!(test_fraction > 0 && test_fraction < 1))
        throw std::invalid_argument(
            fmt::format("dataset option 'test_fraction' must be in (0, 1), got {}", test_fraction));
      std::tie(train, test) = split_by_class(train, splits.class_names.size(), test_fraction, seed);
      test_what = train_what + " (test part)";
      train_what += " (training part)";
      if (test.files.empty())
        throw std::invalid_argument("image classes: " + c.data_dir +
                                    " has too few images to hold some out for testing (at least 2 in a class)");
    }
    auto make = [&](LabelledFiles items, const std::string& what) {
      return std::make_shared<ImageFiles>(first(std::move(items), c.limit), options, "image-classes " + what);
    };
    auto train_set = make(train, train_what), test_set = make(test, test_what);
    splits.train = train_set;
    splits.test = test_set;
    std::vector<std::shared_ptr<ImageFiles>> all{train_set, test_set};
    if (!val.files.empty()) {
      auto val_set = make(val, (root / "val").string());
      splits.val = val_set;
      all.push_back(val_set);
    }
    std::vector<std::string> skipped;
    for (const auto& set : all) skipped.insert(skipped.end(), set->skipped().begin(), set->skipped().end());
    if (!skipped.empty()) {
      std::string list;
      for (size_t i = 0; i < std::min<size_t>(skipped.size(), 10); ++i) list += "\n  " + skipped[i];
      if (skipped.size() > 10) list += fmt::format("\n  ... and {} more", skipped.size() - 10);
      splits.notes.push_back(fmt::format("skipped {} unreadable image{} (skip_bad=true):{}", skipped.size(),
                                         skipped.size() > 1 ? "s" : "", list));
    }
    return splits;
  };
  return e;
}()};

}  // namespace
}  // namespace zoo::datasets
