// Labelled images from folders, as torchvision's ImageFolder reads them: DIR/<class>/<image>, the class ids in
// the sorted order of the folder names. Dataset "image-classes":
//
//   DIR/<class>/*.png                         one folder: a seeded, per-class split (test_fraction) into train/test
//   DIR/train/<class>/, DIR/test/<class>/     splits of their own; DIR/val/<class>/ is the validation split when
//                                             DIR/test exists too, otherwise the test split
//
// PNG, JPEG, BMP, TGA, GIF, PSD, HDR, PIC and PNM files (what stb_image reads) are decoded as grey or RGB
// (`channels`) and brought to `size` x `size` by torchvision's Resize(size) + CenterCrop(size). The decoded images
// are kept in memory as bytes when they fit (`cache`), otherwise each batch is decoded by `threads` loader
// threads. Items are ordered class by class in turn (the first image of every class, then the second, ...), so that
// --limit keeps a prefix with every class in it.
#pragma once

#include "datasets/dataset.h"

#include <string>
#include <vector>

namespace zoo::datasets {

struct ImageClassesOptions {
  TORCH_ARG(int64_t, size) = 0;             ///< side of the square images; 0: the images' own (one size for all)
  TORCH_ARG(int64_t, channels) = 3;         ///< 1 (grey) or 3 (RGB)
  TORCH_ARG(std::string, cache) = "auto";   ///< memory, none, or auto: memory when the bytes fit the budget
  TORCH_ARG(bool, skip_bad) = false;        ///< leave unreadable images out (counted and listed) instead of failing
  TORCH_ARG(int64_t, threads) = 0;          ///< decoding threads; 0: one per core
  TORCH_ARG(int64_t, cache_budget_mb) = 0;  ///< auto caches up to this many MB; 0: half the available memory
  TORCH_ARG(bool, verify) = true;           ///< cache none: decode every image once at load to check it
};

/// Image files with their class ids.
struct LabelledFiles {
  std::vector<std::string> files;
  std::vector<int64_t> labels;
};

/// The class folders of `dir` (sorted by name, hidden ones left out). An error when it has none.
std::vector<std::string> class_folders(const std::string& dir);

/// The images of each of `classes` under `dir` (their id: the position in `classes`), ordered class by class in
/// turn. `require_all`: a class folder that is missing or holds no images is an error (the training split);
/// otherwise it is allowed (a test split may lack a class). A folder under `dir` not in `classes` is an error.
LabelledFiles class_images(const std::string& dir, const std::vector<std::string>& classes, bool require_all);

/// Files whose extension is one stb_image reads (case-insensitive): .png .jpg .jpeg .bmp .tga .gif .psd .hdr .pic
/// .pnm .ppm .pgm.
bool is_image_file(const std::string& path);

/// Labelled image files as a dataset: inputs float [C, size, size] in [0, 1], targets int64 class ids.
class ImageFiles : public Dataset {
 public:
  /// Reads (cache memory) or checks the headers of (cache none) every file; throws naming the first bad file
  /// unless skip_bad, which leaves such files out (skipped()).
  ImageFiles(LabelledFiles items, const ImageClassesOptions& options, std::string what);
  int64_t size() const override { return static_cast<int64_t>(items_.files.size()); }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override;
  bool cached() const { return cache_.defined(); }
  /// "PATH: reason" of each file skip_bad left out.
  const std::vector<std::string>& skipped() const { return skipped_; }
  /// The images' side (the options' size, or the images' own).
  int64_t image_size() const { return size_; }

 private:
  torch::Tensor decode(size_t i) const;  ///< uint8 [C, size, size]

  LabelledFiles items_;
  ImageClassesOptions options_;
  std::string what_;
  int64_t size_ = 0;
  torch::Tensor cache_;    ///< uint8 [N, C, size, size] or undefined
  torch::Tensor targets_;  ///< int64 [N]
  std::vector<std::string> skipped_;
};

/// Runs fn(i) for i in [0, n) on `threads` threads (0: one per core); the exception of the lowest failing i is
/// rethrown, so errors do not depend on scheduling.
void parallel_items(size_t n, int64_t threads, const std::function<void(size_t)>& fn);

/// Half the memory the system has available (MemAvailable), in bytes; 2 GiB when it cannot be read.
int64_t default_cache_budget();

}  // namespace zoo::datasets
