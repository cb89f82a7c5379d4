// zoo experiment unet-vs-deconvnet: do U-Net's skip connections make it the better segmenter? Trains a U-Net and
// a DeconvNet (the same encoder; max-unpooling decoder, no skips) of the same width on the same scenes with the
// same budget and seed, and compares mIoU and boundary IoU (where lost detail shows first), parameters and time.
#include "core/files.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "datasets/segmentation.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/run.h"
#include "training/segmentation_objective.h"

#include <fmt/format.h>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace zoo::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct SegArgs {
  std::string out, data_dir;
  int64_t epochs = 3, base_channels = 16, levels = 4, n_train = 4000, n_test = 1000, size = 64, seed = 0, threads = 0,
          batch_size = 32, dims = 2, show = 6;
  double lr = 2e-3, dice = 0;
  bool no_plot = false;
};

struct SegmentationResult {
  std::string model;
  int64_t parameters = 0;
  double miou = 0, boundary_iou = 0, pixel_accuracy = 0, dice = 0, seconds = 0;
};

void run_unet_vs_deconvnet(const SegArgs& a) {
  training::apply_threads(a.threads);
  const std::string dir = a.out.empty() ? experiment_dir("unet-vs-deconvnet") : a.out;
  fs::create_directories(dir);
  const bool volumes = a.dims == 3;
  const std::vector<std::string> models =
      volumes ? std::vector<std::string>{"unet3d", "deconvnet3d"} : std::vector<std::string>{"unet", "deconvnet"};
  std::vector<SegmentationResult> results;
  std::vector<std::string> run_dirs;
  for (const auto& name : models) {
    training::RunConfig config;
    config.model = name;
    config.options = {{"base_channels", a.base_channels}, {"levels", a.levels}};
    config.data.name = volumes ? "volumes" : "scenes";
    config.data.data_dir = a.data_dir;
    config.data.options = {{"n_train", a.n_train}, {"n_test", a.n_test}, {"size", a.size}, {"seed", a.seed}};
    config.data.val_fraction = 0;  // both models trained alike and tested at their last epoch: nothing is selected
    if (a.dice > 0) config.task_options = {{"dice", a.dice}};
    config.train = training::train_options_from_json(models::ModelRegistry::instance().at(name).train_defaults)
                       .epochs(a.epochs)
                       .batch_size(a.batch_size)
                       .lr(a.lr)
                       .seed(a.seed)
                       .threads(a.threads)
                       .progress(false);
    const auto run_dir = (fs::path(dir) / name).string();
    auto run = training::Run::create(config, run_dir);
    SegmentationResult r;
    r.model = name;
    r.parameters = models::count_parameters(*run->model().ptr());
    fmt::print("training {} ({} parameters) on {} for {} epochs -> {}\n", name, static_cast<long long>(r.parameters),
               config.data.name, static_cast<long long>(a.epochs), run_dir);
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    run->fit();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto test = run->trainer().state().final["test"];
    r.miou = test["miou"].get<double>();
    r.boundary_iou = test["boundary_iou"].get<double>();
    r.pixel_accuracy = test["pixel_accuracy"].get<double>();
    r.dice = test["dice"].get<double>();
    results.push_back(r);
    run_dirs.push_back(run_dir);
  }

  const auto csv_path = (fs::path(dir) / "unet_vs_deconvnet.csv").string();
  std::ostringstream csv;
  csv << "model,parameters,miou,boundary_iou,pixel_accuracy,dice,train_seconds,epochs\n";
  fmt::print("\n{:<12} {:>10} {:>7} {:>12} {:>9} {:>7} {:>9}\n", "model", "params", "mIoU", "boundary IoU", "pixel acc",
             "Dice", "train s");
  for (const auto& r : results) {
    fmt::print("{:<12} {:10} {:7.4f} {:12.4f} {:9.4f} {:7.4f} {:9.1f}\n", r.model, static_cast<long long>(r.parameters),
               r.miou, r.boundary_iou, r.pixel_accuracy, r.dice, r.seconds);
    csv << r.model << "," << r.parameters << "," << r.miou << "," << r.boundary_iou << "," << r.pixel_accuracy << ","
        << r.dice << "," << r.seconds << "," << a.epochs << "\n";
  }
  write_text_atomically(csv_path, csv.str());
  fmt::print("wrote {}\n", csv_path);
  if (a.no_plot) return;

  // Test items as rows: image | truth | U-Net | DeconvNet.
  auto [config, first] = training::load_run_model(run_dirs[0]);
  auto data = config.data;
  data.limit = a.show;
  auto batch = datasets::load_splits(data).test->get(torch::arange(0, std::min(a.show, a.n_test), torch::kInt64));
  const int64_t spatial = batch.target.dim() - 1;
  auto images = middle_slice(batch.input, spatial).expand({-1, 3, -1, -1}).clamp(0, 1);
  const auto truth = middle_slice(batch.target, spatial);
  std::vector<torch::Tensor> columns{images, datasets::colorize_labels(truth)}, label_maps{truth};
  for (const auto& run_dir : run_dirs) {
    auto model = training::load_run_model(run_dir).second;
    label_maps.push_back(middle_slice(training::predict_labels(model, batch.input, torch::kCPU), spatial));
    columns.push_back(datasets::colorize_labels(label_maps.back()));
  }
  const auto png = (fs::path(dir) / "unet_vs_deconvnet.png").string();
  save_label_figure(torch::stack(columns, 1).flatten(0, 1), static_cast<int64_t>(columns.size()),
                    {"image", "truth", models[0], models[1]}, present_classes(label_maps),
                    datasets::segmentation_class_names(config.data.name), png);
  fmt::print("wrote {} (rows: image | truth | {} | {})\n", png, models[0], models[1]);
}

}  // namespace

void add_unet_vs_deconvnet(CLI::App& experiment) {
  auto a = std::make_shared<SegArgs>();
  auto* cmd = experiment.add_subcommand(
      "unet-vs-deconvnet", "U-Net (skips) against DeconvNet (unpooling, no skips) on the same scenes and budget");
  cmd->add_option("--epochs", a->epochs, "Epochs for each model (default 3; 5 with --dims 3)")->check(positive());
  cmd->add_option("--base-channels", a->base_channels, "Width of the first level, both models (default 16)")
      ->check(positive());
  cmd->add_option("--levels", a->levels, "Levels, both models (default 4; 3 with --dims 3)")->check(CLI::Range(1, 8));
  cmd->add_option("--n-train", a->n_train, "Training scenes (default 4000; 1000 volumes with --dims 3)")
      ->check(positive());
  cmd->add_option("--n-test", a->n_test, "Test scenes (default 1000; 200 volumes with --dims 3)")->check(positive());
  cmd->add_option("--size", a->size, "Canvas size (default 64; 24 with --dims 3)")->check(positive());
  cmd->add_option("--batch-size", a->batch_size, "Batch size (default 32; 8 with --dims 3)")->check(positive());
  cmd->add_option("--lr", a->lr, "Adam learning rate, cosine schedule (default 2e-3)")->check(positive());
  cmd->add_option("--dice", a->dice, "Weight of the Dice loss added to cross-entropy (default 0)")
      ->check(non_negative());
  cmd->add_option("--seed", a->seed, "Seed of the scenes, the weights and the order (default 0)")
      ->check(non_negative());
  cmd->add_option("--dims", a->dims, "2: scenes with unet/deconvnet; 3: volumes with unet3d/deconvnet3d")
      ->check(CLI::IsMember({2, 3}));
  cmd->add_option("--show", a->show, "Test items in the picture (default 6)")->check(CLI::Range(1, 64));
  cmd->add_option("--out", a->out, "Output directory (default runs/unet-vs-deconvnet-DATE-TIME)");
  cmd->add_option("--data-dir", a->data_dir, "Fashion-MNIST directory (the scenes' items)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only, no picture");
  cmd->callback([a, cmd] {
    if (a->dims == 3) {  // volumes: the 3-D models' own defaults unless given
      if (!cmd->count("--size")) a->size = 24;
      if (!cmd->count("--n-train")) a->n_train = 1000;
      if (!cmd->count("--n-test")) a->n_test = 200;
      if (!cmd->count("--levels")) a->levels = 3;
      if (!cmd->count("--batch-size")) a->batch_size = 8;
      if (!cmd->count("--epochs")) a->epochs = 5;
    }
    run_unet_vs_deconvnet(*a);
  });
}

}  // namespace zoo::cli
