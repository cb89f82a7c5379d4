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

/// Writes [C, H, W] or [H, W] values in [0, 1] (clamped) as an 8-bit PNG (C = 1 grey, 3 RGB, 4 RGBA).
void save_png(const torch::Tensor& image, const std::string& path);

/// The same image as PNG file bytes (for embedding, e.g. in TensorBoard event files).
std::string encode_png(const torch::Tensor& image);

/// make_grid + save_png.
void save_image_grid(const torch::Tensor& images, const std::string& path, const GridOptions& options = {});

/// Reads a PNG (or any format stb_image reads) as uint8 [C, H, W]; `channels` > 0 forces 1, 3 or 4 channels.
/// An unreadable file is an error naming it and stb's reason.
torch::Tensor load_image(const std::string& path, int channels = 0);

/// Label maps [*, H, W] (int64 class ids) as colours [*, 3, H, W] in [0, 1]: class 0 (background) black, classes
/// 1.. from a 20-colour palette (repeating after 20).
torch::Tensor colorize_labels(const torch::Tensor& labels);

/// The colour colorize_labels gives class `id` (>= 0), as "#rrggbb" (for legends drawn elsewhere).
std::string class_colour_hex(int64_t id);

/// An image [C, H, W] (C = 1 or 3, in [0, 1]) with the classes of `labels` [H, W] blended over it: pixels of class
/// k > 0 become (1 - alpha) image + alpha colour(k); background pixels keep the image. Returns [3, H, W].
torch::Tensor overlay_labels(const torch::Tensor& image, const torch::Tensor& labels, double alpha = 0.5);

}  // namespace zoo::datasets
