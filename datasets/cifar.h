// CIFAR-10 and CIFAR-100 in their published binary layout (Krizhevsky 2009,
// https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):
//
//   CIFAR-10   data_batch_1.bin .. data_batch_5.bin, test_batch.bin: records of 1 label byte + 3072 pixel bytes
//              (the red 32x32 plane, then green, then blue, rows top to bottom); batches.meta.txt names the classes
//   CIFAR-100  train.bin, test.bin: records of 1 coarse-label byte, 1 fine-label byte, 3072 pixel bytes;
//              fine_label_names.txt and coarse_label_names.txt name the classes
//
// --data-dir is the folder holding the files, or the folder the archive was unpacked in (cifar-10-batches-bin/,
// cifar-100-binary/ below it). Images are kept as bytes and served as float [3, 32, 32] in [0, 1].
#pragma once

#include "datasets/dataset.h"

#include <string>
#include <vector>

namespace zoo::datasets {

/// Images kept as uint8 [N, C, H, W] (a quarter of float32's memory), served as float in [0, 1].
class ImageBytes : public Dataset {
 public:
  ImageBytes(torch::Tensor images, torch::Tensor targets, std::string description);
  int64_t size() const override { return images_.size(0); }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override { return description_; }

 private:
  torch::Tensor images_, targets_;
  std::string description_;
};

/// Parses CIFAR records: `label_bytes` 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine), `label_index` which of them is
/// the target, labels checked below `classes`. Returns images uint8 [N, 3, 32, 32] and labels int64 [N]. `name`
/// names the file in errors (a size that is not a whole number of records, a label out of range).
std::pair<torch::Tensor, torch::Tensor> parse_cifar(const std::string& bytes, int label_bytes, int label_index,
                                                    int64_t classes, const std::string& name);

/// The directory holding a CIFAR variant's files: `dir` itself or its `sub` folder (cifar-10-batches-bin,
/// cifar-100-binary) when that holds `probe`; an error naming where to get the files otherwise.
std::string cifar_dir(const std::string& dir, const std::string& sub, const std::string& probe,
                      const std::string& dataset);

/// Class names: one per line of `file` (blank lines skipped) when it exists and names `classes` of them,
/// otherwise `fallback` (or the ids as text when that is empty).
std::vector<std::string> read_class_names(const std::string& file, size_t classes,
                                          const std::vector<std::string>& fallback = {});

}  // namespace zoo::datasets
