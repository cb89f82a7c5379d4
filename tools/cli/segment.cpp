// `zoo segment`: what a segmentation run predicts, as pictures. On the user's own image (coloured overlay, and
// the label map itself with --mask), or on test scenes as rows of image | truth | prediction.
#include "datasets/classes.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "datasets/segmentation.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/run.h"
#include "training/segmentation_objective.h"
#include "training/trainer.h"

#include <fmt/format.h>
#include <cstdio>
#include <map>

namespace zoo::cli {

using nlohmann::json;

torch::Tensor middle_slice(const torch::Tensor& t, int64_t spatial_dims) {
  // [.., D, H, W] -> [.., H, W] at depth D / 2; 2-D data passes through.
  return spatial_dims == 3 ? t.select(-3, t.size(-3) / 2) : t;
}

namespace {

struct SegmentArgs {
  std::string run, input, out, mask, figure, device = "cpu", data_dir, checkpoint = "best";
  int64_t n = 0, offset = 0, threads = 0, scale = 0, max_memory_mb = 0;
  double alpha = 0.5;
};

/// Bytes the forward of a U-Net or DeconvNet needs on an input of `pixels` (after padding to a multiple of
/// 2^(levels-1)), with `width` channels at the first level: about 10 float32 maps of `width` channels per pixel
/// are alive at the peak (skip maps, the decoder's concatenation and DoubleConv, convolution buffers; the deeper
/// levels add little). Measured peak RSS growth: 2.0 KB per pixel at width 64 (32 w bytes), 0.4-0.8 KB at width 16;
/// 40 w bytes keeps a margin. See docs/cli.md (zoo segment).
double segment_forward_bytes(int64_t pixels, int64_t width) {
  return static_cast<double>(pixels) * static_cast<double>(width) * 4.0 * 10.0;
}

void check_segmenter(const training::RunConfig& config, const std::string& run) {
  const auto& entry = models::ModelRegistry::instance().at(config.model);
  const std::string task = config.task.empty() ? entry.task : config.task;
  if (task != "segment")
    throw std::invalid_argument(run + " is a run of '" + config.model + "' (task " + task +
                                "); zoo segment needs a segmentation run (unet, deconvnet, unet3d, deconvnet3d)");
}

std::string class_summary(const torch::Tensor& labels, const std::vector<std::string>& names) {
  auto counts = torch::bincount(labels.flatten());
  const double total = static_cast<double>(labels.numel());
  std::string out;
  for (int64_t k = 0; k < counts.size(0); ++k) {
    const auto c = counts[k].item<int64_t>();
    if (c == 0) continue;
    const auto name = k < static_cast<int64_t>(names.size()) ? " " + names[static_cast<size_t>(k)] : std::string();
    out += fmt::format("{}{}{} ({:.1f}%)", out.empty() ? "" : ", ", k, name, 100.0 * static_cast<double>(c) / total);
  }
  return out;
}

void segment_image(const SegmentArgs& a, const training::RunConfig& config, torch::nn::AnyModule& model) {
  // U-Net and DeconvNet keep these in "encoder" (a run of zoo 0.1 wrote them flat: normalised here).
  const json options =
      models::merge_options(models::ModelRegistry::instance().at(config.model), config.options, json::object());
  const int64_t dims = options.value(json::json_pointer("/encoder/dims"), int64_t{2}),
                channels = options.value(json::json_pointer("/encoder/in_channels"), int64_t{1});
  if (dims != 2)
    throw std::invalid_argument("--input takes a 2-D image, but " + a.run + " is a " + std::to_string(dims) +
                                "-D model; use --n for test volumes (shown as middle slices)");
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("--input needs a model with 1 or 3 input channels; this one has " +
                                std::to_string(channels));
  // The header first: the size decides whether the forward fits the memory budget, before any decoding.
  const auto info = datasets::image_info(a.input);
  const int64_t levels = options.value(json::json_pointer("/encoder/levels"), int64_t{4}),
                width = options.value(json::json_pointer("/encoder/base_channels"), int64_t{64});
  const int64_t multiple = int64_t{1} << std::max<int64_t>(0, levels - 1);
  const auto padded = [multiple](int64_t v) { return (v + multiple - 1) / multiple * multiple; };
  const double need = segment_forward_bytes(padded(info.height) * padded(info.width), width);
  // The default fits the machine: half the memory it has available now (MemAvailable).
  const int64_t budget_mb = a.max_memory_mb > 0 ? a.max_memory_mb : datasets::default_cache_budget() >> 20;
  const double budget = static_cast<double>(budget_mb) * 1024 * 1024;
  if (need > budget) {
    // The largest square-ish size that fits, keeping the aspect ratio, for the advice.
    const double shrink = std::sqrt(budget / need);
    throw std::invalid_argument(fmt::format(
        "{} is {}x{} pixels ({}x{} once padded to a multiple of {}): the forward of this model needs about {:.1f} GB, "
        "above --max-memory {} MB; shrink the image to about {}x{} or raise --max-memory to {}",
        a.input, info.width, info.height, padded(info.width), padded(info.height), multiple, need / 1e9, budget_mb,
        static_cast<int64_t>(static_cast<double>(info.width) * shrink),
        static_cast<int64_t>(static_cast<double>(info.height) * shrink),
        static_cast<int64_t>(std::ceil(need / 1024 / 1024))));
  }
  auto image = datasets::pixels_to_unit(datasets::load_image(a.input, static_cast<int>(channels)));
  auto labels = training::predict_labels(model, image.unsqueeze(0), training::parse_device(a.device))[0];
  const int64_t scale = std::max<int64_t>(1, a.scale);
  auto overlay = datasets::overlay_labels(image, labels, a.alpha);
  if (scale > 1) overlay = overlay.repeat_interleave(scale, 1).repeat_interleave(scale, 2);
  datasets::save_png(overlay, a.out);
  if (!a.mask.empty()) datasets::save_png(labels.to(torch::kFloat32).div(255), a.mask);
  const auto names = datasets::segmentation_class_names(config.data.name);
  if (!a.figure.empty()) {
    auto shown = image.size(0) == 1 ? image.expand({3, -1, -1}) : image;
    save_label_figure(torch::stack({shown, datasets::colorize_labels(labels)}), 2, {"image", "prediction"},
                      present_classes({labels}), names, a.figure, a.scale);
  }
  fmt::print("wrote {} ({}x{}, predicted classes: {}){}{}\n", a.out, static_cast<long long>(overlay.size(2)),
             static_cast<long long>(overlay.size(1)), class_summary(labels, names),
             a.mask.empty() ? "" : (" and the label map " + a.mask),
             a.figure.empty() ? "" : (", the figure with its legend " + a.figure));
}

void segment_test_items(const SegmentArgs& a, const training::RunConfig& config, torch::nn::AnyModule& model,
                        bool data_dir_given) {
  auto data = config.data;
  data.limit = a.offset + a.n;  // generated datasets make only what is asked for
  if (data_dir_given) data.data_dir = a.data_dir;
  data.val_fraction = 0;  // only the test split is used: nothing held out for validation
  auto test = datasets::load_splits(data).test;
  if (a.offset + a.n > test->size())
    throw std::invalid_argument("--offset + --n = " + std::to_string(a.offset + a.n) + " exceeds the " +
                                std::to_string(test->size()) + " test items");
  auto batch = test->get(torch::arange(a.offset, a.offset + a.n, torch::kInt64));
  auto predicted = training::predict_labels(model, batch.input, training::parse_device(a.device));
  const int64_t spatial = batch.target.dim() - 1;
  auto images = middle_slice(batch.input, spatial);  // [n, C, H, W]
  if (images.size(1) == 1) images = images.expand({-1, 3, -1, -1});
  images = images.slice(1, 0, 3).clamp(0, 1);
  const auto truth_ids = middle_slice(batch.target, spatial), pred_ids = middle_slice(predicted, spatial);
  auto rows = torch::stack({images, datasets::colorize_labels(truth_ids), datasets::colorize_labels(pred_ids)}, 1)
                  .flatten(0, 1);  // image, truth, prediction per item
  save_label_figure(rows, 3, {"image", "truth", "prediction"}, present_classes({truth_ids, pred_ids}),
                    datasets::segmentation_class_names(config.data.name), a.out, a.scale);
  const double accuracy = predicted.eq(batch.target).to(torch::kFloat64).mean().item<double>();
  fmt::print("wrote {} ({} test items {}..{} as image | truth | prediction{}; pixel accuracy {:.4f})\n", a.out,
             static_cast<long long>(a.n), static_cast<long long>(a.offset), static_cast<long long>(a.offset + a.n - 1),
             spatial == 3 ? ", middle slices" : "", accuracy);
}

}  // namespace

void add_segment(CLI::App& app) {
  auto a = std::make_shared<SegmentArgs>();
  auto* cmd = app.add_subcommand(
      "segment", "Segment an image (--input, coloured overlay) or show test items as image | truth | prediction (--n)");
  cmd->add_option("run", a->run, "Run directory of a segmentation model (unet, deconvnet, ...)")->required();
  add_checkpoint_option(cmd, a->checkpoint);
  auto* input = cmd->add_option("--input", a->input, "An image (PNG, JPEG, ...) to segment");
  auto* n = cmd->add_option("--n", a->n, "Show this many test items (rows of image | truth | prediction)")
                ->check(CLI::Range(1, 1000));
  input->excludes(n);
  cmd->add_option("--offset", a->offset, "Index of the first test item for --n (default 0)")->check(non_negative());
  cmd->add_option("--out", a->out, "Output PNG (default overlay.png for --input, segments.png for --n)");
  cmd->add_option("--mask", a->mask, "With --input: also write the predicted label map (pixel value = class id)");
  cmd->add_option("--figure", a->figure,
                  "With --input: also write image | prediction side by side with a legend of the classes by name");
  cmd->add_option("--scale", a->scale,
                  "Draw each pixel as N x N pixels (default: 1 for the --input overlay; figures: tiles at least 160 "
                  "pixels wide)")
      ->check(CLI::Range(0, 64));
  cmd->add_option("--max-memory", a->max_memory_mb,
                  "With --input: refuse an image whose forward would need more than this many MB (default: half the "
                  "memory the machine has available)")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 30));
  cmd->add_option("--alpha", a->alpha, "Opacity of the class colours over the image (default 0.5)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--data-dir", a->data_dir, "Data directory for --n (default: the run's)");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->callback([a, cmd] {
    if (a->input.empty() && a->n == 0)
      throw std::invalid_argument("zoo segment needs --input IMAGE or --n N (test items)");
    if (!a->mask.empty() && a->input.empty()) throw std::invalid_argument("--mask goes with --input");
    if (!a->figure.empty() && a->input.empty())
      throw std::invalid_argument("--figure goes with --input (--n writes its figure to --out)");
    if (a->out.empty()) a->out = a->input.empty() ? "segments.png" : "overlay.png";
    training::apply_threads(a->threads);
    auto [config, model] = training::load_run_model(a->run, a->device, a->checkpoint);
    check_segmenter(config, a->run);
    if (!a->input.empty())
      segment_image(*a, config, model);
    else
      segment_test_items(*a, config, model, cmd->count("--data-dir") > 0);
  });
}

}  // namespace zoo::cli
