// Fashion-MNIST and MNIST from their IDX files (the two share file names and format).
#pragma once

#include "datasets/dataset.h"

#include <string>

namespace zoo::datasets {

enum class Split { Train, Test };

/// Directory of Fashion-MNIST: $ZOO_DATA_DIR if set, else /usr/share/datasets/fashion-mnist
/// (Debian package dataset-fashion-mnist).
std::string default_fashion_mnist_dir();

/// Loads one split from `dir`: images as float [N, 1, 28, 28] in [0, 1], labels as int64 [N].
/// `limit` > 0 keeps the first `limit` items. Looks for `train-images-idx3-ubyte` (or `.gz`) and friends; a
/// missing file is an error that names the path and the package to install.
std::shared_ptr<TensorDataset> load_mnist(const std::string& dir, Split split, int64_t limit = 0,
                                          const std::string& name = "fashion-mnist");

}  // namespace zoo::datasets
