// Images on disk: PNG reading and writing (stb), and one image-grid maker for the whole project, with
// torchvision's make_grid / save_image semantics (nrow images per row, padding between them).
#pragma once

#include <torch/torch.h>

#include <string>

namespace zoo::datasets {

struct GridOptions {
  TORCH_ARG(int64_t, nrow) = 8;        ///< images per row
  TORCH_ARG(int64_t, padding) = 2;     ///< pixels between images and around the grid
  TORCH_ARG(double, pad_value) = 0.0;  ///< value of the padding
  TORCH_ARG(bool, normalize) = false;  ///< rescale the whole batch to [0, 1] by its min and max
};

/// [N, C, H, W] (C = 1 or 3) -> [C, rows * (H + padding) + padding, nrow * (W + padding) + padding].
torch::Tensor make_grid(torch::Tensor images, const GridOptions& options = {});

/// Writes [C, H, W] or [H, W] values in [0, 1] (clamped) as an 8-bit PNG (C = 1 grey, 3 RGB, 4 RGBA), checked
/// and atomic (core/files.h): a full disk is an error and leaves no partial file.
void save_png(const torch::Tensor& image, const std::string& path);

/// The same image as PNG file bytes (for embedding, e.g. in TensorBoard event files).
std::string encode_png(const torch::Tensor& image);

/// 8-bit pixels (uint8, any shape) as float32 in [0, 1]: x / 255, the one scaling every image reader and zoo
/// predict use.
torch::Tensor pixels_to_unit(const torch::Tensor& pixels);

/// make_grid + save_png.
void save_image_grid(const torch::Tensor& images, const std::string& path, const GridOptions& options = {});

/// Reads a PNG (or any format stb_image reads) as uint8 [C, H, W]; `channels` > 0 forces 1, 3 or 4 channels.
/// An unreadable file is an error naming it and stb's reason.
torch::Tensor load_image(const std::string& path, int channels = 0);

/// What an image file's header says, without decoding it: an error naming the file when stb cannot read it.
struct ImageInfo {
  int64_t width = 0, height = 0, channels = 0;
};
ImageInfo image_info(const std::string& path);

/// Whether `path` is a whole PNG file: the signature at the start and the IEND chunk at the end (a PNG cut short,
/// e.g. by a full disk, lacks the end).
bool is_whole_png(const std::string& path);

/// torchvision's Resize(size) + CenterCrop(size) of an image [C, H, W] (uint8 or float): the shorter side scaled to
/// `size` (bilinear, antialiased when shrinking; the longer side int(size * long / short)), then the centre
/// size x size. The dtype is kept (uint8 rounded). An image already size x size is returned as it is.
torch::Tensor resize_center_crop(const torch::Tensor& image, int64_t size);
/// The same to height x width: scaled until it covers the target (the binding side exactly), then the centre crop.
/// An image too elongated for that (more than 2^26 pixels on the way) is refused.
torch::Tensor resize_center_crop(const torch::Tensor& image, int64_t height, int64_t width);

/// Label maps [*, H, W] (int64 class ids) as colours [*, 3, H, W] in [0, 1]: class 0 (background) black, classes
/// 1.. from a 20-colour palette (repeating after 20).
torch::Tensor colorize_labels(const torch::Tensor& labels);

/// The colour colorize_labels gives class `id` (>= 0), as "#rrggbb" (for legends drawn elsewhere).
std::string class_colour_hex(int64_t id);

/// An image [C, H, W] (C = 1 or 3, in [0, 1]) with the classes of `labels` [H, W] blended over it: pixels of class
/// k > 0 become (1 - alpha) image + alpha colour(k); background pixels keep the image. Returns [3, H, W].
torch::Tensor overlay_labels(const torch::Tensor& image, const torch::Tensor& labels, double alpha = 0.5);

}  // namespace zoo::datasets
