// Data for segmentation: items [C, *spatial] float with a label map [*spatial] int64 (0 = background).
//
//   scenes        2-D composites of Fashion-MNIST items on a blank canvas (default 64x64): each scene pastes
//                 min_items..max_items items at random positions; an item's pixels above `threshold` get the
//                 item's class + 1 (later items occlude earlier ones), so 11 classes. Train scenes use training
//                 items, test scenes test items; everything follows from the seed.
//   volumes       3-D scenes (default 24^3): spheres (class 1), boxes (2) and z-axis cylinders (3) of random size,
//                 position and brightness (brightness does not tell the class; shape does), later objects
//                 occluding earlier ones, in Gaussian noise. 4 classes.
//   image folder  users' data: DIR/images/NAME.png with DIR/masks/NAME.png (mask pixel value = class id),
//                 read with stb_image.
#pragma once

#include "datasets/dataset.h"

#include <string>
#include <vector>

namespace zoo::datasets {

struct SceneOptions {
  TORCH_ARG(int64_t, size) = 64;
  TORCH_ARG(int64_t, min_items) = 2;
  TORCH_ARG(int64_t, max_items) = 4;
  /// An item's pixels above this are its mask (Fashion-MNIST backgrounds are 0).
  TORCH_ARG(double, threshold) = 0.1;
};

/// `n` scenes from source items [M, 1, h, w] (float in [0, 1]) and their classes [M] (int64 0..K-1): inputs
/// [n, 1, size, size], labels [n, size, size] with 0 = background and class + 1 where an item shows.
std::shared_ptr<TensorDataset> make_scenes(const torch::Tensor& items, const torch::Tensor& classes, int64_t n,
                                           const SceneOptions& options, uint64_t seed);

struct VolumeOptions {
  TORCH_ARG(int64_t, size) = 24;
  TORCH_ARG(int64_t, min_objects) = 2;
  TORCH_ARG(int64_t, max_objects) = 4;
  TORCH_ARG(double, noise) = 0.3;
};

/// `n` volumes [n, 1, S, S, S] with labels [n, S, S, S] (0 background, 1 sphere, 2 box, 3 cylinder).
std::shared_ptr<TensorDataset> make_volumes(int64_t n, const VolumeOptions& options, uint64_t seed);

/// Reads DIR/images/NAME.png and DIR/masks/NAME.png for each of `names` (all of DIR/images when empty): inputs
/// [n, channels, H, W] in [0, 1], labels [n, H, W]. One-line errors: a missing mask, an unreadable image, an
/// image and mask (or two images) of different sizes, a colour mask, a class id >= num_classes.
std::shared_ptr<TensorDataset> load_image_folder(const std::string& dir, int64_t num_classes, int64_t channels,
                                                 std::vector<std::string> names = {});

/// The image names (file names in DIR/images, sorted) of an image folder; an error when there are none.
std::vector<std::string> image_folder_names(const std::string& dir);

/// The names of a segmentation dataset's label ids (index = id): scenes (background and the ten Fashion-MNIST
/// classes), volumes (background, sphere, box, cylinder); empty for other datasets (image folders have ids only).
std::vector<std::string> segmentation_class_names(const std::string& dataset);

}  // namespace zoo::datasets
