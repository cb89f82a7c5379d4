#include "datasets/images.h"

#include "core/files.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#include <stb_image.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace zoo::datasets {

torch::Tensor pixels_to_unit(const torch::Tensor& pixels) { return pixels.to(torch::kFloat32).div_(255); }

namespace {
constexpr int64_t kMaxImagePixels = int64_t{1} << 24;  // 16.7 megapixels, e.g. 4096 x 4096
}  // namespace

torch::Tensor make_grid(torch::Tensor images, const GridOptions& o) {
  TORCH_CHECK(images.dim() == 4, "make_grid expects [N, C, H, W], got ", images.sizes());
  TORCH_CHECK(images.size(0) > 0, "make_grid: no images");
  TORCH_CHECK(o.nrow() > 0 && o.padding() >= 0, "make_grid: nrow must be > 0 and padding >= 0");
  images = images.detach().to(torch::kCPU, torch::kFloat32);
  if (o.normalize()) {
    const auto lo = images.min(), hi = images.max();
    images = (images - lo) / (hi - lo).clamp_min(1e-12);
  }
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const int64_t cols = std::min(o.nrow(), n), rows = (n + cols - 1) / cols, p = o.padding();
  auto grid = torch::full({c, rows * (h + p) + p, cols * (w + p) + p}, o.pad_value(), torch::kFloat32);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, col = i % cols;
    grid.slice(1, r * (h + p) + p, r * (h + p) + p + h)
        .slice(2, col * (w + p) + p, col * (w + p) + p + w)
        .copy_(images[i]);
  }
  return grid;
}

namespace {
/// [C, H, W] in [0, 1] -> uint8 [H, W, C], contiguous.
torch::Tensor png_pixels(const torch::Tensor& image, const char* who) {
  auto t = image.detach().to(torch::kCPU, torch::kFloat32);
  if (t.dim() == 2) t = t.unsqueeze(0);
  TORCH_CHECK(t.dim() == 3 && (t.size(0) == 1 || t.size(0) == 3 || t.size(0) == 4), who,
              " expects [C, H, W] with C = 1, 3 or 4, got ", image.sizes());
  return t.clamp(0, 1).mul(255).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
}
}  // namespace

std::string encode_png(const torch::Tensor& image) {
  auto bytes = png_pixels(image, "encode_png");
  const int h = static_cast<int>(bytes.size(0)), w = static_cast<int>(bytes.size(1)),
            c = static_cast<int>(bytes.size(2));
  std::string out;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &out, w, h, c, bytes.data_ptr<uint8_t>(), w * c))
    throw std::runtime_error("encode_png: stb could not encode a " + std::to_string(w) + "x" + std::to_string(h) +
                             " image");
  return out;
}

void save_png(const torch::Tensor& image, const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent))
    throw std::runtime_error("cannot write " + path + ": directory " + parent.string() + " does not exist");
  // Checked and atomic (a full disk leaves no half PNG), without fsync: zoo dataset export writes tens of
  // thousands (fsync made it 1.6x slower).
  write_text_atomically(path, encode_png(image), false);
}

namespace {

// Distinct, saturated colours (after matplotlib's tab20, bright shades first); index 0 is the background, ids
// above 20 repeat 1..20.
constexpr float kPalette[21][3] = {{0, 0, 0},       {31, 119, 180},  {255, 127, 14},  {44, 160, 44},   {214, 39, 40},
                                   {148, 103, 189}, {140, 86, 75},   {227, 119, 194}, {188, 189, 34},  {23, 190, 207},
                                   {255, 255, 255}, {174, 199, 232}, {255, 187, 120}, {152, 223, 138}, {255, 152, 150},
                                   {197, 176, 213}, {196, 156, 148}, {247, 182, 210}, {219, 219, 141}, {158, 218, 229},
                                   {127, 127, 127}};

int64_t palette_index(int64_t id) { return id > 0 ? (id - 1) % 20 + 1 : 0; }

}  // namespace

std::string class_colour_hex(int64_t id) {
  TORCH_CHECK(id >= 0, "class_colour_hex: negative class id ", id);
  const auto& c = kPalette[palette_index(id)];
  return fmt::format("#{:02x}{:02x}{:02x}", static_cast<int>(c[0]), static_cast<int>(c[1]), static_cast<int>(c[2]));
}

torch::Tensor colorize_labels(const torch::Tensor& labels) {
  auto table = torch::from_blob(const_cast<float*>(&kPalette[0][0]), {21, 3}, torch::kFloat32).div(255);
  auto ids = labels.detach().to(torch::kCPU, torch::kInt64);
  TORCH_CHECK(ids.dim() >= 2, "colorize_labels expects [*, H, W], got ", labels.sizes());
  TORCH_CHECK(ids.numel() == 0 || ids.min().item<int64_t>() >= 0, "colorize_labels: negative class id");
  auto index = torch::where(ids > 0, (ids - 1).remainder(20) + 1, ids);
  return table.index_select(0, index.flatten())
      .view([&] {
        auto shape = ids.sizes().vec();
        shape.push_back(3);
        return shape;
      }())
      .movedim(-1, -3)
      .contiguous();
}

torch::Tensor overlay_labels(const torch::Tensor& image, const torch::Tensor& labels, double alpha) {
  auto img = image.detach().to(torch::kCPU, torch::kFloat32);
  TORCH_CHECK(img.dim() == 3 && (img.size(0) == 1 || img.size(0) == 3),
              "overlay_labels: image must be [1 or 3, H, W], got ", image.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == img.size(1) && labels.size(1) == img.size(2),
              "overlay_labels: labels ", labels.sizes(), " do not match the image ", image.sizes());
  if (img.size(0) == 1) img = img.expand({3, -1, -1});
  auto colours = colorize_labels(labels);
  auto blended = (1 - alpha) * img + alpha * colours;
  return torch::where(labels.to(torch::kCPU).gt(0).unsqueeze(0), blended, img).contiguous();
}

void save_image_grid(const torch::Tensor& images, const std::string& path, const GridOptions& options) {
  save_png(make_grid(images, options), path);
}

bool is_whole_png(const std::string& path) {
  static const std::string signature("\x89PNG\r\n\x1a\n", 8), end("\0\0\0\0IEND\xae\x42\x60\x82", 12);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return false;
  const std::streamoff size = in.tellg();
  if (size < static_cast<std::streamoff>(signature.size() + end.size())) return false;
  std::string head(signature.size(), '\0'), tail(end.size(), '\0');
  in.seekg(0);
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  in.seekg(size - static_cast<std::streamoff>(tail.size()));
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  return in && head == signature && tail == end;
}

ImageInfo image_info(const std::string& path) {
  int w = 0, h = 0, c = 0;
  if (!stbi_info(path.c_str(), &w, &h, &c)) {
    const char* reason = stbi_failure_reason();
    throw std::runtime_error("cannot read image " + path + ": " +
                             (std::filesystem::exists(path) ? std::string(reason ? reason : "unknown format")
                                                            : std::string("no such file")));
  }
  if (int64_t{w} * int64_t{h} > kMaxImagePixels)
    throw std::runtime_error("cannot read image " + path + ": its header claims " + std::to_string(w) + "x" +
                             std::to_string(h) + " pixels, more than zoo reads (" + std::to_string(kMaxImagePixels) +
                             "); the file is damaged or too large");
  return {w, h, c};
}

torch::Tensor resize_center_crop(const torch::Tensor& image, int64_t size) {
  return resize_center_crop(image, size, size);
}

torch::Tensor resize_center_crop(const torch::Tensor& image, int64_t height, int64_t width) {
  TORCH_CHECK(image.dim() == 3 && height > 0 && width > 0,
              "resize_center_crop expects [C, H, W] and a positive size, got ", image.sizes(), " and ", height, "x",
              width);
  const int64_t h = image.size(1), w = image.size(2);
  if (h == height && w == width) return image;
  // torchvision.transforms.functional.resize: the side that binds becomes its target, the other int(target * other
  // / side) (for a square target: the shorter edge becomes `size`, the longer int(size * long / short)).
  const bool by_height = height * w >= width * h;
  const int64_t new_h = by_height ? height : width * h / w, new_w = by_height ? height * w / h : width;
  constexpr int64_t kMaxResized = int64_t{1} << 26;
  if (new_h * new_w > kMaxResized)
    throw std::invalid_argument("an image of " + std::to_string(w) + "x" + std::to_string(h) +
                                " pixels is too elongated to bring to " + std::to_string(width) + "x" +
                                std::to_string(height) + " (resizing it first would make " + std::to_string(new_w) +
                                "x" + std::to_string(new_h) + " pixels); crop it first");
  auto x = image.to(torch::kFloat32).unsqueeze(0);
  if (new_h != h || new_w != w)
    x = torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                  .size(std::vector<int64_t>{new_h, new_w})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false)
                                                  .antialias(new_h < h || new_w < w));
  // center_crop: offsets int(round((H - size) / 2)).
  const auto top = static_cast<int64_t>(std::round((new_h - height) / 2.0)),
             left = static_cast<int64_t>(std::round((new_w - width) / 2.0));
  x = x[0].slice(1, top, top + height).slice(2, left, left + width);
  if (image.scalar_type() == torch::kUInt8) return x.round().clamp(0, 255).to(torch::kUInt8).contiguous();
  return x.to(image.scalar_type()).contiguous();
}

torch::Tensor load_image(const std::string& path, int channels) {
  TORCH_CHECK(channels >= 0 && channels <= 4 && channels != 2, "load_image: channels must be 0, 1, 3 or 4");
  int w = 0, h = 0, c = 0;
  // A header may claim far more pixels than the file holds (a damaged TGA makes stb decode billions of pixels
  // from nothing: found by fuzzing); refuse those before decoding.
  if (stbi_info(path.c_str(), &w, &h, &c)) image_info(path);
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &c, channels);
  if (!data) {
    const char* reason = stbi_failure_reason();
    throw std::runtime_error("cannot read image " + path + ": " +
                             (std::filesystem::exists(path) ? std::string(reason ? reason : "unknown format")
                                                            : std::string("no such file")));
  }
  const int out_c = channels > 0 ? channels : c;
  auto t = torch::from_blob(data, {h, w, out_c}, torch::kUInt8).permute({2, 0, 1}).clone();
  stbi_image_free(data);
  return t;
}

}  // namespace zoo::datasets
