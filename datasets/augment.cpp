#include "datasets/augment.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace zoo::datasets {

namespace {

constexpr const char* kAugmentForms = "flip, crop=P, resized-crop=S, jitter=J (comma-separated)";

/// SplitMix64: a well-mixed stream from any 64-bit seed; independent of the standard library's distributions, so
/// the draws are the same with every compiler.
struct Draws {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform(double lo = 0, double hi = 1) {
    return lo + (hi - lo) * static_cast<double>(next() >> 11) * 0x1.0p-53;
  }
  int64_t integer(int64_t lo, int64_t hi) {  // in [lo, hi]
    return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
};

Draws item_draws(uint64_t seed, int64_t epoch, int64_t index) {
  Draws d{seed};
  d.state = d.next() ^ static_cast<uint64_t>(epoch) * 0xD1B54A32D192ED03ULL;
  d.state = d.next() ^ static_cast<uint64_t>(index) * 0xABC98388FB8FAC03ULL;
  return d;
}

double number_after(const std::string& part, const std::string& key) {
  const auto text = part.substr(key.size() + 1);
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || !std::isfinite(v))
    throw std::invalid_argument(fmt::format("dataset option 'augment': '{}' needs a number after '{}='", part, key));
  return v;
}

torch::Tensor grey(const torch::Tensor& image) {  // [C, H, W] -> [1, H, W], ITU-R 601 weights as torchvision
  if (image.size(0) == 1) return image;
  return (0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0);
}

std::vector<double> channel_values(const nlohmann::json& v, const char* key) {
  std::vector<double> out;
  if (v.is_number()) out.push_back(v.get<double>());
  if (v.is_array())
    for (const auto& x : v) {
      if (!x.is_number()) {
        out.clear();
        break;
      }
      out.push_back(x.get<double>());
    }
  if (out.empty() || out.size() > 3)
    throw std::invalid_argument(fmt::format(
        "dataset option '{}' expects a number or a list of 1 or 3 numbers (one per channel), got {}", key, v.dump()));
  return out;
}

}  // namespace

AugmentOptions parse_augment(const std::string& spec) {
  AugmentOptions o;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t end = std::min(spec.find(',', start), spec.size());
    const auto part = spec.substr(start, end - start);
    start = end + 1;
    if (part.empty()) {
      if (end == spec.size()) break;
      continue;
    }
    if (part == "flip") {
      o.flip = 0.5;
    } else if (part.rfind("crop=", 0) == 0) {
      const double p = number_after(part, "crop");
      if (p < 0 || p > 1024 || p != std::floor(p))
        throw std::invalid_argument("dataset option 'augment': crop=P needs a whole padding in 0..1024, got " + part);
      o.crop_padding = static_cast<int64_t>(p);
    } else if (part.rfind("resized-crop=", 0) == 0) {
      o.resized_crop = number_after(part, "resized-crop");
      if (!(o.resized_crop > 0 && o.resized_crop <= 1))
        throw std::invalid_argument(
            "dataset option 'augment': resized-crop=S needs the smallest area fraction S in (0, 1], e.g. 0.08; got " +
            part);
    } else if (part.rfind("jitter=", 0) == 0) {
      o.jitter = number_after(part, "jitter");
      if (!(o.jitter > 0 && o.jitter < 1))
        throw std::invalid_argument("dataset option 'augment': jitter=J needs J in (0, 1), e.g. 0.4; got " + part);
    } else {
      throw std::invalid_argument(
          fmt::format("dataset option 'augment': unknown transform '{}'; valid: {}", part, kAugmentForms));
    }
  }
  if (o.crop_padding >= 0 && o.resized_crop > 0)
    throw std::invalid_argument("dataset option 'augment': crop and resized-crop both crop; choose one");
  return o;
}

torch::Tensor Normalization::apply(const torch::Tensor& x, int64_t channel_dim) const {
  if (!any()) return x;
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[static_cast<size_t>(channel_dim)] = -1;
  const auto opts = torch::TensorOptions().dtype(x.scalar_type()).device(x.device());
  const auto m = torch::tensor(mean, torch::kDouble).to(opts).view(shape);
  const auto s = torch::tensor(std, torch::kDouble).to(opts).view(shape);
  return (x - m) / s;
}

torch::Tensor augment_image(const torch::Tensor& image, const AugmentOptions& o, uint64_t seed, int64_t epoch,
                            int64_t index) {
  auto d = item_draws(seed, epoch, index);
  auto x = image;
  const int64_t h = x.size(1), w = x.size(2);
  if (o.crop_padding > 0) {
    const int64_t p = o.crop_padding;
    const auto padded = torch::constant_pad_nd(x, {p, p, p, p}, 0);
    const int64_t i = d.integer(0, 2 * p), j = d.integer(0, 2 * p);
    x = padded.slice(1, i, i + h).slice(2, j, j + w);
  } else if (o.resized_crop > 0) {
    // torchvision's RandomResizedCrop.get_params: ten tries at an area and a log-uniform aspect ratio that fit,
    // else the whole image.
    int64_t ch = h, cw = w, top = 0, left = 0;
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double area = static_cast<double>(h * w) * d.uniform(o.resized_crop, 1.0);
      const double ratio = std::exp(d.uniform(std::log(3.0 / 4.0), std::log(4.0 / 3.0)));
      const auto tw = static_cast<int64_t>(std::lround(std::sqrt(area * ratio)));
      const auto th = static_cast<int64_t>(std::lround(std::sqrt(area / ratio)));
      if (tw > 0 && tw <= w && th > 0 && th <= h) {
        ch = th, cw = tw;
        top = d.integer(0, h - th), left = d.integer(0, w - tw);
        break;
      }
    }
    const auto crop = x.slice(1, top, top + ch).slice(2, left, left + cw).unsqueeze(0);
    x = torch::nn::functional::interpolate(crop, torch::nn::functional::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{h, w})
                                                     .mode(torch::kBilinear)
                                                     .align_corners(false))
            .squeeze(0);
  }
  if (o.flip > 0 && d.uniform() < o.flip) x = x.flip({2});
  if (o.jitter > 0) {
    // ColorJitter: brightness, contrast and saturation factors, applied in a random order, each clamped to [0, 1].
    const double lo = 1 - o.jitter, hi = 1 + o.jitter;
    const double factors[3] = {d.uniform(lo, hi), d.uniform(lo, hi), d.uniform(lo, hi)};
    int order[3] = {0, 1, 2};
    for (int k = 2; k > 0; --k) std::swap(order[k], order[d.integer(0, k)]);
    for (int which : order) {
      const double f = factors[which];
      if (which == 0) {
        x = (x * f).clamp(0, 1);
      } else if (which == 1) {
        x = (f * x + (1 - f) * grey(x).mean()).clamp(0, 1);
      } else if (x.size(0) == 3) {
        x = (f * x + (1 - f) * grey(x)).clamp(0, 1);
      }
    }
  }
  return x.contiguous();
}

Transformed::Transformed(std::shared_ptr<Dataset> base, AugmentOptions augment, Normalization normalization,
                         uint64_t seed)
    : base_(std::move(base)), augment_(augment), normalization_(std::move(normalization)), seed_(seed) {}

Batch Transformed::get(const torch::Tensor& indices) const {
  auto batch = base_->get(indices);
  if (augment_.any()) {
    const auto idx = indices.to(torch::kInt64).contiguous();
    const auto* ids = idx.data_ptr<int64_t>();
    auto out = torch::empty_like(batch.input);
    for (int64_t i = 0; i < batch.size(); ++i)
      out[i].copy_(augment_image(batch.input[i], augment_, seed_, epoch_, ids[i]));
    batch.input = out;
  }
  batch.input = normalization_.apply(batch.input);
  return batch;
}

std::string Transformed::describe() const {
  std::vector<std::string> parts;
  if (augment_.flip > 0) parts.push_back("flip");
  if (augment_.crop_padding >= 0) parts.push_back(fmt::format("crop={}", augment_.crop_padding));
  if (augment_.resized_crop > 0) parts.push_back(fmt::format("resized-crop={}", augment_.resized_crop));
  if (augment_.jitter > 0) parts.push_back(fmt::format("jitter={}", augment_.jitter));
  if (normalization_.any()) parts.push_back(fmt::format("mean {} std {}", normalization_.mean, normalization_.std));
  return base_->describe() + (parts.empty() ? "" : fmt::format(" [{}]", fmt::join(parts, ", ")));
}

std::pair<AugmentOptions, Normalization> take_transform_options(nlohmann::json& options,
                                                                const Normalization& default_norm) {
  AugmentOptions augment;
  Normalization norm = default_norm;
  if (!options.is_object()) return {augment, norm};
  if (options.contains("augment")) {
    if (!options["augment"].is_string())
      throw std::invalid_argument("dataset option 'augment' expects a list like flip,crop=4; got " +
                                  options["augment"].dump());
    augment = parse_augment(options["augment"].get<std::string>());
    options.erase("augment");
  }
  const bool has_mean = options.contains("mean"), has_std = options.contains("std");
  if (has_mean != has_std)
    throw std::invalid_argument(
        "dataset options 'mean' and 'std' go together (e.g. --data-option mean=0.5 --data-option std=0.25)");
  if (has_mean) {
    norm.mean = channel_values(options["mean"], "mean");
    norm.std = channel_values(options["std"], "std");
    options.erase("mean");
    options.erase("std");
    if (norm.mean.size() != norm.std.size())
      throw std::invalid_argument(
          fmt::format("dataset options 'mean' ({} values) and 'std' ({} values) differ in length", norm.mean.size(),
                      norm.std.size()));
    for (double s : norm.std)
      if (!(s > 0)) throw std::invalid_argument(fmt::format("dataset option 'std' must be positive, got {}", s));
    if (norm.mean == std::vector<double>(norm.mean.size(), 0.0) &&
        norm.std == std::vector<double>(norm.std.size(), 1.0))
      norm = {};  // mean 0, std 1: explicitly none
  }
  return {augment, norm};
}

void apply_transforms(Splits& splits, const AugmentOptions& augment, const Normalization& normalization, uint64_t seed,
                      const std::string& dataset) {
  if (!augment.any() && !normalization.any()) return;
  const auto item = splits.train->get(torch::zeros({1}, torch::kInt64)).input;
  if (item.dim() != 4 || (item.size(1) != 1 && item.size(1) != 3))
    throw std::invalid_argument(
        fmt::format("dataset options augment, mean and std need images [C, H, W] with 1 or 3 channels; {} has items {}",
                    dataset, c10::str(item.sizes().slice(1))));
  auto norm = normalization;
  if (norm.any() && norm.mean.size() == 1 && item.size(1) == 3) {
    norm.mean.assign(3, norm.mean[0]);
    norm.std.assign(3, norm.std[0]);
  }
  if (norm.any() && static_cast<int64_t>(norm.mean.size()) != item.size(1))
    throw std::invalid_argument(fmt::format("dataset options mean/std have {} values but the images have {} channels",
                                            norm.mean.size(), item.size(1)));
  splits.train = std::make_shared<Transformed>(splits.train, augment, norm, seed);
  if (norm.any()) {
    splits.test = std::make_shared<Transformed>(splits.test, AugmentOptions{}, norm, seed);
    if (splits.val) splits.val = std::make_shared<Transformed>(splits.val, AugmentOptions{}, norm, seed);
  }
  splits.mean = norm.mean;
  splits.std = norm.std;
}

}  // namespace zoo::datasets
